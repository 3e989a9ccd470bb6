"""Live-process integrity: are the callables a saboteur would patch still the originals?

Four checks, cheapest first: identity (each critical attribute still holds the object seen at
the reference, with the same code, defaults and closure), source (each function's code equals
a fresh compile of the file it claims to come from, which catches patches applied before any
reference), kernels (no Python or foreign kernel overrides a core ``aten`` operator), hooks
(no import hook or global optimizer/module hook appeared that trainwarden did not install).
trainwarden's own replacements and hooks are recognised by identity through
:mod:`trainwarden.patching`, never by a marker attribute or a file path, which anyone can forge.

Nothing is taken or checked as a side effect of importing this module: a reference is taken by
:func:`snapshot_runtime` (or lazily by the first :func:`verify_runtime` without one, which says
so in its report). Modules are never imported here: only what the process already loaded.
"""

# ruff: noqa: PTH120

from __future__ import annotations

import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainwarden import patching
from trainwarden.env._installed import class_defines, owner_classes, verified_function
from trainwarden.env._kernels import (
    KernelReference,
    kernel_findings,
    library_impls,
    mode_findings,
    torch_module,
)
from trainwarden.env._sources import SOURCES, allowed_roots, source_problem
from trainwarden.env._startup import check_import_hooks
from trainwarden.env._targets import (
    critical_targets,
    describe,
    function_of,
    functions_of,
    parts_of,
    resolve,
    same_parts,
)
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict

__all__ = [
    "COMMAND",
    "RuntimeSnapshot",
    "check_runtime",
    "snapshot_runtime",
    "verify_runtime",
]

#: ``command`` of the reports of :func:`verify_runtime`.
COMMAND = "env runtime"

# Global hook registries of torch: a hook there runs for every optimizer step or every module
# call in the process, with no attribute patched (``register_optimizer_step_post_hook`` can
# flip every update). Module -> attribute names of the dicts.
_GLOBAL_HOOKS: dict[str, tuple[str, ...]] = {
    "torch.optim.optimizer": ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks"),
    "torch.nn.modules.module": (
        "_global_backward_pre_hooks",
        "_global_backward_hooks",
        "_global_forward_pre_hooks",
        "_global_forward_hooks",
        "_global_buffer_registration_hooks",
        "_global_module_registration_hooks",
        "_global_parameter_registration_hooks",
    ),
}
# How deep trainwarden's own patches may be stacked on one attribute (guard over protect...).
_MAX_PATCH_DEPTH = 8


@dataclass(frozen=True, slots=True)
class _Ref:
    """What a target looked like at the reference: the object and what its behaviour hangs on.

    For an attribute holding one of trainwarden's own replacements, ``obj`` is the original
    behind it: "unchanged" means the original is, whether or not our wrapper is in front.
    """

    obj: Any
    parts: tuple[Any, ...]


@dataclass(eq=False)
class RuntimeSnapshot:
    """A reference of the process's critical callables, kernels and hooks.

    Built by :func:`snapshot_runtime`. Targets of modules imported later (and operators first
    checked later) join the reference the first time a check sees them; the source check
    covers what happened to them before. A snapshot is mutable state shared by the checks that
    use it (under its own lock); it is not a result.
    """

    taken_at: float
    refs: dict[str, _Ref] = field(default_factory=dict)
    kernel_reference: KernelReference = field(default_factory=KernelReference)
    kernels_recorded: bool = False
    hooks: tuple[Any, ...] = ()
    global_hooks: frozenset[tuple[str, int]] = frozenset()
    # Targets whose current objects were compared with their source, and what was found
    # (``None`` when they matched): unchanged objects need no second compile.
    sourced: dict[str, Finding | None] = field(default_factory=dict)
    # Targets the package itself re-wrapped since the reference (torch wraps `manual_seed`
    # when torch._dynamo loads): the wrapper became the reference; the note is kept for reports.
    rewrapped: dict[str, Finding] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def target_count(self) -> int:
        """Number of callables in the reference."""
        return len(self.refs)


# ------------------------------------------------------------------------- our own patches


