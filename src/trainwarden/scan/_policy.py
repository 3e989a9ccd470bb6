"""The policy: which imported globals are safe, which are known dangerous, and the rest unknown.

One :class:`Policy` object is shared by the scanner (judging what the pickle machine found) and
the loader (refusing in ``find_class``), so both always say the same thing. The dangerous
names live in ``_catalogue``, the allowlist in ``_profiles``, pyproject.toml in ``_config``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from trainwarden.errors import ConfigError
from trainwarden.findings import Finding, Location, Severity, Verdict
from trainwarden.scan._catalogue import CRITICAL_NAMES, dangerous
from trainwarden.scan._config import read_config
from trainwarden.scan._pickle import (
    RULE_FRAME_OVERRUN,
    RULE_FRAME_SPLIT,
    RULE_GLOBAL_MUTATION,
    RULE_MALFORMED,
    RULE_TRUNCATED,
    RULE_UNRESOLVED,
    UNRESOLVED,
    compat_name,
)
from trainwarden.scan._profiles import ALWAYS_ON, CALL, NEW, OPTIONAL, VALUE, Entry, profile_entries

if TYPE_CHECKING:
    from trainwarden.scan._pickle import GlobalRef, PickleAnalysis, PickleIssue

__all__ = [
    "PROFILES",
    "RULE_ALLOWED",
    "RULE_DANGEROUS",
    "RULE_NESTED",
    "RULE_UNEXPECTED_CALL",
    "RULE_UNKNOWN",
    "Decision",
    "Policy",
]

RULE_ALLOWED = "policy.allowed"
RULE_DANGEROUS = "policy.dangerous-global"
RULE_UNKNOWN = "policy.unknown-global"
RULE_UNEXPECTED_CALL = "policy.unexpected-call"
RULE_NESTED = "policy.nested-load"

# Loaders whose payloads the scanner can analyse itself (see PickleAnalysis.nested): not
# dangerous in themselves, as safe as what they load. ``torch.storage._load_from_bytes`` is
# what pickle.dumps of a tensor writes (torch.load of an embedded torch.save archive).
_NESTED_VERIFIABLE = frozenset({("torch.storage", "_load_from_bytes")})

#: Profile name -> description. ``core``, ``torch`` and ``numpy`` are always on.
PROFILES: Mapping[str, str] = MappingProxyType(
    {
        "core": "standard library data types (collections, datetime, pathlib, decimal, uuid.UUID, "
        "argparse.Namespace, copyreg reconstruction); always on",
        "torch": "PyTorch tensor/parameter rebuild functions, storages, dtypes, layouts, RNG "
        "generators; always on",
        "numpy": "NumPy array/scalar/dtype reconstruction, masked arrays and random generator "
        "states; always on",
        "torch-modules": "torch.nn module, optimizer and LR-scheduler classes as torch.save(model) "
        "and torch.save(optimizer) pickle them (rebuilt from their saved state only)",
        "transformers": "Hugging Face transformers TrainingArguments, its enums and configs",
        "lightning": "Lightning (lightning / pytorch_lightning) checkpoint helper classes",
        "accelerate": "Hugging Face accelerate dataclasses and enums found in training states",
        "sklearn": "scikit-learn estimator classes and the helper types their pickles contain",
    }
)


class Decision(NamedTuple):
    """The policy's answer for one global."""

    verdict: Verdict
    severity: Severity
    rule_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    table: Mapping[tuple[str, str], Entry]
    user_pairs: frozenset[tuple[str, str]]
    user_full: frozenset[str]
    cache: dict[tuple[str, str], tuple[Decision, str]]


@functools.lru_cache(maxsize=64)
def _compile(profiles: tuple[str, ...], allowed: tuple[str, ...]) -> _Compiled:
    table: dict[tuple[str, str], Entry] = {}
    for name in profiles:
        table.update(profile_entries(name))
    pairs: set[tuple[str, str]] = set()
    full: set[str] = set()
    for entry in allowed:
        if ":" in entry:
            module, _, attr = entry.partition(":")
            pairs.add((module, attr))
        else:
            full.add(entry)
    return _Compiled(MappingProxyType(table), frozenset(pairs), frozenset(full), {})


