"""``numpy.load`` under a policy: object arrays are unpickled only through the policy Unpickler."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from trainwarden.findings import Report
from trainwarden.load._source import open_source
from trainwarden.load._torch import original
from trainwarden.load._unpickler import ENFORCE, PolicyUnpickler, check_report, make_unpickler

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["safe_numpy_load"]


def safe_numpy_load(
    file: Any,
    mmap_mode: str | None = None,
    allow_pickle: bool = False,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    *,
    max_header_size: int | None = None,
    policy: Policy,
    mode: str = ENFORCE,
) -> Any:
    """``numpy.load`` with the same arguments; pickled data must pass ``policy``.

    Without ``allow_pickle`` numpy never unpickles, so the call goes to numpy unchanged.
    """
    import numpy as np

    np_load = original(np.load)
    extra: dict[str, Any] = {} if max_header_size is None else {"max_header_size": max_header_size}
    if not allow_pickle:
        return np_load(file, mmap_mode, False, fix_imports, encoding, **extra)
    if encoding not in ("ASCII", "latin1", "bytes"):
        raise ValueError("encoding must be 'ASCII', 'latin1', or 'bytes'")
    pickle_kwargs = {"encoding": encoding, "fix_imports": fix_imports}
    with open_source(file) as source:
        from trainwarden.scan import scan_bytes

        report = scan_bytes(source.data, name=source.name, policy=policy, digest=False)
        check_report(Report(files=(report,), command="load"), mode=mode, data=source.data)
        unpickler = make_unpickler(
            policy, source=source.name, sha256=report.sha256, mode=mode, data=source.data
        )
        if report.format == "numpy-npz":
            # NpzFile reads members lazily, after we return: give it its own copy of the
            # scanned bytes, never the file again.
            return _SafeNpzFile(
                io.BytesIO(source.data.tobytes()),
                unpickler,
                own_fid=True,
                allow_pickle=False,
                pickle_kwargs=pickle_kwargs,
                **extra,
            )
        if report.format == "numpy-npy":
            if mmap_mode and source.fd_path is not None:
                # Memory-mapping never unpickles (numpy refuses object arrays there); map the
                # inode we scanned, not whatever the path names now.
                return np_load(source.fd_path, mmap_mode, False, fix_imports, encoding, **extra)
            return _read_npy(source.reader(), unpickler, pickle_kwargs, max_header_size)
        # Like numpy: anything that is neither .npy nor .npz is read as a pickle.
        return unpickler(source.reader(), **pickle_kwargs).load()


def _read_npy(
    fp: Any,
    unpickler: type[PolicyUnpickler],
    pickle_kwargs: dict[str, Any],
    max_header_size: int | None,
) -> Any:
    from numpy.lib import format as npformat

    extra: dict[str, Any] = {} if max_header_size is None else {"max_header_size": max_header_size}
    start = fp.tell()
    version = npformat.read_magic(fp)
    read_header = getattr(npformat, "_read_array_header", None)
    if read_header is not None:
        _, _, dtype = read_header(fp, version, **extra)
    elif version == (1, 0):
        _, _, dtype = npformat.read_array_header_1_0(fp, **extra)
    else:
        _, _, dtype = npformat.read_array_header_2_0(fp, **extra)
    if dtype.hasobject:
        # numpy would call pickle.load here; the policy Unpickler reads the same bytes.
        return unpickler(fp, **pickle_kwargs).load()
    fp.seek(start)
    return npformat.read_array(fp, allow_pickle=False, **extra)


def _npz_base() -> type[Any]:
    import numpy as np

    npz: type[Any] = np.lib.npyio.NpzFile
    return npz


def _make_npz_class() -> type[Any]:
    base = _npz_base()

    class SafeNpzFile(base):  # type: ignore[misc,valid-type]
        """An ``NpzFile`` whose object-array members go through the policy Unpickler."""

        def __init__(self, fid: Any, unpickler: type[PolicyUnpickler], **kwargs: Any) -> None:
            super().__init__(fid, **kwargs)
            self._tw_unpickler = unpickler

        def __getitem__(self, key: str) -> Any:
            try:
                return super().__getitem__(key)
            except ValueError as exc:
                # numpy refuses object arrays when allow_pickle=False, before unpickling.
                if "allow_pickle" not in str(exc):
                    raise
            files = getattr(self, "_files", None)
            name = files[key] if isinstance(files, dict) else _member_name(self, key)
            with self.zip.open(name) as member:
                return _read_npy(
                    member, self._tw_unpickler, self.pickle_kwargs, self.max_header_size
                )

    return SafeNpzFile


def _member_name(npz: Any, key: str) -> str:
    names = set(npz.zip.namelist())
    return key if key in names else f"{key}.npy"


_NPZ_CLASS: type[Any] | None = None


def _SafeNpzFile(fid: Any, unpickler: type[PolicyUnpickler], **kwargs: Any) -> Any:
    global _NPZ_CLASS
    if _NPZ_CLASS is None:
        _NPZ_CLASS = _make_npz_class()
    return _NPZ_CLASS(fid, unpickler, **kwargs)