def _underlying(obj: Any) -> tuple[Any, list[patching.Patch]]:
    """The original behind trainwarden's own replacement(s) of ``obj``, and those patches.

    Identity only: :func:`trainwarden.patching.lookup` answers from the registry, so a
    function that merely carries trainwarden's marker attribute is not one of ours.
    """
    chain: list[patching.Patch] = []
    current = obj
    while len(chain) < _MAX_PATCH_DEPTH:
        patch = patching.lookup(current)
        if patch is None:
            break
        chain.append(patch)
        current = patch.original
    return current, chain


def _trainwarden_roots() -> list[str]:
    import trainwarden

    return [os.path.dirname(os.path.normpath(trainwarden.__file__ or ""))]


def _wrapper_problem(patch: patching.Patch, originals: tuple[Any, ...]) -> str | None:
    """Why trainwarden's replacement is no longer the code trainwarden installed, or ``None``.

    The registry proves the object is the one we installed, not that it still does what we
    wrote: its code can be swapped in place and its closure cells rebound. Every function it
    is made of must compile from trainwarden's own files (which ``env verify`` checks on
    disk), except the originals it wraps, which are checked against the reference.
    """
    replacement = patch.replacement
    if isinstance(replacement, type):
        if not any(base is patch.original for base in replacement.__bases__):
            return "it no longer derives from the class it replaced"
        functions = [f for f in map(function_of, vars(replacement).values()) if f is not None]
    else:
        fn = function_of(replacement)
        if fn is None:
            return None  # not a Python function: identity is all there is to check
        functions = [fn]
    roots = _trainwarden_roots()
    seen: set[int] = set()
    while functions:
        fn = functions.pop()
        if id(fn) in seen or any(fn is o for o in originals):
            continue
        seen.add(id(fn))
        problem = source_problem(fn, None, roots)
        if problem is not None:
            return f"{fn.__qualname__}: {problem[0]}"
        for cell in fn.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:
                continue
            # The original itself, by identity: `random.seed` is a bound method of
            # `random._inst`, and the reference compares its every part (`__func__`, code,
            # defaults, closure). Its function must not be judged as trainwarden's code. A
            # cell rebound to another binding of the same function (another instance) is
            # not the original and is judged like any other function.
            if any(content is o for o in originals):
                continue
            inner = function_of(content)
            if inner is not None:
                functions.append(inner)
    return None


# ------------------------------------------------------------------------------- snapshots


def _unpaced() -> None:
    """No pacing: the check runs straight through."""


def snapshot_runtime(
    *, kernels: bool = True, all_kernels: bool = False, pace: Callable[[], None] = _unpaced
) -> RuntimeSnapshot:
    """Take a reference of the critical callables, kernels and hooks of this process now.

    Take it as early as possible (before the training script runs, in a launcher or a
    bootstrap): patches made before it are caught only by the source comparison. The first
    one in a process also builds the list of critical targets (0.1-0.4 s with torch, then
    cached); later ones take tens of milliseconds. Nothing is compiled.

    Args:
        kernels: Also record the torch dispatcher's kernels (when torch is imported).
        all_kernels: Record every operator's kernels, not only the core training operators
            (about 100 ms instead of about 5 ms).
        pace: Called between units of work (a callable, an operator): a caller in another
            thread than the job's (trainwarden's guard) rests there to leave the job the
            interpreter lock.

    Returns:
        A new snapshot; pass it to :func:`verify_runtime` or :func:`check_runtime`.
    """
    snapshot = RuntimeSnapshot(taken_at=time.time())
    with snapshot.lock:
        for name, (module, path) in critical_targets().items():
            pace()
            try:
                obj = resolve(module, path)
            except (LookupError, AttributeError):
                continue
            original, _ = _underlying(obj)
            snapshot.refs[name] = _Ref(original, parts_of(original))
        torch = torch_module()
        if torch is not None and kernels:
            snapshot.kernel_reference.impls = library_impls(torch)
            kernel_findings(torch, snapshot.kernel_reference, all_ops=all_kernels, pace=pace)
            snapshot.kernels_recorded = True
        snapshot.hooks = tuple(sys.meta_path) + tuple(sys.path_hooks)
        snapshot.global_hooks = frozenset(_global_hooks())
    return snapshot


