"""The native kernels the reference computations run on, captured once, out of an insider's reach.

A ``torch.library.Library("aten", "IMPL")`` override replaces an operator's kernel for every
later caller, the guard included: a reference computed with ``torch.lerp_`` after such an
override would reproduce the perturbed update and see nothing. So the guard captures the
kernels it needs (``torch.library.get_kernel``) the first time a guard is built in the process,
checks that each one is the native kernel compiled into torch (registered from one of torch's
generated ``Register<Device>*.cpp`` files, like every genuine one), and calls them directly.
Overrides registered later change what the job computes, not what the guard recomputes.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Kernels", "kernels_for"]

# Operators the reference optimizers, the sampler and the digests use.
_OPS = (
    "aten::take",
    "aten::cat",
    "aten::mul.Tensor",
    "aten::mul.out",
    "aten::neg.out",
    "aten::add.out",
    "aten::sqrt.out",
    "aten::div.out",
    "aten::maximum.out",
    "aten::mul_.Tensor",
    "aten::add.Tensor",
    "aten::add_.Tensor",
    "aten::lerp_.Scalar",
    "aten::addcmul_",
    "aten::addcdiv_",
    "aten::sqrt",
    "aten::div.Tensor",
    "aten::div_.Tensor",
    "aten::maximum",
    "aten::neg",
    "aten::_fused_adam_",
    "aten::_fused_adamw_",
    "aten::_fused_sgd_",
    "aten::_fused_adam_.tensor_lr",
    "aten::_fused_adamw_.tensor_lr",
    "aten::_fused_sgd_.tensor_lr",
    "aten::_foreach_neg",
    "aten::_foreach_add.List",
    "aten::_foreach_add_.List",
    "aten::_foreach_add_.Scalar",
    "aten::_foreach_mul_.Scalar",
    "aten::_foreach_lerp_.Scalar",
    "aten::_foreach_addcmul_.Scalar",
    "aten::_foreach_addcdiv_.ScalarList",
    "aten::_foreach_sqrt",
    "aten::_foreach_div_.ScalarList",
    "aten::_foreach_maximum_.List",
)
_NATIVE = re.compile(r"registered at (?P<dir>.*?)[/\\]Register(?P<key>[A-Za-z]+)(?:_\d+)?\.cpp:\d+")


class Kernels:
    """Native kernels of one device type (``"cpu"``, ``"cuda"``), callable without dispatch.

    Attributes:
        device_type: The device type the kernels run on.
        problems: Operators whose kernel was not torch's own when captured (then the guard
            reports the update check as not independent and says which).
    """

    def __init__(self, device_type: str) -> None:
        import torch

        self.device_type = device_type
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type, device_type.upper())
        self._kernels: dict[str, Any] = {}
        self.problems: list[str] = []
        home: str | None = None
        for op in _OPS:
            try:
                kernel = torch.library.get_kernel(op, key)
            except (RuntimeError, ValueError, AttributeError):
                continue  # not every build has every fused/foreach kernel on every device
            match = _NATIVE.search(repr(kernel))
            if match is None:
                self.problems.append(f"{op}: {_where(kernel)}")
                continue
            # Every genuine kernel of a build comes from the same generated directory; a
            # kernel from an extension loaded with torch.ops.load_library does not.
            if home is None:
                home = match.group("dir")
            elif match.group("dir") != home:
                self.problems.append(f"{op}: {_where(kernel)}")
                continue
            self._kernels[op] = kernel
        self._keys: Any = None
        self._calibrated: dict[str, bool] = {}
        self._rounding: dict[str, bool | None] = {}

    def scalar_code_differs(self, dtype: Any) -> bool:
        """Whether elementwise kernels round differently in their scalar and vector code.

        CPU kernels run contiguous data through vector code and the last elements of each
        parallel chunk (and strided data) through scalar code; for some dtypes and builds the
        two round differently (bf16 ``add`` with ``alpha``: a fused multiply-add in one, two
        roundings in the other). Measured once per dtype on random data; when they differ the
        reference computes both and accepts either, coordinate by coordinate.
        """
        if self.device_type != "cpu":
            return False  # GPU kernels have no scalar tails: one code path per element
        key = str(dtype)
        found = self._calibrated.get(key)
        if found is None:
            found = self._calibrated[key] = self._calibrate(dtype)
        return found

    def _calibrate(self, dtype: Any) -> bool:
        import torch

        gen = torch.Generator().manual_seed(20240611)
        n = 4099
        a = (torch.randn(n, generator=gen) * 0.02).to(dtype)
        b = (torch.randn(n, generator=gen) * 1e-3).to(dtype)
        c = (torch.rand(n, generator=gen) * 1e-6).to(dtype)
        scalar = torch.tensor(0.3, dtype=torch.float64)

        try:
            cases: list[Callable[[Any, Any, Any, Any], Any]] = [
                (lambda x, y, z, o: self("aten::add.out", x, y, alpha=0.1, out=o)),
                (lambda x, y, z, o: self("aten::mul.out", x, scalar, out=o)),
                (lambda x, y, z, o: self("aten::div.out", z, scalar, out=o)),
                (lambda x, y, z, o: self("aten::sqrt.out", z, out=o)),
                (lambda x, y, z, o: self("aten::neg.out", y, out=o)),
                (lambda x, y, z, o: self("aten::maximum.out", x, y, out=o)),
                (
                    lambda x, y, z, o: self(
                        "aten::lerp_.Scalar",
                        self("aten::mul.out", x, torch.tensor(1.0, dtype=torch.float64), out=o),
                        y,
                        0.1,
                    )
                ),
                (
                    lambda x, y, z, o: self(
                        "aten::addcmul_",
                        self("aten::mul.out", z, torch.tensor(1.0, dtype=torch.float64), out=o),
                        y,
                        y,
                        value=0.001,
                    )
                ),
                (
                    lambda x, y, z, o: self(
                        "aten::addcdiv_",
                        self("aten::mul.out", x, torch.tensor(1.0, dtype=torch.float64), out=o),
                        y,
                        z,
                        value=-0.01,
                    )
                ),
            ]
            for case in cases:
                contiguous = case(a, b, c, torch.empty(n, dtype=dtype))
                scalar_code = case(a, b, c, torch.empty(2 * n, dtype=dtype)[::2])
                if not torch.equal(contiguous, scalar_code):
                    return True
        except (KeyError, RuntimeError):
            return True  # cannot tell: compute both
        return False

    def foreach_rounds(self, op: str, dtype: Any) -> bool | None:
        """Whether CPU ``_foreach_<op>_`` with a scalar rounds the scalar to ``dtype`` first.

        The CPU foreach kernels loop over the ``.Scalar`` overloads, which for some operators
        (``mul`` in bf16) round the scalar to the tensor's dtype and for others (``div``) do
        not. Measured once per operator and dtype against the captured single-tensor kernel;
        ``None`` when neither rule reproduces it (then the reference falls back to tolerance).
        """
        import torch

        if dtype in (torch.float32, torch.float64):
            return False  # the kernels convert the scalar to this very type: same either way
        key = f"{op}:{dtype}"
        if key in self._rounding:
            return self._rounding[key]
        gen = torch.Generator().manual_seed(7)
        n = 4133
        x = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(dtype)
        value = {"mul": 0.98765, "add": 0.0123457, "div": 0.00153}[op]
        try:
            foreach = [x.clone()]
            getattr(torch, f"_foreach_{op}_")(foreach, value if op != "div" else [value])
            found: bool | None = None
            single = f"aten::{op}_.Tensor"
            for rounded in (False, True):
                out = self(
                    "aten::mul.out",
                    x,
                    torch.tensor(1.0, dtype=torch.float64),
                    out=torch.empty_like(x),
                )
                scalar = torch.tensor(value, dtype=dtype if rounded else torch.float64)
                self(single, out, scalar)
                if torch.equal(out, foreach[0]):
                    found = rounded
                    break
        except (KeyError, RuntimeError, AttributeError):
            found = None
        self._rounding[key] = found
        return found

    def has(self, op: str) -> bool:
        """Whether ``op`` was captured as a native kernel."""
        return op in self._kernels

    def bound(self, op: str) -> Callable[..., Any]:
        """``op``'s kernel as a plain callable (no lookup per call: for the hot loops)."""
        kernel = self._kernels[op]
        if self._keys is None:
            import torch

            self._keys = torch._C._dispatch_keys(torch.empty(0, device=self.device_type))
        return functools.partial(kernel.call_boxed, self._keys)

    def __call__(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run the captured kernel of ``op`` (raises KeyError when it was not captured)."""
        kernel = self._kernels[op]
        if self._keys is None:
            import torch

            probe = torch.empty(0, device=self.device_type)
            self._keys = torch._C._dispatch_keys(probe)
        return kernel.call_boxed(self._keys, *args, **kwargs)


def _where(kernel: Any) -> str:
    text = repr(kernel)
    start = text.find("registered at ")
    return text[start + len("registered at ") :].rstrip("')") if start >= 0 else text


_lock = threading.Lock()
_cache: dict[str, Kernels] = {}


def kernels_for(device_type: str) -> Kernels:
    """The process's captured kernels for ``device_type`` (captured on first use)."""
    with _lock:
        found = _cache.get(device_type)
        if found is None:
            found = _cache[device_type] = Kernels(device_type)
        return found
