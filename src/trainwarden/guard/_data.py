"""Data order: a fingerprint of every step's batch, and samplers checked against a replica.

Two views. Each step's input batch is digested in the model's forward pre-hook (telemetry
``data``), so two runs, or a rerun and its original, can be compared batch by batch. And the
order a ``DistributedSampler`` or ``RandomSampler`` hands out is recomputed independently from
the sampler's declared parameters (seed, epoch, shuffle, replicas, rank, drop_last): an order
that is not the declared one (a patched ``__iter__``, a changed seed, a skipped or repeated
epoch, an edited ``torch.randperm``) is a finding when the epoch starts (T5).
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainwarden.patching import PatchSet, Target

__all__ = ["DATA_PURPOSE", "BatchDigest", "OrderEvent", "sampler_patches", "sampler_problems"]

logger = logging.getLogger("trainwarden.guard")

DATA_PURPOSE = "guard-data"
# Index lists above this are not materialised for the replica (said in the finding's place).
_MAX_INDICES = 20_000_000
_SAMPLE = 4096


class BatchDigest:
    """Digest of the tensors a step's forward passes received (all micro-batches, in order)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=8, person=b"tw.batch")
        self.empty = True

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Feed one forward call's inputs."""
        for item in _tensors(args, kwargs):
            self._feed(item)

    def _feed(self, t: Any) -> None:
        self.empty = False
        self._h.update(f"{tuple(t.shape)}:{t.dtype}:".encode())
        x = t.detach()
        n = x.numel()
        if n == 0:
            return
        flat = x.reshape(-1)
        if n > _SAMPLE:
            # A fixed stride through the batch: enough to tell one order of samples from
            # another, at a cost independent of the batch size.
            step = n // _SAMPLE
            flat = flat[:: max(step, 1)][:_SAMPLE]
        if flat.device.type != "cpu":
            flat = flat.cpu()
        if not flat.is_contiguous():
            flat = flat.contiguous()
        import torch

        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        self._h.update(flat.numpy().tobytes())

    def hexdigest(self) -> str | None:
        """The digest, or ``None`` when no tensor was seen."""
        return None if self.empty else self._h.hexdigest()


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
    def walk(value: Any, depth: int) -> Iterator[Any]:
        if depth > 3:
            return
        if hasattr(value, "detach") and hasattr(value, "numel"):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item, depth + 1)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                yield from walk(value[key], depth + 1)

    for value in args:
        yield from walk(value, 0)
    for key in sorted(kwargs):
        yield from walk(kwargs[key], 0)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """What a sampler handed out for one epoch, against the declared order."""

    sampler: str
    epoch: int | None
    count: int
    digest: str
    problem: str | None  # None when the order is the declared one
    subject: str
    source: Any = field(default=None, compare=False, repr=False)  # the sampler (weakly held)


@dataclass
class _Declared:
    kind: str
    seed: int | None
    shuffle: bool
    num_replicas: int
    rank: int
    drop_last: bool
    length: int
    last_epoch: int | None = None
    requested: int | None = None  # the epoch the job last asked for with set_epoch()
    cls: Any = None  # the sampler's class when pinned


_declared: weakref.WeakKeyDictionary[Any, _Declared] = weakref.WeakKeyDictionary()


def _declare(sampler: Any) -> _Declared:
    found = _declared.get(sampler)
    if found is not None:
        return found
    kind = type(sampler).__name__
    length = len(sampler.dataset) if hasattr(sampler, "dataset") else len(sampler.data_source)
    if kind == "DistributedSampler":
        found = _Declared(
            kind,
            int(sampler.seed),
            bool(sampler.shuffle),
            int(sampler.num_replicas),
            int(sampler.rank),
            bool(sampler.drop_last),
            length,
        )
    else:
        found = _Declared(kind, None, True, 1, 0, False, length)
    found.cls = type(sampler)
    _declared[sampler] = found
    return found


