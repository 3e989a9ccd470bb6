"""Kernel registrations in the torch dispatcher: does a Python or foreign kernel override a core op?

Every call of ``aten::add`` runs whatever kernel the dispatcher holds for its dispatch key; a
saboteur can register one from Python (``torch.library``) or from an extension library. Each
checked operator's dispatcher dump is kept as the reference; an unchanged dump is not parsed
again, which keeps periodic checks cheap.
"""

# ruff: noqa: PTH120

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainwarden.findings import Finding, Location, Severity, Verdict

__all__ = [
    "KernelReference",
    "kernel_findings",
    "library_impls",
    "mode_findings",
    "torch_module",
]

# Core operators whose kernels are checked on every call (all operators with ``all_kernels``).
_CORE_OPS = frozenset(
    {
        "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "addcdiv", "addcdiv_",
        "addcmul", "addcmul_", "lerp", "lerp_", "sqrt", "sqrt_", "rsqrt", "pow", "pow_", "neg",
        "sign", "clamp", "clamp_", "copy_", "zero_", "fill_", "mm", "addmm", "bmm", "matmul",
        "linear", "convolution", "_convolution", "conv2d", "embedding", "dropout",
        "native_dropout", "bernoulli", "bernoulli_", "uniform_", "normal_", "random_",
        "randperm", "rand", "randn", "randint", "_softmax", "_log_softmax", "softmax",
        "log_softmax", "nll_loss_forward", "nll_loss", "cross_entropy_loss", "mse_loss",
        "sum", "mean", "norm", "linalg_vector_norm", "maximum", "where", "masked_fill_",
        "native_layer_norm", "layer_norm", "gelu", "relu", "silu", "_to_copy", "clone",
        "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_local_scalar_dense", "item", "sort", "argsort", "topk",
    }
)  # fmt: skip
_CORE_PREFIXES = ("_foreach_", "_fused_")
_CORE_NAMESPACES = frozenset({"c10d", "_c10d_functional", "_c10d_functional_autograd"})
# Operator namespaces torch owns: a Python kernel for them from outside torch is an override.
_TORCH_NAMESPACES = frozenset(
    {"aten", "prims", "c10d", "_c10d_functional", "_c10d_functional_autograd", "rngprims",
     "quantized", "mkldnn", "onednn", "mkl", "_quantized", "quantized_decomposed"}
)  # fmt: skip
_KERNEL_LINE = re.compile(
    r"^(?P<key>[A-Za-z0-9_]+)(?:\[alias\])?(?P<inactive> \(inactive\))?: "
    r"(?:fallthrough )?registered at (?P<loc>.+?) :: "
)
# Kernels compiled from C++/CUDA carry their source file; anything else (a .py file,
# "<string>", a notebook cell) was registered from Python.
_NATIVE_LOCATION = re.compile(r"\.(?:cpp|cc|cxx|cu|c|h|hpp|mm):\d+$")


@dataclass
class KernelReference:
    """The dispatcher as first seen: per operator its raw dump and what that dump was judged.

    Operators checked for the first time later join it (their judgement flags any override
    present then). Mutated under the owning snapshot's lock.
    """

    # Operator -> its raw dispatcher dump at the reference, and what that dump was judged to
    # hold; an unchanged dump is not parsed again.
    dumps: dict[str, str] = field(default_factory=dict)
    kernels: dict[tuple[str, str], str] = field(default_factory=dict)
    judged: dict[str, tuple[Finding, ...]] = field(default_factory=dict)
    impls: frozenset[str] = frozenset()


def torch_module() -> Any:
    """The imported torch module, or ``None`` (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "_C"):
        return None
    return torch


_ops_cache: dict[bool, list[str]] = {}


def _kernel_ops(torch: Any, *, all_ops: bool) -> list[str]:
    """Operators to check (cached: torch registers its operators when it is imported)."""
    cached = _ops_cache.get(all_ops)
    if cached is not None:
        return cached
    names = torch._C._dispatch_get_all_op_names()
    if all_ops:
        out = sorted(names)
    else:
        out = []
        for op in names:
            namespace, _, rest = op.partition("::")
            base, _, overload = rest.partition(".")
            if namespace in _CORE_NAMESPACES or (
                namespace == "aten"
                and (base in _CORE_OPS or base.startswith(_CORE_PREFIXES))
                # out= variants are not what training loops and optimizers call.
                and not overload.endswith("out")
            ):
                out.append(op)
        out.sort()
    _ops_cache[all_ops] = out
    return out


def _parse_dump(op: str, text: str) -> dict[tuple[str, str], str]:
    table: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        match = _KERNEL_LINE.match(line)
        if match is not None and not match.group("inactive"):
            table[(op, match.group("key"))] = match.group("loc")
    return table


def _build_prefix(torch: Any) -> str | None:
    """Where torch's own C++ kernels were compiled (from a schema torch itself registers)."""
    try:
        text = torch._C._dispatch_dump("aten::add.Tensor")
    except RuntimeError:
        return None
    match = re.search(r"registered at (.+?/)(?:build/)?aten/src/ATen/", text)
    return match.group(1) if match else None


def library_impls(torch: Any) -> frozenset[str]:
    """What ``torch.library`` registered so far (``namespace/op/key`` names)."""
    library = sys.modules.get("torch.library")
    impls = getattr(library, "_impls", None)
    return frozenset(impls) if isinstance(impls, (set, frozenset)) else frozenset()


