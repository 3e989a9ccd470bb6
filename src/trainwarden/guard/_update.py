"""Update verification and out-of-band edits, on the secret sample of coordinates.

Every step N has a fresh secret sample S_N. The guard reads each kind of tensor it needs with
one gather per tensor that received coordinates (on CPU through numpy views of the tensors'
memory, no torch dispatch per read), at three moments:

- after step N-1 (post-hook): the weights and optimizer state at S_N, just written by the
  optimizer: the inputs of step N's reference and the baseline of the continuity check;
- before step N (pre-hook, gradients final): the gradients and the weights at S_N. Weights
  that differ from the baseline were edited between the steps (``guard.weights``). The
  reference computes step N from these weights, the gradients and the state read after step
  N-1, so optimizer state edited between the steps makes step N's result differ from it;
- after step N: the weights and state at S_N, compared with the reference (``guard.update``),
  and those at S_N+1.

For Adam that is 8 reads per sampled coordinate and step (weights three times, each state
tensor twice, the gradient once), random reads into memory the step has just streamed
through. The comparison is bit for bit first; only coordinates that differ are judged against
the analytic tolerance, in float64.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainwarden.findings import Severity
from trainwarden.guard._config import GuardConfig
from trainwarden.guard._findings import GuardFinding
from trainwarden.guard._kernels import Kernels, kernels_for
from trainwarden.guard._memory import Located, Memory
from trainwarden.guard._reference import Bucket, Outcome, Reference, reference_for
from trainwarden.guard._sampling import Sample, Sampler

__all__ = ["ParamTable", "StepResult", "UpdateCheck", "full_digest", "local"]

logger = logging.getLogger("trainwarden.guard")

# Coordinates this close to the end of their tensor may be processed by a fused kernel's
# scalar tail code (see _reference._fused_variants).
_TAIL = 64


def local(t: Any) -> Any:
    """The local tensor of a (possibly sharded ``DTensor``) tensor, detached."""
    inner = getattr(t, "_local_tensor", None)
    return (inner if inner is not None else t).detach()


def _raw(t: Any, sharded: bool) -> Any:
    """The local tensor, as the captured kernels take it (they sit below autograd)."""
    return t._local_tensor if sharded else t


def stepping_optimizer(optimizer: Any) -> tuple[Any, set[int] | None, str | None]:
    """The optimizer whose step does this rank's arithmetic, and the parameters it updates.

    Returns ``(stepper, local, problem)``: ``local`` is ``None`` when the stepper updates every
    parameter. ``ZeroRedundancyOptimizer`` shards the optimizer: each rank's local optimizer
    (``.optim``, a plain torch optimizer holding the state) updates the rank's partition of
    the parameters inside the wrapper's ``step()``, which then broadcasts each partition from
    its owner. Each rank verifies its own partition's update; the others are verified by
    their owners, and the exchange halts every rank when one finds tampering. ``problem``
    says why a sharded optimizer cannot be verified (``overlap_with_ddp`` steps inside the
    backward's communication hook, where the guard's step hooks never run).
    """
    import sys

    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    zero = getattr(module, "ZeroRedundancyOptimizer", None)
    if zero is None or not isinstance(optimizer, zero):
        return optimizer, None, None
    if getattr(optimizer, "_overlap_with_ddp", False):
        why = "ZeroRedundancyOptimizer(overlap_with_ddp=True) steps inside DDP's communication hook"
        return optimizer, None, f"{why}, outside optimizer.step()"
    inner = getattr(optimizer, "optim", None)
    groups = getattr(inner, "param_groups", None)
    if inner is None or groups is None or len(groups) != len(optimizer.param_groups):
        return optimizer, None, "ZeroRedundancyOptimizer without its local optimizer"
    return inner, {id(p) for g in groups for p in g["params"]}, None


@dataclass
class _Entry:
    group: int
    param: Any
    name: str
    numel: int
    sharded: bool = False


@dataclass
class ParamTable:
    """The optimizer's parameters, flattened in ``param_groups`` order, with names."""

    entries: list[_Entry]

    @classmethod
    def build(cls, optimizer: Any, names: dict[int, str]) -> ParamTable:
        """Index ``optimizer``'s parameters; ``names`` maps ``id(param)`` to a display name."""
        entries = []
        for g, group in enumerate(optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                name = names.get(id(p)) or f"group{g}.param{i}{tuple(p.shape)}"
                sharded = getattr(p, "_local_tensor", None) is not None
                entries.append(_Entry(g, p, name, int(local(p).numel()), sharded))
        return cls(entries)

    @property
    def sizes(self) -> list[int]:
        """Local element counts, in order."""
        return [e.numel for e in self.entries]

    def identity(self, optimizer: Any) -> list[tuple[int, int]]:
        """(group, position) of parameters that are no longer the objects indexed here."""
        out: list[tuple[int, int]] = []
        position = 0
        entries = self.entries
        count = len(entries)
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if position >= count or entries[position].param is not p:
                    out.append((g, position))
                position += 1
        if position != count:
            out.append((-1, position))
        return out


# ------------------------------------------------------------------------------ storage


# numpy has no bfloat16: bf16 values are read and compared as their 16-bit patterns.
_STORAGE = {
    "torch.float32": ("float32", "uint32"),
    "torch.float64": ("float64", "uint64"),
    "torch.float16": ("float16", "uint16"),
    "torch.bfloat16": ("int16", "uint16"),
}


def _numpy_view(t: Any) -> Any:
    """A flat numpy view of a contiguous CPU tensor's memory, or ``None`` (read through torch).

    Reading through numpy costs a fraction of a microsecond per tensor, against a few for a
    dispatched torch call; it also goes through no torch dispatch, so a kernel override cannot
    change what the guard reads.
    """
    import torch

    if t.device.type != "cpu" or str(t.dtype) not in _STORAGE or not t.is_contiguous():
        return None
    x = t.detach()
    if x.dtype == torch.bfloat16:
        x = x.view(torch.int16)
    try:
        out = x.numpy()
    except (RuntimeError, TypeError):  # a tensor subclass without memory of its own
        return None
    return out.reshape(-1)


class _Views:
    """Numpy views of long-lived tensors (weights, optimizer state), one per table entry.

    A view is reused while its tensor's memory stays where it was (``p.data = x`` moves it;
    the view is then rebuilt). The view holds the memory it reads, so a tensor freed by the
    job can never be read through it.
    """

    def __init__(self) -> None:
        self._pointers: dict[int, int] = {}
        self._views: dict[int, Any] = {}

    def resolve(self, entries: list[int], tensors: Sequence[Any]) -> tuple[list[Any], bool]:
        """Per entry its numpy view (else its tensor, or ``None``); and whether all are views."""
        pointers, views = self._pointers, self._views
        out: list[Any] = []
        plain = True
        for e in entries:
            t = tensors[e]
            if t is None:
                out.append(None)
                plain = False
                continue
            pointer = t.data_ptr()
            if pointers.get(e) != pointer:
                views[e] = _numpy_view(t)
                pointers[e] = pointer
            view = views[e]
            if view is None:  # strided or a subclass: read through the captured kernel
                out.append(t)
                plain = False
            else:
                out.append(view)
        return out, plain

    def clear(self) -> None:
        self._pointers.clear()
        self._views.clear()


@dataclass
class _Selection:
    """One sample's coordinates in one partition, grouped by tensor (in table order)."""

    step: int
    n: int
    owner: Any  # numpy int64: table entry of each coordinate
    local: Any  # numpy int64: index in the entry's flattened tensor
    runs: list[tuple[int, int, int]]  # (entry, start, end) in the coordinate arrays
    entries: list[int] = field(default_factory=list)  # per run: its entry
    # Per run: its local indices (numpy on CPU, a device tensor otherwise); laid out on first
    # use (the one-gather read of CPU memory needs none).
    index: list[Any] | None = None


@dataclass
class _Partition:
    """The parameters of one dtype and device, whose sampled values are read together."""

    key: tuple[str, str]
    entries: list[int]
    member: Any  # numpy bool over table entries
    dtype: Any
    device: Any
    storage: Any  # numpy dtype of the values as read
    bits: Any  # numpy unsigned dtype of the same width
    params: _Views = field(default_factory=_Views)
    state: dict[str, _Views] = field(default_factory=dict)
    memory: Memory | None = None  # CPU partitions: every kind read in one gather

    @property
    def cpu(self) -> bool:
        return bool(self.device.type == "cpu")


@dataclass
class _StateRead:
    """The optimizer state at a selection: values per key, and per run its step count."""

    values: dict[str, Any]
    missing: dict[str, set[int]]  # per key: runs whose entry had no such tensor
    present: list[bool]  # per run: the parameter has state
    steps: list[float | None]  # per run: the optimizer's step count, if it keeps one


@dataclass
class _After:
    """What the post-hook of step N read for one partition."""

    values: Any = None  # weights at S_N, as the step wrote them
    state: dict[str, Any] = field(default_factory=dict)  # state at S_N (when verifying)
    baseline: Any = None  # weights at S_N+1 (step N+1's inputs, the continuity baseline)
    state_next: _StateRead | None = None  # state at S_N+1 (when N+1 is verified)


@dataclass
class _Inputs:
    """What the post-hook of step N-1 read at S_N for one partition (step N's inputs)."""

    sel: _Selection
    params: Any
    state: _StateRead | None  # None: not read (step N is not verified)


@dataclass
class _Expected:
    """Step N's reference at S_N for one partition, computed before the step."""

    sel: _Selection
    before: Any  # weights before the step (storage dtype)
    params: list[Any]  # acceptable weights after the step, one array per code path
    state: dict[str, list[Any]]
    state_before: dict[str, Any]
    grads: Any
    verify: Any  # bool: coordinates the reference computed
    exact: Any  # bool: must match bit for bit
    approx: Any  # single-tensor arithmetic for fused kernels (storage dtype) or None
    approx_mask: Any
    outcomes: list[tuple[int, int, Outcome]]  # (start, end, outcome) for magnitudes
    _magnitude: Any = None

    def magnitude(self) -> Any:
        import numpy as np

        if self._magnitude is None:
            out = np.zeros(self.sel.n)
            for a, b, outcome in self.outcomes:
                out[a:b] = outcome.magnitude()
            self._magnitude = out
        return self._magnitude


@dataclass
class StepResult:
    """What the update check learnt about one step.

    ``param_digest`` and ``grad_digest`` are known when the step ends (for the exchange);
    the verification (``verified``, ``residual``, update findings) comes with
    :meth:`UpdateCheck.collect` (one step later with ``verify_async``).
    """

    step: int = 0
    verified: int = 0
    residual: float | None = None
    param_digest: int = 0
    grad_digest: int = 0
    grad_sq_sum: float = 0.0
    grad_finite: bool = True
    sampled: int = 0
    findings: list[GuardFinding] = field(default_factory=list)


class _Worker:
    """Runs the recomputation and judgement of each step off the training thread, in order.

    The training thread only gathers the sampled values (which must happen at the right
    moments); recomputing the update, comparing and judging run here, overlapped with the
    next step's forward and backward. Results are collected by the training thread one step
    later, so a violation is raised within one step of the step it happened in.
    """

    def __init__(self) -> None:
        import queue

        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, name="trainwarden-guard-verify", daemon=True
        )
        self._done: dict[tuple[str, int], Any] = {}
        self._cond = threading.Condition()
        self.cpu = 0.0
        self._thread.start()

    def submit(self, key: tuple[str, int], job: Callable[[], Any], *, keep: bool = True) -> None:
        """Queue ``job``; its value is kept for :meth:`result` unless ``keep`` is false."""
        self._jobs.put((key, job, keep))

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            key, job, keep = item
            start = time.thread_time()
            try:
                value: Any = job()
            except Exception as exc:  # reported by the training thread, never swallowed
                logger.exception("guard: verification job failed")
                value = exc
            self.cpu += time.thread_time() - start
            if not keep:
                continue
            with self._cond:
                self._done[key] = value
                self._cond.notify_all()

    def result(self, key: tuple[str, int], *, wait: bool) -> Any:
        """The job's value (an exception object if it failed); ``None`` if not done."""
        with self._cond:
            if wait:
                while key not in self._done:
                    if not self._cond.wait(timeout=600):
                        raise TimeoutError(f"verification job {key} did not finish")
            return self._done.pop(key, None)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


