"""An Unpickler that enforces a :class:`~trainwarden.scan.Policy` on every import it performs.

``find_class`` (every import) and ``persistent_load`` (every external object) are both checked.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import hashlib
import importlib
import io
import logging
import pickle
import re
import sys
import types
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

from trainwarden.errors import UnsafeModelError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = [
    "AUDIT",
    "ENFORCE",
    "PolicyUnpickler",
    "check_report",
    "checked_import",
    "make_pickle_module",
    "make_unpickler",
    "nested_torch_loader",
    "refuse",
    "set_nested_loader",
]

logger = logging.getLogger("trainwarden.load")

ENFORCE: Final = "enforce"
#: The mode that logs what it would refuse and loads it anyway: the refused code runs.
AUDIT: Final = "unsafe-audit"

# A torch device string ("cpu", "cuda:0", "meta", "privateuseone:3"): persistent ids carry one.
_LOCATION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(:[0-9]{1,6})?")
# Torch storage keys are decimal numbers (zip records "data/<key>"); legacy keys are the same.
_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")


def refuse(
    *,
    source: str,
    sha256: str | None,
    rule_id: str,
    message: str,
    evidence: str | None,
    severity: Severity = Severity.CRITICAL,
    verdict: Verdict = Verdict.UNSAFE,
    fmt: str = "pickle",
    mode: str = ENFORCE,
) -> None:
    """Log a refusal and, in enforce mode, raise :class:`UnsafeModelError` for it.

    Args:
        source: the file (or ``<bytes>``) being loaded.
        sha256: its digest when known (logged so the refusal can be traced to exact bytes).
        rule_id: the stable rule that refused.
        message: one sentence for people.
        evidence: the global or persistent id, never the raw payload.
        severity: how serious the refused thing is.
        verdict: what the refusal means for the file.
        fmt: the file's format as the report shows it.
        mode: ``"enforce"`` raises; ``"unsafe-audit"`` only logs.

    Raises:
        UnsafeModelError: in enforce mode, always.
    """
    finding = Finding(
        rule_id, severity, message, Location(source), evidence=evidence, verdict=verdict
    )
    report = Report(files=(FileReport(source, fmt, (finding,), sha256=sha256),), command="load")
    check_report(report, mode=mode)


def check_report(
    report: Report, *, mode: str, data: bytes | bytearray | memoryview | None = None
) -> None:
    """Log every non-safe file of ``report``; raise in enforce mode if any file is not safe.

    Args:
        report: the scan report of what is about to be loaded.
        mode: ``"enforce"`` or ``"unsafe-audit"`` (any other value enforces).
        data: the scanned bytes: hashed only when something is refused, so the log and the
            report carry the digest without every safe load paying for it.

    Raises:
        UnsafeModelError: in enforce mode, when the report's verdict is not ``safe``.
    """
    bad = [f for f in report.files if f.verdict is not Verdict.SAFE]
    if not bad:
        return
    if data is not None and any(f.sha256 is None for f in report.files):
        digest = _sha256_of(data)
        files = tuple(
            f if f.sha256 else dataclasses.replace(f, sha256=digest) for f in report.files
        )
        report = dataclasses.replace(report, files=files)
        bad = [f for f in report.files if f.verdict is not Verdict.SAFE]
    for file in bad:
        evidence = sorted({f.evidence for f in file.findings if f.evidence})[:8]
        logger.warning(
            "%s %s (sha256 %s): %s%s",
            "unsafe-audit: would refuse, loading anyway" if mode == AUDIT else "refused",
            file.path,
            file.sha256 or "unknown",
            file.verdict.value,
            f": {', '.join(evidence)}" if evidence else "",
        )
    # Fail closed: only the explicitly unsafe mode lets a refused file through.
    if mode != AUDIT:
        raise UnsafeModelError(report)


def _sha256_of(data: bytes | bytearray | memoryview | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


# The base is bound when this module is imported, before `protect()` can replace
# `pickle.Unpickler`: our own Unpickler never derives from a patched one.
class PolicyUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` and ``persistent_load`` obey a policy.

    Subclass with :func:`make_unpickler`, which binds the policy, the source name and mode.
    Code that subclasses this class again (torch's ``UnpicklerWrapper``) keeps the checks,
    because it ends in ``super().find_class``.
    """

    _tw_policy: Policy
    _tw_source: str = "<bytes>"
    _tw_sha256: str | None = None
    _tw_mode: str = ENFORCE
    _tw_allow_persistent: bool = False
    _tw_rescan: bool = False
    _tw_data: memoryview | None = None

    def __init__(self, file: IO[bytes], *args: Any, **kwargs: Any) -> None:
        if self._tw_rescan and isinstance(file, io.BytesIO):
            # The loader read this pickle itself (torch's mmap path reopens the file): judge
            # exactly these bytes, so what is unpickled is what was judged.
            _rescan(file.getvalue(), self._tw_policy, f"{self._tw_source}!pickle", self._tw_mode)
        super().__init__(file, *args, **kwargs)
        # Remember whether Python 2 names get mapped, as the C unpickler does; we always map
        # (see `find_class`), this only decides whether unmapped py2 names are tried.
        self._tw_fix_imports = bool(kwargs.get("fix_imports", True))
        self._tw_file = file

    def _tw_digest(self) -> str | None:
        # Hash lazily: only a refusal needs the digest (it goes to the log).
        if self._tw_sha256 is None and self._tw_data is not None:
            return _sha256_of(self._tw_data)
        if self._tw_sha256 is None:
            return _digest_stream(self._tw_file)
        return self._tw_sha256

    def find_class(self, module: Any, name: Any) -> Any:
        """Import ``module.name`` only if the policy allows it; refuse otherwise.

        Raises:
            UnsafeModelError: the policy does not allow the global (enforce mode).
        """
        if not isinstance(module, str) or not isinstance(name, str):
            refuse(
                source=self._tw_source,
                sha256=self._tw_digest(),
                rule_id="load.malformed-global",
                message="a global whose module or name is not a string",
                evidence=f"{type(module).__name__}.{type(name).__name__}",
                verdict=Verdict.UNKNOWN,
                mode=self._tw_mode,
            )
            return super().find_class(module, name)
        return checked_import(
            self._tw_policy,
            module,
            name,
            source=self._tw_source,
            digest=self._tw_digest,
            mode=self._tw_mode,
            fix_imports=self._tw_fix_imports,
        )

    def persistent_load(self, pid: Any) -> Any:
        """Validate a persistent id, then hand it to the loader's own ``persistent_load``.

        torch assigns its ``persistent_load`` on the instance; the C unpickler keeps calling
        this method (bound when the unpickler was created), so every id passes through here.

        Raises:
            UnsafeModelError: the id is not one torch itself writes, or none are expected.
        """
        handler: Callable[[Any], Any] | None = self.__dict__.get("persistent_load")
        if handler is None or not self._tw_allow_persistent:
            refuse(
                source=self._tw_source,
                sha256=self._tw_digest(),
                rule_id="load.persistent-id",
                message="a persistent id where this loader expects none",
                evidence=_describe_pid(pid),
                severity=Severity.HIGH,
                verdict=Verdict.UNKNOWN,
                mode=self._tw_mode,
            )
            if handler is None:
                raise pickle.UnpicklingError("persistent IDs are not supported")
            return handler(pid)
        problem = validate_persistent_id(pid)
        if problem is not None:
            refuse(
                source=self._tw_source,
                sha256=self._tw_digest(),
                rule_id="load.persistent-id",
                message=f"malformed persistent id: {problem}",
                evidence=_describe_pid(pid),
                severity=Severity.HIGH,
                verdict=Verdict.UNKNOWN,
                mode=self._tw_mode,
            )
        return handler(pid)


