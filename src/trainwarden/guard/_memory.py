"""Reading the sampled values of many CPU tensors with one numpy gather over their memory.

The update check reads, at every step, the same ~1000 secret coordinates from every kind of
tensor the optimizer touches (weights, gradients, each state tensor), spread over all the
model's parameter tensors. One numpy indexing call per tensor and kind costs a microsecond or
two of interpreter work each, hundreds of them a step; the reads themselves cost far less.
This module turns them into one call: it validates the memory of each tensor a read touches
(a contiguous CPU tensor of the partition's dtype, whose bytes lie at ``data_ptr() ..
data_ptr() + nbytes``), lays a read-only numpy array over the address range that spans the
elements read, and gathers every coordinate of every kind at its address in that range.

A sample of ~1000 coordinates touches the large tensors and a few of the small ones (about
half of a GPT's tensors); only those are validated, since after a training step each
tensor's metadata is a cache miss or several. Only addresses inside a tensor validated for
this read are ever read: the span between tensors is never touched (numpy reads exactly the
indexed elements). The tensors are held by the caller for
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
    divided by the item size), for the entries located (others hold stale values and must not
    be read); entries without a tensor (``missing``) read as zeros. ``tensors`` keeps the
    tensors alive while located.
    """

    elements: Any  # numpy int64 over table entries
    missing: Any  # numpy bool over table entries, or None when every member has its tensor
    tensors: Sequence[Any]


_NONE = (0, 0)  # what an entry without a tensor of the kind is seen as


