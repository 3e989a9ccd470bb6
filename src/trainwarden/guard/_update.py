"""Update verification and out-of-band edits, on the secret sample of coordinates.

Before step N the guard reads the sampled coordinates of every parameter, gradient and
optimizer-state tensor; after it, the values the optimizer wrote. The reference
(:mod:`trainwarden.guard._reference`) recomputes the step on the sample and any difference
beyond the tolerance of the arithmetic path is a finding (T4). In the same read after step N
the guard also takes the coordinates of step N+1's sample, so that before step N+1 it can tell
whether anything changed the weights or the optimizer state between the two steps, outside the
optimizer (weights edited between steps, state zeroed, a tensor swapped).
"""

from __future__ import annotations

import hashlib
import logging
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

__all__ = ["ParamTable", "UpdateCheck", "local"]

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
class _Read:
    """Values read at the sampled coordinates of one tensor (torch, and float64 numpy)."""

    entry: int
    index: Any  # torch int64 tensor of local indices
    param: Any
    grad: Any | None
    state: dict[str, Any]
    step: float | None
    has_state: bool
    np_param: Any = None
    np_grad: Any = None
    np_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Pending:
    step: int
    sample: Sample
    reads: list[_Read]
    verify: bool
    started: float
    grad_digest: int = 0


@dataclass
class _Expected:
    """Values after step N at step N+1's coordinates (what pre(N+1) must find)."""

    step: int
    sample: Sample
    values: dict[int, tuple[Any, dict[str, Any]]]  # entry -> (param np, state np by key)


