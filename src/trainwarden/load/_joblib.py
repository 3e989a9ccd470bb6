"""``joblib.load`` under a policy: joblib's own Unpickler, with a policy ``find_class``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.errors import InputError
from trainwarden.findings import Report
from trainwarden.load._source import open_source
from trainwarden.load._unpickler import ENFORCE, check_report, pure_python_unpickler

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["safe_joblib_load"]

_ARRAY_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_ROUTES_FIND_CLASS: list[bool] = []


def _nested_pickles_use_find_class() -> bool:
    """Whether this joblib unpickles object arrays through the outer ``find_class``.

    joblib 1.5+ does; older versions call ``pickle.load`` on the nested stream, which would
    bypass the policy, so the wrapper is then left to the policy (which refuses it).
    """
    if not _ROUTES_FIND_CLASS:
        import inspect

        from joblib.numpy_pickle import NumpyArrayWrapper

        try:
            source = inspect.getsource(NumpyArrayWrapper.read_array)
        except (OSError, TypeError):
            source = ""
        _ROUTES_FIND_CLASS.append("inner_unpickler.find_class = unpickler.find_class" in source)
    return _ROUTES_FIND_CLASS[0]


def safe_joblib_load(
    filename: Any,
    mmap_mode: str | None = None,
    ensure_native_byte_order: Any = "auto",
    *,
    policy: Policy,
    mode: str = ENFORCE,
) -> Any:
    """``joblib.load`` with the same arguments; every import must pass ``policy``.

    The file is read once and scanned; joblib then decompresses and unpickles that buffer.
    ``mmap_mode`` maps arrays from the inode that was scanned (by descriptor, not by name).

    Raises:
        UnsafeModelError: the policy refuses the file (enforce mode).
        InputError: the file uses joblib's pre-0.10 format, which reads companion files.
    """
    from joblib import numpy_pickle
    from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

    if ensure_native_byte_order == "auto":
        ensure_native_byte_order = mmap_mode is None
    if ensure_native_byte_order and mmap_mode is not None:
        raise ValueError(
            "Native byte ordering can only be enforced if 'mmap_mode' parameter "
            f"is set to None, but got 'mmap_mode={mmap_mode}' instead."
        )
    with open_source(filename) as source:
        from trainwarden.scan import scan_bytes

        report = scan_bytes(source.data, name=source.name, policy=policy, digest=False)
        check_report(Report(files=(report,), command="load"), mode=mode, data=source.data)
        find_class = pure_python_unpickler(
            policy, source=source.name, sha256=report.sha256, mode=mode, data=source.data
        )

        class PolicyNumpyUnpickler(numpy_pickle.NumpyUnpickler):  # type: ignore[misc]
            def find_class(self, module: str, name: str) -> Any:
                if (module, name) == _ARRAY_WRAPPER and _nested_pickles_use_find_class():
                    # joblib's own array placeholder: inside joblib's Unpickler it reads raw
                    # array bytes, and object arrays through this very find_class.
                    return numpy_pickle.NumpyArrayWrapper
                return find_class(module, name)

        map_name = source.fd_path if mmap_mode is not None else None
        if mmap_mode is not None and map_name is None:
            raise InputError(f"{source.name}: mmap_mode needs a file path")
        # joblib memory-maps arrays only from a real file: reopen *our* descriptor's inode
        # (every import is still checked by find_class); otherwise read the scanned buffer.
        reader = Path(map_name).open("rb") if map_name is not None else source.reader()  # noqa: SIM115
        with (
            reader,
            _validate_fileobject_and_memmap(reader, map_name or source.name, mmap_mode) as (
                fobj,
                validated_mmap_mode,
            ),
        ):
            if isinstance(fobj, str):
                raise InputError(
                    f"{source.name}: joblib files older than 0.10 read companion files and "
                    "are not supported by the safe loader"
                )
            unpickler = PolicyNumpyUnpickler(
                map_name or source.name,
                fobj,
                ensure_native_byte_order,
                mmap_mode=validated_mmap_mode,
            )
            return unpickler.load()
