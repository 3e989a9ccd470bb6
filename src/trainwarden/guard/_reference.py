"""trainwarden's own reference SGD, Adam and AdamW, applied to sampled coordinates.

Each reference performs the operations of torch's implementation in the same order and dtype
(single-tensor and multi-tensor paths; the fused kernels are replayed through the captured
native kernel and also compared with the single-tensor arithmetic within an analytic
tolerance), through kernels captured before any override could be registered
(:mod:`trainwarden.guard._kernels`). On CPU in fp32 and bf16 the result equals what torch
wrote, bit for bit, for every sampled coordinate.

Optimizers whose step is not torch's own ``SGD.step`` / ``Adam.step`` (``AdamW`` inherits the
latter), or whose settings take another arithmetic path (``differentiable``, ``capturable``,
complex or sparse tensors), are reported as not verified, with the reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainwarden.guard._kernels import Kernels

__all__ = [
    "Bucket",
    "Outcome",
    "Reference",
    "reference_for",
]


@dataclass
class Bucket:
    """Sampled values of the parameters of one group that share dtype, device and step.

    ``params`` and ``state`` hold the values before the step (fresh tensors the guard owns);
    ``tail`` marks coordinates in the last 64 positions of their tensor (fused CPU kernels
    process those with scalar code, whose rounding may differ from the vector code).
    """

    group: int
    params: Any
    grads: Any
    state: dict[str, Any]
    step: float | None
    has_state: bool
    tail: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    # (start, end, weight decay) when the bucket spans groups that differ only in their
    # weight decay (computed together, the decay applied per segment); None: the group's.
    decays: list[tuple[int, int, float]] | None = None

    def decay_segments(self, group_decay: float) -> list[tuple[int, int, float]]:
        """The weight decay of each segment of the bucket."""
        if self.decays is not None:
            return self.decays
        return [(0, int(self.params.numel()), group_decay)]

    def decay_vector(self, group_decay: float) -> Any:
        """The weight decay of each coordinate (float64 numpy), for magnitudes."""
        import numpy as np

        out = np.zeros(int(self.params.numel()))
        for a, b, wd in self.decay_segments(group_decay):
            out[a:b] = wd
        return out


@dataclass
class Outcome:
    """What the reference says the step must produce for a bucket.

    ``variants`` are the acceptable parameter vectors (one normally; two for fused CPU
    kernels whose vector and scalar code round differently); ``state`` the state vectors;
    ``exact`` whether the result must match bit for bit (else within the analytic tolerance).
    :meth:`magnitude` gives the sum of absolute contributions to each coordinate's update
    (the scale against which rounding differences are judged); it is computed only when a
    coordinate does not match bit for bit, which in fp32 on CPU is never on an honest run.
    """

    variants: list[Any]
    state: dict[str, list[Any]]
    magnitude_of: Callable[[], Any]
    exact: bool
    approx: Any = None
    _magnitude: Any = None

    def magnitude(self) -> Any:
        """The update's magnitude per coordinate (float64 numpy array), computed once."""
        if self._magnitude is None:
            self._magnitude = self.magnitude_of()
        return self._magnitude