class UpdateCheck:
    """Verifies sampled updates and the continuity of weights and state between steps.

    Args:
        optimizer: The optimizer (SGD, Adam, AdamW verified; others: continuity only).
        table: Its parameters.
        sampler: The secret sampler.
        config: Tolerances.
        rank: For findings.
        verify_updates: Run the update recomputation (the "update" check).
        check_weights: Run the continuity check (the "weights" check).
        asynchronous: Recompute and judge in a thread of the guard's (results one step
            later) instead of on the training thread.
    """

    def __init__(
        self,
        optimizer: Any,
        table: ParamTable,
        sampler: Sampler,
        config: GuardConfig,
        *,
        rank: int,
        verify_updates: bool,
        check_weights: bool,
        asynchronous: bool = False,
    ) -> None:
        self.optimizer = optimizer
        self.table = table
        self.sampler = sampler
        self.config = config
        self.rank = rank
        self.reference: Reference | None = None
        self.not_verified: str | None = None
        # The optimizer that holds the state and does the arithmetic (ZeRO's local one), and
        # the parameters this rank updates (None: all of them).
        self.stepper, self.local, sharding = stepping_optimizer(optimizer)
        if not verify_updates:
            self.not_verified = "update check disabled"
        elif sharding is not None:
            self.not_verified = sharding
        else:
            self.reference, self.not_verified = reference_for(self.stepper)
        self.check_weights = check_weights
        self.unsupported_groups: dict[int, str] = {}
        # Groups found unverifiable while the job runs (sparse gradients, a reference that
        # failed): the guard reports each as not verified at the next step.
        self.newly_unsupported: list[tuple[int, str]] = []
        if self.reference is not None:
            for g, group in enumerate(optimizer.param_groups):
                reason = self.reference.unsupported(group)
                if reason is not None:
                    self.unsupported_groups[g] = reason
        self.kernel_problems: list[str] = []
        self._kernels: dict[str, Kernels] = {}
        self._partitions: list[_Partition] = []
        self._samples: dict[int, Sample] = {}
        self._selections: dict[int, list[_Selection]] = {}
        self._inputs: dict[int, list[_Inputs | None]] = {}
        self._expected: dict[tuple[int, int], _Expected | Exception] = {}
        self._verifying: set[int] = set()
        self._grads: dict[int, tuple[int, float, bool]] = {}
        self._pending: dict[int, StepResult] = {}
        self._worker: _Worker | None = _Worker() if asynchronous else None
        self._sync: dict[tuple[str, int], Any] = {}
        self._state_cache: tuple[int, list[Any]] | None = None
        self._kinds_cache: tuple[list[Any], dict[str, list[Any]]] | None = None
        self._step_views = _StepViews()
        self._judges: dict[int, list[tuple[str, int]]] = {}
        self._sizes = self.table.sizes
        self._laid: dict[int, tuple[Sample, list[_Selection]]] = {}
        self.cost = 0.0
        self.verified_steps = 0
        self.checked = 0

    # ------------------------------------------------------------------------------ kernels

    def kernels(self, device_type: str) -> Kernels:
        """Captured kernels for ``device_type`` (problems are remembered for attach)."""
        found = self._kernels.get(device_type)
        if found is None:
            found = self._kernels[device_type] = kernels_for(device_type)
            self.kernel_problems.extend(found.problems)
        return found

    def prepare(self) -> None:
        """Capture the kernels, and split the parameters by dtype and device (at attach)."""
        import numpy as np

        keys: dict[tuple[str, str], list[int]] = {}
        tensors = {}
        for i, entry in enumerate(self.table.entries):
            tensor = _raw(entry.param, entry.sharded)
            self.kernels(tensor.device.type)
            keys.setdefault((str(tensor.dtype), str(tensor.device)), []).append(i)
            tensors[i] = tensor
        self._partitions = []
        for key, members in sorted(keys.items()):
            first = tensors[members[0]]
            member = np.zeros(len(self.table.entries), dtype=bool)
            member[members] = True
            storage, bits = _STORAGE.get(key[0], ("float64", "uint64"))
            part = _Partition(
                key, members, member, first.dtype, first.device, np.dtype(storage), np.dtype(bits)
            )
            if part.cpu and key[0] in _STORAGE:
                part.memory = Memory(
                    members, len(self.table.entries), self._sizes, first.dtype, storage
                )
            self._partitions.append(part)

    def close(self) -> None:
        """Stop the verification thread."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def refresh(self) -> None:
        """Look the tensors up again (``load_state_dict`` brings new state tensors).

        What the last step left stays the baseline: the next step compares with it.
        """
        self._state_cache = None
        self._kinds_cache = None
        self._step_views = _StepViews()
        for part in self._partitions:
            part.params.clear()
            part.state.clear()
            if part.memory is not None:
                part.memory.forget()

    def rebaseline(self) -> None:
        """Forget what was read and expected (a legitimate reload replaced weights or state)."""
        self.refresh()
        self._inputs.clear()

        def forget() -> None:
            self._expected.clear()

        self._run(("rebaseline", -1), forget)
        self._result(("rebaseline", -1), wait=True)

    # ------------------------------------------------------------------- jobs and results

    def _run(self, key: tuple[str, int], job: Callable[[], Any]) -> None:
        if self._worker is not None:
            # A reference job leaves its value in _expected (failures included): nobody
            # collects it by key, so it is not kept (it would pile up, one per step).
            self._worker.submit(key, job, keep=key[0] != "expect")
            return
        try:
            self._sync[key] = job()  # its cost is its caller's (before_step / after_step)
        except Exception as exc:  # reported by collect(), never passed silently
            logger.exception("guard: verification job failed")
            self._sync[key] = exc

    def _result(self, key: tuple[str, int], *, wait: bool) -> Any:
        if self._worker is not None:
            value = self._worker.result(key, wait=wait)
        else:
            value = self._sync.pop(key, None)
        if isinstance(value, Exception):
            raise RuntimeError(f"the update check failed: {value}") from value
        return value

    @property
    def worker_cost(self) -> float:
        """CPU seconds spent by the verification thread."""
        return self._worker.cpu if self._worker is not None else 0.0

    # --------------------------------------------------------------------------- selection

    def _select(self, sample: Sample) -> list[_Selection]:
        """Split ``sample`` by partition and lay out its runs (one per tensor)."""
        import numpy as np

        out = []
        single = len(self._partitions) == 1
        for part in self._partitions:
            if single:
                owner, local_, starts, ends = (
                    sample.owners, sample.local, sample.starts, sample.ends,
                )  # fmt: skip
            else:
                keep = part.member[sample.owners]
                owner, local_ = sample.owners[keep], sample.local[keep]
                change = np.flatnonzero(np.diff(owner, prepend=-1)) if owner.size else owner
                starts = change
                ends = np.append(change[1:], owner.size).astype(np.int64)
            if starts is None or not owner.size:
                out.append(_Selection(sample.step, 0, owner, local_, [], [], []))
                continue
            bounds = starts.tolist()
            entries = owner[starts].tolist()
            runs = list(zip(entries, bounds, ends.tolist(), strict=True))
            out.append(_Selection(sample.step, int(owner.size), owner, local_, runs, entries))
        return out

    def _index(self, part: _Partition, sel: _Selection) -> list[Any]:
        """Per run of ``sel``, its local indices (laid out once)."""
        if sel.index is None:
            if part.cpu:
                sel.index = [sel.local[a:b] for _, a, b in sel.runs]
            else:
                import numpy as np
                import torch

                flat = torch.from_numpy(np.ascontiguousarray(sel.local)).to(part.device)
                sel.index = list(torch.split(flat, [b - a for _, a, b in sel.runs]))
        return sel.index

    def _sample(self, step: int) -> tuple[Sample, list[_Selection]]:
        """Step ``step``'s sample and its selections (laid out for its whole block at once)."""
        laid = self._laid.get(step)
        if laid is None:
            self._laid = {
                sample.step: (sample, self._select(sample))
                for sample in self.sampler.block(step, self._sizes)
            }
            laid = self._laid[step]
        return laid

    # ------------------------------------------------------------------------------ gather

    def _gather(
        self,
        part: _Partition,
        sel: _Selection,
        tensors: Sequence[Any],
        views: _Views | None,
        missing: set[int] | None = None,
    ) -> Any:
        """The values of one kind of tensor at ``sel``'s coordinates.

        ``tensors[e]`` is table entry ``e``'s tensor of that kind; an entry without one
        (``None``) reads as zeros and its run position is added to ``missing`` (or, without a
        ``missing`` set, the whole gather is ``None``). CPU values are numpy arrays of the
        storage dtype; other devices' are device tensors.
        """
        import numpy as np

        if not sel.runs:
            return self._empty(part)
        if part.cpu:
            if views is not None:
                resolved, plain = views.resolve(sel.entries, tensors)
            else:  # gradients: new tensors every step, viewed for this read only
                resolved = [tensors[e] for e in sel.entries]
                plain = False
                fast = _read_each(resolved, self._index(part, sel), part.dtype)
                if fast is not None:
                    return fast
            if plain:
                # The hot path: one numpy gather per tensor, no torch dispatch.
                pieces = [v[ix] for v, ix in zip(resolved, self._index(part, sel), strict=True)]
            else:
                pieces = []
                for position, v in enumerate(resolved):
                    ix = self._index(part, sel)[position]
                    if v is None:
                        if missing is None:
                            return None
                        missing.add(position)
                        pieces.append(np.zeros(ix.size, dtype=part.storage))
                        continue
                    if not isinstance(v, np.ndarray):
                        if v.dtype != part.dtype:
                            v = v.to(part.dtype)
                        view = _numpy_view(v) if views is None else None
                        if view is None:
                            pieces.append(self._take_numpy(v, ix))
                            continue
                        v = view
                    pieces.append(v[ix])
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        kernels = self.kernels(part.device.type)
        take = kernels.bound("aten::take")
        out: list[Any] = []
        for position, e in enumerate(sel.entries):
            t = tensors[e]
            index = self._index(part, sel)[position]
            if t is None:
                if missing is None:
                    return None
                missing.add(position)
                import torch

                out.append(torch.zeros(index.numel(), dtype=part.dtype, device=part.device))
                continue
            out.append(take(t, index))
        return out[0] if len(out) == 1 else kernels.bound("aten::cat")(out)

    def _empty(self, part: _Partition) -> Any:
        import numpy as np
        import torch

        if part.cpu:
            return np.empty(0, dtype=part.storage)
        return torch.empty(0, dtype=part.dtype, device=part.device)

    def _take_numpy(self, t: Any, index: Any) -> Any:
        """A tensor numpy cannot view (strided, a subclass): the captured ``take`` kernel."""
        import torch

        got = self.kernels("cpu")("aten::take", t, torch.from_numpy(index))
        return _storage(got)

    def _param_tensors(self) -> list[Any]:
        return [_raw(e.param, e.sharded) for e in self.table.entries]

    def _state_tensors(self) -> list[Any]:
        """Each entry's state dict (``None`` without one), cached while the state's size holds.

        Optimizers update their state tensors in place; a tensor replaced behind the guard's
        back stays cached, its stale values differ from what the reference expects and show.
        """
        opt_state = self.stepper.state
        size = len(opt_state)
        cached = self._state_cache
        if cached is not None and cached[0] == size:
            return cached[1]
        dicts = [opt_state.get(e.param) or None for e in self.table.entries]
        self._state_cache = (size, dicts)
        return dicts

    def _state_kind(self, dicts: list[Any], key: str) -> list[Any]:
        out: list[Any] = []
        for entry, st in zip(self.table.entries, dicts, strict=True):
            value = st.get(key) if st is not None else None
            if value is None or not hasattr(value, "numel"):
                out.append(None)
                continue
            raw = _raw(value, entry.sharded)
            # A sparse state tensor (SGD's momentum of sparse gradients: its group is not
            # verified) has no memory to read; it reads as absent, like one of another size.
            dense = not raw.is_sparse and raw.numel() == entry.numel
            out.append(raw if dense else None)
        return out

    def _state_keys(self, dicts: list[Any]) -> list[str]:
        keys: set[str] = set()
        if self.reference is not None:
            for group in self.optimizer.param_groups:
                keys.update(self.reference.state_keys(group))
        for st in dicts:
            if st is not None:
                keys.update(k for k, v in st.items() if k != "step" and hasattr(v, "numel"))
        return sorted(keys)

    def _read_state(self, part: _Partition, sel: _Selection) -> _StateRead:
        dicts = self._state_tensors()
        values: dict[str, Any] = {}
        missing: dict[str, set[int]] = {}
        for key, tensors in self._state_kinds(dicts).items():
            gone: set[int] = set()
            views = part.state.get(key)
            if views is None:
                views = part.state[key] = _Views()
            values[key] = self._gather(part, sel, tensors, views, gone)
            missing[key] = gone
        present, steps = self._step_counts(dicts, sel)
        return _StateRead(values, missing, present, steps)

    def _state_kinds(self, dicts: list[Any]) -> dict[str, list[Any]]:
        cached = self._kinds_cache
        if cached is not None and cached[0] is dicts:
            return cached[1]
        kinds = {key: self._state_kind(dicts, key) for key in self._state_keys(dicts)}
        self._kinds_cache = (dicts, kinds)
        return kinds

    # ------------------------------------------------------------------------ fused reads

    def _read_before(
        self,
        part: _Partition,
        sel: _Selection,
        params: list[Any],
        grads: list[Any] | None,
        no_grad: set[int],
    ) -> tuple[Any, Any, _StateRead | None]:
        """The weights at ``sel`` before the step; when verifying, the gradients and the state.

        The state is read here even though the last step's post-hook read it at ``sel``: the
        step starts from what is in memory now, and comparing the two names an edit made
        between the steps (one more row of the same gather).
        """
        memory = part.memory
        if memory is not None:
            entries = sel.entries
            located = [memory.locate("param", params, entries)]
            keys: list[str] = []
            dicts: list[Any] = []
            if grads is not None:
                located.append(memory.locate("grad", grads, entries, fresh=True))
                dicts, keys = self._locate_state(memory, located, entries)
            if all(k is not None for k in located):
                found = [k for k in located if k is not None]
                out = memory.read(found, sel.owner, sel.local)
                if grads is None:
                    return out[0], None, None
                no_grad.update(_missing_runs(sel, found[1]))
                state = self._state_rows(sel, dicts, keys, found[2:], out[2:])
                return out[0], out[1], state
        before = self._gather(part, sel, params, part.params)
        if grads is None:
            return before, None, None
        grad_values = self._gather(part, sel, grads, None, no_grad)
        return before, grad_values, self._read_state(part, sel)

    def _locate_state(
        self, memory: Memory, located: list[Located | None], entries: list[int]
    ) -> tuple[list[Any], list[str]]:
        """Locate every state kind at ``entries`` (appended to ``located``).

        Returns the state dicts and the kinds' keys.
        """
        dicts = self._state_tensors()
        keys = []
        for key, tensors in self._state_kinds(dicts).items():
            keys.append(key)
            located.append(memory.locate("state:" + key, tensors, entries))
        return dicts, keys

    def _state_rows(
        self,
        sel: _Selection,
        dicts: list[Any],
        keys: list[str],
        located: list[Located],
        rows: Any,
    ) -> _StateRead:
        """The state at ``sel`` from one gather's rows (one per state kind, in ``keys`` order)."""
        values = {key: rows[i] for i, key in enumerate(keys)}
        missing = {key: _missing_runs(sel, located[i]) for i, key in enumerate(keys)}
        present, steps = self._step_counts(dicts, sel)
        return _StateRead(values, missing, present, steps)

    def _read_after(
        self,
        part: _Partition,
        sel: _Selection | None,
        following: _Selection | None,
        params: list[Any],
        *,
        state_now: bool,
        state_next: bool,
    ) -> _After:
        """What the step wrote at ``sel`` and what the next step starts from at ``following``.

        One gather for the weights and every state tensor at both samples when the partition's
        memory can be read directly; otherwise kind by kind.
        """
        import numpy as np

        out = _After()
        memory = part.memory
        want_now = sel is not None and state_now
        want_next = following is not None and state_next
        if memory is not None and (sel is not None or following is not None):
            parts = [s for s in (sel, following) if s is not None]
            entries = parts[0].entries
            if len(parts) == 2:
                entries = sorted({*entries, *parts[1].entries})
            located: list[Located | None] = [memory.locate("param", params, entries)]
            keys: list[str] = []
            dicts: list[Any] = []
            if want_now or want_next:
                dicts, keys = self._locate_state(memory, located, entries)
            if all(k is not None for k in located):
                found = [k for k in located if k is not None]
                owner, local = parts[0].owner, parts[0].local
                if len(parts) == 2:
                    owner = np.concatenate([parts[0].owner, parts[1].owner])
                    local = np.concatenate([parts[0].local, parts[1].local])
                values = memory.read(found, owner, local)
                cut = sel.n if sel is not None else 0
                if sel is not None:
                    out.values = values[0, :cut]
                    if want_now:
                        out.state = {key: values[1 + i, :cut] for i, key in enumerate(keys)}
                if following is not None:
                    out.baseline = values[0, cut:]
                    if want_next:
                        out.state_next = self._state_rows(
                            following, dicts, keys, found[1:], values[1:, cut:]
                        )
                return out
        if sel is not None:
            out.values = self._gather(part, sel, params, part.params)
            if want_now:
                out.state = self._read_state(part, sel).values
        if following is not None:
            out.baseline = self._gather(part, following, params, part.params)
            if want_next:
                out.state_next = self._read_state(part, following)
        return out

    def _step_counts(
        self, dicts: list[Any], sel: _Selection
    ) -> tuple[list[bool], list[float | None]]:
        """Per run of ``sel``: whether its parameter has state, and its step count."""
        present: list[bool] = []
        steps: list[float | None] = []
        step_views = self._step_views
        for e in sel.entries:
            st = dicts[e]
            present.append(st is not None)
            value = st.get("step") if st is not None else None
            steps.append(step_views.read(e, value) if value is not None else None)
        return present, steps

    # --------------------------------------------------------------------------------- pre

    def before_step(self, step: int) -> list[GuardFinding]:
        """Read step ``step``'s inputs, check them, and compute the reference.

        The weights are compared with what the last step left; the reference is computed on
        the verification thread with ``verify_async``. Returns the continuity findings
        (weights edited between the steps).
        """
        start = time.thread_time()
        inputs = self._inputs.pop(step, None)
        selections = self._selections.pop(step, None)
        if selections is None or inputs is None:
            # The first step, or after a gap or a reload: nothing was read after the last step.
            sample, selections = self._sample(step)
            self._samples = {step: sample}
            inputs = None
        self._inputs.clear()
        self._selections = {step: selections}
        verifying = self.reference is not None and self.sampler.verified(step)
        findings: list[GuardFinding] = []
        params = self._param_tensors()
        grads = [_grad(e) for e in self.table.entries] if verifying else None
        if grads is not None:
            self._sparse_groups(grads)
        grad_digests: list[Any] = []
        # The settings the step will use, as they are now: with verify_async the reference is
        # computed after the job's scheduler has already moved the learning rate on.
        groups: list[dict[str, Any]] | None = None
        sq = 0.0
        finite = True
        for index, (part, sel) in enumerate(zip(self._partitions, selections, strict=True)):
            if not sel.n:
                continue
            no_grad: set[int] = set()
            before, grad_values, state = self._read_before(part, sel, params, grads, no_grad)
            earlier = inputs[index] if inputs is not None else None
            if self.check_weights and earlier is not None:
                findings.extend(self._continuity(part, sel, step, earlier.params, before))
                if earlier.state is not None and state is not None:
                    findings.extend(self._state_continuity(part, sel, step, earlier.state, state))
            if grads is None or state is None:
                continue
            grads_host = _host(part, grad_values)
            grads64 = _float64(grads_host, part)
            sq += float(grads64 @ grads64)
            finite = finite and _isfinite(grads64)
            grad_digests.append(grads_host)
            if groups is None:
                groups = [_snapshot(g) for g in self.optimizer.param_groups]
            job = _Job(self, part, index, sel, step, groups, before, grad_values, no_grad, state)
            if self._worker is None:
                job.expect()  # its cost is before_step's; it stores its value (or failure)
            else:
                self._run(("expect", step * 64 + index), job.expect)
        if grads is not None:
            self._verifying.add(step)
            self._grads[step] = (_digest(grad_digests), sq, finite)
        self.cost += time.thread_time() - start
        return findings

    def _unsupported(self, group: int, reason: str) -> None:
        """Stop verifying ``group`` from now on, and have the guard say so."""
        if group not in self.unsupported_groups:
            self.unsupported_groups[group] = reason
            self.newly_unsupported.append((group, reason))

    def take_unsupported(self) -> list[tuple[int, str]]:
        """The groups found unverifiable since the last call.

        With ``verify_async`` the verification thread adds to them: each is taken once,
        none lost.
        """
        out = []
        while self.newly_unsupported:
            out.append(self.newly_unsupported.pop(0))
        return out

    def _sparse_groups(self, grads: list[Any]) -> None:
        """Groups with a sparse gradient (``nn.Embedding(sparse=True)``) are not verified.

        The sample reads dense gradients; a sparse one is read as no gradient, and a step
        that then updates the parameter would look like tampering. Only parameters whose
        gradient was read as none are looked at again, so a dense job pays nothing.
        """
        entries = self.table.entries
        for e, grad in enumerate(grads):
            if grad is not None:
                continue
            found = entries[e].param.grad
            if found is not None and found.is_sparse:
                self._unsupported(entries[e].group, "sparse gradients take another path")

    def _continuity(
        self,
        part: _Partition,
        sel: _Selection,
        step: int,
        expected: Any,
        found: Any,
        *,
        what: str = "weights",
        subject: str = "weights",
        skip: set[int] | None = None,
    ) -> list[GuardFinding]:
        """Findings for values at ``sel`` that changed since the last step wrote them.

        ``skip``: run positions not compared (an entry without such a tensor reads as zeros).
        """
        import numpy as np

        old, new = _host(part, expected), _host(part, found)
        if old.size != new.size:
            return []
        differ = old.view(part.bits) != new.view(part.bits)
        if skip:
            for position in skip:
                _, a, b = sel.runs[position]
                differ[a:b] = False
        if not differ.any():
            return []
        where = np.flatnonzero(differ)
        old64, new64 = _float64(old[where], part), _float64(new[where], part)
        changed = ~((old64 == new64) | (np.isnan(old64) & np.isnan(new64)))
        if not changed.any():
            return []  # -0.0 for 0.0, or another NaN
        bad = np.zeros(sel.n, dtype=bool)
        bad[where[changed]] = True
        pairs = zip(old64.tolist(), new64.tolist(), strict=True)
        values = dict(zip(where.tolist(), pairs, strict=True))

        def build(name: str, n: int, total: int, i: int) -> GuardFinding:
            before, after = values[i]
            return self._finding(
                "guard.weights",
                step,
                f"{what} of {name} changed between steps {step - 1} and {step} "
                f"outside the optimizer at {n}/{total} sampled coordinates",
                _example(name, sel.local[i], before, after),
                subject=f"{subject}:{name}",
            )

        return self._per_entry(sel, bad, build)

    def _state_continuity(
        self, part: _Partition, sel: _Selection, step: int, last: _StateRead, now: _StateRead
    ) -> list[GuardFinding]:
        """Findings for optimizer state edited between the steps (values, presence, step count).

        The last step's post-hook read the state this step starts from; an insider who edits
        it in between (negates a moment, resets the step count so the bias correction grows
        the update, drops a parameter's state) leaves the optimizer's own arithmetic intact:
        without this comparison the step would only show as an update unlike the reference.
        """
        findings: list[GuardFinding] = []
        for key, values in now.values.items():
            earlier = last.values.get(key)
            if earlier is None:
                continue
            skip = now.missing.get(key, set()) | last.missing.get(key, set())
            findings.extend(
                self._continuity(
                    part,
                    sel,
                    step,
                    earlier,
                    values,
                    what=f"optimizer state {key!r}",
                    subject=f"state-edit:{key}",
                    skip=skip,
                )
            )
        entries = self.table.entries
        runs = zip(sel.entries, last.present, now.present, last.steps, now.steps, strict=True)
        for e, had, has, was, count in runs:
            name = entries[e].name
            if had != has:
                change = "dropped" if had else "created"
                detail = f"optimizer state of {name} {change}"
            elif was is not None and count is not None and was != count:
                detail = f"optimizer step count of {name} set from {was:g} to {count:g}"
            else:
                continue
            findings.append(
                self._finding(
                    "guard.weights",
                    step,
                    f"{detail} between steps {step - 1} and {step}, outside the optimizer",
                    detail,
                    subject=f"state-edit:step:{name}",
                )
            )
        return findings

    # -------------------------------------------------------------------------------- post

    def after_step(self, step: int, *, next_step: int | None) -> StepResult:
        """Read what step ``step`` wrote (and what the next step starts from).

        Returns the step's digests and gradient figures at once (the exchange needs them);
        the verdict on the update comes with :meth:`collect` (at once in synchronous mode).
        """
        start = time.thread_time()
        result = StepResult(step=step)
        current = self._samples.get(step)
        selections = self._selections.get(step)
        if current is None or selections is None:
            self.cost += time.thread_time() - start
            return result
        verifying = step in self._verifying
        self._verifying.discard(step)
        nexts: list[_Selection] | None = None
        next_verified = False
        if next_step is not None:
            upcoming, nexts = self._sample(next_step)
            next_verified = self.reference is not None and self.sampler.verified(next_step)
        params = self._param_tensors()
        digests = []
        judges: list[tuple[str, int]] = []
        inputs: list[_Inputs | None] = []
        for index, part in enumerate(self._partitions):
            sel = selections[index]
            following = nexts[index] if nexts is not None else None
            read = self._read_after(
                part,
                sel if sel.n else None,
                following if following is not None and following.n else None,
                params,
                state_now=verifying,
                state_next=next_verified,
            )
            if sel.n:
                digests.append(_host(part, read.values))
                if verifying:
                    key = ("judge", step * 64 + index)
                    judges.append(key)
                    judgement = _Judgement(self, part, index, step, read.values, read.state)
                    self._run(key, judgement.run)
            if following is not None:
                if not following.n:
                    inputs.append(None)
                    continue
                inputs.append(_Inputs(following, read.baseline, read.state_next))
        result.param_digest = _digest(digests)
        result.sampled = current.count
        grads = self._grads.pop(step, None)
        if grads is not None:
            result.grad_digest, result.grad_sq_sum, result.grad_finite = grads
        if next_step is not None and nexts is not None:
            self._inputs = {next_step: inputs}
            self._selections = {step: selections, next_step: nexts}
            self._samples = {step: current, next_step: upcoming}
        self._pending[step] = StepResult(step=step)
        self._judges[step] = judges
        self.cost += time.thread_time() - start
        return result

    def collect(self, through: int) -> list[StepResult]:
        """Update verifications of the steps up to ``through`` (each once), oldest first.

        Waits for them: the guard collects step N's at the end of step N+1 with
        ``verify_async`` (the thread has had a whole forward and backward to finish); in
        synchronous mode they are ready.
        """
        out = []
        for step in sorted(s for s in self._pending if s <= through):
            result = self._pending.pop(step)
            for key in self._judges.pop(step, []):
                value = self._result(key, wait=True)
                if value is None:
                    continue
                findings, verified, residual = value
                result.findings.extend(findings)
                result.verified += verified
                if residual is not None:
                    result.residual = max(result.residual or 0.0, residual)
            if result.verified:
                self.verified_steps += 1
                self.checked += result.verified
            out.append(result)
        return out

    # ------------------------------------------------------------------------- reference

    def expect(
        self,
        part: _Partition,
        sel: _Selection,
        groups: list[dict[str, Any]],
        before: Any,
        grads: Any,
        no_grad: set[int],
        read: _StateRead,
    ) -> _Expected:
        """Step ``sel.step``'s reference at ``sel`` (weights, state), before the step."""
        import numpy as np

        assert self.reference is not None
        kernels = self.kernels(part.device.type)
        entries = self.table.entries
        n = sel.n
        state = read.values
        before_h = _host(part, before)
        state_h = {key: _host(part, v) for key, v in state.items()}
        variants: list[Any] = [before_h.copy()]
        verify = np.zeros(n, dtype=bool)
        exact = np.ones(n, dtype=bool)
        approx: Any = None
        approx_mask: Any = None
        state_exp: dict[str, list[Any]] = {}
        outcomes: list[tuple[int, int, Outcome]] = []
        # Runs of consecutive tensors that share a group, a step count and the presence of a
        # gradient and of state are one bucket: contiguous in the sample, computed together.
        # Groups that differ only in their weight decay (the usual decay / no-decay split)
        # are one bucket, the decay applied per segment: half the kernel calls.
        classes = self._merge_classes(groups)
        local = self.local
        keys = []
        for position, (e, _a, _b) in enumerate(sel.runs):
            # A group removed since attach (a finding of its own) leaves its entries unverified.
            group_of = entries[e].group
            cls = classes[group_of] if group_of < len(classes) else None
            if local is not None and id(entries[e].param) not in local:
                cls = None  # another rank's partition: its owner verifies it
            keys.append(
                (cls, read.steps[position], position not in no_grad, read.present[position])
            )
        position = 0
        while position < len(keys):
            end = position + 1
            while end < len(keys) and keys[end] == keys[position]:
                end += 1
            group_index, step_value, with_grad, with_state = keys[position]
            a, b = sel.runs[position][1], sel.runs[end - 1][2]
            first_run, last_run = position, end
            position = end
            if group_index is None or group_index in self.unsupported_groups:
                continue
            group = groups[group_index]
            decays = _decay_segments(sel, entries, groups, first_run, last_run, group_index)
            verify[a:b] = True
            if not with_grad:
                # The optimizer skips parameters without a gradient: nothing may change.
                for key, values in state_h.items():
                    state_exp.setdefault(key, [values.copy()])
                continue
            state_t = {
                key: _torch(part, state[key])[a:b]
                for key in self.reference.state_keys(group)
                if with_state
                and key in state
                and not _covers(read.missing.get(key), first_run, last_run)
            }
            p_t = _torch(part, before)[a:b]
            for key in self.reference.state_keys(group):
                if key not in state_t:
                    import torch

                    state_t[key] = torch.zeros_like(p_t)
            tail = None
            if group.get("fused"):
                sizes = np.asarray([entries[e].numel for e, _, _ in sel.runs[first_run:last_run]])
                counts = [rb - ra for _, ra, rb in sel.runs[first_run:last_run]]
                tail = sel.local[a:b] >= np.repeat(sizes, counts) - _TAIL
            bucket = Bucket(
                group=group_index,
                params=p_t,
                grads=_torch(part, grads)[a:b],
                state=state_t,
                step=(step_value or 0.0) if with_state else 0.0,
                has_state=with_state,
                tail=tail,
                decays=decays,
            )
            try:
                outcome = self.reference.compute(kernels, group, bucket)
            except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                logger.warning("guard: reference failed for group %d: %s", group_index, exc)
                for g, cls in enumerate(classes):
                    if cls == group_index:
                        self._unsupported(g, f"reference failed: {exc}")
                verify[a:b] = False
                continue
            outs = [_storage(v) for v in outcome.variants]
            # The usual case: one bucket is the whole sample, its arrays are the result.
            whole = a == 0 and b == n and not outcomes
            if whole:
                variants = outs
            else:
                while len(variants) < len(outs):
                    variants.append(variants[0].copy())
                for i, target in enumerate(variants):
                    target[a:b] = outs[min(i, len(outs) - 1)]
            exact[a:b] = outcome.exact
            outcomes.append((a, b, outcome))
            if outcome.approx is not None:
                if approx is None:
                    approx = np.zeros(n, dtype=part.storage)
                    approx_mask = np.zeros(n, dtype=bool)
                approx[a:b] = _storage(outcome.approx)
                approx_mask[a:b] = True
            for key, vs in outcome.state.items():
                if whole:
                    state_exp[key] = [_storage(v) for v in vs]
                    continue
                arrays = state_exp.setdefault(
                    key, [state_h[key].copy() if key in state_h else np.zeros(n, part.storage)]
                )
                outs_s = [_storage(v) for v in vs]
                while len(arrays) < len(outs_s):
                    arrays.append(arrays[0].copy())
                for i, target in enumerate(arrays):
                    target[a:b] = outs_s[min(i, len(outs_s) - 1)]
        return _Expected(
            sel, before_h, variants, state_exp, state_h, _host(part, grads), verify, exact,
            approx, approx_mask, outcomes,
        )  # fmt: skip

    def _merge_classes(self, groups: list[dict[str, Any]]) -> list[int]:
        """Per param group, the first group it can be computed with (its own index if none).

        Groups merge when every setting but the weight decay is equal, neither is fused (the
        fused kernels take one decay) and both are verified.
        """
        out: list[int] = []
        leaders: list[int] = []
        unsupported = self.unsupported_groups
        for g, settings in enumerate(groups):
            leader = g
            if not settings.get("fused") and g not in unsupported:
                for other in leaders:
                    if _same_but_decay(groups[other], settings):
                        leader = other
                        break
            if leader == g and g not in unsupported:
                leaders.append(g)  # an unverified group leads no other (it is skipped)
            out.append(leader)
        return out

    # -------------------------------------------------------------------------- judging

    def judge(
        self, part: _Partition, step: int, expected: _Expected, actual: Any, state: dict[str, Any]
    ) -> tuple[list[GuardFinding], int, float | None]:
        """Compare what step ``step`` wrote at its sample with the reference."""
        import numpy as np

        findings: list[GuardFinding] = []
        verify = expected.verify
        verified = int(np.count_nonzero(verify))
        if not verified:
            return findings, 0, None
        got = _host(part, actual)
        bits = got.view(part.bits)
        same = expected.params[0].view(part.bits) == bits
        for other in expected.params[1:]:
            same |= other.view(part.bits) == bits
        candidates = np.flatnonzero(verify & ~same)
        residual = 0.0
        if candidates.size:
            bad, residual = self._compare(
                part,
                _float64(got[candidates], part),
                [_float64(v[candidates], part) for v in expected.params],
                _float64(expected.before[candidates], part),
                expected.magnitude()[candidates],
                expected.exact[candidates],
            )
            if bad.any():
                findings.append(self._update_finding(part, step, expected, candidates[bad], got))
        if not findings and expected.approx is not None:
            fused = expected.approx_mask & verify
            differ = np.flatnonzero(fused & (expected.approx.view(part.bits) != bits))
            if differ.size:
                # The fused kernel replayed on the sample agrees; also hold it to the
                # arithmetic of SGD/Adam itself (a modified native kernel, or a kernel bug).
                bad2, _ = self._compare(
                    part,
                    _float64(got[differ], part),
                    [_float64(expected.approx[differ], part)],
                    _float64(expected.before[differ], part),
                    expected.magnitude()[differ],
                    np.zeros(differ.size, dtype=bool),
                )
                if bad2.any():
                    names = self._names(expected.sel, differ[bad2])
                    findings.append(
                        self._fused_finding(step, names, int(bad2.sum()), int(fused.sum()))
                    )
        findings.extend(self._judge_state(part, step, expected, state))
        return findings, verified, residual

    def _judge_state(
        self, part: _Partition, step: int, expected: _Expected, state: dict[str, Any]
    ) -> list[GuardFinding]:
        import numpy as np

        findings: list[GuardFinding] = []
        sel = expected.sel
        for key, variants in expected.state.items():
            values = state.get(key)
            if values is None:
                findings.append(
                    self._finding(
                        "guard.weights",
                        step,
                        f"optimizer state {key!r} disappeared in step {step}",
                        None,
                        subject=f"state-gone:{key}",
                    )
                )
                continue
            got = _host(part, values)
            bits = got.view(part.bits)
            same = variants[0].view(part.bits) == bits
            for other in variants[1:]:
                same |= other.view(part.bits) == bits
            candidates = np.flatnonzero(expected.verify & ~same)
            if not candidates.size:
                continue
            before = expected.state_before.get(key)
            bad = self._compare_state(
                part,
                _float64(got[candidates], part),
                [_float64(v[candidates], part) for v in variants],
                _float64(before[candidates], part) if before is not None else None,
                np.abs(_float64(expected.grads[candidates], part)),
                expected.exact[candidates],
            )
            if bad.any():
                full = np.zeros(sel.n, dtype=bool)
                full[candidates[bad]] = True
                findings.extend(self._per_entry(sel, full, self._state_message(step, key)))
        return findings

    def _compare(
        self,
        part: _Partition,
        actual: Any,
        variants: list[Any],
        before: Any,
        magnitude: Any,
        exact: Any,
    ) -> tuple[Any, float]:
        import numpy as np

        diff = _distance(actual, variants[0])
        for ref in variants[1:]:
            diff = np.minimum(diff, _distance(actual, ref))
        scale = np.maximum(np.abs(before), np.abs(variants[0]))
        ulp = _spacing(scale, part.dtype)
        eps = _epsilon(part.dtype)
        strict = diff > self.config.exact_ulps * ulp
        loose = (diff > self.config.approx_ulps * ulp) & (
            diff > self.config.approx_rel * eps * magnitude
        )
        bad = np.where(exact, strict, loose)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = diff / np.maximum(magnitude, ulp)
        # 0/0 where both sides are NaN (a diverged run) is no residual.
        residual = float(np.max(np.nan_to_num(rel, nan=0.0))) if rel.size else 0.0
        return bad, residual

    def _compare_state(
        self,
        part: _Partition,
        actual: Any,
        variants: list[Any],
        before: Any,
        grads: Any,
        exact: Any,
    ) -> Any:
        import numpy as np

        diff = _distance(actual, variants[0])
        for ref in variants[1:]:
            diff = np.minimum(diff, _distance(actual, ref))
        # A state value is a running combination of its previous value and the gradient:
        # rounding differences scale with the larger of them, not with the (possibly
        # cancelling) result.
        scale = np.abs(variants[0])
        if before is not None:
            scale = np.maximum(scale, np.abs(before))
        scale = np.maximum(scale, grads)
        ulp = _spacing(scale, part.dtype)
        eps = _epsilon(part.dtype)
        strict = diff > self.config.exact_ulps * ulp
        loose = (diff > self.config.approx_ulps * ulp) & (
            diff > self.config.approx_rel * eps * scale
        )
        return np.where(exact, strict, loose)

    def _per_entry(
        self, sel: _Selection, bad: Any, build: Callable[[str, int, int, int], GuardFinding]
    ) -> list[GuardFinding]:
        import numpy as np

        out = []
        for e in np.unique(sel.owner[bad]).tolist():
            mine = sel.owner == e
            hits = np.flatnonzero(mine & bad)
            out.append(
                build(self.table.entries[e].name, int(hits.size), int(mine.sum()), int(hits[0]))
            )
        return out

    def _update_finding(
        self, part: _Partition, step: int, expected: _Expected, where: Any, got: Any
    ) -> GuardFinding:
        import numpy as np

        names = self._names(expected.sel, where)
        actual = _float64(got[where], part)
        ref = _float64(expected.params[0][where], part)
        before = _float64(expected.before[where], part)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (actual - before) / (ref - before)
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size and abs(float(np.median(ratio)) + 1.0) < 0.05:
            pattern = "update sign flipped"
        elif ratio.size:
            pattern = f"update scaled by about {float(np.median(ratio)):.3g}"
        else:
            pattern = "update perturbed"
        shown = ", ".join(names[:3]) + ("..." if len(names) > 3 else "")
        checked = int(np.count_nonzero(expected.verify))
        return self._finding(
            "guard.update",
            step,
            f"the update of step {step} differs from trainwarden's reference "
            f"{self.reference.name if self.reference else ''} at {where.size}/{checked} "
            f"sampled coordinates of {shown}: {pattern}",
            pattern,
            subject=f"update:{names[0] if names else '?'}",
        )

    def _names(self, sel: _Selection, where: Any) -> list[str]:
        entries = self.table.entries
        return sorted({entries[e].name for e in set(sel.owner[where].tolist())})

    def _fused_finding(self, step: int, names: list[str], bad: int, total: int) -> GuardFinding:
        return GuardFinding(
            rule_id="guard.update",
            severity=Severity.MEDIUM,
            message=(
                f"the fused kernel's update of step {step} matches the same kernel replayed on "
                f"the sample but departs from {self.reference.name if self.reference else ''} "
                f"arithmetic beyond rounding at {bad}/{total} coordinates of "
                f"{', '.join(names[:3])}: a kernel bug or modified native code"
            ),
            rank=self.rank,
            step=step,
            evidence="fused kernel vs reference arithmetic",
            established=False,
            subject="fused-kernel",
        )

    def _state_message(self, step: int, key: str) -> Callable[[str, int, int, int], GuardFinding]:
        def build(name: str, n: int, total: int, i: int) -> GuardFinding:
            return self._finding(
                "guard.update",
                step,
                f"optimizer state {key!r} of {name} after step {step} is not what the reference "
                f"computes from the state step {step - 1} left (changed in step {step}, or "
                f"edited in between) at {n}/{total} sampled coordinates",
                f"state {key}",
                subject=f"state:{key}:{name}",
            )

        return build

    def _finding(
        self, rule: str, step: int, message: str, evidence: str | None, *, subject: str
    ) -> GuardFinding:
        return GuardFinding(
            rule_id=rule,
            severity=Severity.CRITICAL,
            message=message,
            rank=self.rank,
            step=step,
            evidence=evidence,
            established=True,
            subject=subject,
        )


