"""Hooks injected after attach, and the guard's own hooks removed or bypassed.

A hook is the cheapest way to tamper with training without touching its code: a module
forward hook that scales activations, a parameter hook that flips gradients, an optimizer
post-hook that nudges weights, a DDP communication hook that perturbs the all-reduce. The
guard records every hook container of the optimizer, of every module of the model, of every
parameter and the global ones at attach; each step it compares (identity and length first,
which costs a few microseconds; contents only when something differs). A hook that is not
trainwarden's (by identity, through :mod:`trainwarden.patching`) and was not there at attach is
a finding; one of the guard's own hooks gone is ``guard.detached``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from trainwarden import patching
from trainwarden.findings import Severity
from trainwarden.guard._findings import GuardFinding

__all__ = ["HookAudit", "describe_hook"]

_MODULE_HOOKS = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_state_dict_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_OPTIMIZER_HOOKS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)
_GLOBAL_MODULE_HOOKS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)
_GLOBAL_OPTIMIZER_HOOKS = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")


def describe_hook(fn: Any) -> str:
    """``module.qualname (file:line)`` of a hook, for evidence."""
    target = getattr(fn, "__func__", fn)
    inner = getattr(target, "func", None)  # functools.partial
    if inner is not None and not hasattr(target, "__code__"):
        target = inner
    code = getattr(target, "__code__", None)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or "?"
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{module}.{name}{where}"


@dataclass
class _Slot:
    """One hook container, where it lives, and what it held at the baseline."""

    label: str
    get: Callable[[], Any]
    container: Any
    size: int
    values: tuple[Any, ...]
    # Where the container lives, for the vectorised check: ``getattr(owner, attr)`` (a
    # tensor's hook dict) or, with ``in_dict``, ``owner.get(attr)`` (a module's ``forward``).
    owner: Any = None
    attr: str | None = None
    in_dict: bool = False

    def changed(self) -> bool:
        current = self.get()
        if current is not self.container:
            return True
        if current is None:
            return False
        if len(current) != self.size:
            return True
        return bool(self.size) and tuple(_values(current)) != self.values


@dataclass
class _DictSlot:
    """A container kept in an object's ``__dict__`` under ``attr`` (checked without a call)."""

    label: str
    owner: dict[str, Any]
    attr: str
    container: Any
    size: int
    values: tuple[Any, ...]

    def get(self) -> Any:
        return self.owner.get(self.attr)


@dataclass
class _Family:
    """Containers fetched the same way: ``owner.get(attr)`` (dicts) or ``getattr(owner, attr)``."""

    owners: list[Any]
    attrs: list[str] | None  # per owner, for dict owners; None: ``getter`` on each
    getter: Callable[[Any], Any] | None
    recorded: list[Any]  # the containers as recorded (identity)
    sized: list[int]  # indices of the recorded containers that have a length
    sizes: list[int]  # their lengths as recorded
    contents: list[tuple[int, tuple[Any, ...]]]  # (index, entries) of the non-empty ones

    @classmethod
    def build(
        cls,
        owners: list[Any],
        attrs: list[str] | None,
        getter: Callable[[Any], Any] | None,
        recorded: list[Any],
    ) -> _Family:
        sized = [i for i, c in enumerate(recorded) if isinstance(c, (dict, list))]
        sizes = [len(recorded[i]) for i in sized]
        contents = [(i, tuple(_values(recorded[i]))) for i in sized if len(recorded[i])]
        return cls(owners, attrs, getter, recorded, sized, sizes, contents)

    def unchanged(self) -> bool:
        import operator

        if self.attrs is not None:
            current = list(map(dict.get, self.owners, self.attrs))
        else:
            assert self.getter is not None
            current = list(map(self.getter, self.owners))
        if not all(map(operator.is_, current, self.recorded)):
            return False
        containers = cast("list[Any]", current)  # None where recorded None (not sized)
        if len(self.sized) == len(containers):
            sizes = list(map(len, containers))
        else:
            sizes = [len(containers[i]) for i in self.sized]
        if sizes != self.sizes:
            return False
        return all(tuple(_values(current[i])) == values for i, values in self.contents)