def _scalar(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


def _wrapped(value: float, dtype: Any = None) -> Any:
    """A 0-dim CPU tensor: what torch makes of a scalar operand.

    A Python scalar passed to ``x.mul_(s)`` stays a float64 value that the kernel converts to
    its compute type; the ``.Scalar`` overloads the CPU foreach loops call round it to the
    tensor's dtype first (visible in bf16). ``dtype`` selects the latter. Cached: the
    constants (betas, eps, 1.0) recur every step, and kernels only read their scalars.
    """
    return _scalar_tensor(value, math.copysign(1.0, value) < 0, dtype)


@functools.lru_cache(maxsize=512)
def _scalar_tensor(value: float, negative: bool, dtype: Any) -> Any:
    # ``negative`` keeps -0.0 and 0.0 apart (they compare and hash equal).
    import torch

    return torch.tensor(value, dtype=dtype or torch.float64)


class _Ops:
    """Elementwise operations on the captured kernels, in one of torch's code paths.

    ``foreach``: replay CUDA's multi-tensor kernels on one-element lists (on CPU they loop over
    the single-tensor kernels: same arithmetic). ``scalar_code``: write every result into a
    strided tensor, which sends CPU kernels through their scalar code for every element (the
    code torch used for the last elements of each parallel chunk).
    """

    def __init__(self, kernels: Kernels, *, foreach: bool, scalar_code: bool = False) -> None:
        self.k = kernels
        # On CPU the foreach kernels loop over the single-tensor operators through the
        # dispatcher, so replaying them would also replay an override: use the captured
        # single-tensor kernels with the scalars rounded as the .Scalar overloads round them.
        self.foreach = foreach and kernels.device_type != "cpu"
        self.cpu_foreach = foreach and kernels.device_type == "cpu"
        self.scalar_code = scalar_code
        self.unknown_rounding = False

    def _scalar(self, op: str, value: float, like: Any) -> Any:
        if not self.cpu_foreach:
            return _wrapped(value)
        rounds = self.k.foreach_rounds(op, like.dtype)
        if rounds is None:
            self.unknown_rounding = True
        return _wrapped(value, like.dtype if rounds else None)

    def _out(self, like: Any) -> Any:
        import torch

        n = int(like.numel())
        if self.scalar_code:
            return torch.empty(2 * n, dtype=like.dtype, device=like.device)[::2]
        return torch.empty(n, dtype=like.dtype, device=like.device)

    def copy(self, x: Any) -> Any:
        # A fresh tensor with the same values (x * 1 is exact), through a captured kernel.
        return self.k("aten::mul.out", x, _wrapped(1.0), out=self._out(x))

    def neg(self, x: Any) -> Any:
        if self.foreach and self.k.has("aten::_foreach_neg"):
            return self.k("aten::_foreach_neg", [x])[0]
        return self.k("aten::neg.out", x, out=self._out(x))

    def add(self, x: Any, y: Any, alpha: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_add.List"):
            return self.k("aten::_foreach_add.List", [x], [y], alpha=alpha)[0]
        return self.k("aten::add.out", x, y, alpha=alpha, out=self._out(x))

    def add_(self, x: Any, y: Any, alpha: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_add_.List"):
            self.k("aten::_foreach_add_.List", [x], [y], alpha=alpha)
            return x
        return self.k("aten::add_.Tensor", x, y, alpha=alpha)

    def add_scalar_(self, x: Any, value: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_add_.Scalar"):
            self.k("aten::_foreach_add_.Scalar", [x], value)
            return x
        return self.k("aten::add_.Tensor", x, self._scalar("add", value, x))

    def mul_scalar_(self, x: Any, value: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_mul_.Scalar"):
            self.k("aten::_foreach_mul_.Scalar", [x], value)
            return x
        return self.k("aten::mul_.Tensor", x, self._scalar("mul", value, x))

    def lerp_(self, x: Any, end: Any, weight: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_lerp_.Scalar"):
            self.k("aten::_foreach_lerp_.Scalar", [x], [end], weight)
            return x
        return self.k("aten::lerp_.Scalar", x, end, weight)

    def addcmul_(self, x: Any, a: Any, b: Any, value: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_addcmul_.Scalar"):
            self.k("aten::_foreach_addcmul_.Scalar", [x], [a], [b], value)
            return x
        return self.k("aten::addcmul_", x, a, b, value=value)

    def sqrt(self, x: Any) -> Any:
        if self.foreach and self.k.has("aten::_foreach_sqrt"):
            return self.k("aten::_foreach_sqrt", [x])[0]
        return self.k("aten::sqrt.out", x, out=self._out(x))

    def div_scalar(self, x: Any, value: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_div_.ScalarList"):
            self.k("aten::_foreach_div_.ScalarList", [x], [value])
            return x
        return self.k("aten::div.out", x, self._scalar("div", value, x), out=self._out(x))

    def maximum(self, x: Any, y: Any) -> Any:
        if self.foreach and self.k.has("aten::_foreach_maximum_.List"):
            x = self.copy(x)
            self.k("aten::_foreach_maximum_.List", [x], [y])
            return x
        return self.k("aten::maximum.out", x, y, out=self._out(x))

    def addcdiv_(self, x: Any, a: Any, b: Any, value: float) -> Any:
        if self.foreach and self.k.has("aten::_foreach_addcdiv_.ScalarList"):
            self.k("aten::_foreach_addcdiv_.ScalarList", [x], [a], [b], [value])
            return x
        return self.k("aten::addcdiv_", x, a, b, value=value)


def _paths(kernels: Kernels, bucket: Bucket, *, foreach: bool) -> list[_Ops]:
    """The code paths whose results are acceptable for ``bucket`` (one, or vector and scalar)."""
    paths = [_Ops(kernels, foreach=foreach)]
    if kernels.scalar_code_differs(bucket.params.dtype):
        paths.append(_Ops(kernels, foreach=foreach, scalar_code=True))
    return paths


def _exact(kernels: Kernels, bucket: Bucket, paths: list[_Ops]) -> bool:
    """Whether the step must match the reference bit for bit.

    It must when every element of a tensor goes through one code path whatever its position
    (fp32 CPU kernels here, GPU kernels). Where scalar and vector code round differently
    (bf16 on CPU) a coordinate may mix both paths across the step's operations, so it is
    judged within the analytic tolerance instead (two units in the last place, 8 epsilons of
    the update), and so is a foreach scalar whose rounding could not be reproduced.
    """
    if any(ops.unknown_rounding for ops in paths):
        return False
    return not kernels.scalar_code_differs(bucket.params.dtype)


class Reference:
    """Recomputes one optimizer's step on sampled coordinates.

    Attributes:
        name: ``"SGD"``, ``"Adam"`` or ``"AdamW"``.
        state_keys: The per-parameter state tensors the step reads and writes.
    """

    name = "?"

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """State tensors of a parameter of ``group`` (in the optimizer's ``state[p]``)."""
        raise NotImplementedError

    def mode(self, group: dict[str, Any]) -> str:
        """``"single"``, ``"foreach"`` or ``"fused"``: the path torch takes for ``group``."""
        if group.get("fused"):
            return "fused"
        if group.get("foreach"):
            return "foreach"
        return "single"

    def unsupported(self, group: dict[str, Any]) -> str | None:
        """Why ``group`` cannot be verified, or ``None``."""
        if group.get("differentiable"):
            return "differentiable=True takes another arithmetic path"
        if any(_is_complex(p) for p in group.get("params", ())):
            # torch steps complex parameters as view_as_real pairs; the sample reads them as
            # one number each.
            return "complex parameters take another arithmetic path (view_as_real)"
        return None

    def compute(self, kernels: Kernels, group: dict[str, Any], bucket: Bucket) -> Outcome:
        """What the step must write for ``bucket``."""
        raise NotImplementedError


class AdamReference(Reference):
    """torch.optim.Adam and AdamW (``decoupled_weight_decay``), amsgrad and maximize."""

    name = "Adam"

    def state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        keys = ("exp_avg", "exp_avg_sq")
        return (*keys, "max_exp_avg_sq") if group.get("amsgrad") else keys

    def unsupported(self, group: dict[str, Any]) -> str | None:
        reason = super().unsupported(group)
        if reason is None and group.get("capturable") and not group.get("fused"):
            reason = "capturable=True computes bias corrections as tensors (another path)"
        betas = group.get("betas") or ()
        if reason is None and not group.get("fused") and any(hasattr(b, "item") for b in betas):
            # lerp_ and the bias corrections become tensor operations: half the coordinates
            # differ from the float path's in their last bit.
            reason = "betas as tensors take another arithmetic path"
        return reason

    def compute(self, kernels: Kernels, group: dict[str, Any], bucket: Bucket) -> Outcome:
        import numpy as np

        lr = _scalar(group["lr"])
        beta1, beta2 = (_scalar(b) for b in group["betas"])
        eps = float(group["eps"])
        wd = float(group["weight_decay"])
        decoupled = bool(group.get("decoupled_weight_decay", False))
        amsgrad = bool(group.get("amsgrad", False))
        maximize = bool(group.get("maximize", False))
        # torch keeps the step count in a float32 tensor and reads it back as a Python float.
        step = float(np.float32(np.float32(bucket.step or 0.0) + np.float32(1.0)))
        mode = self.mode(group)
        lr_tensor = group["lr"] if hasattr(group["lr"], "item") and mode == "single" else None
        paths = _paths(kernels, bucket, foreach=(mode == "foreach"))
        results = [
            self._single(
                ops,
                bucket,
                lr,
                beta1,
                beta2,
                eps,
                wd,
                decoupled,
                amsgrad,
                maximize,
                step,
                lr_tensor=lr_tensor,
            )
            for ops in paths
        ]
        exact = _exact(kernels, bucket, paths)
        first = results[0]
        magnitude = functools.partial(
            _adam_magnitude, first, bucket, lr, wd, decoupled, step, beta1
        )
        params = [r["param"] for r in results]
        state = {k: [r["state"][k] for r in results] for k in first["state"]}
        if mode != "fused":
            return Outcome(params, state, magnitude, exact=exact)
        op, fused_lr = _fused_lr(
            "aten::_fused_adamw_" if decoupled else "aten::_fused_adam_", group, lr
        )
        fused = _fused_variants(
            kernels,
            op,
            bucket,
            self.state_keys(group),
            step,
            lr=fused_lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=wd,
            eps=eps,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        if fused is None:  # no captured fused kernel: own arithmetic, analytic tolerance
            return Outcome(params, state, magnitude, exact=False)
        fused_params, fused_states = fused
        return Outcome(fused_params, fused_states, magnitude, exact=exact, approx=first["param"])

    def _single(
        self,
        ops: _Ops,
        bucket: Bucket,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        wd: float,
        decoupled: bool,
        amsgrad: bool,
        maximize: bool,
        step: float,
        *,
        lr_tensor: Any = None,
    ) -> dict[str, Any]:
        # The operations of torch.optim.adam._single_tensor_adam (and _multi_tensor_adam),
        # non-capturable, non-differentiable, in their order. With ``lr`` a tensor (only the
        # single-tensor path accepts one) its scalars are tensor arithmetic in its dtype.
        param = ops.copy(bucket.params)
        exp_avg = ops.copy(bucket.state["exp_avg"])
        exp_avg_sq = ops.copy(bucket.state["exp_avg_sq"])
        grad = bucket.grads if not maximize else ops.neg(bucket.grads)
        if decoupled:
            segments = bucket.decay_segments(wd)
            for a, b, decay in segments:
                if decay != 0:
                    target = param if len(segments) == 1 else param[a:b]
                    factor = (
                        1 - lr * decay
                        if lr_tensor is None
                        else _tensor_scalar(ops, lr_tensor, times=decay, one_minus=True)
                    )
                    ops.mul_scalar_(target, factor)
        else:
            grad = _l2_decay(ops, bucket, grad, param, wd)
        ops.lerp_(exp_avg, grad, 1 - beta1)
        ops.mul_scalar_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, grad, grad, 1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = (
            lr / bias_correction1
            if lr_tensor is None
            else _tensor_scalar(ops, lr_tensor, over=bias_correction1)
        )
        bias_correction2_sqrt = bias_correction2**0.5
        state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if amsgrad:
            max_sq = ops.maximum(bucket.state["max_exp_avg_sq"], exp_avg_sq)
            state["max_exp_avg_sq"] = max_sq
            denom = ops.div_scalar(ops.sqrt(max_sq), bias_correction2_sqrt)
        else:
            denom = ops.div_scalar(ops.sqrt(exp_avg_sq), bias_correction2_sqrt)
        ops.add_scalar_(denom, eps)
        # foreach multiplies by -1 where single negates: the same float either way.
        ops.addcdiv_(param, exp_avg, denom, -step_size)
        return {"param": param, "state": state, "denom": denom}


class SGDReference(Reference):
    """torch.optim.SGD: momentum, dampening, nesterov, weight decay, maximize."""

    name = "SGD"

    def state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if float(group.get("momentum", 0) or 0) != 0 else ()

    def compute(self, kernels: Kernels, group: dict[str, Any], bucket: Bucket) -> Outcome:
        lr = _scalar(group["lr"])
        momentum = float(group.get("momentum", 0) or 0)
        dampening = float(group.get("dampening", 0) or 0)
        wd = float(group.get("weight_decay", 0) or 0)
        nesterov = bool(group.get("nesterov", False))
        maximize = bool(group.get("maximize", False))
        mode = self.mode(group)
        params: list[Any] = []
        states: dict[str, list[Any]] = {}
        direction: Any = None
        paths = _paths(kernels, bucket, foreach=(mode == "foreach"))
        for ops in paths:
            # The operations of torch.optim.sgd._single_tensor_sgd, in order.
            param = ops.copy(bucket.params)
            grad = bucket.grads if not maximize else ops.neg(bucket.grads)
            grad = _l2_decay(ops, bucket, grad, param, wd)
            if momentum != 0:
                if not bucket.has_state:
                    buf = ops.copy(grad)
                else:
                    buf = ops.copy(bucket.state["momentum_buffer"])
                    ops.mul_scalar_(buf, momentum)
                    ops.add_(buf, grad, 1 - dampening)
                states.setdefault("momentum_buffer", []).append(buf)
                grad = ops.add(grad, buf, momentum) if nesterov else buf
            ops.add_(param, grad, -lr)
            params.append(param)
            direction = grad if direction is None else direction
        magnitude = functools.partial(_sgd_magnitude, direction, lr)
        exact = _exact(kernels, bucket, paths)
        if mode != "fused":
            return Outcome(params, states, magnitude, exact=exact)
        op, fused_lr = _fused_lr("aten::_fused_sgd_", group, lr)
        fused = _fused_variants(
            kernels,
            op,
            bucket,
            self.state_keys(group),
            None,
            weight_decay=wd,
            momentum=momentum,
            lr=fused_lr,
            dampening=dampening,
            nesterov=nesterov,
            maximize=maximize,
            is_first_step=not bucket.has_state,
        )
        if fused is None:
            return Outcome(params, states, magnitude, exact=False)
        fused_params, fused_states = fused
        return Outcome(fused_params, fused_states, magnitude, exact=exact, approx=params[0])


def _tensor_scalar(
    ops: _Ops,
    lr: Any,
    *,
    times: float | None = None,
    over: float | None = None,
    one_minus: bool = False,
) -> float:
    """``1 - lr * times`` or ``lr / over`` as torch computes them for a tensor ``lr``.

    A Python ``lr`` makes these float64 values the kernels round once; a tensor ``lr``
    (``AdamW(lr=torch.tensor(1e-3))``) makes them tensor arithmetic in its dtype (float32: a
    rounding per operation), and a coordinate's update can then differ in its last bit. The
    captured kernels compute them (``-x + 1`` is ``1 - x`` exactly); the value read back is the
    tensor's, which the step's kernels receive as a scalar.
    """
    import torch

    value = ops.k(
        "aten::mul.out", lr.detach().reshape(()), _wrapped(1.0), out=torch.empty((), dtype=lr.dtype)
    )
    if times is not None:
        value = ops.k(
            "aten::mul.out", value, _wrapped(times, lr.dtype), out=torch.empty_like(value)
        )
    if over is not None:
        value = ops.k("aten::div.out", value, _wrapped(over, lr.dtype), out=torch.empty_like(value))
    if one_minus:
        value = ops.k("aten::neg.out", value, out=torch.empty_like(value))
        value = ops.k("aten::add.out", value, _wrapped(1.0, lr.dtype), out=torch.empty_like(value))
    return float(value.item())


def _l2_decay(ops: _Ops, bucket: Bucket, grad: Any, param: Any, wd: float) -> Any:
    """``grad + decay * param`` per decay segment (SGD's and Adam's L2 weight decay).

    One segment: torch's ``grad.add(param, alpha=decay)``, out of place. Several (groups
    computed together): the same kernel in place on each segment of a copy of the gradient.
    """
    segments = bucket.decay_segments(wd)
    if len(segments) == 1:
        decay = segments[0][2]
        return ops.add(grad, param, decay) if decay != 0 else grad
    grad = ops.copy(grad) if grad is bucket.grads else grad
    for a, b, decay in segments:
        if decay != 0:
            ops.add_(grad[a:b], param[a:b], decay)
    return grad


def _adam_magnitude(
    single: dict[str, Any],
    bucket: Bucket,
    lr: float,
    wd: float,
    decoupled: bool,
    step: float,
    beta1: float,
) -> Any:
    import numpy as np

    p = _float64(bucket.params)
    m = _float64(single["state"]["exp_avg"])
    denom = _float64(single["denom"])
    with np.errstate(divide="ignore", invalid="ignore"):
        step_size = lr / (1 - beta1**step)
        adam = np.abs(step_size * m / denom)
    decay = np.abs(lr * bucket.decay_vector(wd) * p) if decoupled else 0.0
    out: Any = np.nan_to_num(adam + decay, nan=0.0, posinf=0.0)
    return out


def _sgd_magnitude(direction: Any, lr: float) -> Any:
    import numpy as np

    out: Any = np.abs(lr * _float64(direction))
    return np.nan_to_num(out, nan=0.0, posinf=0.0)


def _fused_lr(op: str, group: dict[str, Any], lr: float) -> tuple[str, Any]:
    """The fused kernel torch calls for ``group`` and the ``lr`` it passes.

    A tensor ``lr`` goes to the ``.tensor_lr`` overload, whose arithmetic differs from the
    float one's in the last bit (measured: 800 of 100,000 coordinates after three steps).
    """
    value = group["lr"]
    if hasattr(value, "detach"):
        return op + ".tensor_lr", value.detach().clone()
    return op, lr


def _fused_variants(
    kernels: Kernels,
    op: str,
    bucket: Bucket,
    state_keys: tuple[str, ...],
    step: float | None,
    **kwargs: Any,
) -> tuple[list[Any], dict[str, list[Any]]] | None:
    """Replay a fused kernel on the sample: the vector-code variant, plus scalar-code ones.

    Fused CPU kernels work in blocks with vector code and finish each tensor's last elements
    with scalar code that may round differently; a coordinate is accepted when it matches the
    variant its position went through. The vector variant pads the sample to a whole number of
    blocks; tail coordinates are replayed alone (scalar code).
    """
    import torch

    if not kernels.has(op):
        return None
    n = int(bucket.params.numel())
    pad = (-n) % 256 if kernels.device_type == "cpu" else 0

    def run(index: Any | None) -> tuple[Any, dict[str, Any]]:
        def pick(t: Any) -> Any:
            if index is not None:
                return kernels("aten::take", t, index)
            if pad:
                filler = kernels("aten::take", t, torch.zeros(pad, dtype=torch.long))
                return kernels("aten::cat", [t, filler])
            return kernels("aten::mul.Tensor", t, _wrapped(1.0))

        params = pick(bucket.params)
        grads = pick(bucket.grads)
        state = {key: pick(bucket.state[key]) for key in state_keys}
        if op.startswith("aten::_fused_sgd_"):
            buffers = [state["momentum_buffer"]] if "momentum_buffer" in state else []
            kernels(op, [params], [grads], buffers, **kwargs)
        else:
            steps = [torch.tensor(step, dtype=torch.float32, device=params.device)]
            max_sq = [state["max_exp_avg_sq"]] if "max_exp_avg_sq" in state else []
            kernels(
                op,
                [params],
                [grads],
                [state["exp_avg"]],
                [state["exp_avg_sq"]],
                max_sq,
                steps,
                **kwargs,
            )
        if index is None and pad:
            params = params[:n]
            state = {key: value[:n] for key, value in state.items()}
        return params, state

    vector, vector_state = run(None)
    params_variants = [vector]
    state_variants = {key: [value] for key, value in vector_state.items()}
    if kernels.device_type == "cpu" and bucket.tail is not None and bool(bucket.tail.any()):
        scalar = _float_copy(vector)
        scalar_state = {key: _float_copy(value) for key, value in vector_state.items()}
        for position in bucket.tail.nonzero()[0].tolist():
            one, one_state = run(torch.tensor([position]))
            scalar[position] = one[0]
            for key, value in one_state.items():
                scalar_state[key][position] = value[0]
        params_variants.append(scalar)
        for key, value in scalar_state.items():
            state_variants[key].append(value)
    return params_variants, state_variants


def _float_copy(t: Any) -> Any:
    return t.detach().clone()


def _float64(t: Any) -> Any:
    import numpy as np

    out: Any = t.detach().to("cpu").double().numpy() if not isinstance(t, np.ndarray) else t
    return out.astype(np.float64, copy=False)


@functools.cache
def _genuine_steps() -> dict[Any, type[Reference]]:
    """The code objects of torch's own SGD.step and Adam.step (unwrapped), as imported."""
    import torch

    out: dict[Any, type[Reference]] = {}
    for cls, ref in ((torch.optim.SGD, SGDReference), (torch.optim.Adam, AdamReference)):
        fn = _unwrap(cls.__dict__["step"])
        code = getattr(fn, "__code__", None)
        if code is not None:
            out[code] = ref
    return out


def _unwrap(fn: Any) -> Any:
    seen = 0
    while hasattr(fn, "__wrapped__") and seen < 16:
        fn = fn.__wrapped__
        seen += 1
    return fn


def _is_complex(tensor: Any) -> bool:
    check = getattr(tensor, "is_complex", None)
    return bool(check()) if callable(check) else False


def reference_for(optimizer: Any) -> tuple[Reference | None, str | None]:
    """The reference of ``optimizer`` and ``None``, or ``None`` and why it is not verified."""
    step = _unwrap(type(optimizer).step)
    code = getattr(step, "__code__", None)
    ref_cls = _genuine_steps().get(code)
    if ref_cls is None:
        name = type(optimizer).__name__
        return None, f"{name}: no reference implementation (SGD, Adam and AdamW are verified)"
    ref = ref_cls(optimizer)
    if ref_cls is AdamReference and any(
        g.get("decoupled_weight_decay", False) for g in optimizer.param_groups
    ):
        ref.name = "AdamW"
    return ref, None