def _judge_kernels(
    table: Mapping[tuple[str, str], str],
    before: Mapping[tuple[str, str], str],
    torch_dir: str,
    prefix: str | None,
) -> list[Finding]:
    found: list[Finding] = []
    for (op, key), location in sorted(table.items()):
        namespace = op.split("::", 1)[0]
        if namespace not in _TORCH_NAMESPACES:
            continue
        where = Location(path=f"dispatcher:{op}", extra={"dispatch_key": key})
        evidence = f"{op}@{key}"
        is_python = _NATIVE_LOCATION.search(location) is None
        file = os.path.normpath(location.rsplit(":", 1)[0])
        previous = before.get((op, key))
        if is_python and not file.startswith(torch_dir + os.sep):
            found.append(
                Finding(
                    "env.runtime-kernel-override",
                    Severity.CRITICAL,
                    f"A Python kernel from {location} is registered for {op} at dispatch key "
                    f"{key}: every call of the operator runs it instead of torch's kernel.",
                    where,
                    evidence=evidence,
                    verdict=Verdict.UNSAFE,
                )
            )
        elif previous is not None and previous != location:
            found.append(
                Finding(
                    "env.runtime-kernel-replaced",
                    Severity.HIGH,
                    f"The kernel for {op} at {key} changed since the reference "
                    f"({previous} -> {location}).",
                    where,
                    evidence=evidence,
                    verdict=Verdict.UNSAFE,
                )
            )
        elif not is_python and prefix and namespace == "aten" and not location.startswith(prefix):
            found.append(
                Finding(
                    "env.runtime-kernel-foreign",
                    Severity.MEDIUM,
                    f"The kernel for {op} at {key} was compiled outside torch's build "
                    f"({location}): an extension library overrides a core operator.",
                    where,
                    evidence=evidence,
                    verdict=Verdict.UNKNOWN,
                )
            )
    return found


def kernel_findings(
    torch: Any, reference: KernelReference, *, all_ops: bool
) -> tuple[list[Finding], list[Finding]]:
    """Findings about kernel registrations, and an info finding about what was checked.

    Each operator's dispatcher dump is compared with the reference's as a string; only a
    changed (or first-seen) dump is parsed and judged, which keeps a periodic check cheap.
    """
    torch_dir = os.path.dirname(os.path.normpath(torch.__file__))
    prefix = _build_prefix(torch)
    ops = _kernel_ops(torch, all_ops=all_ops)
    dump = torch._C._dispatch_dump
    found: list[Finding] = []
    for op in ops:
        try:
            text = dump(op)
        except RuntimeError:
            continue
        stored = reference.dumps.get(op)
        if stored is not None and stored == text:
            found.extend(reference.judged.get(op, ()))
            continue
        table = _parse_dump(op, text)
        judged = _judge_kernels(table, reference.kernels, torch_dir, prefix)
        found.extend(judged)
        if stored is None:
            # First sight: this becomes the reference for the operator (the judgement above
            # already flagged any override that was present before).
            reference.dumps[op] = text
            reference.kernels.update(table)
            reference.judged[op] = tuple(judged)
    seen = {f.evidence.split("@", 1)[0] for f in found if f.evidence}
    for impl in sorted(library_impls(torch) - reference.impls):
        namespace, _, rest = impl.partition("/")
        name = f"{namespace}::{rest.rsplit('/', 1)[0]}"
        if _impl_is_core(impl) and name not in seen:
            found.append(
                Finding(
                    "env.runtime-library-impl",
                    Severity.HIGH,
                    f"torch.library registered an implementation for {impl} since the reference.",
                    Location(path=f"dispatcher:{name}"),
                    evidence=impl,
                    verdict=Verdict.UNSAFE,
                )
            )
    info = [
        Finding(
            "env.runtime-kernels-checked",
            Severity.INFO,
            f"{len(ops)} operator(s) checked in the torch dispatcher.",
            Location(path="dispatcher"),
        )
    ]
    return found, info


def _impl_is_core(impl: str) -> bool:
    namespace = impl.partition("/")[0]
    if namespace not in _TORCH_NAMESPACES:
        return False
    # torch registers its own Meta kernels lazily as modules load; those are not overrides.
    return not impl.endswith("/Meta")


def mode_findings(torch: Any) -> list[Finding]:
    """Global torch-function / dispatch modes intercept every operator call."""
    del torch  # the modes are read from torch's own modules, only if they are imported
    found: list[Finding] = []
    stacks: list[tuple[str, list[Any]]] = []
    overrides = sys.modules.get("torch.overrides")
    dispatch = sys.modules.get("torch.utils._python_dispatch")
    try:
        if overrides is not None:
            stacks.append(("torch function", list(overrides._get_current_function_mode_stack())))
        if dispatch is not None:
            stacks.append(("dispatch", list(dispatch._get_current_dispatch_mode_stack())))
    except (AttributeError, RuntimeError):
        return found
    for kind, modes in stacks:
        for mode in modes:
            cls = type(mode)
            module = str(cls.__module__)
            label = f"{module}.{cls.__qualname__}"
            ours = module == "torch" or module.startswith("torch.")
            found.append(
                Finding(
                    "env.runtime-mode",
                    Severity.LOW if ours else Severity.HIGH,
                    f"A {kind} mode {label} is active: it sees every operator call"
                    + (" (a torch mode, e.g. a default device)." if ours else "."),
                    Location(path="dispatcher"),
                    evidence=label,
                    verdict=Verdict.SAFE if ours else Verdict.UNSAFE,
                )
            )
    return found
