"""Update verification and out-of-band edits, on the secret sample of coordinates.

Step N's coordinates S_N and the next step's S_N+1 are known at the end of step N (they come
from the secret), so the guard lays both out once, grouped by tensor, and reads every tensor
it needs with one gather per tensor and kind:

- after step N: the weights at S_N (what the optimizer wrote: compared with the reference)
  and at S_N+1 (what step N+1 must find);
- before step N+1: weights, gradients and optimizer state at S_N+1 (the inputs of the
  reference for step N+1, computed right away) and, with the same gathers, the weights and
  state at S_N, which must still be what step N left: the state step N wrote is compared with
  the reference's state there (state tampered with inside the step, or edited since), and the
  weights at both samples with the values read after step N (weights edited between steps).

Per tensor and step that is five gathers for Adam (four before the step, one after), and a
constant number of operations for everything else, whatever the number of tensors.
"""

from __future__ import annotations

import functools
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
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if position >= len(self.entries) or self.entries[position].param is not p:
                    out.append((g, position))
                position += 1
        if position != len(self.entries):
            out.append((-1, position))
        return out


@dataclass
class _Layout:
    """Two consecutive samples of one dtype/device partition, grouped by tensor.

    Flat arrays are in (large tensor?, tensor, sample, local index) order: the coordinates of
    small tensors first (they are read from one concatenation of all small tensors: one
    gather instead of one per tensor), then those of large ones, tensor by tensor. ``second``
    marks the coordinates of the later sample. ``index[i]`` gathers entry ``entries[i]``'s
    coordinates of both samples; ``second_index[i]`` the later sample's only.
    """

    first_step: int | None
    second_step: int
    entries: list[int]
    index: list[Any]
    first_counts: list[int]
    owner: Any  # flat: entry index of each coordinate
    local: Any  # flat: local index of each coordinate
    second: Any  # flat: bool, coordinate of the later sample
    second_index: list[Any]
    first_index: list[Any]
    large: list[int]  # positions in ``entries`` of the large entries, in order
    small_index: Any  # positions of the small coordinates in the small concatenation
    small_second: Any  # ...of the later sample's small coordinates
    small_first: Any  # ...of the earlier sample's
    sample: Sample

    @property
    def size(self) -> int:
        return int(self.owner.size)


@dataclass
class _Reads:
    """What the training thread gathered before a step (torch tensors, layout order)."""

    params: Any
    grads: Any
    states: dict[str, Any]
    steps: list[float | None]
    has_state: list[bool]
    has_grad: list[bool]
    verifying: bool


@dataclass
class _Prepared:
    """Step N's reference, computed before the step from what was read (one partition)."""

    verify: Any  # flat mask over the later sample's coordinates: verified here
    variants: list[Any]  # expected weights, one array per acceptable code path
    before: Any
    magnitude: Any
    exact: Any  # bool per coordinate
    approx: Any  # single-tensor arithmetic for fused kernels (NaN elsewhere)
    state: dict[str, list[Any]]  # expected state per key and variant
    state_before: dict[str, Any]
    grad_scale: Any
    entry_of: Any  # per coordinate: position in ``entries``
    entries: list[int]  # the layout's entries (table indices)


@dataclass
class _Partition:
    """One dtype/device partition of the parameters and what the guard holds for it.

    ``expected_*`` and ``prepared`` belong to the verification thread once it runs.
    """

    key: tuple[str, str]
    entries: set[int]
    small: list[int] = field(default_factory=list)  # table indices of the small tensors
    small_offsets: dict[int, int] = field(default_factory=dict)
    expected_params: Any = None  # after step N at both samples (numpy, layout order)
    expected_state: dict[str, list[Any]] | None = None  # step N's reference state at S_N
    state_exact: Any = None
    state_before: dict[str, Any] | None = None
    state_scale: Any = None
    state_mask: Any = None
    prepared: _Prepared | None = None
    dtype: Any = None


