"""Code integrity while the job runs: live callables and kernels, and torch's files on disk.

The only module of the guard that uses :mod:`trainwarden.env` (``snapshot_runtime`` /
``verify_runtime``): patched optimizer steps, seeding, data loading and collectives, and Python
kernels overriding core ``aten`` operators are that package's findings, re-reported here as
``guard.code`` with the rank and step. Beside it, the guard fingerprints the torch package on
disk when it attaches (size, modification and change times of every file: a change to any of
them, even one restored to its old modification time, moves the change time) and compares
periodically; files that changed are hashed and named. Both run in the watchdog thread, off
the training thread, paced (``pace``: a :class:`~trainwarden.guard._timing.Pacer`, called
between units of work) so that they leave the interpreter lock to the training thread.
"""

# ruff: noqa: PTH100, PTH118, PTH120

from __future__ import annotations

import hashlib
import logging
import operator
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainwarden.findings import Severity, Verdict
from trainwarden.guard._findings import GuardFinding
from trainwarden.guard._timing import Abandoned

__all__ = ["CodeIntegrity"]

logger = logging.getLogger("trainwarden.guard")

#: Called between units of work; the watchdog passes a ``Pacer``, direct calls nothing.
Pace = Callable[[], None]


def _unpaced() -> None:
    """No pacing (a direct call, not from the watchdog)."""


def _package_files(root: str, pace: Pace = _unpaced) -> dict[str, tuple[int, int, int, int]]:
    """``relative path -> (size, mtime_ns, ctime_ns, inode)`` of every file under ``root``."""
    out: dict[str, tuple[int, int, int, int]] = {}
    stack = [root]
    while stack:
        current = stack.pop()
        pace()
        try:
            entries = list(os.scandir(current))
        except OSError:
            out[os.path.relpath(current, root) + "/"] = (-1, -1, -1, -1)
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            pace()
            out[os.path.relpath(entry.path, root)] = (
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
            )
    return out


def _hash(path: str, pace: Pace = _unpaced) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:  # noqa: PTH123 - a plain read of a package file
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                pace()
    except OSError:
        return None
    return h.hexdigest()


_CODE = operator.attrgetter("__code__")


# Slices of the bindings compared per step, in turn: the whole set every _SLICES steps.
_SLICES = 16


@dataclass(frozen=True, slots=True)
class _Bindings:
    """Where some critical callables are bound, what is bound there, and each function's code.

    Compared in bulk, in C (``map`` and ``operator.is_``). The runtime check (every
    ``code_every`` seconds) judges a change; this notices one within a few steps: a live patch
    of a function on the gradients' path (the functions ``clip_grad_norm_`` calls,
    ``torch.nn.functional``) feeds the reference the patched gradients, so nothing else in
    the step can tell.
    """

    dicts: tuple[dict[str, Any], ...]
    dict_attrs: tuple[str, ...]
    dict_bound: tuple[Any, ...]
    classes: tuple[types.MappingProxyType[str, Any], ...]
    class_attrs: tuple[str, ...]
    class_bound: tuple[Any, ...]
    functions: tuple[Any, ...]
    codes: tuple[Any, ...]

    @classmethod
    def now(cls, targets: Any, slices: int = _SLICES) -> tuple[_Bindings, ...]:
        """The bindings of ``targets`` (``critical_targets()``) as they are now, in slices.

        All of them take about 0.9 ms to compare between a backward and an optimizer step
        (cold caches; 0.2 ms warm): a slice a step keeps that to about a ninth.
        """
        dicts, dict_attrs, classes, class_attrs = [], [], [], []
        for module, path in targets.values():
            owner, attr = _owner(module, path)
            if isinstance(owner, types.ModuleType):
                dicts.append(vars(owner))
                dict_attrs.append(attr)
            elif isinstance(owner, type):
                classes.append(owner.__dict__)
                class_attrs.append(attr)
        dict_bound = tuple(map(dict.get, dicts, dict_attrs))
        class_bound = tuple(map(types.MappingProxyType.get, classes, class_attrs))
        functions = tuple(
            {id(f): f for f in map(_function, dict_bound + class_bound) if f is not None}.values()
        )
        codes = tuple(map(_CODE, functions))
        return tuple(
            cls(
                tuple(dicts[i::slices]),
                tuple(dict_attrs[i::slices]),
                dict_bound[i::slices],
                tuple(classes[i::slices]),
                tuple(class_attrs[i::slices]),
                class_bound[i::slices],
                functions[i::slices],
                codes[i::slices],
            )
            for i in range(slices)
        )

    def unchanged(self) -> bool:
        """Whether every binding and every function's code object are as recorded.

        Defaults and closure cells are the runtime check's.
        """
        is_ = operator.is_
        return (
            all(map(is_, map(dict.get, self.dicts, self.dict_attrs), self.dict_bound))
            and all(
                map(
                    is_,
                    map(types.MappingProxyType.get, self.classes, self.class_attrs),
                    self.class_bound,
                )
            )
            and all(map(is_, map(_CODE, self.functions), self.codes))
        )


