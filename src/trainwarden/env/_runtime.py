"""Live-process integrity: are the callables a saboteur would patch still the originals?

Three checks, cheapest first: identity (the attribute still holds the object seen at the
reference, with the same code, defaults and closure), source (each function's code equals a
fresh compile of the file it claims to come from, which catches patches applied before we were
imported), and kernels (no Python or foreign kernel overrides a core ``aten`` operator in the
torch dispatcher). Modules are never imported here: only what the process already loaded.
"""

# ruff: noqa: PTH116, PTH120

from __future__ import annotations

import hashlib
import os
import re
import sys
import sysconfig
import threading
import time
import types
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict

__all__ = [
    "RuntimeSnapshot",
    "critical_targets",
    "snapshot_runtime",
    "verify_runtime",
]

COMMAND = "env runtime"

# Attributes checked one by one (module -> dotted attribute paths). Module-level re-exports
# matter: `torch.manual_seed` and `torch.random.manual_seed` are separate bindings to patch.
_NAMED_TARGETS: Mapping[str, tuple[str, ...]] = {
    "random": (
        "seed",
        "random",
        "shuffle",
        "sample",
        "getstate",
        "setstate",
        "Random.seed",
        "Random.shuffle",
        "Random.getstate",
        "Random.setstate",
    ),
    "numpy.random": (
        "seed",
        "default_rng",
        "shuffle",
        "permutation",
        "get_state",
        "set_state",
        "RandomState",
        "Generator",
    ),
    "torch": (
        "manual_seed",
        "seed",
        "initial_seed",
        "get_rng_state",
        "set_rng_state",
        "Generator",
        "Generator.manual_seed",
        "Generator.seed",
        "Generator.set_state",
        "Generator.get_state",
        "randperm",
        "rand",
        "randn",
        "randint",
        "bernoulli",
        "load",
        "save",
        "Tensor.backward",
        "Tensor.add_",
        "Tensor.copy_",
        "autograd.backward",
        "autograd.grad",
        "nn.Module.__call__",
        "nn.Module._call_impl",
        "nn.utils.clip_grad_norm_",
        "nn.utils.clip_grad_value_",
        "utils.data.DataLoader",
        "utils.data.RandomSampler",
        "utils.data.DistributedSampler",
        "utils.data.default_collate",
        "utils.data.random_split",
    ),
    "torch.cuda": ("manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state"),
    "torch.distributed": (
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_object",
        "all_to_all",
        "all_to_all_single",
        "barrier",
        "monitored_barrier",
        "broadcast",
        "broadcast_object_list",
        "gather",
        "scatter",
        "reduce",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "send",
        "recv",
        "isend",
        "irecv",
        "init_process_group",
        "new_group",
        "get_rank",
        "get_world_size",
        "destroy_process_group",
    ),
    "torch.optim": (
        "Optimizer",
        "SGD",
        "Adam",
        "AdamW",
        "Adagrad",
        "Adadelta",
        "Adamax",
        "ASGD",
        "NAdam",
        "RAdam",
        "RMSprop",
        "Rprop",
        "LBFGS",
        "SparseAdam",
    ),
}

# Modules swept whole: every function they define and every method of every class they define.
_SWEPT_PREFIXES = ("torch.optim.",)
_SWEPT_MODULES = (
    "random",
    "torch.random",
    "torch.serialization",
    "torch.cuda.random",
    "torch.optim.optimizer",
    "torch.utils.data.dataloader",
    "torch.utils.data.sampler",
    "torch.utils.data.distributed",
    "torch.utils.data.dataset",
    "torch.utils.data._utils.collate",
    "torch.utils.data._utils.fetch",
    "torch.utils.data._utils.worker",
    "torch.distributed.distributed_c10d",
    "torch.nn.functional",
    "torch.nn.modules.module",
    "torch.nn.utils.clip_grad",
    "torch.nn.parallel.distributed",
    "torch.autograd",
    "torch.amp.grad_scaler",
)

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
_DATACLASS_DUNDERS = frozenset(
    {"__init__", "__new__", "__repr__", "__eq__", "__hash__", "__lt__", "__le__", "__gt__",
     "__ge__", "__setattr__", "__delattr__", "__getstate__", "__setstate__", "__replace__"}
)  # fmt: skip
_MAX_CLOSURE_DEPTH = 4