def make_unpickler(
    policy: Policy,
    *,
    source: str = "<bytes>",
    sha256: str | None = None,
    mode: str = ENFORCE,
    allow_persistent: bool = False,
    rescan: bool = False,
    data: memoryview | None = None,
) -> type[PolicyUnpickler]:
    """Return a :class:`PolicyUnpickler` subclass bound to ``policy`` and ``source``."""
    return type(
        "PolicyUnpickler",
        (PolicyUnpickler,),
        {
            "_tw_policy": policy,
            "_tw_source": source,
            "_tw_sha256": sha256,
            "_tw_mode": mode,
            "_tw_allow_persistent": allow_persistent,
            "_tw_rescan": rescan,
            "_tw_data": data,
            "__module__": __name__,
        },
    )


def make_pickle_module(
    policy: Policy,
    *,
    source: str = "<bytes>",
    sha256: str | None = None,
    mode: str = ENFORCE,
    rescan: bool = False,
    data: memoryview | None = None,
) -> types.ModuleType:
    """A module object usable as torch's ``pickle_module``: ``Unpickler``, ``load``, ``loads``.

    torch subclasses ``pickle_module.Unpickler`` and calls ``pickle_module.load`` for the
    small pickles of its legacy formats; both go through the policy.
    """
    unpickler = make_unpickler(
        policy,
        source=source,
        sha256=sha256,
        mode=mode,
        allow_persistent=True,
        rescan=rescan,
        data=data,
    )
    module = types.ModuleType("trainwarden_policy_pickle")
    module.__dict__.update(pickle.__dict__)

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    def loads(data: bytes, /, **kwargs: Any) -> Any:
        return unpickler(io.BytesIO(data), **kwargs).load()

    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    return module


