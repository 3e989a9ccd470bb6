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
from collections.abc import Callable, Mapping
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
    torch: Any,
    reference: KernelReference,
    *,
    all_ops: bool,
    pace: Callable[[], None] = lambda: None,
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
        pace()  # the caller's chance to rest between operators (see snapshot_runtime)
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
        if not _impl_is_core(impl) or name in seen:
            continue
        foreign = _impl_origin(torch, impl, torch_dir)
        if foreign is None:
            continue  # torch registering its own kernels as its modules load (see below)
        found.append(
            Finding(
                "env.runtime-library-impl",
                Severity.HIGH,
                f"torch.library registered an implementation for {impl} since the reference "
                f"({foreign}).",
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


# torch's generic registration helpers: a kernel registered through them carries *their* file
# as its location whoever called them, so the location alone does not say who registered it.
_HELPER_FILES = ("library.py", "_library" + os.sep)


def _impl_origin(torch: Any, impl: str, torch_dir: str) -> str | None:
    """Who registered ``impl`` (``ns/op/key``): ``None`` when it is torch's own code, else why not.

    torch registers kernels for its own namespaces lazily, as its modules are imported (the
    functional collectives' autograd formulas when ``torch.distributed._functional_collectives``
    loads, which Lightning and transformers import): those are not overrides. The kernel's
    functions decide, not the dispatcher's location (for ``register_autograd`` and
    ``custom_op`` that is torch's helper whoever called it): every function the registration
    consists of must be code from torch's own files that matches a fresh compile of them.
    """
    from trainwarden.env._sources import source_problem

    namespace, _, rest = impl.partition("/")
    opname, _, key = rest.rpartition("/")
    qualname = f"{namespace}::{opname}"
    functions = _registered_functions(torch, namespace, opname, key)
    if not functions:
        location = _dispatch_location(torch, qualname, key)
        if location is None:
            return "its kernel cannot be found in the dispatcher"
        file = os.path.normpath(location.rsplit(":", 1)[0])
        inside_torch = file.startswith(torch_dir + os.sep)
        if inside_torch and not file[len(torch_dir) + 1 :].startswith(_HELPER_FILES):
            return None  # registered by a torch module itself (its file is the location)
        return (
            f"registered from {location}"
            if not inside_torch
            else (f"registered through {location}, by code that cannot be identified")
        )
    roots = [torch_dir]
    for fn in functions:
        problem = source_problem(fn, None, roots)
        if problem is not None:
            code = fn.__code__
            return f"{code.co_qualname} from {code.co_filename}: {problem[0]}"
    return None


def _registered_functions(torch: Any, namespace: str, opname: str, key: str) -> list[Any]:
    """The Python functions behind a registration made through torch's helpers, if found.

    Each callable is expanded into the functions it closes over (``custom_op`` wraps the
    caller's kernel in a function of its own), so the caller's code is what gets judged.
    """
    from trainwarden.env._targets import functions_of

    given: list[Any] = []
    custom = sys.modules.get("torch._library.custom_ops")
    opdefs = getattr(custom, "OPDEFS", None)
    opdef = opdefs.get(f"{namespace}::{opname}") if isinstance(opdefs, Mapping) else None
    if opdef is not None:
        # A custom_op: every function it was given (implementation, fake, autograd...).
        given.extend(
            getattr(opdef, attr, None)
            for attr in (
                "_init_fn",
                "_abstract_fn",
                "_backward_fn",
                "_setup_context_fn",
                "_vmap_fn",
            )
        )
        for attr in ("_backend_fns", "_torch_dispatch_fns"):
            table = getattr(opdef, attr, None)
            if isinstance(table, Mapping):
                given.extend(table.values())
    elif key == "Autograd":
        given.extend(_autograd_formulas(torch, namespace, opname))
    functions: list[Any] = []
    for item in given:
        if item is None:
            continue
        found = list(functions_of(item))
        if not found:
            functions.append(_Opaque(item))  # a callable object: it cannot be attributed
        functions.extend(found)
    return functions


def _autograd_formulas(torch: Any, namespace: str, opname: str) -> list[Any]:
    """The formulas ``register_autograd`` was given for the op (every registration of it).

    It builds an ``autograd.Function`` subclass whose ``backward`` closes over the op and an
    ``Info`` holding the caller's functions (``supports_tensorlist`` wraps that ``backward``
    once more, hence the search through closures).
    """
    function = getattr(getattr(torch, "autograd", None), "Function", None)
    out: list[Any] = []
    classes: list[type] = function.__subclasses__() if isinstance(function, type) else []
    for cls in classes:
        if not cls.__name__.startswith("GeneratedBackwardFor_"):
            continue
        cells = _closure_cells(cls.__dict__.get("backward"))
        op, info = cells.get("op"), cells.get("info")
        if getattr(op, "_namespace", None) == namespace and getattr(op, "_opname", None) == opname:
            out.append(getattr(info, "_backward_fn", None))
            out.append(getattr(info, "_setup_context_fn", None))
    return out


def _closure_cells(obj: Any, depth: int = 0) -> dict[str, Any]:
    """Free variables of ``obj`` and of the functions it closes over, by name (first wins)."""
    import types

    fn = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    if not isinstance(fn, types.FunctionType) or depth > 3:
        return {}
    cells: dict[str, Any] = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            cells.setdefault(name, cell.cell_contents)
        except ValueError:  # noqa: PERF203 - an empty cell
            continue
    for value in list(cells.values()):
        for name, inner in _closure_cells(value, depth + 1).items():
            cells.setdefault(name, inner)
    return cells


class _Opaque:
    """A registered callable that is not a Python function: it cannot be attributed."""

    def __init__(self, obj: Any) -> None:
        name = type(obj).__qualname__
        self.__code__ = compile("", f"<{name} object>", "exec")


def _dispatch_location(torch: Any, qualname: str, key: str) -> str | None:
    for op in torch._C._dispatch_get_all_op_names():
        if op != qualname and not op.startswith(qualname + "."):
            continue
        try:
            text = torch._C._dispatch_dump(op)
        except RuntimeError:
            continue
        for (_, found_key), location in _parse_dump(op, text).items():
            if found_key == key:
                return location
    return None


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