@dataclass
class StepResult:
    """What the update check learnt about one step."""

    verified: int = 0
    residual: float | None = None
    param_digest: int = 0
    grad_digest: int = 0
    grad_sq_sum: float = 0.0
    grad_finite: bool = True
    sampled: int = 0
    findings: list[GuardFinding] = field(default_factory=list)


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
        self._pending: _Pending | None = None
        self._expected: _Expected | None = None
        self.kernel_problems: list[str] = []
        self._kernels: dict[str, Kernels] = {}
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
        """Capture the kernels of every device the parameters live on (at attach)."""
        for entry in self.table.entries:
            self.kernels(local(entry.param).device.type)

    # --------------------------------------------------------------------------------- pre

    def before_step(self, step: int) -> list[GuardFinding]:
        """Read the sample of ``step`` and check it against the values after the last step."""
        start = time.perf_counter()
        verify = self.reference is not None and self.sampler.verified(step)
        expected = self._expected
        if expected is not None and expected.step == step - 1:
            sample = expected.sample
        else:
            sample = self.sampler.coordinates(step, self.table.sizes)
        reads = self._read(sample, grads=verify, state=True)
        findings: list[GuardFinding] = []
        if self.check_weights and expected is not None and expected.step == step - 1:
            findings.extend(self._continuity(step, reads, expected))
        self._expected = None
        self._pending = _Pending(step, sample, reads, verify, start)
        self.cost += time.perf_counter() - start
        return findings

    def _read(self, sample: Sample, *, grads: bool, state: bool) -> list[_Read]:
        import torch

        reads: list[_Read] = []
        opt_state = self.optimizer.state
        entries = self.table.entries
        for index, positions in sample.per_param:
            entry = entries[index]
            p = entry.param
            sharded = entry.sharded
            tensor = _raw(p, sharded)
            kernels = self.kernels(tensor.device.type)
            idx = torch.from_numpy(positions)
            if tensor.device.type != "cpu":
                idx = idx.to(tensor.device)
            param = kernels("aten::take", tensor, idx)
            grad = None
            if grads:
                g = p.grad
                if g is not None:
                    g = _raw(g, sharded)
                    grad = None if g.is_sparse else kernels("aten::take", g, idx)
            st = opt_state.get(p) if state else None
            values: dict[str, Any] = {}
            step_value: float | None = None
            has_state = bool(st)
            if st:
                numel = entry.numel
                for key, value in st.items():
                    if key == "step":
                        step_value = float(value.item()) if hasattr(value, "item") else float(value)
                    elif hasattr(value, "numel"):
                        v = _raw(value, sharded)
                        if v.numel() == numel:
                            values[key] = kernels("aten::take", v, idx)
            reads.append(_Read(index, idx, param, grad, values, step_value, has_state))
        self._fill_numpy(reads)
        return reads

    def _fill_numpy(self, reads: list[_Read]) -> None:
        """Convert every read to float64 numpy with one conversion per kind and dtype."""
        params = _batch_numpy(self, [r.param for r in reads])
        grads = _batch_numpy(self, [r.grad for r in reads])
        for r, p, g in zip(reads, params, grads, strict=True):
            r.np_param, r.np_grad = p, g
        keys = {k for r in reads for k in r.state}
        for key in keys:
            values = _batch_numpy(self, [r.state.get(key) for r in reads])
            for r, v in zip(reads, values, strict=True):
                if v is not None:
                    r.np_state[key] = v

    def _continuity(self, step: int, reads: list[_Read], expected: _Expected) -> list[GuardFinding]:
        import numpy as np

        findings: list[GuardFinding] = []
        olds = []
        news = []
        for read in reads:
            before = expected.values.get(read.entry)
            if before is None:
                continue
            olds.append(before[0])
            news.append(read.np_param)
            for key, old in before[1].items():
                new = read.np_state.get(key)
                olds.append(old)
                news.append(new if new is not None else np.full_like(old, np.nan) + 1)
        if olds and not _changed(np.concatenate(olds), np.concatenate(news)).any():
            return findings  # the common case: one comparison for everything
        for read in reads:
            before = expected.values.get(read.entry)
            if before is None:
                continue
            entry = self.table.entries[read.entry]
            old_param, old_state = before
            now = read.np_param
            bad = _changed(old_param, now)
            if bad.any():
                findings.append(
                    self._finding(
                        "guard.weights",
                        step,
                        f"weights of {entry.name} changed between steps {step - 1} and "
                        f"{step} outside the optimizer at {int(bad.sum())}/{bad.size} "
                        "sampled coordinates",
                        _example(entry.name, read.index, bad, old_param, now),
                        subject=f"weights:{entry.name}",
                    )
                )
            for key, old in old_state.items():
                new_np = read.np_state.get(key)
                if new_np is None:
                    findings.append(
                        self._finding(
                            "guard.weights",
                            step,
                            f"optimizer state {key!r} of {entry.name} disappeared between "
                            f"steps {step - 1} and {step}",
                            None,
                            subject=f"state:{entry.name}:{key}",
                        )
                    )
                    continue
                bad = _changed(old, new_np)
                if bad.any():
                    findings.append(
                        self._finding(
                            "guard.weights",
                            step,
                            f"optimizer state {key!r} of {entry.name} changed between steps "
                            f"{step - 1} and {step} outside the optimizer at "
                            f"{int(bad.sum())}/{bad.size} sampled coordinates",
                            _example(f"{entry.name}.{key}", read.index, bad, old, new_np),
                            subject=f"state:{entry.name}:{key}",
                        )
                    )
        return findings

    # -------------------------------------------------------------------------------- post

    def after_step(self, step: int, *, next_step: int | None) -> StepResult:
        """Verify ``step``'s update on its sample and read the next step's coordinates."""
        start = time.perf_counter()
        result = StepResult()
        pending = self._pending
        self._pending = None
        if pending is None or pending.step != step:
            return result
        next_sample = (
            self.sampler.coordinates(next_step, self.table.sizes)
            if next_step is not None and self.check_weights
            else None
        )
        after = self._read_after(pending, next_sample)
        result.sampled = pending.sample.count
        if pending.verify and self.reference is not None:
            self._verify(step, pending, after, result)
        result.param_digest = _digest(after[read.entry][0] for read in pending.reads)
        if pending.verify:
            result.grad_digest, result.grad_sq_sum, result.grad_finite = _grad_summary(
                pending.reads
            )
        self.cost += time.perf_counter() - start
        return result

    def _read_after(
        self, pending: _Pending, next_sample: Sample | None
    ) -> dict[int, tuple[Any, dict[str, Any]]]:
        """After-values at this step's sample (and, into ``_expected``, at the next one's)."""
        import numpy as np
        import torch

        nxt: dict[int, Any] = dict(next_sample.per_param) if next_sample is not None else {}
        this: dict[int, Any] = {read.entry: read for read in pending.reads}
        opt_state = self.optimizer.state
        order = sorted(set(this) | set(nxt))
        split: list[int] = []
        params: list[Any] = []
        states: dict[str, list[Any]] = {}
        for position, entry_index in enumerate(order):
            entry = self.table.entries[entry_index]
            tensor = _raw(entry.param, entry.sharded)
            kernels = self.kernels(tensor.device.type)
            own = this.get(entry_index)
            extra = nxt.get(entry_index)
            if own is not None and extra is not None:
                positions = np.concatenate((own.index.cpu().numpy(), extra))
                idx = torch.from_numpy(positions).to(tensor.device)
            elif own is not None:
                idx = own.index
            else:
                idx = torch.from_numpy(extra).to(tensor.device)
            split.append(0 if own is None else int(own.index.numel()))
            params.append(kernels("aten::take", tensor, idx))
            st = opt_state.get(entry.param)
            if st:
                for key, value in st.items():
                    if key != "step" and hasattr(value, "numel"):
                        v = _raw(value, entry.sharded)
                        if v.numel() == entry.numel:
                            states.setdefault(key, [None] * len(order))[position] = kernels(
                                "aten::take", v, idx
                            )
        np_params = _batch_numpy(self, params)
        np_states = {k: _batch_numpy(self, v) for k, v in states.items()}
        out: dict[int, tuple[Any, dict[str, Any]]] = {}
        expected: dict[int, tuple[Any, dict[str, Any]]] = {}
        for position, entry_index in enumerate(order):
            n_own = split[position]
            values = np_params[position]
            state_values = {k: v[position] for k, v in np_states.items() if v[position] is not None}
            if entry_index in this:
                out[entry_index] = (values[:n_own], {k: v[:n_own] for k, v in state_values.items()})
            if entry_index in nxt:
                expected[entry_index] = (
                    values[n_own:],
                    {k: v[n_own:] for k, v in state_values.items()},
                )
        if next_sample is not None:
            self._expected = _Expected(pending.step, next_sample, expected)
        return out

    def _verify(
        self,
        step: int,
        pending: _Pending,
        after: dict[int, tuple[Any, dict[str, Any]]],
        result: StepResult,
    ) -> None:
        import numpy as np

        assert self.reference is not None
        groups = self.optimizer.param_groups
        buckets: dict[tuple[Any, ...], list[_Read]] = {}
        for read in pending.reads:
            entry = self.table.entries[read.entry]
            if entry.group in self.unsupported_groups:
                continue
            key = (
                entry.group,
                str(read.param.dtype),
                str(read.param.device),
                read.step,
                read.grad is not None,
                read.has_state,
                tuple(sorted(read.state)),
            )
            buckets.setdefault(key, []).append(read)
        worst = 0.0
        verified = 0
        for key, reads in buckets.items():
            group_index = key[0]
            group = groups[group_index]
            has_grad = key[4]
            kernels = self.kernels(reads[0].param.device.type)
            actual = np.concatenate([after[r.entry][0] for r in reads])
            actual_state = {
                k: np.concatenate(
                    [after[r.entry][1].get(k, _nan_like(after[r.entry][0])) for r in reads]
                )
                for k in self.reference.state_keys(group)
            }
            before = np.concatenate([r.np_param for r in reads])
            if not has_grad:
                # The optimizer skips parameters without a gradient: nothing may change.
                outcome_params = [before]
                outcome_state = {
                    k: [np.concatenate([r.np_state[k] for r in reads])]
                    for k in actual_state
                    if all(k in r.np_state for r in reads)
                }
                magnitude = np.zeros_like(before)
                exact = True
                approx = None
            else:
                bucket = self._bucket(kernels, group_index, group, reads)
                try:
                    outcome: Outcome = self.reference.compute(kernels, group, bucket)
                except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                    logger.warning("guard: reference failed for group %d: %s", group_index, exc)
                    self.unsupported_groups[group_index] = f"reference failed: {exc}"
                    continue
                outcome_params = [_numpy(v) for v in outcome.variants]
                outcome_state = {k: [_numpy(v) for v in vs] for k, vs in outcome.state.items()}
                magnitude = outcome.magnitude
                exact = outcome.exact
                approx = None if outcome.approx is None else _numpy(outcome.approx)
            dtype = reads[0].param.dtype
            bad, residual = self._compare(actual, outcome_params, before, magnitude, exact, dtype)
            worst = max(worst, residual)
            verified += int(actual.size)
            if bad.any():
                result.findings.append(
                    self._update_finding(step, reads, bad, before, actual, outcome_params[0])
                )
            elif approx is not None:
                # The fused kernel replayed on the sample agrees; also hold it to the
                # arithmetic of SGD/Adam itself (a modified native kernel, or a kernel bug).
                bad2, _ = self._compare(actual, [approx], before, magnitude, False, dtype)
                if bad2.any():
                    result.findings.append(self._fused_finding(step, reads, bad2))
            grads_np = np.abs(np.concatenate([r.np_grad for r in reads])) if has_grad else None
            for k, variants in outcome_state.items():
                got = actual_state.get(k)
                if got is None:
                    continue
                old = [r.np_state[k] for r in reads if k in r.np_state]
                before_state = np.concatenate(old) if len(old) == len(reads) else np.zeros_like(got)
                sbad = self._compare_state(got, variants, before_state, grads_np, exact, dtype)
                if sbad.any():
                    names = sorted({self.table.entries[r.entry].name for r in reads})
                    result.findings.append(
                        self._finding(
                            "guard.update",
                            step,
                            f"optimizer state {k!r} written by step {step} differs from the "
                            f"reference at {int(sbad.sum())}/{sbad.size} sampled coordinates "
                            f"({', '.join(names[:3])}{'...' if len(names) > 3 else ''})",
                            f"state {k}",
                            subject=f"update-state:{k}:{names[0]}",
                        )
                    )
        result.verified = verified
        result.residual = worst if verified else None
        if verified:
            self.verified_steps += 1
            self.checked += verified

    def _bucket(
        self, kernels: Kernels, group_index: int, group: dict[str, Any], reads: list[_Read]
    ) -> Bucket:
        import numpy as np
        import torch

        def cat(tensors: Sequence[Any]) -> Any:
            return tensors[0] if len(tensors) == 1 else kernels("aten::cat", list(tensors))

        params = cat([r.param for r in reads])
        grads = cat([r.grad for r in reads])
        state: dict[str, Any] = {}
        assert self.reference is not None
        for key in self.reference.state_keys(group):
            if reads[0].has_state and all(key in r.state for r in reads):
                state[key] = cat([r.state[key] for r in reads])
            else:
                state[key] = torch.zeros_like(params)
        tails = []
        for r in reads:
            n = self.table.entries[r.entry].numel
            tails.append(r.index.cpu().numpy() >= n - _TAIL)
        return Bucket(
            group=group_index,
            params=params,
            grads=grads,
            state=state,
            step=reads[0].step if reads[0].has_state else 0.0,
            has_state=reads[0].has_state,
            tail=np.concatenate(tails),
        )

    def _compare(
        self,
        actual: Any,
        variants: list[Any],
        before: Any,
        magnitude: Any,
        exact: bool,
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
        if exact:
            bad = diff > self.config.exact_ulps * ulp
        else:
            eps = _epsilon(dtype)
            bad = (diff > self.config.approx_ulps * ulp) & (
                diff > self.config.approx_rel * eps * magnitude
            )
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
        grads: Any | None,
        exact: bool,
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
        scale = np.maximum(np.abs(variants[0]), np.abs(before))
        if grads is not None:
            scale = np.maximum(scale, grads)
        ulp = _spacing(scale, dtype)
        if exact:
            out: Any = diff > self.config.exact_ulps * ulp
            return out
        eps = _epsilon(dtype)
        return (diff > self.config.approx_ulps * ulp) & (
            diff > self.config.approx_rel * eps * scale
        )

    def _fused_finding(self, step: int, reads: list[_Read], bad: Any) -> GuardFinding:
        names = sorted({self.table.entries[r.entry].name for r in reads})
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

    def _update_finding(
        self,
        step: int,
        reads: list[_Read],
        bad: Any,
        before: Any,
        actual: Any,
        ref: Any,
    ) -> GuardFinding:
        import numpy as np

        names: list[str] = []
        offsets = np.cumsum([0] + [int(r.index.numel()) for r in reads])
        for i, r in enumerate(reads):
            if bad[offsets[i] : offsets[i + 1]].any():
                names.append(self.table.entries[r.entry].name)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (actual[bad] - before[bad]) / (ref[bad] - before[bad])
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size and abs(float(np.median(ratio)) + 1.0) < 0.05:
            pattern = "update sign flipped"
        elif ratio.size:
            pattern = f"update scaled by about {float(np.median(ratio)):.3g}"
        else:
            pattern = "update perturbed"
        shown = ", ".join(names[:3]) + ("..." if len(names) > 3 else "")
        return self._finding(
            "guard.update",
            step,
            f"the update of step {step} differs from trainwarden's reference "
            f"{self.reference.name if self.reference else ''} at {int(bad.sum())}/{bad.size} "
            f"sampled coordinates of {shown}: {pattern}",
            pattern,
            subject=f"update:{names[0] if names else '?'}",
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

    def rebaseline(self) -> None:
        """Forget the expected values (a legitimate reload replaced weights and state)."""
        self._expected = None


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


def _batch_numpy(check: UpdateCheck, tensors: list[Any]) -> list[Any]:
    """``_numpy`` of each tensor (``None`` stays ``None``), one conversion per dtype and device."""
    import numpy as np

    out: list[Any] = [None] * len(tensors)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tensors):
        if t is not None:
            groups.setdefault((str(t.dtype), t.device.type), []).append(i)
    for (_, device), members in groups.items():
        parts = [tensors[i] for i in members]
        joined = parts[0] if len(parts) == 1 else check.kernels(device)("aten::cat", parts)
        values = _numpy(joined)
        bounds = np.cumsum([int(p.numel()) for p in parts])[:-1]
        for i, piece in zip(members, np.split(values, bounds), strict=True):
            out[i] = piece
    return out


def _nan_like(a: Any) -> Any:
    import numpy as np

    return np.full_like(a, np.nan)


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


def _example(name: str, index: Any, bad: Any, old: Any, new: Any) -> str:
    import numpy as np

    i = int(np.flatnonzero(bad)[0])
    position = int(index.cpu()[i])
    return f"{name}[{position}]: {old[i]:.6g} -> {new[i]:.6g}"


def _digest(arrays: Any) -> int:
    h = hashlib.blake2b(digest_size=8, person=b"tw.sample")
    for a in arrays:
        h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def _grad_summary(reads: list[_Read]) -> tuple[int, float, bool]:
    import numpy as np

    h = hashlib.blake2b(digest_size=8, person=b"tw.grads")
    sq = 0.0
    finite = True
    for r in reads:
        if r.np_grad is None:
            continue
        g = r.np_grad
        h.update(g.tobytes())
        if not np.isfinite(g).all():
            finite = False
        sq += float(np.dot(g, g)) if g.size else 0.0
    return int.from_bytes(h.digest(), "little", signed=True), sq, finite


def full_digest(tensors: Sequence[Any]) -> int:
    """A digest of every byte of ``tensors`` (local shards), for full comparisons."""
    h = hashlib.sha256(b"tw.full")
    for t in tensors:
        x = local(t)
        if x.device.type != "cpu":
            x = x.cpu()
        if not x.is_contiguous():
            x = x.contiguous()
        import torch

        data = x.view(torch.uint8) if x.dtype != torch.uint8 and x.numel() else x
        h.update(data.numpy().tobytes() if data.numel() else b"")
    return int.from_bytes(h.digest()[:8], "little", signed=True)


#: A callable that maps tensors to a full digest (tests inject slower, exact ones).
FullDigest = Callable[[Sequence[Any]], int]