@dataclass
class _Job:
    """Step N's reference for one partition (run on the training or verification thread)."""

    check: UpdateCheck
    part: _Partition
    index: int
    sel: _Selection
    step: int
    groups: list[dict[str, Any]]
    before: Any
    grads: Any
    no_grad: set[int]
    state: _StateRead

    def expect(self) -> None:
        check = self.check
        value: _Expected | Exception
        try:
            value = check.expect(
                self.part, self.sel, self.groups, self.before, self.grads, self.no_grad,
                self.state,
            )  # fmt: skip
        except Exception as exc:  # judged as a failure of the check, never as a pass
            logger.exception("guard: the reference computation failed")
            value = exc
        check._expected[(self.step, self.index)] = value


@dataclass
class _Judgement:
    """Step N's verdict for one partition, once the step has written its weights and state."""

    check: UpdateCheck
    part: _Partition
    index: int
    step: int
    actual: Any
    state: dict[str, Any]

    def run(self) -> tuple[list[GuardFinding], int, float | None] | None:
        expected = self.check._expected.pop((self.step, self.index), None)
        for stale in [k for k in self.check._expected if k[0] < self.step]:
            del self.check._expected[stale]
        if expected is None:
            return None
        if isinstance(expected, Exception):
            raise expected
        return self.check.judge(self.part, self.step, expected, self.actual, self.state)


