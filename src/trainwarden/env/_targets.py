"""Which callables of a live process a saboteur would patch, and what each one's behaviour is.

The list of critical targets (optimizer steps, seeding, data loading, collectives,
``torch.load``/``save``), resolved without importing anything, and the identity fingerprint
of a callable (its code, defaults, closure and the functions it wraps).
"""

from __future__ import annotations

import functools
import hashlib
import sys
import threading
import types
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "code_digest",
    "critical_targets",
    "describe",
    "function_of",
    "functions_of",
    "parts_of",
    "resolve",
    "same_parts",
]

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
_MAX_CLOSURE_DEPTH = 4


def _mro_lookup(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    raise AttributeError(name)


@functools.lru_cache(maxsize=8192)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def resolve(module_name: str, path: str) -> Any:
    """Resolve ``module:path`` without triggering descriptors (a classmethod stays raw)."""
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        raise LookupError(module_name)
    for part in _split(path):
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
                        if function_of(value) is not None:
                            yield f"{name}.{attr}"


_targets_cache: tuple[frozenset[str], Mapping[str, tuple[str, str]]] | None = None
_targets_lock = threading.Lock()


def critical_targets() -> Mapping[str, tuple[str, str]]:
    """Every critical callable present in this process: ``"module:attr" -> (module, attr)``.

    Named targets (``torch:manual_seed``, ``torch.distributed:all_reduce``...) plus every
    function and method (inherited ones included) of the swept modules (all of
    ``torch.optim``, ``random``, ``torch.serialization``, the data loader, sampler,
    collective and autograd modules...). Only modules already in ``sys.modules`` are looked
    at; nothing is imported. The list of names is cached (read-only) until another relevant
    module is imported; the objects behind the names are resolved afresh on every check.
    """
    global _targets_cache
    # Built once per set of imported critical modules: sweeping every class of torch.optim
    # is most of a snapshot's cost, and the names only change when a module is imported.
    present = frozenset(
        m for m in [*_NAMED_TARGETS, *_SWEPT_MODULES] if m in sys.modules
    ) | frozenset(m for m in list(sys.modules) if m.startswith(_SWEPT_PREFIXES))
    cached = _targets_cache
    if cached is not None and cached[0] == present:
        return cached[1]
    with _targets_lock:
        targets = types.MappingProxyType(_enumerate_targets())
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


def function_of(obj: Any) -> types.FunctionType | None:
    inner = obj.__func__ if isinstance(obj, (staticmethod, classmethod, types.MethodType)) else obj
    return inner if isinstance(inner, types.FunctionType) else None


def parts_of(obj: Any) -> tuple[Any, ...]:
    """What a callable's behaviour depends on, flattened, compared by identity on every check.

    Code objects are immutable, so ``code is reference_code`` proves the code is unchanged;
    defaults and closure cells can be reassigned in place, so they are included, and so are
    the functions a decorator closes over (``_use_grad`` wraps the real ``step``).
    """
    out: list[Any] = [obj]
    _collect(obj, out, 0)
    return tuple(out)


def _collect(obj: Any, out: list[Any], depth: int) -> None:
    fn = function_of(obj)
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


def same_parts(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
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


def describe(obj: Any) -> str:
    fn = function_of(obj)
    if fn is not None:
        code = fn.__code__
        return (
            f"{fn.__module__}.{fn.__qualname__} ({code.co_filename}:{code.co_firstlineno}, "
            f"code {code_digest(code)})"
        )
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name} ({type(obj).__name__})"


def functions_of(obj: Any, depth: int = 0) -> Iterator[types.FunctionType]:
    fn = function_of(obj)
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
            yield from functions_of(content, depth + 1)
    wrapped = fn.__dict__.get("__wrapped__")
    if wrapped is not None:
        yield from functions_of(wrapped, depth + 1)