def _parse_allow(entry: object) -> str:
    """Validate one user allow entry: ``module.name`` or ``module:qualname``."""
    if not isinstance(entry, str):
        raise ConfigError(f"allow entries must be strings, got {entry!r}")
    text = entry.strip()
    module, sep, attr = text.partition(":")
    parts = [*module.split("."), *attr.split(".")] if sep else text.split(".")
    if "*" in text:
        raise ConfigError(
            f"invalid allow entry {entry!r}: wildcards are not accepted; list each global "
            "(a wildcard would also allow the dangerous helpers that share a module)"
        )
    if (sep and (not module or not attr)) or (not sep and len(parts) < 2):
        raise ConfigError(
            f"invalid allow entry {entry!r}: expected MODULE.NAME or MODULE:QUALNAME "
            "(e.g. mypkg.models.MyConfig)"
        )
    if not all(p.isidentifier() for p in parts):
        raise ConfigError(f"invalid allow entry {entry!r}: every part must be a Python identifier")
    return text


def _entry_pair(text: str) -> tuple[str, str]:
    if ":" in text:
        module, _, attr = text.partition(":")
        return module, attr
    module, _, attr = text.rpartition(".")
    return module, attr


def _check_profiles(names: Iterable[object]) -> tuple[str, ...]:
    out = set(ALWAYS_ON)
    for name in names:
        if not isinstance(name, str) or name not in PROFILES:
            known = ", ".join(OPTIONAL)
            raise ConfigError(f"unknown profile {name!r} (known: {known})")
        out.add(name)
    return tuple(sorted(out))