def validate_persistent_id(pid: Any) -> str | None:
    """Return why ``pid`` is not a persistent id torch writes, or ``None`` if it is one.

    torch writes ``("storage", storage_type, key, location, numel)`` in zip checkpoints,
    the same plus ``view_metadata`` in the legacy format, ``("module", cls, file, source)``
    for legacy whole-module saves, and bare keys in the tar format.
    """
    if isinstance(pid, (str, bytes)):
        text = pid.decode("ascii", "replace") if isinstance(pid, bytes) else pid
        return None if _KEY.fullmatch(text) else "key is not a short identifier"
    if isinstance(pid, int) and not isinstance(pid, bool):
        return None if pid >= 0 else "negative key"
    if not isinstance(pid, tuple) or not pid:
        return f"expected a tuple, got {type(pid).__name__}"
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind == "storage":
        return _validate_storage_pid(pid)
    if kind == "module" or isinstance(kind, type):
        # Legacy whole-module saves: the class came through find_class (policy-checked).
        fields = pid[1:] if kind == "module" else pid
        if len(fields) != 3 or not isinstance(fields[0], type):
            return "module id is not (class, source file, source)"
        return None
    return f"unknown persistent id kind {kind!r}"


def _validate_storage_pid(pid: tuple[Any, ...]) -> str | None:
    if len(pid) not in (5, 6):
        return f"storage id has {len(pid)} fields"
    storage_type, key, location, numel = pid[1:5]
    if not _is_storage_type(storage_type):
        return f"storage type is {type(storage_type).__name__}"
    key_text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    if not isinstance(key_text, (str, int)) or not _is_key(str(key_text)):
        return "storage key is not a short identifier"
    loc = location.decode("ascii", "replace") if isinstance(location, bytes) else location
    if not isinstance(loc, str) or not _is_location(loc):
        return "storage location is not a device name"
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        return "storage size is not a non-negative integer"
    if len(pid) == 6:
        view = pid[5]
        if view is not None and not (
            isinstance(view, tuple)
            and len(view) == 3
            and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in view)
        ):
            return "storage view metadata is malformed"
    return None


def _is_key(text: str) -> bool:
    # Fast path for what torch writes ("0", "17"): ASCII letters and digits only is exactly
    # what the pattern accepts without "_"; anything else goes through the pattern itself.
    if 0 < len(text) <= 64 and text.isascii() and text.isalnum():
        return True
    return _KEY.fullmatch(text) is not None


# Device names already seen to match _LOCATION (a checkpoint repeats "cpu" per storage).
_GOOD_LOCATIONS: set[str] = set()


def _is_location(loc: str) -> bool:
    if loc in _GOOD_LOCATIONS:
        return True
    if _LOCATION.fullmatch(loc) is None:
        return False
    if len(_GOOD_LOCATIONS) < 256:
        _GOOD_LOCATIONS.add(loc)
    return True


# (StorageType class or None, storage base classes): looked up once torch is imported.
_STORAGE_CLASSES: tuple[Any, tuple[type, ...]] | None = None


def _storage_classes() -> tuple[Any, tuple[type, ...]] | None:
    global _STORAGE_CLASSES  # a cache of torch's classes, filled once
    if _STORAGE_CLASSES is None:
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        legacy = getattr(torch.storage, "_LegacyStorage", None)
        bases: tuple[type, ...] = (torch.UntypedStorage, torch.storage.TypedStorage)
        if legacy is not None:
            bases = (*bases, legacy)
        _STORAGE_CLASSES = (getattr(torch.serialization, "StorageType", None), bases)
    return _STORAGE_CLASSES


def _is_storage_type(obj: Any) -> bool:
    # torch's UnpicklerWrapper turns "*Storage" globals into StorageType objects; newer saves
    # name torch.UntypedStorage or typed storage classes. Anything else is not a storage.
    classes = _storage_classes()
    if classes is None:
        return False
    storage_type, bases = classes
    if storage_type is not None and isinstance(obj, storage_type):
        return True
    return isinstance(obj, type) and issubclass(obj, bases)


def _describe_pid(pid: Any) -> str:
    if isinstance(pid, tuple):
        parts = [p if isinstance(p, (str, int)) else type(p).__name__ for p in pid[:6]]
        return repr(tuple(parts))[:200]
    return type(pid).__name__


def _map_py2_name(module: str, name: str) -> tuple[str, str]:
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    if module in _compat_pickle.IMPORT_MAPPING:
        return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


def _import_global(module: str, name: str) -> Any:
    # Same audit event and resolution (dotted names through getattr) as CPython's find_class.
    sys.audit("pickle.find_class", module, name)
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        if part == "<locals>":
            raise AttributeError(f"Can't get local attribute {name!r} on {obj!r}")
        obj = getattr(obj, part)
    return obj