@dataclass(frozen=True, slots=True)
class _Ref:
    """What a target looked like at the reference: the object and what its behaviour hangs on."""

    obj: Any
    parts: tuple[Any, ...]


@dataclass
class RuntimeSnapshot:
    """A reference of the process's critical callables and kernel registrations.

    Built by :func:`snapshot_runtime`; targets of modules imported later (and operators first
    checked later) join the reference the first time :func:`verify_runtime` sees them, and
    the source check covers what happened to them before.
    """

    taken_at: float
    refs: dict[str, _Ref] = field(default_factory=dict)
    # Operator -> its raw dispatcher dump at the reference, and what that dump was judged to
    # hold; an unchanged dump is not parsed again.
    dumps: dict[str, str] = field(default_factory=dict)
    kernels: dict[tuple[str, str], str] = field(default_factory=dict)
    judged: dict[str, tuple[Finding, ...]] = field(default_factory=dict)
    impls: frozenset[str] = frozenset()
    hooks: tuple[Any, ...] = ()
    # Targets whose current objects were compared with their source, and what was found
    # (``None`` when they matched): unchanged objects need no second compile.
    sourced: dict[str, Finding | None] = field(default_factory=dict)

    @property
    def target_count(self) -> int:
        """Number of callables in the reference."""
        return len(self.refs)


# ---------------------------------------------------------------------------------- targets


def _mro_lookup(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    raise AttributeError(name)


def _resolve(module_name: str, path: str) -> Any:
    """Resolve ``module:path`` without triggering descriptors (a classmethod stays raw)."""
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        raise LookupError(module_name)
    for part in path.split("."):
        obj = _mro_lookup(obj, part) if isinstance(obj, type) else getattr(obj, part)
    return obj


def _swept(module_name: str, module: types.ModuleType) -> Iterator[str]:
    # Some torch attributes warn when touched (deprecated aliases); looking is not using.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        namespace = dict(vars(module))
        for name, obj in namespace.items():
            if isinstance(obj, types.FunctionType) and obj.__module__ == module_name:
                yield name
            elif isinstance(obj, type) and obj.__dict__.get("__module__") == module_name:
                yield name
                # Inherited methods too: `AdamW.step = evil` shadows `Adam.step` by adding
                # an attribute to a class that had none of its own.
                seen: set[str] = set()
                for klass in obj.__mro__:
                    if klass.__module__ == "builtins":
                        continue
                    for attr, value in list(klass.__dict__.items()):
                        if attr in seen:
                            continue
                        seen.add(attr)
                        if _function(value) is not None:
                            yield f"{name}.{attr}"


_targets_cache: tuple[frozenset[str], dict[str, tuple[str, str]]] | None = None


def critical_targets() -> dict[str, tuple[str, str]]:
    """Every critical callable present in this process: ``"mod:attr" -> (mod, attr)``.

    Only modules already in ``sys.modules`` are looked at; nothing is imported. The list of
    names is cached until another relevant module is imported (the objects behind the names
    are resolved afresh on every check).
    """
    global _targets_cache
    present = frozenset(
        m for m in [*_NAMED_TARGETS, *_SWEPT_MODULES] if m in sys.modules
    ) | frozenset(m for m in list(sys.modules) if m.startswith(_SWEPT_PREFIXES))
    cached = _targets_cache
    if cached is not None and cached[0] == present:
        return cached[1]
    targets = _enumerate_targets()
    _targets_cache = (present, targets)
    return targets


def _enumerate_targets() -> dict[str, tuple[str, str]]:
    targets: dict[str, tuple[str, str]] = {}
    for module_name, names in _NAMED_TARGETS.items():
        if module_name in sys.modules:
            for name in names:
                targets[f"{module_name}:{name}"] = (module_name, name)
    modules = set(_SWEPT_MODULES)
    modules.update(m for m in list(sys.modules) if m.startswith(_SWEPT_PREFIXES))
    for module_name in sorted(modules):
        module = sys.modules.get(module_name)
        if isinstance(module, types.ModuleType):
            for name in _swept(module_name, module):
                targets[f"{module_name}:{name}"] = (module_name, name)
    torch = sys.modules.get("torch")
    if torch is not None:
        # The multi-tensor optimizers do their arithmetic through torch._foreach_* builtins.
        for name in list(vars(torch)):
            if name.startswith("_foreach_"):
                targets[f"torch:{name}"] = ("torch", name)
    return targets


def _function(obj: Any) -> types.FunctionType | None:
    inner = obj.__func__ if isinstance(obj, (staticmethod, classmethod, types.MethodType)) else obj
    return inner if isinstance(inner, types.FunctionType) else None


def _parts(obj: Any) -> tuple[Any, ...]:
    """What a callable's behaviour depends on, flattened, compared by identity on every check.

    Code objects are immutable, so ``code is reference_code`` proves the code is unchanged;
    defaults and closure cells can be reassigned in place, so they are included, and so are
    the functions a decorator closes over (``_use_grad`` wraps the real ``step``).
    """
    out: list[Any] = [obj]
    _collect(obj, out, 0)
    return tuple(out)


def _collect(obj: Any, out: list[Any], depth: int) -> None:
    fn = _function(obj)
    if fn is None:
        return
    out.extend((fn, fn.__code__, fn.__defaults__, fn.__kwdefaults__))
    if depth >= _MAX_CLOSURE_DEPTH:
        return
    for cell in fn.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:
            continue
        if isinstance(content, types.FunctionType):
            out.append(content)
            _collect(content, out, depth + 1)
    wrapped = fn.__dict__.get("__wrapped__")
    if wrapped is not None:
        out.append(wrapped)
        _collect(wrapped, out, depth + 1)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is y:
            continue
        if callable(x) or isinstance(x, types.CodeType):
            return False
        try:
            # Defaults rebuilt with equal values are harmless; anything else is a change.
            if type(x) is not type(y) or not bool(x == y):
                return False
        except Exception:  # an exotic __eq__ must not break the check
            return False
    return True


def code_digest(code: types.CodeType) -> str:
    """sha256 of a code object's bytecode, constants (recursively) and names."""
    hasher = hashlib.sha256()

    def feed(c: types.CodeType) -> None:
        hasher.update(c.co_code)
        hasher.update(repr(c.co_names).encode())
        hasher.update(repr(c.co_varnames).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)
            else:
                hasher.update(repr(const).encode("utf-8", "replace"))

    feed(code)
    return hasher.hexdigest()[:16]


def _describe(obj: Any) -> str:
    fn = _function(obj)
    if fn is not None:
        code = fn.__code__
        return (
            f"{fn.__module__}.{fn.__qualname__} ({code.co_filename}:{code.co_firstlineno}, "
            f"code {code_digest(code)})"
        )
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name} ({type(obj).__name__})"