_default_lock = threading.Lock()
_default: RuntimeSnapshot | None = None


def _default_reference() -> tuple[RuntimeSnapshot, bool]:
    """The process's lazily taken default reference, and whether it was taken just now."""
    global _default
    with _default_lock:
        if _default is not None:
            return _default, False
        _default = snapshot_runtime()
        return _default, True


# ------------------------------------------------------------------------------ the checks


def verify_runtime(
    reference: RuntimeSnapshot | None = None,
    *,
    check_source: bool = True,
    kernels: bool = True,
    all_kernels: bool = False,
    source_budget: float | None = None,
    pace: Callable[[], None] = _unpaced,
) -> Report:
    """Check that the critical callables, kernels and hooks of this process are the originals.

    Cost: the first call with ``check_source`` compiles the source files the critical
    callables come from (about 50 files of torch, 0.3-0.8 s); each code object proven equal to
    its source is remembered, so later calls take about 10 ms (identity of about 2,000
    callables, the dumps of about 340 core operators). ``source_budget`` spreads the compiles
    over several calls instead.

    Args:
        reference: What "original" means. ``None`` uses the process's default reference,
            which the first such call takes (lazily, then and there, and says so with an
            ``env.runtime-reference-taken`` finding): take your own with
            :func:`snapshot_runtime` as early as you can instead. Targets of modules imported
            after the reference are added on first sight.
        check_source: Also compare each function's code with a fresh compile of its source
            file (catches patches made before the reference).
        kernels: Check the torch dispatcher (when torch is imported).
        all_kernels: Check every operator, not only the core training operators.
        source_budget: Seconds this call may spend compiling sources; callables whose
            source is not compiled yet when it runs out are compared by a later call, and the
            report says how many wait (``None``: compare everything now).
        pace: Called between units of work (a callable, a source file's compile, an
            operator): see :func:`snapshot_runtime`.

    Returns:
        A report with one entry per module that has findings (``command="env runtime"``),
        plus ``<dispatcher>`` and ``<process>`` entries.
    """
    taken = False
    if reference is None:
        reference, taken = _default_reference()
    with reference.lock:
        files = _verify(
            reference,
            check_source=check_source,
            kernels=kernels,
            all_kernels=all_kernels,
            source_budget=source_budget,
            info=True,
            pace=pace,
        )
    if taken:
        note = Finding(
            "env.runtime-reference-taken",
            Severity.INFO,
            "No reference was given, so this check took one now: callables patched before "
            "now are caught only by the comparison with their source. Take a reference "
            "early with trainwarden.env.snapshot_runtime() and pass it in.",
            Location(path="<process>"),
        )
        files = [
            FileReport(f.path, f.format, (note, *f.findings)) if f.path == "<process>" else f
            for f in files
        ]
    return Report(files=tuple(files), command=COMMAND)


def check_runtime(
    reference: RuntimeSnapshot,
    *,
    kernels: bool = True,
    source_budget: float | None = 0.05,
) -> tuple[Finding, ...]:
    """The periodic check: the findings that are not ``safe``, and nothing else.

    What :func:`verify_runtime` checks, without building a report or informational findings,
    for a guard that runs it every few steps or minutes: about 5 ms without kernels, about
    10 ms with them (see ``docs/env-runtime.md``). Source compiles are spread over calls
    (``source_budget`` seconds each) so no single call stalls a training step for long.

    Args:
        reference: The snapshot to compare with (from :func:`snapshot_runtime`).
        kernels: Check the core operators' kernels in the torch dispatcher too.
        source_budget: Seconds one call may spend compiling sources (``None``: no limit).
    """
    with reference.lock:
        files = _verify(
            reference,
            check_source=True,
            kernels=kernels,
            all_kernels=False,
            source_budget=source_budget,
            info=False,
        )
    return tuple(f for report in files for f in report.findings if f.verdict is not Verdict.SAFE)


