"""Safe equivalents of ``pickle.load`` and ``pickle.loads``."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from trainwarden.findings import Report
from trainwarden.load._source import is_path, open_source, source_name
from trainwarden.load._unpickler import ENFORCE, check_report, make_unpickler

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["safe_pickle_load", "safe_pickle_loads"]


def safe_pickle_load(f: Any, *, policy: Policy, mode: str = ENFORCE, **kwargs: Any) -> Any:
    """``pickle.load`` under ``policy``: a path is read once, scanned, then unpickled.

    A file object is unpickled in place, as ``pickle.load`` would (the stream position ends
    after the pickle, so several pickles can be read in turn); every import is checked.
    """
    if is_path(f):
        with open_source(f) as source:
            from trainwarden.scan import scan_bytes

            report = scan_bytes(source.data, name=source.name, policy=policy, digest=False)
            check_report(Report(files=(report,), command="load"), mode=mode, data=source.data)
            unpickler = make_unpickler(
                policy, source=source.name, sha256=report.sha256, mode=mode, data=source.data
            )
            return unpickler(source.reader(), **kwargs).load()
    unpickler = make_unpickler(policy, source=source_name(f), mode=mode)
    return unpickler(f, **kwargs).load()


def safe_pickle_loads(data: Any, *, policy: Policy, mode: str = ENFORCE, **kwargs: Any) -> Any:
    """``pickle.loads`` under ``policy``: every import the pickle makes is checked first."""
    view = memoryview(data)
    unpickler = make_unpickler(policy, source="<bytes>", mode=mode, data=view)
    # BytesIO shares a bytes object without copying it; other buffers are copied once.
    stream = io.BytesIO(data if isinstance(data, bytes) else view.tobytes())
    return unpickler(stream, **kwargs).load()