def checked_import(
    policy: Policy,
    module: str,
    name: str,
    *,
    source: str,
    digest: Callable[[], str | None],
    mode: str,
    fix_imports: bool = True,
) -> Any:
    """Import ``module.name`` if ``policy`` allows it; refuse (or, in audit mode, log) otherwise.

    We import the name ourselves instead of delegating to the C ``find_class``, so the name the
    policy judged is exactly the name imported. Python 2 names are mapped the way the C
    unpickler maps them for protocol < 3 (the scanner reports mapped names too).

    Raises:
        UnsafeModelError: the policy does not allow the global (enforce mode).
    """
    if fix_imports:
        module, name = _map_py2_name(module, name)
    decision = policy.classify(module, name)
    if (module, name) == _NESTED_TORCH_LOADER and _nested_load_allowed(decision):
        # What `pickle.dumps(tensor)` writes: torch's own function would run
        # torch.load(weights_only=False) on its argument, unchecked. We hand back a stand-in
        # that loads those bytes through our own torch loader, scanned and unpickled under
        # this same policy and mode, so a nested payload is judged like any file.
        sys.audit("pickle.find_class", module, name)
        return nested_torch_loader(policy, source=source, mode=mode)
    if decision.verdict is not Verdict.SAFE:
        refuse(
            source=source,
            sha256=digest(),
            rule_id="load.refused-global",
            message=f"refused to import {module}.{name}: {decision.reason}",
            evidence=f"{module}.{name}",
            severity=decision.severity,
            verdict=decision.verdict,
            mode=mode,
        )
    return _import_global(module, name)


# The one nested loader the policy treats as "as safe as its payload" (policy.nested-load).
_NESTED_TORCH_LOADER: Final = ("torch.storage", "_load_from_bytes")


def _nested_load_allowed(decision: Any) -> bool:
    from trainwarden.scan.policy import RULE_NESTED

    return decision.verdict is Verdict.SAFE or decision.rule_id == RULE_NESTED


class NestedLoader(Protocol):
    """Loads the bytes of a checkpoint nested in a pickle (``_torch.load_nested``)."""

    def __call__(self, data: Any, *, policy: Policy, source: str, mode: str) -> Any:
        """Scan and load ``data`` under ``policy`` and ``mode``."""


# The torch loader sits above this module (it builds its pickle module from here), so it is
# handed down once by the package (``trainwarden.load.__init__``) instead of imported back.
_nested_loader: NestedLoader | None = None


def set_nested_loader(loader: NestedLoader) -> None:
    """Install the function that loads nested checkpoints (called once, by the package)."""
    global _nested_loader
    _nested_loader = loader


def nested_torch_loader(policy: Policy, *, source: str, mode: str) -> Callable[[Any], Any]:
    """A stand-in for ``torch.storage._load_from_bytes`` that loads under ``policy``.

    torch's function is ``torch.load(io.BytesIO(b), weights_only=False)``; ours reads the
    same bytes with the loader set by :func:`set_nested_loader` (``_torch.load_nested``):
    scanned first, then unpickled by the policy Unpickler, refusals raised (or logged in
    unsafe-audit mode) as usual.
    """

    def _load_from_bytes(b: Any) -> Any:
        loader = _nested_loader
        if loader is None:
            # Fail closed: without our loader the bytes would go to torch's, unchecked.
            refuse(
                source=f"{source}!(nested)",
                sha256=None,
                rule_id="load.nested-payload",
                message="a nested checkpoint cannot be checked here (no nested loader set)",
                evidence="torch.storage._load_from_bytes",
                severity=Severity.HIGH,
                verdict=Verdict.UNKNOWN,
                mode=ENFORCE,
            )
            return None  # not reached: refuse() raises in enforce mode
        return loader(b, policy=policy, source=source, mode=mode)

    return _load_from_bytes


def pure_python_unpickler(
    policy: Policy,
    *,
    source: str,
    sha256: str | None,
    mode: str,
    data: memoryview | None = None,
) -> Callable[[str, str], Any]:
    """A ``find_class`` for pure-Python unpicklers (joblib's) with the same checks."""

    def digest() -> str | None:
        return sha256 if sha256 is not None else _sha256_of(data)

    def find_class(module: str, name: str) -> Any:
        return checked_import(policy, module, name, source=source, digest=digest, mode=mode)

    return find_class


def _rescan(data: bytes, policy: Policy, name: str, mode: str) -> None:
    from trainwarden.scan import scan_bytes

    file = scan_bytes(data, name=name, policy=policy)
    check_report(Report(files=(file,), command="load"), mode=mode)


def _digest_stream(file: Any) -> str | None:
    # pickle.load(file) on a real file: hash the file through its descriptor with pread, so
    # the stream position the caller relies on is left alone.
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    import os

    digest = hashlib.sha256()
    offset = 0
    try:
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
    except OSError:
        return None
    return digest.hexdigest()
