"""Safe loading: scan the bytes, then unpickle those same bytes under the same policy.

``load`` (drop-in ``torch.load``), ``pickle_load(s)``, ``numpy_load``, ``joblib_load``,
``protect()`` for a process's own loaders, and ``convert`` to safetensors.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trainwarden.load._convert import Conversion, parse_size
from trainwarden.load._policy import MODES
from trainwarden.load._protect import (
    Protection,
    active_protection,
    protect,
    protect_from_environment,
)
from trainwarden.load._torch import load_nested
from trainwarden.load._unpickler import set_nested_loader

if TYPE_CHECKING:
    import os

    from trainwarden.scan import Policy

__all__ = [
    "MODES",
    "Conversion",
    "Protection",
    "active_protection",
    "convert",
    "joblib_load",
    "load",
    "numpy_load",
    "parse_size",
    "pickle_load",
    "pickle_loads",
    "protect",
    "protect_from_environment",
]

# The unpickler checks a checkpoint nested in a pickle (``torch.storage._load_from_bytes``)
# with the torch loader, which is built on the unpickler: the package wires the two together
# once, so neither module imports the other.
set_nested_loader(load_nested)


def load(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
    **pickle_load_args: Any,
) -> Any:
    """Load a torch checkpoint like ``torch.load``, refusing what the policy refuses.

    The input is read once (a path is mapped read-only through one descriptor), that buffer is
    scanned, and torch deserialises the same buffer with an Unpickler whose ``find_class`` and
    ``persistent_load`` enforce the same policy. Results are torch's own: ``map_location``,
    ``mmap``, zip and legacy formats, shared storages, every dtype.

    Args:
        f: a path, path-like or binary file object.
        map_location: as for ``torch.load``.
        pickle_module: only ``None`` or the ``pickle`` module (anything else would bypass
            the policy).
        weights_only: ``True`` also runs torch's own restricted unpickler (both allowlists
            apply); ``None``/``False`` use the policy Unpickler alone.
        mmap: as for ``torch.load``; the mapped file is the inode that was scanned.
        allow: extra globals to allow (``"module.name"``).
        profiles: allowlist profiles (``"transformers"``, ``"lightning"``...).
        policy: a ready policy instead of the default one (``allow`` extends it).
        **pickle_load_args: passed to the unpickler (``encoding=``...).

    Returns:
        What ``torch.load`` returns.

    Raises:
        trainwarden.errors.UnsafeModelError: the policy refuses the file; ``.report`` says
            which global, where and why.
        trainwarden.errors.ConfigError: invalid ``allow``/``profiles``/``pickle_module``.
        trainwarden.errors.InputError: the input cannot be read.

    A file the policy accepts but torch cannot deserialise (corrupt, truncated) raises what
    ``torch.load`` raises for it (``RuntimeError``, ``EOFError``...): a drop-in keeps torch's
    errors. ``trainwarden convert`` turns them into an input error.
    """
    from trainwarden.load._policy import resolve_policy
    from trainwarden.load._torch import load_with_report

    obj, _ = load_with_report(
        f,
        map_location,
        pickle_module,
        weights_only=weights_only,
        mmap=mmap,
        policy=resolve_policy(policy, allow, profiles),
        **pickle_load_args,
    )
    return obj


def pickle_load(
    f: Any,
    *,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
    **kwargs: Any,
) -> Any:
    """``pickle.load`` under the policy; ``f`` is a path (read once, scanned) or a file object.

    Raises:
        trainwarden.errors.UnsafeModelError: the pickle imports something not allowed.
    """
    from trainwarden.load._pickle import safe_pickle_load
    from trainwarden.load._policy import resolve_policy

    return safe_pickle_load(f, policy=resolve_policy(policy, allow, profiles), **kwargs)


def pickle_loads(
    data: bytes | bytearray | memoryview,
    *,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
    **kwargs: Any,
) -> Any:
    """``pickle.loads`` under the policy.

    Raises:
        trainwarden.errors.UnsafeModelError: the pickle imports something not allowed.
    """
    from trainwarden.load._pickle import safe_pickle_loads
    from trainwarden.load._policy import resolve_policy

    return safe_pickle_loads(data, policy=resolve_policy(policy, allow, profiles), **kwargs)


def numpy_load(
    file: Any,
    mmap_mode: str | None = None,
    allow_pickle: bool = False,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    *,
    max_header_size: int | None = None,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
) -> Any:
    """``numpy.load``; with ``allow_pickle=True`` object arrays must pass the policy.

    Raises:
        trainwarden.errors.UnsafeModelError: pickled data imports something not allowed.
    """
    from trainwarden.load._numpy import safe_numpy_load
    from trainwarden.load._policy import resolve_policy

    return safe_numpy_load(
        file,
        mmap_mode,
        allow_pickle,
        fix_imports,
        encoding,
        max_header_size=max_header_size,
        policy=resolve_policy(policy, allow, profiles),
    )


def joblib_load(
    filename: Any,
    mmap_mode: str | None = None,
    ensure_native_byte_order: Any = "auto",
    *,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
) -> Any:
    """``joblib.load`` under the policy (the file is read once, scanned, then unpickled).

    Raises:
        trainwarden.errors.UnsafeModelError: the file imports something not allowed.
    """
    from trainwarden.load._joblib import safe_joblib_load
    from trainwarden.load._policy import resolve_policy

    return safe_joblib_load(
        filename,
        mmap_mode,
        ensure_native_byte_order,
        policy=resolve_policy(policy, allow, profiles),
    )


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
    shard_size: int = 5 * 10**9,
    select: str | None = None,
) -> Conversion:
    """Write ``src`` (a checkpoint judged safe) as safetensors at ``dst``; see ``docs/load.md``.

    Tensors are stored under their dotted key paths (``model.fc.weight``,
    ``optimizer.state.0.exp_avg``); plain values (param groups, step, hyper-parameters) go
    to the metadata as JSON (``trainwarden.non_tensor``); objects that are neither are listed
    in ``Conversion.left_out`` and the metadata, never dropped silently.

    Args:
        src: The checkpoint.
        dst: A ``.safetensors`` file or a directory.
        allow: Extra globals to allow (``"module.name"``).
        profiles: Allowlist profiles (``"lightning"``...).
        policy: A ready policy instead of the default one.
        shard_size: Largest shard in bytes (see :func:`parse_size`).
        select: Convert only the subtree at this dotted key path (``"state_dict"``).

    Raises:
        trainwarden.errors.UnsafeModelError: the policy refuses ``src``.
        trainwarden.errors.InputError: ``src`` is not a checkpoint or holds a tensor
            safetensors cannot store, or ``dst`` cannot be written or is ``src``.
        trainwarden.errors.ConfigError: torch/safetensors missing, ``select`` names nothing.
    """
    from trainwarden.load._convert import convert_checkpoint
    from trainwarden.load._policy import resolve_policy

    return convert_checkpoint(
        src,
        dst,
        policy=resolve_policy(policy, allow, profiles),
        shard_size=shard_size,
        select=select,
    )


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`load`.

    ``trainwarden.load`` names both this package and its main function. Importing any of its
    submodules sets the attribute ``trainwarden.load`` to the package, so calling the package
    must do what calling the function does: ``trainwarden.load(f)`` is always the drop-in.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return load(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
