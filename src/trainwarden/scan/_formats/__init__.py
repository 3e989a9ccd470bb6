"""Format readers, one module per family; :func:`analyse` routes bytes to the right one.

Formats are recognised from bytes, never from file names (see ``_sniff``).
"""

from __future__ import annotations

from typing import Any

from trainwarden.scan._formats._base import Context, MemoryBlob
from trainwarden.scan._formats._dispatch import DISPATCHER, analyse
from trainwarden.scan._formats._sniff import sniff_head
from trainwarden.scan._limits import DEFAULT_LIMITS

__all__ = ["analyse", "sniff_buffer"]


def sniff_buffer(data: bytes | memoryview) -> str:
    """Name the format of an in-memory buffer (see :func:`trainwarden.scan.sniff_format`)."""
    blob = MemoryBlob(data)
    head = bytes(blob.read(0, 1024))
    fmt = sniff_head(head, blob.size)
    policy: Any = None  # sniffing never judges, so no policy is consulted
    ctx = Context(path="<bytes>", policy=policy, limits=DEFAULT_LIMITS, dispatcher=DISPATCHER)
    if fmt == "zip":
        from trainwarden.scan._formats._zip import read_zip
        from trainwarden.scan._formats._zipfamily import classify_zip

        archive = read_zip(ctx, blob, None)
        return "zip" if archive is None else classify_zip(archive)
    if fmt == "hdf5":
        from trainwarden.scan._formats._configs import hdf5_model_config

        return "keras" if hdf5_model_config(blob) is not None else "hdf5"
    if fmt in ("zlib", "lzma"):
        return "joblib"
    if fmt != "unrecognised":
        return fmt
    from trainwarden.scan._formats._configs import data_format
    from trainwarden.scan._formats._dispatch import is_plain_data
    from trainwarden.scan._formats._pickles import analyse_stream

    analyses, _ = analyse_stream(ctx, blob, None, judge_all=False)
    if analyses and is_plain_data(analyses[0]):
        from trainwarden.scan._formats._graphs import sniff_graph

        return sniff_graph(blob, head) or data_format(blob, head)
    for analysis in analyses:
        for ref in analysis.globals:
            if ref.module.startswith("joblib.numpy_pickle"):
                return "joblib"
    return "pickle"