def _verify(
    ref: RuntimeSnapshot,
    *,
    check_source: bool,
    kernels: bool,
    all_kernels: bool,
    source_budget: float | None,
    info: bool,
    pace: Callable[[], None] = _unpaced,
) -> list[FileReport]:
    roots: list[str] | None = None
    by_module: dict[str, list[Finding]] = {}
    checked = 0
    deferred = 0
    deadline = None if source_budget is None else time.perf_counter() + source_budget
    # Our installed replacements, once per check: most attributes are not ours, and a set
    # lookup per attribute is the cheapest way to say so (identity, as patching.lookup).
    replacements = {id(p.replacement) for p in patching.installed_patches()}
    for name, (module, path) in critical_targets().items():
        pace()
        try:
            obj = resolve(module, path)
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
        current, ours = _underlying(obj) if id(obj) in replacements else (obj, [])
        parts = parts_of(current)
        before = ref.refs.get(name)
        if before is not None and not same_parts(before.parts, parts):
            note = _own_rewrap(name, module, path, before, current)
            if note is not None:
                ref.rewrapped[name] = note
                ref.refs[name] = before = _Ref(current, parts)
                ref.sourced.pop(name, None)
        if info and name in ref.rewrapped:
            by_module.setdefault(module, []).append(ref.rewrapped[name])
        if before is None:
            ref.refs[name] = before = _Ref(current, parts)
        elif not same_parts(before.parts, parts):
            behind = (
                f" (behind trainwarden's own {ours[0].purpose} wrapper, which is not at fault)"
                if ours
                else ""
            )
            by_module.setdefault(module, []).append(
                _target_finding(
                    "runtime-patched",
                    Severity.CRITICAL,
                    f"{module}.{path} was replaced or modified since the reference{behind}: "
                    f"was {describe(before.obj)}, now {describe(current)}.",
                    name,
                )
            )
            continue
        if ours:
            originals = (current, *(p.original for p in ours))
            problems = [p for p in (_wrapper_problem(patch, originals) for patch in ours) if p]
            if problems:
                by_module.setdefault(module, []).append(
                    _target_finding(
                        "runtime-patched",
                        Severity.CRITICAL,
                        f"{module}.{path} holds trainwarden's {ours[0].purpose} wrapper, but it "
                        f"was altered since it was installed: {problems[0]}.",
                        name,
                    )
                )
                continue
            if info:
                purposes = ", ".join(dict.fromkeys(p.purpose for p in ours))
                by_module.setdefault(module, []).append(
                    Finding(
                        "env.runtime-protected",
                        Severity.INFO,
                        f"{module}.{path} is wrapped by trainwarden's own {purposes} (recognised "
                        "by identity; the original behind it is the reference's).",
                        Location(path=f"python:{name}"),
                        evidence=name,
                    )
                )
        if not check_source:
            continue
        # The object is the reference object (or first seen): its source verdict cannot
        # have changed since it was computed, so it is computed once.
        if name in ref.sourced:
            result = ref.sourced[name]
        else:
            if deadline is not None and time.perf_counter() > deadline and _needs_compile(current):
                deferred += 1
                continue
            if roots is None:
                roots = allowed_roots()
            result = _source_finding(name, module, path, current, roots)
            ref.sourced[name] = result
        if result is not None:
            by_module.setdefault(module, []).append(result)
    files = [FileReport(f"python:{m}", "runtime", tuple(f)) for m, f in sorted(by_module.items())]
    torch = torch_module()
    dispatcher: list[Finding] = []
    if torch is not None and kernels:
        problems_found, kernel_info = kernel_findings(
            torch, ref.kernel_reference, all_ops=all_kernels, pace=pace
        )
        dispatcher.extend(problems_found)
        if info:
            dispatcher.extend(kernel_info)
        dispatcher.extend(f for f in mode_findings(torch) if info or f.verdict is not Verdict.SAFE)
    files.append(FileReport("<dispatcher>", "runtime", tuple(dispatcher)))
    process = _hook_findings(ref) + _global_hook_findings(ref)
    if deferred:
        process.append(
            Finding(
                "env.runtime-source-pending",
                Severity.INFO,
                f"{deferred} callable(s) wait for their source comparison (the compile budget "
                "of this check ran out); a later check compares them.",
                Location(path="<process>"),
            )
        )
    if info:
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
    return files


def _needs_compile(obj: Any) -> bool:
    return any(SOURCES.needs_compile(fn.__code__) for fn in functions_of(obj))