def declare(sampler: Any) -> bool:
    """Pin a sampler's parameters now (the guard does it at attach when given the loader)."""
    try:
        _declare(sampler)
    except (AttributeError, TypeError) as exc:
        logger.debug("guard: cannot pin sampler %r: %s", sampler, exc)
        return False
    return True


def _distributed_order(d: _Declared, epoch: int) -> list[int]:
    """DistributedSampler's order, recomputed from the declared parameters."""
    import math

    import torch

    if d.shuffle:
        g = torch.Generator()
        g.manual_seed(int(d.seed or 0) + int(epoch))
        indices: list[int] = torch.randperm(d.length, generator=g).tolist()
    else:
        indices = list(range(d.length))
    if d.drop_last and d.length % d.num_replicas != 0:
        num_samples = math.ceil((d.length - d.num_replicas) / d.num_replicas)
    else:
        num_samples = math.ceil(d.length / d.num_replicas)
    total = num_samples * d.num_replicas
    if not d.drop_last:
        padding = total - len(indices)
        if padding <= len(indices):
            indices += indices[:padding]
        else:
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
    else:
        indices = indices[:total]
    return indices[d.rank : total : d.num_replicas]


def _random_order(sampler: Any, state: Any) -> list[int] | None:
    """RandomSampler's order (without replacement, own seed drawn from the global RNG)."""
    import torch

    if getattr(sampler, "replacement", False) or getattr(sampler, "generator", None) is not None:
        return None
    n = len(sampler.data_source)
    num_samples = int(sampler.num_samples)
    g = torch.Generator()
    g.set_state(state)
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    out: list[int] = []
    for _ in range(num_samples // n):
        out.extend(torch.randperm(n, generator=generator).tolist())
    out.extend(torch.randperm(n, generator=generator).tolist()[: num_samples % n])
    return out


def _order_digest(indices: list[int]) -> str:
    import array

    return hashlib.blake2b(array.array("q", indices).tobytes(), digest_size=8).hexdigest()


def sampler_patches(notify: Callable[[OrderEvent], None]) -> PatchSet:
    """Wrap ``DistributedSampler.__iter__`` and ``RandomSampler.__iter__`` to check each epoch."""
    owner = os.getpid()

    def distributed(original: Callable[..., Any]) -> Callable[..., Any]:
        def __iter__(self: Any) -> Iterator[int]:
            if os.getpid() != owner:
                return iter(original(self))
            declared = _declare(self)
            indices = list(original(self))
            epoch = int(getattr(self, "epoch", 0))
            problem = None
            if declared.length <= _MAX_INDICES:
                problem = _changes(self, declared, epoch)
                if problem is None:
                    expected = _distributed_order(declared, epoch)
                    if expected != indices:
                        problem = _first_difference(indices, expected)
            declared.last_epoch = epoch
            _tell(notify, self, epoch, indices, problem)
            return iter(indices)

        return __iter__

    def set_epoch(original: Callable[..., Any]) -> Callable[..., Any]:
        def set_epoch(self: Any, epoch: int) -> None:
            # What the job asks for, so that an epoch that does not follow shows (an
            # ``epoch`` attribute written after the call, a set_epoch that ignores it).
            original(self, epoch)
            if os.getpid() == owner:
                try:
                    _declare(self).requested = int(epoch)
                except (AttributeError, TypeError, ValueError) as exc:
                    logger.debug("guard: cannot pin sampler %r: %s", self, exc)

        return set_epoch

    def random_sampler(original: Callable[..., Any]) -> Callable[..., Any]:
        def __iter__(self: Any) -> Iterator[int]:
            if os.getpid() != owner:
                return iter(original(self))
            import torch

            state = torch.get_rng_state()
            indices = list(original(self))
            expected = None
            if len(indices) <= _MAX_INDICES:
                try:
                    expected = _random_order(self, state)
                except (RuntimeError, ValueError, TypeError):
                    expected = None
            problem = None
            if expected is not None and expected != indices:
                problem = _first_difference(indices, expected)
            _tell(notify, self, None, indices, problem)
            return iter(indices)

        return __iter__

    return PatchSet(
        DATA_PURPOSE,
        [
            Target("torch.utils.data.distributed", "DistributedSampler.__iter__", distributed),
            Target("torch.utils.data.distributed", "DistributedSampler.set_epoch", set_epoch),
            Target("torch.utils.data.sampler", "RandomSampler.__iter__", random_sampler),
        ],
    )


def sampler_problems(samplers: Iterable[Any]) -> list[tuple[str, str]]:
    """``(subject, problem)`` for each of ``samplers`` whose class or methods were replaced.

    Checked every step (a few samplers, microseconds): a sampler's class swapped for a
    subclass, or a method replaced on the instance, may skip the wrappers that check its
    order at each epoch (a subclass's own ``__iter__``) or freeze its epoch.
    """
    out = []
    for sampler in list(samplers):
        declared = _declared.get(sampler)
        if declared is None:
            continue
        problem = _replaced(sampler, declared)
        if problem is not None:
            out.append((f"sampler:{id(sampler)}:replaced:{problem}", problem))
    return out


def _replaced(sampler: Any, declared: _Declared) -> str | None:
    if declared.cls is not None and type(sampler) is not declared.cls:
        return (
            f"the {declared.kind}'s class was changed to {type(sampler).__qualname__} "
            f"({type(sampler).__module__})"
        )
    return _shadowed(sampler)


def _changes(sampler: Any, declared: _Declared, epoch: int) -> str | None:
    replaced = _replaced(sampler, declared)
    if replaced is not None:
        return replaced
    if declared.requested is not None and epoch != declared.requested:
        return f"set_epoch({declared.requested}) was called but the sampler's epoch is {epoch}"
    for name, want in (
        ("seed", declared.seed),
        ("shuffle", declared.shuffle),
        ("num_replicas", declared.num_replicas),
        ("rank", declared.rank),
        ("drop_last", declared.drop_last),
    ):
        now = getattr(sampler, name, want)
        if now != want:
            return f"the sampler's {name} changed from {want!r} to {now!r}"
    last = declared.last_epoch
    # The same epoch again is what a job that never calls set_epoch() does (its order then
    # repeats, by its own choice); going back or skipping ahead is not.
    if last is not None and (epoch < last or epoch > last + 1):
        return f"epoch {epoch} follows epoch {last} ({'went back' if epoch < last else 'skipped'})"
    return None


def _shadowed(sampler: Any) -> str | None:
    """A method of the sampler's class replaced on the instance.

    ``set_epoch`` made a no-op freezes the epoch, and with it the order: every epoch replays
    the first one's.
    """
    cls = type(sampler)
    for name, value in vars(sampler).items():
        if callable(value) and callable(getattr(cls, name, None)):
            return f"the sampler's {name} was replaced on the instance ({_describe(value)})"
    return None


def _describe(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{name} at {code.co_filename}:{code.co_firstlineno}" if code is not None else name


def _first_difference(got: list[int], want: list[int]) -> str:
    if len(got) != len(want):
        return f"{len(got)} indices where the declared order has {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a != b:
            return f"position {i} holds sample {a} where the declared order has {b}"
    return "order differs"  # pragma: no cover - equal lists are handled by the caller


def _tell(
    notify: Callable[[OrderEvent], None],
    sampler: Any,
    epoch: int | None,
    indices: list[int],
    problem: str | None,
) -> None:
    event = OrderEvent(
        type(sampler).__name__,
        epoch,
        len(indices),
        _order_digest(indices),
        problem,
        f"sampler:{id(sampler)}:{epoch}",
        weakref.ref(sampler),
    )
    try:
        notify(event)
    except Exception:  # an observer failure must not break the job's data loading
        logger.exception("guard: data-order observer failed")