def _owner(module: str, path: str) -> tuple[Any, str]:
    """The namespace holding ``module:path``'s last name (without triggering descriptors)."""
    obj: Any = sys.modules.get(module)
    *parents, attr = path.split(".")
    for part in parents:
        obj = obj.__dict__.get(part) if isinstance(obj, type) else getattr(obj, part, None)
    return obj, attr


def _function(obj: Any) -> types.FunctionType | None:
    inner = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    return inner if isinstance(inner, types.FunctionType) else None


class CodeIntegrity:
    """Runtime verification of the live process plus the torch package's files.

    Args:
        rank: For findings.
        kernels: Problems found when capturing the reference kernels (reported once).
    """

    def __init__(self, *, rank: int) -> None:
        self.rank = rank
        self._reference: Any = None
        self._baseline: set[str] | None = None
        self._files: dict[str, tuple[int, int, int, int]] | None = None
        self._hashes: dict[str, str | None] = {}
        self._root: str | None = None
        self.cost = 0.0
        self.checks = 0
        self.last_run = 0.0
        self.last_package = 0.0
        #: The bindings as of the last runtime check, in slices; None until the first one ran.
        self._bindings: tuple[_Bindings, ...] | None = None
        self._turn = 0

    def changed(self) -> bool:
        """Whether a critical callable of this step's slice was rebound (or its code replaced).

        A slice a step, in turn: every binding within :data:`_SLICES` steps, cheaply enough
        for every step; :meth:`verify` judges what changed.
        """
        bindings = self._bindings
        if bindings is None:
            return False
        start = time.thread_time()
        part = bindings[self._turn % len(bindings)]
        self._turn += 1
        try:
            return not part.unchanged()
        except (AttributeError, TypeError):  # a namespace or function replaced wholesale
            return True
        finally:
            self.cost += time.thread_time() - start

    def _rebind(self) -> None:
        """Record the bindings after a runtime check (modules imported since join them)."""
        from trainwarden.env import critical_targets

        try:
            self._bindings = _Bindings.now(critical_targets())
        except (AttributeError, TypeError, LookupError) as exc:
            logger.debug("guard: cannot record the critical bindings: %s", exc)
            self._bindings = None

    def start(self, pace: Pace = _unpaced) -> None:
        """Take the references (runtime snapshot, package fingerprint). Off the hot path."""
        start = time.thread_time()
        from trainwarden.env import snapshot_runtime

        self._reference = snapshot_runtime(pace=pace)
        torch = sys.modules.get("torch")
        file = getattr(torch, "__file__", None)
        if isinstance(file, str):
            self._root = os.path.dirname(os.path.abspath(file))
            self._files = _package_files(self._root, pace)
        self.cost += time.thread_time() - start
        self.last_run = self.last_package = time.monotonic()

    def verify(self, step: int, pace: Pace = _unpaced) -> list[GuardFinding]:
        """Run ``trainwarden.env.verify_runtime`` against the attach-time reference."""
        if self._reference is None:
            return []
        start = time.thread_time()
        from trainwarden.env import verify_runtime

        try:
            report = verify_runtime(self._reference, pace=pace)
        except Abandoned:
            raise  # the guard closed: no verdict, and nothing failed
        except Exception as exc:  # the check must not take the job down; say it failed
            logger.warning("guard: runtime verification failed: %s", exc)
            return [
                GuardFinding(
                    rule_id="guard.code",
                    severity=Severity.MEDIUM,
                    message=f"runtime code verification could not run: {exc}",
                    rank=self.rank,
                    step=step,
                    evidence=type(exc).__name__,
                    established=False,
                    subject="code:verify-failed",
                )
            ]
        findings = []
        first = self._baseline is None
        seen: set[str] = set()
        for file in report.files:
            for item in file.findings:
                if item.verdict is Verdict.SAFE or item.severity < Severity.MEDIUM:
                    continue  # informational (counts, trainwarden's own wrappers)
                subject = f"code:{item.rule_id}:{item.evidence or item.message}"
                seen.add(subject)
                if first or subject in (self._baseline or set()):
                    # Present when the guard attached: pre-flight's to judge (env verify);
                    # libraries do add methods to torch classes (transformers' smart_apply).
                    # Reported, not halting; a change *while the job runs* is what halts.
                    findings.append(
                        GuardFinding(
                            rule_id="guard.code",
                            severity=Severity.MEDIUM,
                            message=f"present when the guard attached: {item.message}",
                            rank=self.rank,
                            step=step,
                            evidence=item.evidence or item.rule_id,
                            established=False,
                            subject=subject,
                        )
                    )
                    continue
                findings.append(
                    GuardFinding(
                        rule_id="guard.code",
                        severity=Severity.CRITICAL
                        if item.verdict is Verdict.UNSAFE
                        else Severity.MEDIUM,
                        message=f"changed while the job ran: {item.message}",
                        rank=self.rank,
                        step=step,
                        evidence=item.evidence or item.rule_id,
                        established=item.verdict is Verdict.UNSAFE,
                        subject=subject,
                    )
                )
        if first:
            self._baseline = seen
        self._rebind()
        self.checks += 1
        self.last_run = time.monotonic()
        self.cost += time.thread_time() - start
        return findings

    def verify_package(self, step: int, pace: Pace = _unpaced) -> list[GuardFinding]:
        """Compare torch's files on disk with the fingerprint taken at attach."""
        if self._files is None or self._root is None:
            return []
        start = time.thread_time()
        now = _package_files(self._root, pace)
        changed = sorted(
            set(now) ^ set(self._files)
            | {k for k in now.keys() & self._files.keys() if now[k] != self._files[k]}
        )
        findings = []
        for rel in changed[:20]:
            before = self._files.get(rel)
            after = now.get(rel)
            if before is None:
                what = "appeared"
            elif after is None:
                what = "disappeared"
            else:
                what = "changed"
            digest = _hash(os.path.join(self._root, rel), pace) if after is not None else None
            findings.append(
                GuardFinding(
                    rule_id="guard.code",
                    severity=Severity.CRITICAL,
                    message=f"torch/{rel} {what} on disk while the job ran",
                    rank=self.rank,
                    step=step,
                    evidence=f"torch/{rel}" + (f" sha256:{digest[:16]}" if digest else ""),
                    established=True,
                    subject=f"package:{rel}:{what}",
                )
            )
        if changed:
            self._files = now  # report each change once
        self.last_package = time.monotonic()
        self.cost += time.thread_time() - start
        return findings

    def kernel_findings(self, problems: list[str], step: int) -> list[GuardFinding]:
        """Reference kernels that were not torch's own when captured."""
        return [
            GuardFinding(
                rule_id="guard.code",
                severity=Severity.CRITICAL,
                message=(
                    "a kernel the guard's reference needs was already overridden when the guard "
                    f"attached: {problem}"
                ),
                rank=self.rank,
                step=step,
                evidence=problem,
                established=True,
                subject=f"kernel:{problem}",
            )
            for problem in problems
        ]