def _source_finding(
    name: str, module: str, path: str, obj: Any, roots: list[str]
) -> Finding | None:
    owner = _owner_of(module, path)
    added_by: list[str] = []
    for fn in functions_of(obj):
        problem = source_problem(fn, owner, roots)
        if problem is None:
            continue
        label = _installed_addition(path, owner, fn)
        if label is not None:
            added_by.append(label)
            continue
        message, severity, verdict = problem
        return Finding(
            "env.runtime-source-mismatch",
            severity,
            f"{module}.{path}: {message}.",
            Location(path=f"python:{name}"),
            evidence=describe(fn),
            verdict=verdict,
        )
    if added_by:
        packages = ", ".join(dict.fromkeys(added_by))
        return Finding(
            "env.runtime-added",
            Severity.INFO,
            f"{module}.{path} was added by {packages} (verified against its RECORD): the class "
            "defines no such attribute in torch's source, so nothing of torch's was replaced.",
            Location(path=f"python:{name}"),
            evidence=packages,
        )
    return None


def _own_rewrap(name: str, module: str, path: str, before: _Ref, current: Any) -> Finding | None:
    """A note when ``current`` is the package's own wrapper around the reference object.

    torch rebinds some of its functions to wrappers of its own after the fact
    (``torch.manual_seed = torch._disable_dynamo(torch.manual_seed)`` when ``torch._dynamo``
    is imported, which transformers does). That is no tampering when the new object is a
    function that closes over (or ``__wrapped__``s) the very reference object, and every
    function of it other than the original's parts is code from the packages the critical
    callables belong to that matches a fresh compile of its file. Anything else (the original
    dropped, code from elsewhere, code patched in memory) stays ``runtime-patched``.
    """
    fn = function_of(current)
    if fn is None:
        return None
    held: list[Any] = [fn.__dict__.get("__wrapped__")]
    for cell in fn.__closure__ or ():
        try:
            held.append(cell.cell_contents)
        except ValueError:  # noqa: PERF203 - an empty cell
            continue
    if not any(item is before.obj for item in held):
        return None
    theirs = {id(part) for part in before.parts}
    roots = allowed_roots()
    for inner in functions_of(current):
        if id(inner) not in theirs and source_problem(inner, None, roots) is not None:
            return None
    return Finding(
        "env.runtime-rewrapped",
        Severity.INFO,
        f"{module}.{path} is now {describe(fn)}, the package's own wrapper around the "
        "reference's original (verified against its source); it is the reference from here on.",
        Location(path=f"python:{name}"),
        evidence=name,
    )


def _installed_addition(path: str, owner: Any, fn: Any) -> str | None:
    """The distribution that *added* the class attribute ``path`` with ``fn``, else ``None``.

    Libraries add methods to torch classes (transformers' ``Module.smart_apply``); that
    replaces nothing of torch's. It counts as an addition only when all of these hold, so a
    *replacement* of anything torch defines stays a finding:

    - the attribute is a plain name (a dunder is a protocol torch and Python call);
    - exactly one class of the MRO holds it (it shadows nothing inherited);
    - that class's body in its own source never names it (torch does not define it);
    - the function's code is a fresh compile of a file an installed distribution's RECORD
      lists with the hash the file has now (``verified_function``).
    """
    head, _, attr = path.rpartition(".")
    if not head or (attr.startswith("__") and attr.endswith("__")):
        return None
    holders = owner_classes(owner, attr)
    if len(holders) != 1 or class_defines(holders[0], attr) is not False:
        return None
    label, _ = verified_function(fn)
    return label