class _Known:
    """One kind's validations: per table entry, the address and size it was validated at.

    ``seen[e]`` is absent where entry ``e`` was never validated (or was refused), ``(0, 0)``
    where it had no tensor of the kind; ``elements`` and ``missing`` hold what ``Located`` reports
    (stale for entries validated earlier at another address: only located entries are read).
    """

    def __init__(self, table_size: int) -> None:
        import numpy as np

        self.seen: dict[int, tuple[int, int]] = {}
        self.elements = np.zeros(table_size, dtype=np.int64)
        self.missing = np.zeros(table_size, dtype=bool)
        self.any_missing = False


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
        self.numel = list(numel)
        self.dtype = dtype
        self.storage = np.dtype(storage)
        self.itemsize = self.storage.itemsize
        self._typestr = self.storage.str
        self._known: dict[str, _Known] = {}

    def forget(self) -> None:
        """Drop every validation (after a reload)."""
        self._known.clear()

    def locate(
        self,
        kind: str,
        tensors: Sequence[Any],
        entries: Sequence[int] | None = None,
        *,
        fresh: bool = False,
    ) -> Located | None:
        """Validate ``tensors[e]`` for ``entries``; ``None``: read them the slow way.

        ``entries`` are the table entries a read will touch (the partition's by default): a
        step's sample touches the large tensors and a few of the small ones, so only those are
        validated, and ``Located`` is valid for them alone. ``kind`` names the cache slot: the
        tensors the optimizer keeps (weights, state) are validated again whenever an address
        changes (``p.data = x``, a reload), which is what a tensor whose memory was replaced
        or resized shows. ``fresh`` marks tensors that are new objects every step (the
        gradients): each is validated every time.
        """
        if entries is None:
            entries = self.entries
        members = [tensors[e] for e in entries]
        if fresh:
            try:
                return self._fresh(entries, members, tensors)
            except (RuntimeError, AttributeError, TypeError):  # a subclass without memory
                return None
        try:
            # The element count too: a tensor that ended at the same address with fewer
            # elements (``p.data = x`` twice while no read touched it) must not pass as known.
            seen = [_NONE if t is None else (t.data_ptr(), t.numel()) for t in members]
        except (RuntimeError, AttributeError, TypeError):
            return None
        known = self._known.get(kind)
        if known is None:
            known = self._known[kind] = _Known(self.table_size)
        if list(map(known.seen.get, entries)) != seen:
            for e, t, now in zip(entries, members, seen, strict=True):
                if known.seen.get(e) == now:
                    continue
                if not self._record(known, e, t, now):
                    known.seen.pop(e, None)
                    return None
        if all(now is _NONE for now in seen):
            return None  # no member has a tensor of this kind: nothing to read fast
        missing = known.missing if known.any_missing else None
        return Located(known.elements, missing, tensors)

    def _record(self, known: _Known, e: int, t: Any, now: tuple[int, int]) -> bool:
        """Validate entry ``e``'s tensor ``t`` into ``known``; ``False``: refused.

        ``now`` is its address and element count.
        """
        if t is None:
            known.seen[e] = _NONE
            known.missing[e] = True
            known.any_missing = True
            return True
        address = now[0]
        if not self._readable(e, t, address):
            return False
        known.seen[e] = now
        known.elements[e] = address // self.itemsize
        known.missing[e] = False
        return True

    def _readable(self, e: int, t: Any, address: int, *, fresh: bool = False) -> bool:
        """Whether entry ``e``'s ``numel`` elements can be read from ``address`` (``t``'s).

        That is within the tensor's memory exactly when it is a contiguous tensor of the
        partition's dtype with that many elements; a view with the negative bit would read
        without its sign. For gradients (``fresh``) torch itself enforces the device of
        ``param.grad`` (also through ``.data``), so that check is skipped on the hot path, and
        so is the negative bit: autograd never produces it, and it would show as a mismatch,
        never as a read outside memory. The dtype is checked: ``grad.data = x.half()`` is
        allowed and halves the memory.
        """
        if not fresh and (not t.is_cpu or t.is_neg()):
            return False
        return bool(
            t.dtype == self.dtype
            and t.numel() == self.numel[e]
            and t.is_contiguous()
            and address > 0
            and not address % self.itemsize
        )

    def _fresh(
        self, entries: Sequence[int], members: list[Any], tensors: Sequence[Any]
    ) -> Located | None:
        """Where each member's elements lie, validated now (tensors new every step)."""
        import numpy as np

        starts: list[int] = []
        missing: list[int] = []
        for e, t in zip(entries, members, strict=True):
            if t is None:
                missing.append(e)
                starts.append(-1)
                continue
            address = t.data_ptr()
            if not self._readable(e, t, address, fresh=True):
                return None
            starts.append(address // self.itemsize)
        if len(missing) == len(starts):
            return None  # no member has a tensor of this kind: nothing to read fast
        elements = np.zeros(self.table_size, dtype=np.int64)
        elements[list(entries)] = starts  # a missing entry's -1 is never read (see `read`)
        if not missing:
            return Located(elements, None, tensors)
        absent = np.zeros(self.table_size, dtype=bool)
        absent[missing] = True
        return Located(elements, absent, tensors)

    def read(self, kinds: Sequence[Located], owner: Any, local: Any) -> Any:
        """The values of each kind at coordinates ``(owner[i], local[i])``: shape (kinds, n).

        ``owner`` holds only entries each kind was located for. The span numpy is laid over
        runs from the lowest element read to the highest; a coordinate of an entry without a
        tensor of its kind reads another coordinate of this read instead (a validated one,
        never its own offset past an address: that could land between tensors, in memory no
        tensor owns), then is zeroed.
        """
        import numpy as np

        index = np.empty((len(kinds), owner.size), dtype=np.int64)
        absent: list[tuple[int, Any]] = []
        for row, k in enumerate(kinds):
            np.add(k.elements[owner], local, out=index[row])
            if k.missing is not None:
                gone = k.missing[owner]
                if gone.any():
                    absent.append((row, gone))
        if absent:
            valid = np.ones(index.shape, dtype=bool)
            for row, gone in absent:
                valid[row] = ~gone
            read = np.flatnonzero(valid)
            if not read.size:
                return np.zeros(index.shape, dtype=self.storage)
            anchor = index.flat[read[0]]
            for row, gone in absent:
                index[row, gone] = anchor
        if not index.size:
            return np.zeros(index.shape, dtype=self.storage)
        low = int(index.min())
        span = np.asarray(_Span(low * self.itemsize, int(index.max()) + 1 - low, self._typestr))
        out = span.take(index - low)
        for row, gone in absent:
            out[row, gone] = 0
        return out