@dataclass
class StepResult:
    """What the update check learnt about one step.

    ``param_digest`` and ``grad_digest`` are known when the step ends (for the exchange);
    the verification (``verified``, ``residual``, update findings) may come one step later
    (see :meth:`UpdateCheck.collect`).
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


# Tensors up to this size are read through one concatenation per kind (bounded in total).
_SMALL = 16384
_SMALL_TOTAL = 1 << 21


class _Worker:
    """Runs the verification of each step off the training thread, in order.

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

    def submit(self, key: tuple[str, int], job: Callable[[], Any]) -> None:
        self._jobs.put((key, job))

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            key, job = item
            start = time.thread_time()
            try:
                value: Any = job()
            except Exception as exc:  # reported by the training thread, never swallowed
                logger.exception("guard: verification job failed")
                value = exc
            self.cpu += time.thread_time() - start
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
        asynchronous: Recompute and judge in a thread of the guard's (the default; results
            one step later) instead of on the training thread.
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
        if verify_updates:
            self.reference, self.not_verified = reference_for(optimizer)
        else:
            self.not_verified = "update check disabled"
        self.check_weights = check_weights
        self.unsupported_groups: dict[int, str] = {}
        if self.reference is not None:
            for g, group in enumerate(optimizer.param_groups):
                reason = self.reference.unsupported(group)
                if reason is not None:
                    self.unsupported_groups[g] = reason
        self.kernel_problems: list[str] = []
        self._kernels: dict[str, Kernels] = {}
        self._partitions: list[_Partition] = []
        self._layouts: dict[int, list[_Layout]] = {}  # later step -> layout per partition
        self._samples: dict[int, Sample] = {}
        self._ahead_steps: set[int] = set()
        self._pending: dict[int, StepResult] = {}
        self._worker: _Worker | None = _Worker() if asynchronous else None
        self._sync: dict[tuple[str, int], Any] = {}
        self._params_raw: list[Any] | None = None
        self._states_raw: tuple[list[Any], dict[str, list[Any]]] | None = None
        self._states_len = 0
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
        keys: dict[tuple[str, str], set[int]] = {}
        for i, entry in enumerate(self.table.entries):
            tensor = _raw(entry.param, entry.sharded)
            self.kernels(tensor.device.type)
            keys.setdefault((str(tensor.dtype), tensor.device.type), set()).add(i)
        self._partitions = []
        for key, members in sorted(keys.items()):
            first = self.table.entries[min(members)]
            part = _Partition(key, members, dtype=_raw(first.param, first.sharded).dtype)
            total = 0
            for i in sorted(members):
                n = self.table.entries[i].numel
                if n <= _SMALL and total + n <= _SMALL_TOTAL and not self.table.entries[i].sharded:
                    part.small_offsets[i] = total
                    part.small.append(i)
                    total += n
            self._partitions.append(part)

    def close(self) -> None:
        """Stop the verification thread."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def rebaseline(self) -> None:
        """Forget what was expected (a legitimate reload replaced weights and state)."""
        self._states_raw = None  # load_state_dict brings new state tensors

        def forget() -> None:
            for part in self._partitions:
                part.expected_params = None
                part.expected_state = None
                part.prepared = None

        self._run(("rebaseline", -1), forget)
        self._result(("rebaseline", -1), wait=True)

    # ------------------------------------------------------------------- jobs and results

    def _run(self, key: tuple[str, int], job: Callable[[], Any]) -> None:
        if self._worker is not None:
            self._worker.submit(key, job)
            return
        self._sync[key] = job()  # its cost is its caller's (before_step / after_step)

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

    # ------------------------------------------------------------------------------ layout

    def _layout(self, part: _Partition, first: Sample | None, second: Sample) -> _Layout:
        import numpy as np
        import torch

        owners = [second.owners]
        locals_ = [second.local]
        flags = [np.ones(second.owners.size, dtype=bool)]
        if first is not None:
            owners.insert(0, first.owners)
            locals_.insert(0, first.local)
            flags.insert(0, np.zeros(first.owners.size, dtype=bool))
        owner = np.concatenate(owners)
        local_ = np.concatenate(locals_)
        later = np.concatenate(flags)
        if len(self._partitions) > 1:
            keep = np.isin(owner, np.fromiter(part.entries, dtype=np.int64))
            owner, local_, later = owner[keep], local_[keep], later[keep]
        small_table = np.zeros(len(self.table.entries) + 1, dtype=bool)
        offsets = np.zeros(len(self.table.entries) + 1, dtype=np.int64)
        for e, off in part.small_offsets.items():
            small_table[e] = True
            offsets[e] = off
        is_large = ~small_table[owner]
        order = np.lexsort((local_, later, owner, is_large))
        owner, local_, later, is_large = owner[order], local_[order], later[order], is_large[order]
        # Entries in the same order as the coordinates: small ones first, then large ones.
        change = np.flatnonzero(np.diff(owner, prepend=-1))
        entries_arr = owner[change]
        counts = np.diff(np.append(change, owner.size))
        firsts = np.bincount(owner[~later], minlength=len(self.table.entries) + 1)
        device = part.key[1]
        flat = torch.from_numpy(np.ascontiguousarray(local_))
        if device != "cpu":
            flat = flat.to(device)
        index = list(torch.split(flat, counts.tolist())) if entries_arr.size else []
        entry_list = entries_arr.tolist()
        first_counts = [int(firsts[e]) for e in entry_list]
        second_index = [idx[n:] for idx, n in zip(index, first_counts, strict=True)]
        first_index = [idx[:n] for idx, n in zip(index, first_counts, strict=True)]
        large = [i for i, e in enumerate(entry_list) if e not in part.small_offsets]
        small = ~is_large
        small_pos = offsets[owner[small]] + local_[small]
        small_second = offsets[owner[small & later]] + local_[small & later]
        small_first = offsets[owner[small & ~later]] + local_[small & ~later]
        return _Layout(
            first.step if first is not None else None,
            second.step,
            entry_list,
            index,
            first_counts,
            owner,
            local_,
            later,
            second_index,
            first_index,
            large,
            _device_index(small_pos, device),
            _device_index(small_second, device),
            _device_index(small_first, device),
            second,
        )

    def _layouts_for(self, step: int) -> list[_Layout]:
        """The layouts whose later sample is ``step``'s (made at the last step's end, or now)."""
        found = self._layouts.pop(step, None)
        if found is None:
            # The first step, or after a gap: no earlier sample to re-read.
            sample = self.sampler.coordinates(step, self.table.sizes)
            found = [self._layout(part, None, sample) for part in self._partitions]
        self._samples[step] = found[0].sample if found else self.sampler.coordinates(step, [])
        for stale in [s for s in self._layouts if s < step]:
            del self._layouts[stale]
        return found

    def _ahead(self, first: Sample, step: int) -> None:
        """Lay out (``first``, ``step``'s sample) in the verification thread, a step early."""

        def job() -> list[_Layout]:
            sample = self.sampler.coordinates(step, self.table.sizes)
            return [self._layout(part, first, sample) for part in self._partitions]

        self._ahead_steps.add(step)
        self._run(("layout", step), job)

    # ------------------------------------------------------------------------------ gather

    def _gather(
        self,
        part: _Partition,
        layout: _Layout,
        tensors: Sequence[Any],
        *,
        later_only: bool,
        earlier_only: bool = False,
    ) -> Any:
        """One kind of tensor at the layout's coordinates (``None`` if an entry lacks it).

        ``tensors[e]`` is table entry ``e``'s tensor of that kind, or ``None``.
        """
        kernels = self.kernels(part.key[1])
        take = kernels.bound("aten::take")
        pieces: list[Any] = []
        if earlier_only:
            small_index, indices = layout.small_first, layout.first_index
        elif later_only:
            small_index, indices = layout.small_second, layout.second_index
        else:
            small_index, indices = layout.small_index, layout.index
        if small_index is not None and small_index.numel():
            small = [tensors[e] for e in part.small]
            if any(t is None for t in small):
                return self._gather_each(part, layout, tensors, indices)
            import torch
            from torch._utils import _flatten_dense_tensors

            with torch.no_grad():  # parameters are leaves that need grad: no graph for a copy
                flat = _flatten_dense_tensors(small)  # type: ignore[no-untyped-call]
            pieces.append(take(flat, small_index))
        for position in layout.large:
            t = tensors[layout.entries[position]]
            if t is None:
                return None
            if indices[position].numel():
                pieces.append(take(t, indices[position]))
        if not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else kernels.bound("aten::cat")(pieces)

    def _gather_each(
        self, part: _Partition, layout: _Layout, tensors: Sequence[Any], indices: list[Any]
    ) -> Any:
        kernels = self.kernels(part.key[1])
        take = kernels.bound("aten::take")
        pieces = []
        for position, e in enumerate(layout.entries):
            t = tensors[e]
            if t is None:
                return None
            if indices[position].numel():
                pieces.append(take(t, indices[position]))
        if not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else kernels.bound("aten::cat")(pieces)

    def _raw_params(self) -> list[Any]:
        if self._params_raw is None:
            self._params_raw = [_param(e) for e in self.table.entries]
        return self._params_raw

    def _raw_states(self) -> tuple[list[Any], dict[str, list[Any]]] | None:
        """Each entry's state dict and state tensors by key, cached once every entry has state.

        The objects are stable (optimizers update state in place); one replaced behind the
        guard's back leaves the cached tensor stale, which the next comparison shows.
        """
        opt_state = self.optimizer.state
        if self._states_raw is not None and len(opt_state) == self._states_len:
            return self._states_raw
        dicts = [opt_state.get(e.param) for e in self.table.entries]
        if not all(dicts):
            return None
        keys = {k for d in dicts for k, v in d.items() if k != "step" and hasattr(v, "numel")}
        tensors = {key: [_state(opt_state, key)(e) for e in self.table.entries] for key in keys}
        self._states_raw = (dicts, tensors)
        self._states_len = len(opt_state)
        return self._states_raw

    # --------------------------------------------------------------------------------- pre

    def before_step(self, step: int) -> list[GuardFinding]:
        """Gather step ``step``'s inputs (and what the last step left), then check them.

        Synchronous mode returns the continuity findings at once; with the verification
        thread they come with :meth:`collect`.
        """
        start = time.thread_time()
        layouts = self._layouts_for(step)
        verifying = self.reference is not None and self.sampler.verified(step)

        opt_state = self.optimizer.state
        entries = self.table.entries
        params_raw = self._raw_params()
        cached = self._raw_states()
        grads_raw = [_grad(e) for e in entries] if verifying else None
        for part, layout in zip(self._partitions, layouts, strict=True):
            if not layout.entries:
                continue
            steps: list[float | None] = []
            has_state: list[bool] = []
            has_grad: list[bool] = []
            keys: set[str] = set()
            dicts = cached[0] if cached is not None else None
            for e in layout.entries:
                st = dicts[e] if dicts is not None else opt_state.get(entries[e].param)
                value: float | None = None
                if st:
                    value = float(st["step"]) if "step" in st else None
                    if dicts is None:
                        keys.update(k for k in st if k != "step")
                steps.append(value)
                has_state.append(bool(st))
                has_grad.append(grads_raw is not None and grads_raw[e] is not None)
            params = self._gather(part, layout, params_raw, later_only=False)
            grads = None
            if grads_raw is not None and any(has_grad):
                grads = (
                    self._gather(part, layout, grads_raw, later_only=True)
                    if all(has_grad)
                    else self._grads_of(part, layout, has_grad)
                )
            states = {}
            if cached is not None:
                state_lists = cached[1]
            else:
                state_lists = {
                    key: [_state(opt_state, key)(e) for e in entries] for key in sorted(keys)
                }
            for key in sorted(state_lists):
                gathered = self._gather(part, layout, state_lists[key], later_only=False)
                if gathered is not None:
                    states[key] = gathered
            reads = _Reads(params, grads, states, steps, has_state, has_grad, verifying)
            self._run(
                (f"before:{part.key}", step),
                functools.partial(self._job_before, part, layout, step, reads),
            )
        self.cost += time.thread_time() - start
        return []

    def _grads_of(self, part: _Partition, layout: _Layout, has_grad: list[bool]) -> Any:
        """Gradients of the entries that have one (others are skipped by the optimizer)."""
        kernels = self.kernels(part.key[1])
        take = kernels.bound("aten::take")
        pieces = []
        for position, e in enumerate(layout.entries):
            if has_grad[position]:
                g = _grad(self.table.entries[e])
                pieces.append(take(g, layout.second_index[position]))
        if not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else kernels.bound("aten::cat")(pieces)

    def _job_before(self, part: _Partition, layout: _Layout, step: int, reads: _Reads) -> Any:
        import numpy as np

        params_np = _numpy(reads.params)
        states_np = {key: _numpy(v) for key, v in reads.states.items()}
        findings: list[GuardFinding] = []
        if self.check_weights:
            findings.extend(self._continuity(part, layout, step, params_np, states_np))
        part.expected_params = None
        part.expected_state = None
        part.prepared = None
        grads_np = _numpy(reads.grads) if reads.grads is not None else None
        if reads.verifying and self.reference is not None:
            kernels = self.kernels(part.key[1])
            self._prepare(part, layout, kernels, reads, params_np, states_np, grads_np)
        sq = float(np.dot(grads_np, grads_np)) if grads_np is not None and grads_np.size else 0.0
        finite = bool(np.isfinite(grads_np).all()) if grads_np is not None else True
        digest = _digest([grads_np]) if grads_np is not None else 0
        return findings, sq, finite, digest

    def _continuity(
        self,
        part: _Partition,
        layout: _Layout,
        step: int,
        params: Any,
        states: dict[str, Any],
    ) -> list[GuardFinding]:
        import numpy as np

        findings: list[GuardFinding] = []
        expected_first = part.expected_params
        earlier = ~layout.second
        if expected_first is not None and expected_first.size == int(earlier.sum()):
            expected = params.copy()
            expected[earlier] = expected_first
            bad = _changed(expected, params)
            if bad.any():
                findings.extend(
                    self._per_entry(
                        layout,
                        bad,
                        lambda name, n, total, i: self._finding(
                            "guard.weights",
                            step,
                            f"weights of {name} changed between steps {step - 1} and {step} "
                            f"outside the optimizer at {n}/{total} sampled coordinates",
                            _example(name, layout.local[i], expected[i], params[i]),
                            subject=f"weights:{name}",
                        ),
                    )
                )
        if part.expected_state is None:
            return findings
        first = ~layout.second
        for key, variants in part.expected_state.items():
            got = states.get(key)
            if got is None:
                findings.append(
                    self._finding(
                        "guard.weights",
                        step,
                        f"optimizer state {key!r} disappeared between steps {step - 1} and {step}",
                        None,
                        subject=f"state-gone:{key}",
                    )
                )
                continue
            actual = got[first]
            if actual.size != variants[0].size:
                continue
            before = (part.state_before or {}).get(key)
            bad = self._compare_state(
                actual, variants, before, part.state_scale, part.state_exact, part.dtype
            )
            if part.state_mask is not None and part.state_mask.size == bad.size:
                bad &= part.state_mask  # coordinates the reference did not compute: unknown
            if bad.any():
                full = np.zeros(layout.size, dtype=bool)
                full[first] = bad
                findings.extend(self._per_entry(layout, full, self._state_message(step, key)))
        return findings

    def _state_message(self, step: int, key: str) -> Callable[[str, int, int, int], GuardFinding]:
        def build(name: str, n: int, total: int, i: int) -> GuardFinding:
            return self._finding(
                "guard.update",
                step,
                f"optimizer state {key!r} of {name} is not what step {step - 1} wrote by the "
                f"reference (changed in that step or since) at {n}/{total} sampled coordinates",
                f"state {key}",
                subject=f"state:{key}:{name}",
            )

        return build

    def _prepare(
        self,
        part: _Partition,
        layout: _Layout,
        kernels: Kernels,
        reads: _Reads,
        params_np: Any,
        states_np: dict[str, Any],
        grads_np: Any,
    ) -> None:
        """Compute step N's reference on the later sample's coordinates, before the step."""
        import numpy as np
        import torch

        assert self.reference is not None
        params_t, grads_t, states_t = reads.params, reads.grads, reads.states
        steps, has_state, has_grad = reads.steps, reads.has_state, reads.has_grad
        later = layout.second
        n = int(later.sum())
        counts = [len(ix) for ix in layout.second_index]
        entry_of = np.repeat(np.arange(len(layout.entries)), counts)  # per later coordinate
        groups = self.optimizer.param_groups
        entries = self.table.entries
        before = params_np[later]
        variants = [before.copy()]
        magnitude = np.zeros(n)
        exact = np.ones(n, dtype=bool)
        approx = np.full(n, np.nan)
        verify = np.zeros(n, dtype=bool)
        keys = self.reference.state_keys(groups[0]) if groups else ()
        state_variants: dict[str, list[Any]] = {}
        state_before: dict[str, Any] = {}
        for key in set(keys) | set(states_np):
            if key in states_np:
                state_before[key] = states_np[key][later]
        grad_scale = np.zeros(n)
        # Coordinates of parameters that share a group, a step count and the presence of a
        # gradient and of state are computed together.
        buckets: dict[tuple[Any, ...], list[int]] = {}
        for position, e in enumerate(layout.entries):
            group = entries[e].group
            if group in self.unsupported_groups:
                continue
            buckets.setdefault(
                (group, steps[position], has_grad[position], has_state[position]), []
            ).append(position)
        later_index = torch.from_numpy(np.flatnonzero(later))
        with_grads = np.repeat(np.asarray(has_grad, dtype=bool), counts)
        grad_position = np.cumsum(with_grads) - 1  # where each coordinate's gradient sits
        take = kernels.bound("aten::take")
        for (group_index, step_value, with_grad, with_state), positions in buckets.items():
            group = groups[group_index]
            mask = np.isin(entry_of, positions)
            coords = np.flatnonzero(mask)
            verify[coords] = True
            if not with_grad:
                # The optimizer skips parameters without a gradient: nothing may change.
                for key, values in state_before.items():
                    state_variants.setdefault(key, [values.copy()])
                continue
            idx = torch.from_numpy(coords)
            p_bucket = take(params_t, _on(later_index[idx], params_t))
            g_coords = grad_position[coords]
            g_bucket = take(grads_t, _on(torch.from_numpy(g_coords), grads_t))
            state = {
                key: take(states_t[key], _on(later_index[idx], states_t[key]))
                for key in self.reference.state_keys(group)
                if with_state and key in states_t
            }
            for key in self.reference.state_keys(group):
                if key not in state:
                    state[key] = torch.zeros_like(p_bucket)
            tail = None
            if group.get("fused"):
                sizes = np.asarray([entries[e].numel for e in layout.entries])
                tail = (layout.local[later] >= sizes[entry_of] - _TAIL)[coords]
            bucket = Bucket(
                group=group_index,
                params=p_bucket,
                grads=g_bucket,
                state=state,
                step=step_value if with_state else 0.0,
                has_state=with_state,
                tail=tail,
            )
            try:
                outcome: Outcome = self.reference.compute(kernels, group, bucket)
            except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                logger.warning("guard: reference failed for group %d: %s", group_index, exc)
                self.unsupported_groups[group_index] = f"reference failed: {exc}"
                verify[coords] = False
                continue
            outs = [_numpy(v) for v in outcome.variants]
            while len(variants) < len(outs):
                variants.append(variants[0].copy())
            for i in range(len(variants)):
                variants[i][coords] = outs[min(i, len(outs) - 1)]
            magnitude[coords] = outcome.magnitude
            exact[coords] = outcome.exact
            if outcome.approx is not None:
                approx[coords] = _numpy(outcome.approx)
            if grads_np is not None:
                grad_scale[coords] = np.abs(grads_np[g_coords])
            for key, vs in outcome.state.items():
                arrays = state_variants.setdefault(key, [state_before.get(key, np.zeros(n)).copy()])
                outs_s = [_numpy(v) for v in vs]
                while len(arrays) < len(outs_s):
                    arrays.append(arrays[0].copy())
                for i in range(len(arrays)):
                    arrays[i][coords] = outs_s[min(i, len(outs_s) - 1)]
        part.prepared = _Prepared(
            verify, variants, before, magnitude, exact, approx, state_variants, state_before,
            grad_scale, entry_of, list(layout.entries),
        )  # fmt: skip

    # -------------------------------------------------------------------------------- post

    def after_step(self, step: int, *, next_step: int | None) -> StepResult:
        """Gather what step ``step`` wrote (and what the next step must find).

        Returns the step's digests and continuity findings at once (the exchange needs them);
        the verification of the update is judged in the verification thread and comes with
        :meth:`collect` (at once in synchronous mode).
        """
        start = time.thread_time()
        result = StepResult(step=step)
        current = self._samples.get(step)
        if current is None:
            return result
        if next_step is not None:
            nexts = (
                self._result(("layout", next_step), wait=True)
                if next_step in self._ahead_steps
                else None
            )
            self._ahead_steps.discard(next_step)
            if nexts is None:
                upcoming = self.sampler.coordinates(next_step, self.table.sizes)
                nexts = [self._layout(part, current, upcoming) for part in self._partitions]
        else:
            nexts = [self._layout(part, None, current) for part in self._partitions]
        digests = []
        last = next_step is None
        for part, layout in zip(self._partitions, nexts, strict=True):
            if not layout.entries:
                continue
            # This step's coordinates only (the next layout's earlier sample): the next step
            # re-reads them to see whether anything changed them in between.
            values_t = self._gather(
                part, layout, self._raw_params(), later_only=last, earlier_only=not last
            )
            if values_t is None:
                continue
            values = _numpy(values_t)
            digests.append(values)
            self._run(
                (f"after:{part.key}", step),
                functools.partial(self._job_after, part, layout, step, values, last=last),
            )
        result.param_digest = _digest(digests)
        result.sampled = current.count
        if next_step is not None and nexts:
            self._layouts[next_step] = nexts
            self._samples[next_step] = nexts[0].sample
            self._ahead(nexts[0].sample, next_step + 1)
        before = self._collect_before(step, wait=True)
        result.grad_digest = before.grad_digest
        result.grad_sq_sum = before.grad_sq_sum
        result.grad_finite = before.grad_finite
        result.findings.extend(before.findings)
        self._pending[step] = StepResult(step=step)
        self._samples.pop(step, None)
        self.cost += time.thread_time() - start
        return result

    def _collect_before(self, step: int, *, wait: bool) -> StepResult:
        """The continuity findings and gradient figures of ``step`` (its before-job)."""
        out = StepResult(step=step)
        digests = []
        for part in self._partitions:
            value = self._result((f"before:{part.key}", step), wait=wait)
            if value is None:
                continue
            findings, sq, finite, digest = value
            out.findings.extend(findings)
            out.grad_sq_sum += sq
            out.grad_finite = out.grad_finite and finite
            digests.append(digest)
        if len(digests) == 1:
            out.grad_digest = digests[0]
        elif digests:
            out.grad_digest = _digest([_as_bytes(d) for d in digests])
        return out

    def collect(self, through: int) -> list[StepResult]:
        """Update verifications of the steps up to ``through`` (each once), oldest first.

        Waits for them: the guard collects step N's at the end of step N+1, so the thread has
        had a whole forward and backward to finish (in synchronous mode they are ready).
        """
        out = []
        for step in sorted(s for s in self._pending if s <= through):
            result = self._pending.pop(step)
            for part in self._partitions:
                value = self._result((f"after:{part.key}", step), wait=True)
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

    def _job_after(
        self, part: _Partition, layout: _Layout, step: int, values: Any, *, last: bool
    ) -> tuple[list[GuardFinding], int, float | None]:
        import numpy as np

        mine = np.ones(layout.size, dtype=bool) if last else ~layout.second
        actual = values
        prepared = part.prepared
        result = StepResult()
        if prepared is not None and prepared.before.size == actual.size:
            self._judge(part, layout, step, actual, prepared, mine, result)
            part.expected_state = prepared.state or None
            part.state_before = prepared.state_before
            part.state_scale = prepared.grad_scale
            part.state_exact = prepared.exact
            part.state_mask = prepared.verify
        else:
            part.expected_state = None
        part.prepared = None
        part.expected_params = values if self.check_weights and not last else None
        return result.findings, result.verified, result.residual

    def _judge(
        self,
        part: _Partition,
        layout: _Layout,
        step: int,
        actual: Any,
        prepared: _Prepared,
        mine: Any,
        result: StepResult,
    ) -> None:
        import numpy as np

        verify = prepared.verify
        if not verify.any():
            return
        bad, residual = self._compare(
            actual, prepared.variants, prepared.before, prepared.magnitude, prepared.exact,
            part.dtype,
        )  # fmt: skip
        bad &= verify
        result.verified += int(verify.sum())
        result.residual = max(result.residual or 0.0, residual)
        if bad.any():
            result.findings.append(self._update_finding(step, prepared, bad, actual))
            return
        fused = verify & ~np.isnan(prepared.approx)
        if fused.any():
            # The fused kernel replayed on the sample agrees; also hold it to the arithmetic
            # of SGD/Adam itself (a modified native kernel, or a kernel bug).
            bad2, _ = self._compare(
                actual[fused],
                [prepared.approx[fused]],
                prepared.before[fused],
                prepared.magnitude[fused],
                np.zeros(int(fused.sum()), dtype=bool),
                part.dtype,
            )
            if bad2.any():
                names = self._names(prepared, np.flatnonzero(fused)[bad2])
                result.findings.append(self._fused_finding(step, names, bad2))
        del layout, mine

    # -------------------------------------------------------------------------- judging

    def _compare(
        self,
        actual: Any,
        variants: list[Any],
        before: Any,
        magnitude: Any,
        exact: Any,
        dtype: Any,
    ) -> tuple[Any, float]:
        import numpy as np

        diff = None
        for ref in variants:
            d = _distance(actual, ref)
            diff = d if diff is None else np.minimum(diff, d)
        assert diff is not None
        scale = np.maximum(np.abs(before), np.abs(variants[0]))
        ulp = _spacing(scale, dtype)
        eps = _epsilon(dtype)
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
        actual: Any,
        variants: list[Any],
        before: Any,
        grads: Any,
        exact: Any,
        dtype: Any,
    ) -> Any:
        import numpy as np

        diff = None
        for ref in variants:
            d = _distance(actual, ref)
            diff = d if diff is None else np.minimum(diff, d)
        assert diff is not None
        # A state value is a running combination of its previous value and the gradient:
        # rounding differences scale with the larger of them, not with the (possibly
        # cancelling) result.
        scale = np.abs(variants[0])
        if before is not None and before.size == scale.size:
            scale = np.maximum(scale, np.abs(before))
        if grads is not None and grads.size == scale.size:
            scale = np.maximum(scale, grads)
        ulp = _spacing(scale, dtype)
        eps = _epsilon(dtype)
        strict = diff > self.config.exact_ulps * ulp
        loose = (diff > self.config.approx_ulps * ulp) & (
            diff > self.config.approx_rel * eps * scale
        )
        if exact is None or np.size(exact) != diff.size:
            return strict
        return np.where(exact, strict, loose)

    def _per_entry(
        self, layout: _Layout, bad: Any, build: Callable[[str, int, int, int], GuardFinding]
    ) -> list[GuardFinding]:
        import numpy as np

        out = []
        for e in np.unique(layout.owner[bad]).tolist():
            mine = layout.owner == e
            hits = np.flatnonzero(mine & bad)
            out.append(
                build(self.table.entries[e].name, int(hits.size), int(mine.sum()), int(hits[0]))
            )
        return out

    def _update_finding(
        self, step: int, prepared: _Prepared, bad: Any, actual: Any
    ) -> GuardFinding:
        import numpy as np

        where = np.flatnonzero(bad)
        names = self._names(prepared, where)
        ref = prepared.variants[0]
        before = prepared.before
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (actual[where] - before[where]) / (ref[where] - before[where])
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size and abs(float(np.median(ratio)) + 1.0) < 0.05:
            pattern = "update sign flipped"
        elif ratio.size:
            pattern = f"update scaled by about {float(np.median(ratio)):.3g}"
        else:
            pattern = "update perturbed"
        shown = ", ".join(names[:3]) + ("..." if len(names) > 3 else "")
        checked = int(prepared.verify.sum())
        return self._finding(
            "guard.update",
            step,
            f"the update of step {step} differs from trainwarden's reference "
            f"{self.reference.name if self.reference else ''} at {where.size}/{checked} "
            f"sampled coordinates of {shown}: {pattern}",
            pattern,
            subject=f"update:{names[0] if names else '?'}",
        )

    def _names(self, prepared: _Prepared, where: Any) -> list[str]:
        entries = self.table.entries
        return sorted({entries[prepared.entries[int(prepared.entry_of[i])]].name for i in where})

    def _fused_finding(self, step: int, names: list[str], bad: Any) -> GuardFinding:
        return GuardFinding(
            rule_id="guard.update",
            severity=Severity.MEDIUM,
            message=(
                f"the fused kernel's update of step {step} matches the same kernel replayed on "
                f"the sample but departs from {self.reference.name if self.reference else ''} "
                f"arithmetic beyond rounding at {int(bad.sum())}/{bad.size} coordinates of "
                f"{', '.join(names[:3])}: a kernel bug or modified native code"
            ),
            rank=self.rank,
            step=step,
            evidence="fused kernel vs reference arithmetic",
            established=False,
            subject="fused-kernel",
        )

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