class _StepViews:
    """Reads the optimizer's per-parameter step counts (0-dim tensors) through numpy views."""

    def __init__(self) -> None:
        self._views: dict[int, tuple[Any, Any]] = {}

    def read(self, entry: int, value: Any) -> float:
        hit = self._views.get(entry)
        if hit is not None and hit[0] is value:
            view = hit[1]
        else:
            view = None
            if hasattr(value, "numel") and value.device.type == "cpu" and value.numel() == 1:
                try:
                    view = value.detach().numpy().reshape(-1)
                except (RuntimeError, TypeError):
                    view = None
            self._views[entry] = (value, view)
        if view is not None:
            return float(view[0])
        return _step_value(value)


def _read_each(tensors: list[Any], index: list[Any], dtype: Any) -> Any:
    """Gradients at their runs' indices through throwaway numpy views (``None``: not possible).

    ``ndarray.take`` indexes the logical flattened order, as ``torch.take`` does, whatever the
    strides.
    """
    import numpy as np
    import torch

    if any(t is None or t.dtype != dtype for t in tensors):
        return None
    pairs = zip(tensors, index, strict=True)
    try:
        if dtype == torch.bfloat16:
            pieces = [t.view(torch.int16).numpy().take(ix) for t, ix in pairs]
        else:
            pieces = [t.numpy().take(ix) for t, ix in pairs]
    except (RuntimeError, TypeError):  # requires grad, not on the CPU, a subclass
        return None
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _missing_runs(sel: _Selection, located: Located) -> set[int]:
    """Run positions of ``sel`` whose entry has no tensor of ``located``'s kind."""
    if located.missing is None:
        return set()
    missing = located.missing
    return {position for position, e in enumerate(sel.entries) if missing[e]}


