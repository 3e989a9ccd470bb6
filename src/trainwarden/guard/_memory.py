"""Reading the sampled values of many CPU tensors with one numpy gather over their memory.

The update check reads, at every step, the same ~1000 secret coordinates from every kind of
tensor the optimizer touches (weights, gradients, each state tensor), spread over all the
model's parameter tensors. One numpy indexing call per tensor and kind costs a microsecond or
two of interpreter work each, hundreds of them a step; the reads themselves cost far less.
This module turns them into one call: it validates each tensor's memory (a contiguous CPU
tensor of the partition's dtype, whose bytes lie at ``data_ptr() .. data_ptr() + nbytes``),
lays a read-only numpy array over the address range that spans them all, and gathers every
coordinate of every kind at its address in that range.

Only addresses inside a validated tensor are ever read: the span between tensors is never
touched (numpy reads exactly the indexed elements). The tensors are held by the caller for
the duration of the read, so none can be freed under it; a tensor whose address, size,
contiguity or dtype changed since it was validated is validated again (``p.data = x`` or
state reloaded), and one that cannot be read this way (strided, a subclass without memory of
its own, another dtype or device) makes :meth:`Memory.locate` return ``None``: the caller
reads that kind the slow way, tensor by tensor, through numpy views or the captured kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Located", "Memory"]


class _Span:
    """A read-only numpy array laid over ``count`` elements of raw memory at ``address``."""

    __slots__ = ("__array_interface__",)

    def __init__(self, address: int, count: int, typestr: str) -> None:
        self.__array_interface__ = {
            "shape": (count,),
            "typestr": typestr,
            "data": (address, True),
            "version": 3,
        }


@dataclass
class Located:
    """One kind of tensor, validated: where each table entry's values lie in memory.

    ``elements[e]`` is entry ``e``'s first element as an absolute element index (its address
    divided by the item size; 0 outside the partition); entries without a tensor
    (``missing``) read as zeros. ``tensors`` keeps the tensors alive while located.
    """

    elements: Any  # numpy int64 over table entries
    low: int  # lowest element index of any member
    high: int  # one past the highest
    missing: Any  # numpy bool over table entries, or None when every member has its tensor
    tensors: Sequence[Any]


class Memory:
    """Locates and reads the tensors of one partition (one dtype, CPU).

    Args:
        entries: The partition's table entries.
        table_size: The number of table entries.
        numel: Each table entry's element count.
        dtype: The partition's torch dtype.
        storage: The numpy dtype values are read as (bf16 as int16 bit patterns).
    """

    def __init__(
        self, entries: list[int], table_size: int, numel: list[int], dtype: Any, storage: Any
    ) -> None:
        import numpy as np

        self.entries = entries
        self.table_size = table_size
        self.numel = [numel[e] for e in entries]
        self.dtype = dtype
        self.storage = np.dtype(storage)
        self.itemsize = self.storage.itemsize
        self._typestr = self.storage.str
        self._cache: dict[str, tuple[list[int], Located]] = {}

    def forget(self) -> None:
        """Drop every validation (after a reload)."""
        self._cache.clear()

    def locate(self, kind: str, tensors: Sequence[Any], *, fresh: bool = False) -> Located | None:
        """Validate ``tensors[e]`` for the partition's entries; ``None``: read them the slow way.

        ``kind`` names the cache slot: the tensors the optimizer keeps (weights, state) are
        validated again whenever an address changes (``p.data = x``, a reload), which is what
        a tensor whose memory was replaced or resized shows. ``fresh`` marks tensors that are
        new objects every step (the gradients): each is validated every time.
        """
        members = [tensors[e] for e in self.entries]
        try:
            if fresh:
                return self._validate(members, tensors, fresh=True)
            addresses = [0 if t is None else t.data_ptr() for t in members]
        except (RuntimeError, AttributeError, TypeError):  # a subclass without memory
            return None
        cached = self._cache.get(kind)
        if cached is not None and cached[0] == addresses:
            located = cached[1]
            located.tensors = tensors
            return located
        found = self._validate(members, tensors)
        if found is None:
            self._cache.pop(kind, None)
            return None
        self._cache[kind] = (addresses, found)
        return found

    def _validate(
        self, members: list[Any], tensors: Sequence[Any], *, fresh: bool = False
    ) -> Located | None:
        """Where each member's elements lie, if every member can be read directly.

        Reading ``numel`` elements from ``data_ptr()`` is within the tensor's memory exactly
        when it is contiguous with that many elements. For gradients (``fresh``) torch itself
        enforces the device of ``param.grad`` (also through ``.data``), so that check is
        skipped on the hot path; a view with the negative bit (reads would miss the sign) is
        not something autograd produces, and would show as a mismatch, never as a read
        outside memory. The dtype is checked: ``grad.data = x.half()`` is allowed and halves
        the memory.
        """
        import numpy as np

        dtype, isz = self.dtype, self.itemsize
        starts: list[int] = []
        missing: list[int] = []
        low = high = -1
        for position, t in enumerate(members):
            if t is None:
                missing.append(self.entries[position])
                starts.append(-1)
                continue
            numel = self.numel[position]
            if fresh:
                if t.dtype != dtype or t.numel() != numel or not t.is_contiguous():
                    return None
            elif (
                not t.is_cpu
                or t.dtype != dtype
                or t.numel() != numel
                or not t.is_contiguous()
                or t.is_neg()
            ):
                return None
            address = t.data_ptr()
            if address <= 0 or address % isz:
                return None
            first = address // isz
            starts.append(first)
            low = first if low < 0 else min(low, first)
            high = max(high, first + numel)
        if low < 0:
            return None  # no member has a tensor of this kind: nothing to read fast
        elements = np.zeros(self.table_size, dtype=np.int64)
        # Missing entries are read at the span's first element by `read` (then zeroed).
        elements[self.entries] = [low if first < 0 else first for first in starts]
        if not missing:
            return Located(elements, low, high, None, tensors)
        absent = np.zeros(self.table_size, dtype=bool)
        absent[missing] = True
        return Located(elements, low, high, absent, tensors)

    def read(self, kinds: Sequence[Located], owner: Any, local: Any) -> Any:
        """The values of each kind at coordinates ``(owner[i], local[i])``: shape (kinds, n)."""
        import numpy as np

        low = min(k.low for k in kinds)
        high = max(k.high for k in kinds)
        span = np.asarray(_Span(low * self.itemsize, high - low, self._typestr))
        index = np.empty((len(kinds), owner.size), dtype=np.int64)
        shifted = local - low
        absent: list[tuple[int, Any]] = []
        for row, k in enumerate(kinds):
            np.add(k.elements[owner], shifted, out=index[row])
            if k.missing is not None:
                # An entry without a tensor of this kind reads the span's first element (a
                # validated one), never its own offset past it: that could land between
                # tensors, in memory no tensor owns (or past the span), then is zeroed.
                gone = k.missing[owner]
                index[row, gone] = 0
                absent.append((row, gone))
        out = span.take(index)
        for row, gone in absent:
            out[row, gone] = 0
        return out