class _Snapshot:
    """Every audited container's identity and length as flat lists, compared in bulk.

    Hundreds of containers (eight per module, two per parameter) are checked every step; a
    Python loop over them costs hundreds of microseconds in the caches a training step has
    just flushed. Here each family of containers is fetched with one ``map`` over its owners
    and compared with list operations, all in C; contents are compared only for the few
    containers that hold hooks. Any difference, or a container that cannot be fetched this
    way, sends the audit through the slot-by-slot diff.
    """

    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    @classmethod
    def of(cls, dict_slots: list[_DictSlot], slots: list[_Slot]) -> _Snapshot | None:
        """The snapshot of the slots as recorded, or ``None`` if one cannot be compared so."""
        import operator

        families = [
            _Family.build(
                [d.owner for d in dict_slots],
                [d.attr for d in dict_slots],
                None,
                [d.container for d in dict_slots],
            )
        ]
        in_dict: dict[str, tuple[list[Any], list[Any]]] = {}
        by_attr: dict[str, tuple[list[Any], list[Any]]] = {}
        for slot in slots:
            if slot.owner is None or slot.attr is None:
                return None
            if slot.in_dict:
                owners, recorded = in_dict.setdefault(slot.attr, ([], []))
                recorded.append(slot.owner.get(slot.attr))
            else:
                owners, recorded = by_attr.setdefault(slot.attr, ([], []))
                recorded.append(getattr(slot.owner, slot.attr, None))
            owners.append(slot.owner)
        for attr, (owners, recorded) in in_dict.items():
            families.append(_Family.build(owners, [attr] * len(owners), None, recorded))
        for attr, (owners, recorded) in by_attr.items():
            families.append(_Family.build(owners, None, operator.attrgetter(attr), recorded))
        return cls(families)

    def unchanged(self) -> bool:
        """Whether every container is the one recorded, with the same entries."""
        try:
            return all(family.unchanged() for family in self.families)
        except (AttributeError, TypeError, RuntimeError):  # a container gone or replaced
            return False


def _values(container: Any) -> Iterator[Any]:
    if isinstance(container, dict):
        return iter(container.values())
    return iter(container)


def _instance_forward(module: Any) -> tuple[Any, ...] | None:
    forward = module.__dict__.get("forward")
    return (forward,) if forward is not None else None


def _tensor_hooks(p: Any) -> Any:
    return p._backward_hooks


def _accumulate_hooks(p: Any) -> Any:
    return getattr(p, "_post_accumulate_grad_hooks", None)


def _functions(container: Any) -> list[Any]:
    if container is None:
        return []
    return [item[0] if isinstance(item, tuple) and item else item for item in _values(container)]