def _snapshot(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's settings as plain values (schedulers may change tensors in place).

    A tensor ``lr`` stays a tensor (a copy): torch's arithmetic with it differs from a float's
    in the last bit, and the reference must take the same path.
    """
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key == "params":
            continue
        if key == "lr" and hasattr(value, "detach") and hasattr(value, "numel"):
            value = value.detach().clone()
        elif hasattr(value, "item") and hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        elif isinstance(value, tuple):
            value = tuple(v.item() if hasattr(v, "item") else v for v in value)
        out[key] = value
    return out


def _same_but_decay(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two groups' settings are equal except their weight decay."""
    if a.keys() != b.keys():
        return False
    try:
        return all(
            bool(a[key] == b[key]) and type(a[key]) is type(b[key])
            for key in a
            if key != "weight_decay"
        )
    except (RuntimeError, TypeError, ValueError):  # settings that do not compare plainly
        return False


def _decay_segments(
    sel: _Selection,
    entries: list[_Entry],
    groups: list[dict[str, Any]],
    first_run: int,
    last_run: int,
    leader: int,
) -> list[tuple[int, int, float]] | None:
    """(start, end, weight decay) of runs ``first_run:last_run`` by group, bucket-relative.

    ``None`` when they all belong to ``leader``, the group whose settings the bucket is
    computed with (its own decay applies).
    """
    runs = sel.runs
    if all(entries[runs[i][0]].group == leader for i in range(first_run, last_run)):
        return None
    origin = runs[first_run][1]
    out: list[tuple[int, int, float]] = []
    for i in range(first_run, last_run):
        e, a, b = runs[i]
        decay = float(groups[entries[e].group].get("weight_decay", 0) or 0)
        if out and out[-1][2] == decay and out[-1][1] == a - origin:
            out[-1] = (out[-1][0], b - origin, decay)
        else:
            out.append((a - origin, b - origin, decay))
    return out


def _covers(runs: set[int] | None, first: int, last: int) -> bool:
    """Whether ``runs`` holds any run position in ``[first, last)``."""
    return any(first <= r < last for r in runs or ())


def _grad(entry: _Entry) -> Any:
    g = entry.param.grad
    return None if g is None or g.is_sparse else _raw(g, entry.sharded)


def _numel(t: Any) -> int:
    return int(t.numel())


def _step_value(value: Any) -> float:
    """The optimizer's step count (a Python number, or a 0-dim tensor torch keeps)."""
    if hasattr(value, "item"):
        return float(value.item())
    return float(value)


# ------------------------------------------------------------------------------ conversions


def _storage(t: Any) -> Any:
    """A torch tensor's values as a flat numpy array of the storage dtype (bf16 as bits)."""
    import torch

    x = t.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if x.dtype == torch.bfloat16:
        x = x.view(torch.int16)
    elif x.is_complex():
        # Complex parameters are not verified (their groups say so); the weights' and
        # gradients' other checks see the real parts, without a cast warning per step.
        x = x.real.to(torch.float64)
    elif str(x.dtype) not in _STORAGE:
        x = x.to(torch.float64)
    return x.numpy().reshape(-1)


def _host(part: _Partition, values: Any) -> Any:
    """Gathered values as a numpy array of the storage dtype."""
    return values if part.cpu else _storage(values)


def _torch(part: _Partition, values: Any) -> Any:
    """Gathered values as a tensor of the partition's dtype (sharing memory on CPU)."""
    import torch

    if not part.cpu:
        return values
    t = torch.from_numpy(values)
    return t.view(torch.bfloat16) if part.dtype == torch.bfloat16 else t


def _float64(values: Any, part: _Partition) -> Any:
    """Storage values decoded exactly to float64 (bf16 bits shifted into float32)."""
    import numpy as np

    if values.dtype == np.int16:
        bits = values.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    if np.iscomplexobj(values):
        values = values.real  # see _storage
    return values.astype(np.float64)


def _isfinite(values: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(values).all())


def _distance(a: Any, b: Any) -> Any:
    import numpy as np

    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    d = np.where(both_nan | same_inf, 0.0, d)
    return np.where(np.isnan(d), np.inf, d)


_EPS = {"torch.float32": 2.0**-23, "torch.bfloat16": 2.0**-7, "torch.float16": 2.0**-10}


def _epsilon(dtype: Any) -> float:
    return _EPS.get(str(dtype), 2.0**-52)


def _spacing(values: Any, dtype: Any) -> Any:
    """Units in the last place of ``values`` in ``dtype`` (float64 array)."""
    import numpy as np

    name = str(dtype)
    if name == "torch.float32":
        out: Any = np.spacing(values.astype(np.float32)).astype(np.float64)
    elif name == "torch.bfloat16":
        out = np.spacing(values.astype(np.float32)).astype(np.float64) * 2.0**16
    elif name == "torch.float16":
        out = np.spacing(values.astype(np.float16)).astype(np.float64)
    else:
        out = np.spacing(values)
    return np.abs(out)


def _example(name: str, position: Any, old: float, new: float) -> str:
    return f"{name}[{int(position)}]: {old:.6g} -> {new:.6g}"


def _digest(arrays: Any) -> int:
    if not arrays:
        return 0
    h = hashlib.blake2b(digest_size=8, person=b"tw.sample")
    for a in arrays:
        h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def full_digest(tensors: Sequence[Any]) -> int:
    """A digest of every byte of ``tensors`` (local shards), for full comparisons.

    BLAKE3, on the calling thread: every byte of the model passes through it twice every
    ``full_digest_every`` steps, and it hashes 2.5-3x faster than SHA-256 (with SHA
    instructions) on one core.
    """
    import blake3
    import torch

    h = blake3.blake3(b"tw.full")
    for t in tensors:
        x = local(t)
        if x.device.type != "cpu":
            x = x.cpu()
        if not x.numel():
            continue
        x = x.contiguous().reshape(-1)
        data = x.view(torch.uint8) if x.dtype != torch.uint8 else x
        h.update(memoryview(data.numpy()))
    return int.from_bytes(h.digest()[:8], "little", signed=True)


#: A callable that maps tensors to a full digest (tests inject slower, exact ones).
FullDigest = Callable[[Sequence[Any]], int]
