"""``trainwarden.load``: ``torch.load`` that scans the bytes it read and unpickles those bytes.

torch's own deserialisation does the work, with a pickle module whose Unpickler obeys the policy.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from trainwarden.errors import ConfigError, InputError
from trainwarden.findings import FileReport, Report, Severity, Verdict
from trainwarden.load._source import Source, open_source
from trainwarden.load._unpickler import check_report, make_pickle_module, refuse

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["load_nested", "load_with_report", "original"]

_TRUE = ("1", "y", "yes", "true")

logger = logging.getLogger("trainwarden.load")


def original(func: Any) -> Any:
    """The function ``protect()`` replaced, if ``func`` is one of its wrappers."""
    while getattr(func, "__trainwarden_wrapper__", False):
        func = func.__wrapped__
    return func


def load_with_report(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    policy: Policy,
    mode: str = "enforce",
    digest: bool = False,
    name: str = "<bytes>",
    accept: Collection[str] | None = None,
    **pickle_load_args: Any,
) -> tuple[Any, FileReport]:
    """Scan then load ``f`` like ``torch.load``; return the object and the scan report.

    The report's ``sha256`` is computed only with ``digest=True`` (or on refusal); ``name``
    names an in-memory ``f`` in reports and logs; ``accept`` lists the formats (as the
    scanner names them) the caller reads, anything else is an input error before loading.

    Raises:
        UnsafeModelError: the policy refuses the checkpoint (enforce mode).
        ConfigError: a custom ``pickle_module`` was given (it would bypass the policy).
        InputError: the input cannot be read, or its format is not in ``accept``.
    """
    try:
        import torch
    except ImportError as exc:
        # The core install (no torch) is a documented way to install trainwarden: say what
        # is missing and how to get it, rather than fail deep inside the loader.
        raise ConfigError(
            f"trainwarden.load needs torch ({exc.name or exc} is not installed): "
            "pip install 'trainwarden[torch]' (install the torch build you want first)"
        ) from None

    if pickle_module is not None and pickle_module is not pickle:
        raise ConfigError(
            "trainwarden.load does not accept a custom pickle_module: it would bypass the policy"
        )
    if mmap is None:
        from torch.utils.serialization import config

        mmap = bool(config.load.mmap)
    torch_load = original(torch.serialization.load)
    with open_source(f, name=name) as source:
        from trainwarden.scan import scan_bytes

        # The scan and the load below both read `source.data`: one read of the input.
        report = scan_bytes(source.data, name=source.name, policy=policy, digest=digest)
        if report.verdict is not Verdict.SAFE:
            check_report(Report(files=(report,), command="load"), mode=mode, data=source.data)
        if accept is not None and report.format not in accept:
            kind = "an empty file" if report.format == "empty" else f"format {report.format}"
            raise InputError(f"{source.name} is not a checkpoint ({kind})")
        logger.debug("loading %s (%s, sha256 %s)", source.name, report.format, report.sha256)
        fmt = report.format
        if fmt == "safetensors":
            return _load_safetensors(source, map_location), report
        if fmt == "torchscript":
            reader = source.reader()
            return torch.jit.load(reader, map_location=map_location), report  # type: ignore[no-untyped-call]
        if weights_only or _env_forces_weights_only():
            # The caller asked for torch's own restricted unpickler as well: it runs on the
            # bytes we scanned, so both allowlists apply.
            module = None
            weights_only = True
        else:
            module = make_pickle_module(
                policy,
                source=source.name,
                sha256=report.sha256,
                mode=mode,
                # Whenever torch reads the pickle from the file rather than from our private
                # snapshot, judge the exact bytes it hands the Unpickler once more.
                rescan=bool(mmap) or not source.private,
                data=source.data,
            )
            weights_only = False
        kwargs: dict[str, Any] = {
            "pickle_module": module,
            "weights_only": weights_only,
            **pickle_load_args,
        }
        if mmap:
            return _load_mmap(torch_load, source, map_location, kwargs), report
        if fmt == "torch-legacy-tar":
            return _load_tar(torch_load, source, map_location, kwargs), report
        reader = source.reader()
        try:
            return torch_load(reader, map_location, mmap=False, **kwargs), report
        finally:
            reader.close()


def load_nested(data: Any, *, policy: Policy, source: str, mode: str) -> Any:
    """Do what ``torch.storage._load_from_bytes(data)`` does, under ``policy`` and ``mode``.

    torch's function runs ``torch.load(io.BytesIO(data), weights_only=False)``: the bytes a
    pickled tensor carries are a whole checkpoint of their own. They are scanned and loaded
    like any checkpoint, so a malicious nested archive is refused before any of it runs.

    Raises:
        UnsafeModelError: the policy refuses the nested archive (enforce mode).
    """
    name = f"{source}!(nested)"
    if not isinstance(data, bytes):
        try:
            # A private copy: the bytes judged are the bytes loaded, whatever owns the buffer.
            data = memoryview(data).tobytes()
        except TypeError:
            refuse(
                source=name,
                sha256=None,
                rule_id="load.nested-payload",
                message="torch.storage._load_from_bytes called with a value that is not bytes",
                evidence=type(data).__name__,
                severity=Severity.HIGH,
                verdict=Verdict.UNKNOWN,
                mode=mode,
            )
            raise
    # mmap=None and no map_location, exactly as torch's own call: same result, same errors.
    obj, _ = load_with_report(
        data, None, None, weights_only=False, mmap=None, policy=policy, mode=mode, name=name
    )
    return obj


def _load_mmap(torch_load: Any, source: Source, map_location: Any, kwargs: dict[str, Any]) -> Any:
    # torch maps a file *by name*. We give it a name for our own descriptor, so it maps the
    # inode we scanned even if the path was replaced since; the pickle records torch then
    # reads are judged again (rescan=True) before they are unpickled.
    fd_path = source.fd_path
    if source.path is None or fd_path is None:
        # Same error torch gives for file objects; no path means nothing to map.
        return torch_load(source.reader(), map_location, mmap=True, **kwargs)
    return torch_load(fd_path, map_location, mmap=True, **kwargs)


def _load_tar(torch_load: Any, source: Source, map_location: Any, kwargs: dict[str, Any]) -> Any:
    # torch reads the pre-1.6 tar format only from a real file (it needs fileno()); a private
    # unnamed temporary copy of the scanned bytes keeps "load what was scanned" true.
    with tempfile.TemporaryFile() as tmp:
        tmp.write(source.data)
        tmp.seek(0)
        return torch_load(tmp, map_location, mmap=False, **kwargs)


def _load_safetensors(source: Source, map_location: Any) -> Any:
    # What torch.load does for a *.safetensors path (no pickle, nothing runs), reading the
    # inode we scanned through our descriptor when there is one.
    import safetensors.torch
    import torch

    device = "cpu"
    if isinstance(map_location, (str, torch.device)):
        device = str(map_location)
    elif map_location is not None:
        raise ConfigError("safetensors files take a device string or torch.device map_location")
    if source.fd_path is not None:
        return safetensors.torch.load_file(source.fd_path, device=device)
    tensors = safetensors.torch.load(source.data.tobytes())
    # Same order as load_file (sorted names).
    return {name: tensors[name].to(device) for name in sorted(tensors)}


def _env_forces_weights_only() -> bool:
    return os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in _TRUE
