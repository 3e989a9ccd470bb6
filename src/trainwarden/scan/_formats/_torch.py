"""PyTorch's legacy formats: the pre-zip sequential format and the older tar format.

Both interleave pickles with raw storage bytes. We analyse every pickle torch would load and
skip the raw bytes by the sizes torch itself would use, without reading them.
"""

from __future__ import annotations

import struct

from trainwarden.scan._formats._base import Blob, Context
from trainwarden.scan._formats._zipfamily import STORAGE_ITEMSIZE

__all__ = ["analyse_legacy_tar_member", "analyse_torch_legacy"]

# magic number, protocol version, sys info, the object, the storage keys.
_LEGACY_PICKLES = 5


def analyse_torch_legacy(ctx: Context, blob: Blob, member: str | None) -> str:
    """The pre-zip format: five consecutive pickles, then raw storages (never read)."""
    from trainwarden.scan._formats._pickles import analyse_stream

    analyses, _ = analyse_stream(ctx, blob, member, max_pickles=_LEGACY_PICKLES)
    if len(analyses) < _LEGACY_PICKLES or not all(a.complete for a in analyses):
        ctx.unknown(
            "torch.legacy-truncated",
            "legacy torch file does not hold the five pickles torch reads",
            member,
            evidence=f"{sum(a.complete for a in analyses)} complete pickle(s)",
        )
    return "torch-legacy"


def analyse_legacy_tar_member(ctx: Context, blob: Blob, where: str, name: str) -> None:
    """Analyse the ``storages``, ``tensors`` or ``pickle`` member of a legacy tar checkpoint."""
    from trainwarden.scan._formats._pickles import analyse_stream

    if name == "pickle":
        analyse_stream(ctx, blob, where, max_pickles=1)
        return
    pos = 0
    first = True
    while pos < blob.size:
        ctx.check_time(where)
        analyses, end = analyse_stream(ctx, blob, where, start=pos, max_pickles=1)
        if not analyses or not analyses[0].complete:
            return  # the machine's issue findings say why
        analysis = analyses[0]
        pos = end
        if first:  # the number of records
            first = False
            continue
        if name == "storages":
            if not analysis.globals:  # the final list of storage views
                continue
            kinds = {g.name for g in analysis.globals if g.name in STORAGE_ITEMSIZE}
            if len(kinds) != 1:
                ctx.unknown(
                    "torch.legacy-unknown-storage",
                    "cannot tell the element size of a legacy storage record; the rest of "
                    "the member was not analysed",
                    where,
                    offset=pos,
                )
                return
            raw = bytes(blob.read(pos, 8))
            if len(raw) < 8:
                break
            (numel,) = struct.unpack("<q", raw)
            pos += 8 + max(0, numel) * STORAGE_ITEMSIZE[kinds.pop()]
        else:
            raw = bytes(blob.read(pos, 4))
            if len(raw) < 4:
                break
            (ndim,) = struct.unpack("<i", raw)
            pos += 8 + 16 * max(0, ndim) + 8
    if pos > blob.size:
        ctx.unknown(
            "torch.legacy-truncated",
            "legacy tar record runs past the end of its member",
            where,
            offset=blob.size,
        )