# ----------------------------------------------------------------------------------- source


class _SourceCache:
    """Fresh compiles of source files, and code objects already proven equal to their source."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.compiled: dict[str, tuple[tuple[int, int], dict[tuple[str, int], types.CodeType]]] = {}
        self.proven: dict[types.CodeType, tuple[str, tuple[int, int]]] = {}

    def index(self, path: str) -> tuple[tuple[int, int], dict[tuple[str, int], types.CodeType]]:
        info = os.stat(path)
        key = (info.st_mtime_ns, info.st_size)
        cached = self.compiled.get(path)
        if cached is not None and cached[0] == key:
            return cached
        from trainwarden.env._dists import read_regular

        source = read_regular(path)
        top = compile(source, path, "exec", dont_inherit=True)
        table: dict[tuple[str, int], types.CodeType] = {}
        stack = [top]
        while stack:
            code = stack.pop()
            table[(code.co_qualname, code.co_firstlineno)] = code
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        self.compiled[path] = (key, table)
        return key, table


_SOURCES = _SourceCache()


# Single-file helper modules torch's own decorators come from (``typing_extensions.deprecated``).
_HELPER_MODULES = ("typing_extensions",)


def _allowed_roots() -> list[str]:
    """Where the code of critical callables may come from: the stdlib, torch, numpy.

    Not site-packages as a whole: a patch defined in a planted ``sitecustomize.py`` compiles
    to exactly the code it holds, so "matches its source" only means something when the
    source is the package the callable belongs to (whose files RECORD and the lock verify).
    Entries starting with ``!`` are excluded (site directories inside the stdlib tree, as a
    venv's ``lib/pythonX.Y/site-packages``).
    """
    import site

    paths = sysconfig.get_paths()
    roots = {os.path.normpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}
    for name in ("torch", "numpy", *_HELPER_MODULES):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            continue
        file = os.path.normpath(file)
        # A package is its directory; a single-file module is just that file.
        roots.add(os.path.dirname(file) if file.endswith("__init__.py") else file)
    # trainwarden's own wrappers (protect()) are verified like any installed package.
    roots.add(_trainwarden_dir())
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    roots.update("!" + os.path.normpath(p) for p in sites if p)
    return sorted(roots)


def _trainwarden_dir() -> str:
    import trainwarden

    return os.path.dirname(os.path.normpath(trainwarden.__file__ or ""))


def _is_ours(obj: Any, before: tuple[Any, ...]) -> bool:
    """A replacement that is trainwarden's own wrapper (``protect()``) around the original.

    Its outer code must come from the trainwarden package, it must close over the original
    recorded at the reference (a trainwarden function that drops the original is no
    protection), and every other function it closes over must be trainwarden's too.
    """
    ours = _trainwarden_dir() + os.sep
    functions = list(_functions_of(obj))
    if not functions or not os.path.normpath(functions[0].__code__.co_filename).startswith(ours):
        return False
    wraps_original = any(fn is known for fn in functions[1:] for known in before)
    return wraps_original and all(
        os.path.normpath(fn.__code__.co_filename).startswith(ours)
        or any(fn is known for known in before)
        for fn in functions[1:]
    )


def _inside(path: str, roots: list[str]) -> bool:
    def under(root: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    allowed = [r for r in roots if not r.startswith("!") and under(r)]
    if not allowed:
        return False
    # The deepest match decides: torch/ inside site-packages is allowed, site-packages
    # itself (inside the stdlib tree of a venv) is not.
    deepest = max(allowed, key=len)
    return not any(r.startswith("!") and under(r[1:]) and len(r) - 1 > len(deepest) for r in roots)


def _source_problem(
    fn: types.FunctionType, owner: Any, roots: list[str]
) -> tuple[str, Severity, Verdict] | None:
    """Why ``fn``'s code does not match its on-disk source, or ``None`` when it does."""
    code = fn.__code__
    if code in _SOURCES.proven:
        return None  # proven equal to its source on an earlier check
    path = code.co_filename
    frozen = _FROZEN.match(path)
    if frozen is not None:
        return _frozen_problem(code, frozen.group(1))
    if path.startswith("<"):
        if (
            isinstance(owner, type)
            and fn.__name__ in _DATACLASS_DUNDERS
            and (hasattr(owner, "__dataclass_fields__") or hasattr(owner, "_fields"))
        ):
            return None  # generated by dataclasses / namedtuple from the class: not on disk
        return (f"its code was generated at run time ({path}), not loaded from a file",
                Severity.HIGH, Verdict.UNSAFE)  # fmt: skip
    norm = os.path.normpath(path)
    if not _inside(norm, roots):
        return (f"its code comes from {path}, outside the packages it belongs to",
                Severity.HIGH, Verdict.UNSAFE)  # fmt: skip
    try:
        key, table = _SOURCES.index(norm)
    except OSError as exc:
        return (f"its source {path} cannot be read ({exc.strerror})", Severity.MEDIUM,
                Verdict.UNKNOWN)  # fmt: skip
    except (SyntaxError, ValueError) as exc:
        return (f"its source {path} no longer compiles ({exc})", Severity.HIGH, Verdict.UNSAFE)
    fresh = table.get((code.co_qualname, code.co_firstlineno))
    if fresh is None or fresh.replace(co_filename=code.co_filename) != code:
        return (
            f"its code differs from a fresh compile of {path}:{code.co_firstlineno} (patched "
            "in memory before the reference, or the source changed since import)",
            Severity.HIGH,
            Verdict.UNSAFE,
        )
    _SOURCES.proven[code] = (norm, key)
    return None


_FROZEN = re.compile(r"^<frozen ([A-Za-z0-9_.]+)>$")


def _frozen_problem(code: types.CodeType, module: str) -> tuple[str, Severity, Verdict] | None:
    """Compare with the interpreter's own frozen copy (``co_filename`` alone proves nothing)."""
    import _imp

    try:
        if not _imp.is_frozen(module):
            raise ImportError(module)
        top = _imp.get_frozen_object(module)
    except ImportError:
        return (f"its code claims to be frozen module {module}, which does not exist",
                Severity.HIGH, Verdict.UNSAFE)  # fmt: skip
    stack = [top]
    while stack:
        candidate = stack.pop()
        if (candidate.co_qualname, candidate.co_firstlineno) == (
            code.co_qualname,
            code.co_firstlineno,
        ):
            if candidate == code:
                _SOURCES.proven[code] = (module, (0, 0))
                return None
            break
        stack.extend(c for c in candidate.co_consts if isinstance(c, types.CodeType))
    return (f"its code differs from the interpreter's frozen {module}", Severity.HIGH,
            Verdict.UNSAFE)  # fmt: skip


def _functions_of(obj: Any, depth: int = 0) -> Iterator[types.FunctionType]:
    fn = _function(obj)
    if fn is None:
        return
    yield fn
    if depth >= _MAX_CLOSURE_DEPTH:
        return
    for cell in fn.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:
            continue
        if isinstance(content, types.FunctionType):
            yield from _functions_of(content, depth + 1)
    wrapped = fn.__dict__.get("__wrapped__")
    if wrapped is not None:
        yield from _functions_of(wrapped, depth + 1)


# ---------------------------------------------------------------------------------- kernels


def _torch() -> Any:
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


def _impls(torch: Any) -> frozenset[str]:
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


def _kernel_findings(
    torch: Any, reference: RuntimeSnapshot, *, all_ops: bool
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
    for impl in sorted(_impls(torch) - reference.impls):
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


def _mode_findings(torch: Any) -> list[Finding]:
    """Global torch-function / dispatch modes intercept every operator call."""
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


# ------------------------------------------------------------------------------- public API

_lock = threading.Lock()
_default: RuntimeSnapshot | None = None


def snapshot_runtime(*, kernels: bool = True, all_kernels: bool = False) -> RuntimeSnapshot:
    """Take a reference of the critical callables (and kernels) of this process now.

    The first snapshot also becomes the default reference of :func:`verify_runtime`.

    Args:
        kernels: Also record the torch dispatcher's kernels (when torch is imported).
        all_kernels: Record every operator's kernels, not only the core training operators
            (about 100 ms instead of about 3 ms).
    """
    global _default
    snapshot = RuntimeSnapshot(taken_at=time.time())
    for name, (module, path) in critical_targets().items():
        try:
            obj = _resolve(module, path)
        except (LookupError, AttributeError):
            continue
        snapshot.refs[name] = _Ref(obj, _parts(obj))
    torch = _torch()
    if torch is not None and kernels:
        snapshot.impls = _impls(torch)
        _kernel_findings(torch, snapshot, all_ops=all_kernels)
    snapshot.hooks = tuple(sys.meta_path) + tuple(sys.path_hooks)
    with _lock:
        if _default is None:
            _default = snapshot
    return snapshot


def _default_reference() -> RuntimeSnapshot:
    with _lock:
        current = _default
    return current if current is not None else snapshot_runtime()


def verify_runtime(
    reference: RuntimeSnapshot | None = None,
    *,
    check_source: bool = True,
    kernels: bool = True,
    all_kernels: bool = False,
) -> Report:
    """Check that the critical callables and kernels of this process are the originals.

    Args:
        reference: What "original" means (default: the first :func:`snapshot_runtime` of
            the process, taken now if there was none). Targets of modules imported after
            it are added on first sight.
        check_source: Also compare each function's code with a fresh compile of its source
            file (catches patches made before the reference; cached, so cheap after the
            first call).
        kernels: Check the torch dispatcher (when torch is imported).
        all_kernels: Check every operator, not only the core training operators.

    Returns:
        A report with one entry per module that has findings (``command="env runtime"``),
        plus ``<dispatcher>`` and ``<process>`` entries.
    """
    ref = reference if reference is not None else _default_reference()
    # A reference is updated as targets are first seen; one check at a time per process.
    with _verify_lock:
        return _verify(ref, check_source=check_source, kernels=kernels, all_kernels=all_kernels)


_verify_lock = threading.RLock()


def _verify(
    ref: RuntimeSnapshot, *, check_source: bool, kernels: bool, all_kernels: bool
) -> Report:
    roots: list[str] | None = None
    by_module: dict[str, list[Finding]] = {}
    checked = 0
    for name, (module, path) in critical_targets().items():
        try:
            obj = _resolve(module, path)
        except (LookupError, AttributeError):
            if name in ref.refs:
                by_module.setdefault(module, []).append(
                    _target_finding(
                        "runtime-removed",
                        Severity.HIGH,
                        f"{module}.{path} existed at the reference and is gone.",
                        name,
                    )
                )
            continue
        checked += 1
        parts = _parts(obj)
        before = ref.refs.get(name)
        if before is None:
            ref.refs[name] = _Ref(obj, parts)
        elif not _same(before.parts, parts):
            if _is_ours(obj, before.parts):
                # trainwarden.protect() routes loaders through the policy on purpose.
                by_module.setdefault(module, []).append(
                    Finding(
                        "env.runtime-protected",
                        Severity.INFO,
                        f"{module}.{path} is wrapped by trainwarden's own protection.",
                        Location(path=f"python:{name}"),
                        evidence=name,
                    )
                )
                continue
            by_module.setdefault(module, []).append(
                _target_finding(
                    "runtime-patched",
                    Severity.CRITICAL,
                    f"{module}.{path} was replaced or modified since the reference: was "
                    f"{_describe(before.obj)}, now {_describe(obj)}.",
                    name,
                )
            )
            continue
        if not check_source:
            continue
        # The object is the reference object (or first seen): its source verdict cannot
        # have changed since it was computed, so it is computed once.
        if name in ref.sourced:
            result = ref.sourced[name]
        else:
            if roots is None:
                roots = _allowed_roots()
            result = _source_finding(name, module, path, obj, roots)
            ref.sourced[name] = result
        if result is not None:
            by_module.setdefault(module, []).append(result)
    files = [FileReport(f"python:{m}", "runtime", tuple(f)) for m, f in sorted(by_module.items())]
    torch = _torch()
    dispatcher: list[Finding] = []
    if torch is not None and kernels:
        problems, info = _kernel_findings(torch, ref, all_ops=all_kernels)
        dispatcher.extend(problems + info + _mode_findings(torch))
    files.append(FileReport("<dispatcher>", "runtime", tuple(dispatcher)))
    process = _hook_findings(ref)
    process.append(
        Finding(
            "env.runtime-targets-checked",
            Severity.INFO,
            f"{checked} critical callable(s) checked"
            + (" against the reference and their source." if check_source else "."),
            Location(path="<process>"),
        )
    )
    files.append(FileReport("<process>", "process", tuple(process)))
    return Report(files=tuple(files), command=COMMAND)


def _source_finding(
    name: str, module: str, path: str, obj: Any, roots: list[str]
) -> Finding | None:
    owner = _owner_of(module, path)
    for fn in _functions_of(obj):
        problem = _source_problem(fn, owner, roots)
        if problem is not None:
            message, severity, verdict = problem
            return Finding(
                "env.runtime-source-mismatch",
                severity,
                f"{module}.{path}: {message}.",
                Location(path=f"python:{name}"),
                evidence=_describe(fn),
                verdict=verdict,
            )
    return None


def _owner_of(module: str, path: str) -> Any:
    head, _, _ = path.rpartition(".")
    if not head:
        return None
    try:
        return _resolve(module, head)
    except (LookupError, AttributeError):
        return None


def _target_finding(rule: str, severity: Severity, message: str, name: str) -> Finding:
    return Finding(
        f"env.{rule}",
        severity,
        message,
        Location(path=f"python:{name}"),
        evidence=name,
        verdict=Verdict.UNSAFE,
    )


def _hook_findings(ref: RuntimeSnapshot) -> list[Finding]:
    from trainwarden.env._startup import check_import_hooks

    before = {id(h) for h in ref.hooks}
    new_meta = [h for h in sys.meta_path if id(h) not in before]
    new_path = [h for h in sys.path_hooks if id(h) not in before]
    if not new_meta and not new_path:
        return []
    # Hooks present at the reference were judged by `env verify`; one installed since is
    # suspicious even when its module is installed code (then it is "not verified" rather
    # than "tampered": `env verify` vouches for that file's content).
    import site

    sites = [os.path.normpath(p) + os.sep for p in site.getsitepackages() if p]
    out: list[Finding] = []
    for item in check_import_hooks((), meta_path=new_meta, path_hooks=new_path):
        module = sys.modules.get((item.evidence or "").rsplit(".", 1)[0])
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and any(os.path.normpath(file).startswith(s) for s in sites):
            item = Finding(
                item.rule_id,
                Severity.MEDIUM,
                item.message.replace(
                    "which no verified distribution installs",
                    "added since the reference by installed code",
                ),
                item.location,
                evidence=item.evidence,
                verdict=Verdict.UNKNOWN,
            )
        out.append(item)
    return out


# The reference "at import": whatever critical modules the process already holds when
# trainwarden.env is imported (modules imported later join the reference on first sight).
if "torch" in sys.modules or "numpy" in sys.modules:
    snapshot_runtime()