def _param(entry: _Entry) -> Any:
    return _raw(entry.param, entry.sharded)


def _grad(entry: _Entry) -> Any:
    g = entry.param.grad
    return None if g is None or g.is_sparse else _raw(g, entry.sharded)


def _state(opt_state: Any, key: str) -> Callable[[_Entry], Any]:
    def get(entry: _Entry) -> Any:
        st = opt_state.get(entry.param)
        value = st.get(key) if st else None
        if value is None or not hasattr(value, "numel"):
            return None
        raw = _raw(value, entry.sharded)
        return raw if raw.numel() == entry.numel else None

    return get


def _device_index(positions: Any, device: str) -> Any:
    import numpy as np
    import torch

    index = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64))
    return index if device == "cpu" else index.to(device)


def _as_bytes(value: int) -> Any:
    import numpy as np

    return np.asarray([value], dtype=np.int64)


def _on(index: Any, like: Any) -> Any:
    return index if like.device.type == "cpu" else index.to(like.device)


# ------------------------------------------------------------------------------ numpy helpers


def _numpy(t: Any) -> Any:
    """The values of ``t`` as a float64 numpy array (bf16/fp16 decoded exactly)."""
    import numpy as np

    if isinstance(t, np.ndarray):
        return t.astype(np.float64, copy=False)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    import torch

    if t.dtype == torch.bfloat16:
        bits = t.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    if t.dtype in (torch.float16, torch.float32, torch.float64):
        return t.numpy().astype(np.float64)
    return t.to(torch.float64).numpy()


def _distance(a: Any, b: Any) -> Any:
    import numpy as np

    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    d = np.where(both_nan | same_inf, 0.0, d)
    return np.where(np.isnan(d), np.inf, d)


def _changed(old: Any, new: Any) -> Any:
    import numpy as np

    same = (old == new) | (np.isnan(old) & np.isnan(new))
    return ~same


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
    h = hashlib.blake2b(digest_size=8, person=b"tw.sample")
    for a in arrays:
        h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def full_digest(tensors: Sequence[Any]) -> int:
    """A digest of every byte of ``tensors`` (local shards), for full comparisons."""
    import torch

    h = hashlib.sha256(b"tw.full")
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