def _owner_of(module: str, path: str) -> Any:
    head, _, _ = path.rpartition(".")
    if not head:
        return None
    try:
        return resolve(module, head)
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
    before = {id(h) for h in ref.hooks}
    new_meta = [h for h in sys.meta_path if id(h) not in before]
    new_path = [h for h in sys.path_hooks if id(h) not in before]
    if not new_meta and not new_path:
        return []
    # Hooks present at the reference were judged by `env verify`; one installed since is
    # suspicious even when its module is installed code (then it is "not verified" rather
    # than "tampered": `env verify` vouches for that file's content). trainwarden's own
    # finder is recognised by identity by check_import_hooks.
    import site

    sites = [os.path.normpath(p) + os.sep for p in site.getsitepackages() if p]
    out: list[Finding] = []
    hooks = {id(h): h for h in (*new_meta, *new_path)}
    for item in check_import_hooks((), meta_path=new_meta, path_hooks=new_path):
        label = _verified_hook(hooks.get(id(_hook_by_label(item.evidence, hooks))))
        if item.rule_id == "env.import-hook" and label is not None:
            # transformers adds a finder for its renamed modules: installed code whose every
            # method is a fresh compile of a file its RECORD vouches for is that package's
            # behaviour, not a planted hook.
            item = Finding(
                "env.import-hook-known",
                Severity.INFO,
                f"{item.message.split(' (from ', 1)[0]}, added since the reference by {label} "
                "(its code verified against the distribution's RECORD).",
                item.location,
                evidence=item.evidence,
            )
        elif item.rule_id == "env.import-hook":
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


def _hook_by_label(label: str | None, hooks: dict[int, Any]) -> Any:
    """The new hook a finding's evidence (``module.qualname``) names, if exactly one does."""
    if label is None:
        return None
    matches = []
    for hook in hooks.values():
        cls = hook if isinstance(hook, type) or hasattr(hook, "__code__") else type(hook)
        name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"
        if name == label:
            matches.append(hook)
    return matches[0] if len(matches) == 1 else None


def _verified_hook(hook: Any) -> str | None:
    """The distribution whose verified code *all* of ``hook`` is, else ``None``.

    A finder's class (or the hook function) is judged by its code, never by the ``__module__``
    it claims: every function it defines, through its whole MRO below ``object``, must be a
    fresh compile of a file an installed distribution's RECORD vouches for.
    """
    if hook is None:
        return None
    if isinstance(hook, types.FunctionType):
        functions: list[Any] = list(functions_of(hook))
    else:
        cls = hook if isinstance(hook, type) else type(hook)
        functions = [
            fn
            for klass in cls.__mro__
            if klass is not object
            for value in vars(klass).values()
            for fn in functions_of(value)
        ]
        if (
            any(klass is not object and klass.__module__ == "builtins" for klass in cls.__mro__)
            or not functions
        ):
            return None
    labels = []
    roots: list[str] | None = None
    for fn in functions:
        label, _ = verified_function(fn)
        if label is None:
            # Methods inherited from the standard library's ABCs (importlib.abc): judged
            # against their own source, as the critical callables are.
            roots = roots if roots is not None else allowed_roots()
            if source_problem(fn, None, roots) is not None:
                return None
            continue
        labels.append(label)
    return ", ".join(dict.fromkeys(labels)) or None


def _global_hooks() -> Iterator[tuple[str, int]]:
    """``(registry, id(hook))`` for every hook in torch's global hook registries."""
    for module_name, attrs in _GLOBAL_HOOKS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for attr in attrs:
            registry = getattr(module, attr, None)
            if isinstance(registry, dict):
                for hook in list(registry.values()):
                    yield f"{module_name}.{attr}", id(hook)


def _global_hook_findings(ref: RuntimeSnapshot) -> list[Finding]:
    out: list[Finding] = []
    for module_name, attrs in _GLOBAL_HOOKS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for attr in attrs:
            registry = getattr(module, attr, None)
            if not isinstance(registry, dict):
                continue
            where = f"{module_name}.{attr}"
            for hook in list(registry.values()):
                if patching.lookup_hook(hook) is not None:
                    continue  # registered by trainwarden (the guard), tracked by identity
                label = describe(hook)
                new = (where, id(hook)) not in ref.global_hooks
                out.append(
                    Finding(
                        "env.runtime-global-hook",
                        Severity.HIGH if new else Severity.MEDIUM,
                        f"{where} holds {label}"
                        + (
                            ", registered since the reference: it runs on every optimizer "
                            "step or module call of the process."
                            if new
                            else ", present at the reference: it runs on every optimizer step "
                            "or module call of the process and nothing verified it."
                        ),
                        Location(path="<process>"),
                        evidence=label,
                        verdict=Verdict.UNSAFE if new else Verdict.UNKNOWN,
                    )
                )
    return out