class HookAudit:
    """Baseline of every hook container the job's training goes through, and its diff.

    Args:
        optimizer: The optimizer.
        model: The model, or ``None`` (then modules are not audited: said in ``guard.attach``).
        rank: For findings.
        own: The guard's own hook functions that must stay registered (label -> function).
    """

    def __init__(self, optimizer: Any, model: Any | None, *, rank: int) -> None:
        self.optimizer = optimizer
        self.model = model
        self.rank = rank
        self.own: dict[str, tuple[Callable[[], Any], Any]] = {}
        self._slots: list[_Slot] = []
        self._dict_slots: list[_DictSlot] = []
        self._fast: _Snapshot | None = None
        self.cost = 0.0
        self.reported: set[int] = set()

    def expect(self, label: str, container: Callable[[], Any], fn: Any) -> None:
        """Require ``fn`` (one of the guard's hooks) to stay in ``container()``."""
        self.own[label] = (container, fn)

    def baseline(self) -> None:
        """Record every hook container now (call after the guard registered its own)."""
        import torch
        import torch.nn.modules.module as module_mod
        import torch.optim.optimizer as optim_mod

        slots: list[_Slot] = []
        dict_slots: list[_DictSlot] = []

        def add(
            label: str,
            get: Callable[[], Any],
            owner: Any = None,
            attr: str | None = None,
            in_dict: bool = False,
        ) -> None:
            container = get()
            values = tuple(_values(container)) if container is not None else ()
            size = len(container) if container is not None else 0
            slots.append(_Slot(label, get, container, size, values, owner, attr, in_dict))

        def add_dict(label: str, owner: dict[str, Any], attr: str) -> None:
            container = owner.get(attr)
            values = tuple(container.values()) if isinstance(container, dict) else ()
            size = len(container) if container is not None else 0
            if container is not None and not isinstance(container, dict):
                add(label, lambda: owner.get(attr), owner, attr, in_dict=True)
                return
            dict_slots.append(_DictSlot(label, owner, attr, container, size, values))

        opt = self.optimizer
        for attr in _OPTIMIZER_HOOKS:
            add_dict(f"optimizer {attr}", opt.__dict__, attr)
        for attr in _GLOBAL_OPTIMIZER_HOOKS:
            add_dict(f"global {attr}", vars(optim_mod), attr)
        for attr in _GLOBAL_MODULE_HOOKS:
            add_dict(f"global {attr}", vars(module_mod), attr)
        if self.model is not None:
            for name, module in self.model.named_modules():
                where = name or type(module).__name__
                for attr in _MODULE_HOOKS:
                    add_dict(f"module {where} {attr}", module.__dict__, attr)
                # An instance attribute `forward` replaces the class's forward: a hook by
                # another name.
                add(
                    f"module {where} forward",
                    functools.partial(_instance_forward, module),
                    module.__dict__,
                    "forward",
                    in_dict=True,
                )
                comm = module.__dict__.get("_comm_hooks")
                if isinstance(comm, list):
                    add_dict(f"DDP {where} comm hooks", module.__dict__, "_comm_hooks")
        names = {}
        if self.model is not None:
            names = {id(p): n for n, p in self.model.named_parameters()}
        for group in opt.param_groups:
            for p in group["params"]:
                label = names.get(id(p), f"param{tuple(p.shape)}")
                add(
                    f"parameter {label} gradient hooks",
                    functools.partial(_tensor_hooks, p),
                    p,
                    "_backward_hooks",
                )
                add(
                    f"parameter {label} post-accumulate hooks",
                    functools.partial(_accumulate_hooks, p),
                    p,
                    "_post_accumulate_grad_hooks",
                )
        self._slots = slots
        self._dict_slots = dict_slots
        self._fast = _Snapshot.of(dict_slots, slots)
        del torch

    def check(self, step: int) -> list[GuardFinding]:
        """Findings for hooks added since the baseline and own hooks gone (cheap when none)."""
        start = time.thread_time()
        findings: list[GuardFinding] = []
        findings.extend(self._own(step))
        fast = self._fast
        if fast is not None and fast.unchanged():
            self.cost += time.thread_time() - start
            return findings
        # Something differs (or cannot be compared in bulk): slot by slot, identity and
        # length of each container, contents only when non-empty.
        for dslot in self._dict_slots:
            current = dslot.owner.get(dslot.attr)
            if current is dslot.container and (
                current is None
                or (
                    len(current) == dslot.size
                    and (not dslot.size or tuple(current.values()) == dslot.values)
                )
            ):
                continue
            findings.extend(self._diff(step, dslot))  # type: ignore[arg-type]
        for slot in self._slots:
            if not slot.changed():
                continue
            findings.extend(self._diff(step, slot))
        self._fast = _Snapshot.of(self._dict_slots, self._slots)  # the diffs re-baselined
        self.cost += time.thread_time() - start
        return findings

    def own_present(self) -> list[str]:
        """Labels of the guard's own hooks that are no longer registered."""
        missing = []
        for label, (container, fn) in self.own.items():
            try:
                held = container()
                present = held is not None and any(v is fn for v in _values(held))
            except (RuntimeError, AttributeError):  # mutated while we looked
                present = True
            if not present:
                missing.append(label)
        return missing

    def _own(self, step: int) -> list[GuardFinding]:
        return [
            GuardFinding(
                rule_id="guard.detached",
                severity=Severity.CRITICAL,
                message=f"the guard's {label} was removed: checks that depend on it stopped",
                rank=self.rank,
                step=step,
                evidence=label,
                established=True,
                subject=f"detached:{label}",
            )
            for label in self.own_present()
        ]

    def _diff(self, step: int, slot: _Slot) -> list[GuardFinding]:
        current = slot.get()
        # The baseline is the *values* recorded then: the container itself may be the same
        # object, mutated in place.
        old = _functions(slot.values)
        before = {id(f) for f in old}
        findings = []
        functions = _functions(current)
        for fn in functions:
            if id(fn) in before and any(fn is f for f in old):
                continue
            if patching.lookup_hook(fn) is not None or patching.lookup(fn) is not None:
                continue  # one of trainwarden's own
            if id(fn) in self.reported:
                continue
            self.reported.add(id(fn))
            findings.append(
                GuardFinding(
                    rule_id="guard.hooks",
                    severity=Severity.HIGH,
                    message=f"a hook was added after the guard attached: {slot.label}",
                    rank=self.rank,
                    step=step,
                    evidence=describe_hook(fn),
                    established=True,
                    subject=f"hook:{slot.label}:{id(fn)}",
                )
            )
        now = {id(f) for f in functions}
        gone = [f for f in old if id(f) not in now]
        for fn in gone:
            if patching.lookup_hook(fn) is not None:
                continue  # ours: reported by the own-hook check (or removed by us on close)
            if id(fn) in self.reported:
                continue
            self.reported.add(id(fn))
            findings.append(
                GuardFinding(
                    rule_id="guard.hooks",
                    severity=Severity.MEDIUM,
                    message=f"a hook present at attach was removed: {slot.label}",
                    rank=self.rank,
                    step=step,
                    evidence=describe_hook(fn),
                    established=False,
                    subject=f"hook-removed:{slot.label}:{id(fn)}",
                )
            )
        # Re-baseline this slot so that a finding is reported once, not every step.
        slot.container = current
        slot.size = len(current) if current is not None else 0
        slot.values = tuple(_values(current)) if current is not None else ()
        return findings
