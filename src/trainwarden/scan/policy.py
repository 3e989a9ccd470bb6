"""The policy: which imported globals are safe, which are known dangerous, and the rest unknown.

One :class:`Policy` object is shared by the scanner (judging what the pickle machine found) and
the loader (refusing in ``find_class``), so both always say the same thing.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from trainwarden.errors import ConfigError
from trainwarden.findings import Finding, Location, Severity, Verdict
from trainwarden.scan._pickle import (
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
    "dangerous_reason",
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
        "torch": "PyTorch tensor/parameter rebuild functions, storages, dtypes, layouts; always on",
        "numpy": "NumPy array/scalar/dtype reconstruction and random generator states; always on",
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


# ------------------------------------------------------------------------------------------
# The catalogue of known dangerous globals. Matched on the full dotted name (module + "." +
# name) at dot boundaries, so "os" covers os.system and os.path.join alike; py2 spellings are
# mapped first (``__builtin__.eval`` is ``builtins.eval``). Everything here is UNSAFE.

_EXEC = "runs arbitrary code"
_SHELL = "runs shell commands or spawns processes"
_NESTED = "loads another pickle / serialized payload (a nested, unscanned load)"
_NET = "opens network connections (exfiltration, fetching payloads)"
_FILES = "reads, writes or deletes files"
_IMPORT = "imports arbitrary modules by name"
_ATTR = "reaches arbitrary attributes by name (a path to any callable)"
_STATE = "changes process-wide state (monkeypatching, RNG seeds, signal handlers)"
_CALLABLE = "builds callables that run later (a link in published scanner-bypass chains)"

_C = Severity.CRITICAL
_H = Severity.HIGH


def _group(names: str, severity: Severity, reason: str) -> dict[str, tuple[Severity, str]]:
    return dict.fromkeys(names.split(), (severity, reason))


_DANGEROUS: dict[str, tuple[Severity, str]] = {
    # processes and the OS
    **_group(
        """
        os posix nt subprocess _posixsubprocess _winapi pty commands popen2 platform
        _osx_support _aix_support asyncio multiprocessing concurrent.futures.process
        _pyrepl _sitebuiltins ctypes _ctypes cffi uuid._get_command_stdout
        imaplib.IMAP4_stream pexpect sh plumbum fabric paramiko ensurepip venv pip
        setuptools distutils pkg_resources _distutils_hack site sitecustomize
        usercustomize torch.utils.cpp_extension torch.utils.collect_env
        torch.utils.bottleneck torch._inductor torch.multiprocessing tkinter _tkinter
        Tkinter idlelib turtle turtledemo webbrowser antigravity
        """,
        _C,
        _SHELL,
    ),
    **_group(
        """
        posixpath ntpath genericpath macpath
        """,
        _H,
        _FILES,
    ),
    # code execution
    **_group(
        """
        builtins.eval builtins.exec builtins.compile builtins.execfile builtins.apply
        builtins.breakpoint builtins.help builtins.input builtins.raw_input
        builtins.exit builtins.quit builtins.copyright builtins.credits builtins.license
        builtins.reload runpy code codeop pdb bdb timeit cProfile profile trace pydoc
        _xxsubinterpreters _interpreters _xxinterpchannels _interpchannels _interpqueues
        concurrent.interpreters interpreters test.support
        doctest rlcompleter readline gettext.c2py logging.config lib2to3 test
        unittest.mock types typing.get_type_hints typing._eval_type typing.ForwardRef
        numpy.f2py numpy.testing numpy.distutils numpy.ctypeslib torch.fx torch.jit
        torch._dynamo torch.package torch.compile torch._C torch.ops torch._ops
        torch.library torch.classes torch.distributed.rpc torch.utils._config_module
        torch.export torch.fx.experimental torch._export torch.cuda.jiterator
        torch._higher_order_ops transformers.dynamic_module_utils
        transformers.models.auto transformers.pipelines transformers.integrations
        huggingface_hub dill cloudpickle cpickle execnet
        """,
        _C,
        _EXEC,
    ),
    # nested loads
    **_group(
        """
        pickle _pickle cPickle pickletools shelve marshal joblib.load
        joblib.numpy_pickle.load joblib.numpy_pickle_compat joblib.externals
        joblib.parallel joblib.memory joblib._store_backends joblib.pool numpy.load
        numpy.lib.npyio numpy.lib.format numpy.lib._npyio_impl numpy.loadtxt
        numpy.fromfile numpy.memmap numpy.core.memmap numpy._core.memmap torch.load
        torch.serialization torch.hub torch.utils.data.datapipes torch.utils.model_zoo
        safetensors.torch.load_file
        lightning.pytorch.core.saving pytorch_lightning.core.saving
        lightning.fabric.utilities.cloud_io lightning.fabric.utilities.load
        sklearn.externals keras.models tensorflow yaml.load yaml.unsafe_load
        yaml.full_load jsonpickle sqlite3 _sqlite3 dbm pstats zipimport zipapp pkgutil
        importlib imp __import__ importlib_metadata modulefinder py_compile compileall
        """,
        _C,
        _NESTED,
    ),
    # attribute / import primitives
    **_group(
        """
        builtins.getattr builtins.setattr builtins.delattr builtins.hasattr
        builtins.globals builtins.locals builtins.vars builtins.dir builtins.__import__
        builtins.super builtins.type builtins.object.__getattribute__
        operator.attrgetter operator.methodcaller _operator.attrgetter
        _operator.methodcaller inspect gc sys _imp _frozen_importlib
        _frozen_importlib_external ctypes.pythonapi torch._utils._import_dotted_name
        torch.utils._import_utils pydoc.locate importlib.import_module
        """,
        _C,
        _ATTR,
    ),
    **_group(
        """
        operator _operator functools itertools.starmap copy builtins.map builtins.filter
        builtins.classmethod builtins.staticmethod builtins.property weakref.finalize
        atexit threading _thread sched contextlib signal _signal faulthandler resource
        copyreg _compat_pickle builtins.memoryview
        """,
        _H,
        _CALLABLE,
    ),
    # network
    **_group(
        """
        socket _socket ssl _ssl http urllib urllib2 urllib3 httplib requests httpx
        aiohttp ftplib smtplib poplib nntplib telnetlib xmlrpc xmlrpclib socketserver
        SocketServer select selectors wsgiref cgi cgitb mailbox smtpd asynchat asyncore
        torch.distributed boto3 botocore fsspec s3fs gcsfs
        """,
        _H,
        _NET,
    ),
    # files
    **_group(
        """
        shutil tempfile glob fileinput linecache io.open io.open_code io.FileIO _io
        builtins.open os.path zipfile tarfile gzip.open bz2.open lzma.open mmap fcntl
        logging.FileHandler logging.handlers filecmp netrc mimetypes.init tabnanny
        sysconfig pathlib.Path.write_text numpy.save numpy.savez numpy.savetxt
        numpy.tofile torch.save
        """,
        _H,
        _FILES,
    ),
    # process-wide state the training job depends on (T2/T5)
    **_group(
        """
        random.seed random.setstate random.shuffle random._inst numpy.random.seed
        numpy.random.set_state numpy.random.mtrand.seed numpy.random.mtrand.set_state
        numpy.random.mtrand._rand torch.manual_seed torch.seed torch.random
        torch.set_rng_state torch.cuda.manual_seed torch.cuda.manual_seed_all
        torch.cuda.set_rng_state torch.use_deterministic_algorithms torch.backends
        torch.set_default_dtype torch.set_default_tensor_type torch.set_default_device
        torch.set_num_threads torch.set_grad_enabled torch.set_flush_denormal
        torch.set_printoptions torch.set_anomaly_enabled torch.autograd
        torch.nn.modules.module.register_module_forward_hook
        torch.nn.modules.module.register_module_forward_pre_hook
        torch.nn.modules.module.register_module_backward_hook
        torch.nn.modules.module.register_module_full_backward_hook
        torch.nn.modules.module.register_module_full_backward_pre_hook
        torch.nn.modules.module.register_module_buffer_registration_hook
        torch.nn.modules.module.register_module_module_registration_hook
        torch.nn.modules.module.register_module_parameter_registration_hook
        torch.optim.optimizer.register_optimizer_step_pre_hook
        torch.optim.optimizer.register_optimizer_step_post_hook torch.overrides
        torch._C._set_ warnings logging.disable logging.basicConfig
        """,
        _H,
        _STATE,
    ),
}

# Glob patterns for families that do not sit under one prefix.
_DANGEROUS_GLOBS: tuple[tuple[str, Severity, str], ...] = (
    ("torch.set_*", _H, _STATE),
    ("torch.*.load", _C, _NESTED),
    ("torch.*._load*", _C, _NESTED),
    ("*.from_pretrained", _C, "downloads and loads a model (may run remote code)"),
    ("*.load_state_dict_from_url", _C, _NET),
    ("numpy.*.load", _C, _NESTED),
    ("*.Unpickler", _C, _NESTED),
)

# Last components of critical names: an unresolved module with one of these names is unsafe.
_CRITICAL_NAMES = frozenset(
    {"system", "popen", "eval", "exec", "execv", "execve", "execvp", "execl", "spawnv",
     "spawnl", "compile", "__import__", "getattr", "Popen", "check_output", "check_call",
     "call", "run", "getoutput", "getstatusoutput", "load", "loads", "import_module",
     "run_path", "run_module", "fork_exec", "startfile", "execfile"}
)  # fmt: skip


def _is_dunder(part: str) -> bool:
    return len(part) > 4 and part.startswith("__") and part.endswith("__")


# Exact names under a catalogued prefix that are plain data classes, not what the prefix
# is catalogued for: torch.distributed.checkpoint writes its `.metadata` file as a pickle of
# these dataclasses (FSDP / DCP checkpoints), and none of them opens a connection. Only the
# exact names are exempt; their attributes (``Metadata.x``) still match the prefix.
_NOT_CATALOGUED = frozenset(
    f"torch.distributed.checkpoint.{name}"
    for name in (
        "metadata.Metadata", "metadata.TensorStorageMetadata", "metadata.TensorProperties",
        "metadata.ChunkStorageMetadata", "metadata.BytesStorageMetadata",
        "metadata.MetadataIndex", "metadata.StorageMeta", "metadata._MEM_FORMAT_ENCODING",
        "filesystem._StorageInfo",
    )
)  # fmt: skip


@functools.lru_cache(maxsize=65536)
def _catalogue(full: str) -> tuple[Severity, str, str] | None:
    """Catalogue match for a full dotted name: (severity, reason, matched entry) or None."""
    if full in _NOT_CATALOGUED:
        return None
    parts = full.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        hit = _DANGEROUS.get(prefix)
        if hit is not None:
            return hit[0], hit[1], prefix
    for pattern, severity, reason in _DANGEROUS_GLOBS:
        if fnmatch.fnmatchcase(full, pattern):
            return severity, reason, pattern
    return None


def _dangerous(module: str, name: str) -> tuple[Severity, str, str] | None:
    """Whether ``module.name`` is in the catalogue, however it is spelled."""
    candidates = {(module, name), compat_name(module, name)}
    for mod, nam in candidates:
        parts = nam.split(".")
        if any(_is_dunder(p) for p in parts) or any(_is_dunder(p) for p in mod.split(".")[1:]):
            return (
                _C,
                "reaches a dunder attribute (__globals__, __builtins__, __class__...): a path "
                "from any object to the interpreter's internals",
                "dunder",
            )
        full = f"{mod}.{nam}"
        hit = _catalogue(full)
        if hit is not None:
            return hit
        # A dotted name is a chain of getattr calls: ``posixpath`` + ``os.system`` reaches
        # os.system without naming the os module. Check every inner chain that starts at a
        # component and has at least two parts.
        if len(parts) > 1:
            chain = mod.split(".") + parts
            for i in range(1, len(chain) - 1):
                hit = _catalogue(".".join(chain[i:]))
                if hit is not None and "." in hit[2]:
                    return hit
    return None


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
    """

    profiles: tuple[str, ...] = ALWAYS_ON
    allowed: tuple[str, ...] = ()
    unsafe_allowed: tuple[str, ...] = ()

    @classmethod
    def default(
        cls,
        *,
        profiles: Sequence[str] = (),
        allow: Sequence[str] = (),
        allow_unsafe_globals: bool = False,
    ) -> Policy:
        """The built-in policy plus optional ``profiles`` and ``allow`` entries.

        Raises:
            ConfigError: an unknown profile or an invalid/dangerous allow entry.
        """
        base = cls(profiles=_check_profiles(profiles))
        if allow:
            return base.with_allowed(allow, allow_unsafe_globals=allow_unsafe_globals)
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
            profiles: profiles enabled in addition to the file's ``profiles``.
            allow: entries allowed in addition to the file's ``allow``.
            allow_unsafe_globals: accept dangerous entries given in ``allow`` (never from
                the file: a repository cannot opt its own checkpoints out of the scan).

        Raises:
            ConfigError: the file is not valid TOML or the section is malformed.
        """
        found = _find_pyproject(Path(path) if path is not None else Path.cwd())
        file_profiles: list[str] = []
        file_allow: list[str] = []
        if found is not None:
            section = _read_section(found)
            file_profiles = _string_list(section, "profiles", found)
            file_allow = _string_list(section, "allow", found)
        policy = cls.default(profiles=[*file_profiles, *profiles])
        if file_allow:
            policy = policy.with_allowed(file_allow, source=str(found))
        if allow:
            policy = policy.with_allowed(allow, allow_unsafe_globals=allow_unsafe_globals)
        return policy

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
            hit = _dangerous(module, attr)
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
        return replace(
            self,
            allowed=allowed,
            unsafe_allowed=tuple(sorted(set(self.unsafe_allowed) | set(unsafe))),
        )

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
        hit = _dangerous(module, name)
        if hit is not None:
            severity, reason, matched = hit
            return (
                Decision(Verdict.UNSAFE, severity, RULE_DANGEROUS, f"{reason} [{matched}]"),
                CALL,
            )
        if "." in name:
            # Attributes of an allowlisted object (``builtins.str.format``,
            # ``pathlib.Path.write_text``): methods of safe classes can still write files
            # or reach attributes; only the exact names listed are safe.
            parts = name.split(".")
            for i in range(1, len(parts)):
                if (module, ".".join(parts[:i])) in comp.table:
                    return (
                        Decision(
                            Verdict.UNSAFE,
                            Severity.HIGH,
                            RULE_DANGEROUS,
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
            if ref.module != UNRESOLVED and _dangerous(ref.module, "x") is not None:
                return Decision(
                    Verdict.UNSAFE,
                    Severity.CRITICAL,
                    RULE_UNRESOLVED,
                    f"imports an unknown attribute of the dangerous module {ref.module}",
                )
            if ref.module == UNRESOLVED and ref.name.rpartition(".")[2] in _CRITICAL_NAMES:
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
                seen[1] += 1
                if ref.called:
                    seen[2] = True
                continue
            findings[key] = [ref, 1, ref.called, decision]
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
        }.get(issue.rule_id, Severity.MEDIUM)
        return Finding(issue.rule_id, severity, issue.message, loc, issue.evidence, issue.verdict)

    def allowlist(self) -> Mapping[str, str]:
        """Every allowlisted ``module:qualname`` with its reason (for docs and ``--explain``)."""
        comp = self._compiled()
        out = {f"{m}:{n}": entry[0] for (m, n), entry in comp.table.items()}
        out.update({f"{m}:{n}": "allowed by the user" for m, n in comp.user_pairs})
        out.update(dict.fromkeys(comp.user_full, "allowed by the user"))
        return MappingProxyType(dict(sorted(out.items())))


def dangerous_reason(module: str, name: str) -> str | None:
    """Why ``module.name`` is in the dangerous catalogue, or None (ignores any allowlist)."""
    hit = _dangerous(module, name)
    return None if hit is None else hit[1]


# -- pyproject.toml ---------------------------------------------------------------------------


def _find_pyproject(start: Path) -> Path | None:
    if start.is_file():
        return start
    here = start.resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_section(path: Path) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            if b"[tool.trainwarden" not in raw:
                return {}
            raise ConfigError(
                f"{path} has a [tool.trainwarden] section but no TOML parser is installed "
                "(pip install tomli)"
            ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    tool = data.get("tool", {})
    section = tool.get("trainwarden", {}) if isinstance(tool, dict) else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [tool.trainwarden] must be a table")
    return section


def _string_list(section: Mapping[str, Any], key: str, path: Path) -> list[str]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: [tool.trainwarden] {key} must be a list of strings")
    return value