@dataclass(frozen=True)
class Policy:
    """What may be imported by a pickle: allowlist profiles plus the user's own entries.

    Build one with :meth:`default`, :meth:`from_pyproject` or :meth:`with_allowed`; it is
    immutable, picklable (for worker processes) and its :meth:`classify` is cached.

    Attributes:
        profiles: enabled profile names (always including ``core``, ``torch``, ``numpy``).
        allowed: the user's extra allow entries (``module.name`` or ``module:qualname``).
        unsafe_allowed: user entries that are in the dangerous catalogue and were accepted
            only because ``allow_unsafe_globals=True`` was passed.
        sources: where each optional profile and allow entry came from, as
            ``(kind, value, source)`` with kind ``profile`` or ``allow`` and source
            ``--allow``/``--profile``, a pyproject.toml path, or ``api`` (listed in reports).
    """

    profiles: tuple[str, ...] = tuple(sorted(ALWAYS_ON))
    allowed: tuple[str, ...] = ()
    unsafe_allowed: tuple[str, ...] = ()
    sources: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def default(
        cls,
        *,
        profiles: Sequence[str] = (),
        allow: Sequence[str] = (),
        allow_unsafe_globals: bool = False,
        source: str = "api",
    ) -> Policy:
        """The built-in policy plus optional ``profiles`` and ``allow`` entries.

        Args:
            profiles: optional profiles to enable (see :data:`PROFILES`).
            allow: extra allow entries (``module.name`` or ``module:qualname``).
            allow_unsafe_globals: accept entries of the dangerous catalogue in ``allow``.
            source: where ``profiles`` and ``allow`` come from, for reports.

        Raises:
            ConfigError: an unknown profile or an invalid/dangerous allow entry.
        """
        base = cls().with_profiles(profiles, source=source)
        if allow:
            return base.with_allowed(
                allow, allow_unsafe_globals=allow_unsafe_globals, source=source
            )
        return base

    @classmethod
    def from_pyproject(
        cls,
        path: Path | str | None = None,
        *,
        profiles: Sequence[str] = (),
        allow: Sequence[str] = (),
        allow_unsafe_globals: bool = False,
    ) -> Policy:
        """The default policy extended by ``[tool.trainwarden]`` of the nearest pyproject.toml.

        Args:
            path: a ``pyproject.toml`` file, or a directory to search upwards from
                (the current directory when ``None``). No file found: the default policy.
            profiles: profiles enabled in addition to the file's ``profiles`` (``--profile``).
            allow: entries allowed in addition to the file's ``allow`` (``--allow``).
            allow_unsafe_globals: accept dangerous entries given in ``allow`` (never from
                the file: a repository cannot opt its own checkpoints out of the scan).

        Raises:
            ConfigError: the file is not valid TOML, the section is malformed, or it has a
                key the scanner does not know.
        """
        config = read_config(Path(path) if path is not None else Path.cwd())
        policy = cls()
        if config.path is not None:
            where = str(config.path)
            policy = policy.with_profiles(config.profiles, source=where)
            if config.allow:
                policy = policy.with_allowed(config.allow, source=where)
        policy = policy.with_profiles(profiles, source="--profile")
        if allow:
            policy = policy.with_allowed(
                allow, allow_unsafe_globals=allow_unsafe_globals, source="--allow"
            )
        return policy

    def with_profiles(self, names: Iterable[str], *, source: str = "api") -> Policy:
        """A copy with the optional profiles ``names`` enabled too.

        Raises:
            ConfigError: a name is not a known profile.
        """
        if isinstance(names, str):
            names = [names]
        wanted = _check_profiles(names)
        added = [n for n in wanted if n not in ALWAYS_ON]
        if not added:
            return self
        sources = self.sources + tuple(
            ("profile", name, source)
            for name in added
            if ("profile", name, source) not in self.sources
        )
        return replace(
            self, profiles=tuple(sorted(set(self.profiles) | set(wanted))), sources=sources
        )

    def with_allowed(
        self,
        names: Iterable[str],
        *,
        allow_unsafe_globals: bool = False,
        source: str = "--allow",
    ) -> Policy:
        """A copy that also allows ``names`` (``module.name`` or ``module:qualname``).

        Raises:
            ConfigError: an entry is malformed, or is in the dangerous catalogue and
                ``allow_unsafe_globals`` is false.
        """
        if isinstance(names, str):
            names = [names]
        added: list[str] = []
        unsafe: list[str] = []
        for raw in names:
            text = _parse_allow(raw)
            module, attr = _entry_pair(text)
            hit = dangerous(module, attr)
            if hit is not None:
                if not allow_unsafe_globals:
                    raise ConfigError(
                        f"refusing to allow {text!r} ({source}): it is a known dangerous "
                        f"global ({hit[1]}); allowing it lets any file that names it run "
                        "code. Pass allow_unsafe_globals=True only for files you trust."
                    )
                unsafe.append(text)
            added.append(text)
        allowed = tuple(sorted(set(self.allowed) | set(added)))
        sources = self.sources + tuple(
            ("allow", text, source)
            for text in dict.fromkeys(added)
            if ("allow", text, source) not in self.sources
        )
        return replace(
            self,
            allowed=allowed,
            unsafe_allowed=tuple(sorted(set(self.unsafe_allowed) | set(unsafe))),
            sources=sources,
        )

    def describe(self) -> dict[str, Any]:
        """The applied configuration, for reports: profiles and allow entries with sources."""
        profile_from = {v: src for kind, v, src in self.sources if kind == "profile"}
        allow_from: dict[str, list[str]] = {}
        for kind, value, src in self.sources:
            if kind == "allow":
                allow_from.setdefault(value, []).append(src)
        return {
            "profiles": [
                {
                    "name": name,
                    "source": "built-in" if name in ALWAYS_ON else profile_from.get(name, "api"),
                }
                for name in sorted(self.profiles)
            ],
            "allow": [
                {
                    "entry": entry,
                    "source": ", ".join(allow_from.get(entry, ["api"])),
                    "dangerous": entry in self.unsafe_allowed,
                }
                for entry in self.allowed
            ],
        }

    # -- classification -------------------------------------------------------------------

    def _compiled(self) -> _Compiled:
        return _compile(self.profiles, self.allowed)

    def classify(self, module: str, name: str) -> Decision:
        """Decide one import ``find_class(module, name)``; pure and cached."""
        return self._lookup(module, name)[0]

    def _lookup(self, module: str, name: str) -> tuple[Decision, str]:
        comp = self._compiled()
        key = (module, name)
        got = comp.cache.get(key)
        if got is None:
            got = self._decide(comp, module, name)
            if len(comp.cache) > 200_000:
                comp.cache.clear()
            comp.cache[key] = got
        return got

    def _decide(self, comp: _Compiled, module: str, name: str) -> tuple[Decision, str]:
        if module == UNRESOLVED or name == UNRESOLVED:
            return (
                Decision(
                    Verdict.UNKNOWN,
                    Severity.HIGH,
                    RULE_UNKNOWN,
                    "the name cannot be known without running the pickle",
                ),
                CALL,
            )
        full = f"{module}.{name}"
        if (module, name) in comp.user_pairs or full in comp.user_full:
            return Decision(Verdict.SAFE, Severity.INFO, RULE_ALLOWED, "allowed by the user"), CALL
        entry = comp.table.get((module, name))
        if entry is None:
            # Python 2 spellings (``__builtin__.set``, ``copy_reg._reconstructor``): find_class
            # maps them for protocols < 3, and for later protocols the import fails. Either
            # way they can only ever reach the allowlisted object (a loader's find_class
            # override sees the unmapped names).
            entry = comp.table.get(compat_name(module, name))
        if entry is not None:
            return Decision(Verdict.SAFE, Severity.INFO, RULE_ALLOWED, entry[0]), entry[1]
        if (module, name) in _NESTED_VERIFIABLE:
            return (
                Decision(
                    Verdict.UNKNOWN,
                    Severity.MEDIUM,
                    RULE_NESTED,
                    "loads an embedded serialized payload (torch.load, weights_only=False): "
                    "as safe as that payload, which is analysed when it is a literal",
                ),
                CALL,
            )
        hit = dangerous(module, name)
        if hit is not None:
            severity, reason, matched = hit
            return (
                Decision(Verdict.UNSAFE, severity, RULE_DANGEROUS, f"{reason} [{matched}]"),
                CALL,
            )
        if "." in name:
            # Attributes of an allowlisted object (``collections.OrderedDict.fromkeys``): only
            # the object itself was vetted. The methods that write files, reach attributes or
            # register callables (``pathlib.Path.write_text``, ``builtins.str.format``) are in
            # the catalogue and unsafe above; any other is not known to be safe either.
            parts = name.split(".")
            for i in range(1, len(parts)):
                if (module, ".".join(parts[:i])) in comp.table:
                    return (
                        Decision(
                            Verdict.UNKNOWN,
                            Severity.MEDIUM,
                            RULE_UNKNOWN,
                            "an attribute reached through an allowlisted object; only the "
                            "object itself is allowlisted",
                        ),
                        CALL,
                    )
        return (
            Decision(
                Verdict.UNKNOWN,
                Severity.MEDIUM,
                RULE_UNKNOWN,
                "not in the allowlist: importing and calling it may run any code",
            ),
            CALL,
        )

    def classify_ref(self, ref: GlobalRef) -> Decision:
        """Decide one import found by the pickle machine (calls of value-only entries count)."""
        if not ref.resolved:
            return self._unresolved_decision((ref,))
        decision, mode = self._lookup(ref.module, ref.name)
        if mode == VALUE and ref.called:
            return Decision(
                Verdict.UNKNOWN,
                Severity.MEDIUM,
                RULE_UNEXPECTED_CALL,
                "allowlisted as a value (a type tag or constant), but this pickle calls it",
            )
        if mode == NEW and ref.init_called:
            return Decision(
                Verdict.UNKNOWN,
                Severity.MEDIUM,
                RULE_UNEXPECTED_CALL,
                "allowlisted for reconstruction from a saved state (NEWOBJ/copyreg), but this "
                "pickle calls it with arguments of its choosing",
            )
        return decision

    def _unresolved_decision(self, refs: Sequence[GlobalRef]) -> Decision:
        for ref in refs:
            if ref.resolved:
                decision = self.classify(ref.module, ref.name)
                if decision.verdict is Verdict.UNSAFE:
                    return Decision(
                        Verdict.UNSAFE,
                        Severity.CRITICAL,
                        RULE_UNRESOLVED,
                        f"the name is produced by {ref.qualname}, which is dangerous",
                    )
                continue
            if ref.module != UNRESOLVED and dangerous(ref.module, "x") is not None:
                return Decision(
                    Verdict.UNSAFE,
                    Severity.CRITICAL,
                    RULE_UNRESOLVED,
                    f"imports an unknown attribute of the dangerous module {ref.module}",
                )
            if ref.module == UNRESOLVED and ref.name.rpartition(".")[2] in CRITICAL_NAMES:
                return Decision(
                    Verdict.UNSAFE,
                    Severity.CRITICAL,
                    RULE_UNRESOLVED,
                    f"imports {ref.name!r} from a module hidden from static analysis",
                )
        return Decision(
            Verdict.UNKNOWN,
            Severity.HIGH,
            RULE_UNRESOLVED,
            "the imported name is computed at load time; it cannot be checked statically",
        )

    # -- judging an analysis --------------------------------------------------------------

    def judge(
        self, analysis: PickleAnalysis, location: Location, *, nested_safe: bool = False
    ) -> tuple[Finding, ...]:
        """Findings for every global not allowlisted and every issue of ``analysis``.

        Allowlisted globals produce no finding. Repeated imports of one name are reported
        once (the first offset), with the count in the message.

        Args:
            analysis: what the pickle machine found.
            location: path and member; offsets are filled in from the analysis.
            nested_safe: the caller analysed every payload in ``analysis.nested`` and found
                each one safe: verifiable nested loaders (``policy.nested-load``) called only
                with those payloads then produce no finding.
        """
        findings: dict[tuple[str, str], list[Any]] = {}
        opaque = {ref.offset for ref in analysis.opaque_nested}
        for ref in analysis.globals:
            if not ref.resolved:
                continue  # its pickle.unresolved-global issue carries it
            decision = self.classify_ref(ref)
            if decision.verdict is Verdict.SAFE:
                continue
            if decision.rule_id == RULE_NESTED and nested_safe and ref.offset not in opaque:
                continue
            key = (decision.rule_id, ref.qualname)
            seen = findings.get(key)
            if seen is not None:
                seen[1] += ref.count
                if ref.called:
                    seen[2] = True
                continue
            findings[key] = [ref, ref.count, ref.called, decision]
        out: list[Finding] = []
        for ref, count, called, decision in findings.values():
            verb = "imports and calls" if called else "imports"
            more = f" ({count} times)" if count > 1 else ""
            out.append(
                Finding(
                    rule_id=decision.rule_id,
                    severity=decision.severity,
                    message=f"{ref.opcode} {verb} {ref.qualname}{more}: {decision.reason}",
                    location=replace(location, offset=ref.offset),
                    evidence=ref.qualname,
                    verdict=decision.verdict,
                )
            )
        # One finding per (rule, evidence): the first offset, the worst verdict.
        by_key: dict[tuple[str, str | None], Finding] = {}
        for issue in analysis.issues:
            finding = self._issue_finding(issue, location)
            key2 = (issue.rule_id, issue.evidence)
            kept = by_key.get(key2)
            if kept is None or finding.verdict.rank > kept.verdict.rank:
                by_key[key2] = finding
        out.extend(by_key.values())
        return tuple(out)

    def _issue_finding(self, issue: PickleIssue, location: Location) -> Finding:
        loc = replace(location, offset=issue.offset)
        if issue.rule_id == RULE_UNRESOLVED:
            decision = self._unresolved_decision(issue.refs)
            return Finding(
                RULE_UNRESOLVED,
                decision.severity,
                f"{issue.message}: {decision.reason}",
                loc,
                issue.evidence,
                decision.verdict if decision.verdict.rank > issue.verdict.rank else issue.verdict,
            )
        severity = {
            RULE_GLOBAL_MUTATION: Severity.HIGH,
            RULE_TRUNCATED: Severity.MEDIUM,
            RULE_MALFORMED: Severity.MEDIUM,
            RULE_FRAME_SPLIT: Severity.HIGH,
            RULE_FRAME_OVERRUN: Severity.HIGH,
        }.get(issue.rule_id, Severity.MEDIUM)
        return Finding(issue.rule_id, severity, issue.message, loc, issue.evidence, issue.verdict)

    def allowlist(self) -> Mapping[str, str]:
        """Every allowlisted ``module:qualname`` with its reason (for docs and ``--explain``)."""
        comp = self._compiled()
        out = {f"{m}:{n}": entry[0] for (m, n), entry in comp.table.items()}
        out.update({f"{m}:{n}": "allowed by the user" for m, n in comp.user_pairs})
        out.update(dict.fromkeys(comp.user_full, "allowed by the user"))
        return MappingProxyType(dict(sorted(out.items())))
