"""The catalogue of known dangerous globals, and how a pickled name resolves to its target.

``unsafe`` rests on a name known to execute code, import, open files or sockets, write, or
change process-wide state: never on a namespace alone. Two kinds of entries, both matched at
dot boundaries (an entry covers the attributes reached through it):

* *modules that exist to do one of those things* (``subprocess``, ``socket``, ``pickle``,
  ``runpy``...), each with the reason that makes every one of their names dangerous;
* *exact names* inside namespaces that also hold plain data (``builtins.eval``,
  ``torch.set_rng_state``, ``functools.reduce``, ``types.CodeType``...). The rest of such a
  namespace (``torch._C.Generator``, ``functools.partial``) is not catalogued: it is
  ``unknown`` unless a profile allowlists it.

A few patterns match the *last part of a name* where that name says what the function does in
every library that defines it (``*.from_pretrained`` downloads and loads, ``*.Unpickler``
unpickles).

Names are resolved as ``find_class`` resolves them: Python 2 spellings are mapped
(``__builtin__.eval`` is ``builtins.eval``) and dotted names walk attributes, through the
modules other modules re-export (``pathlib`` + ``os.system`` is ``os.system``; ``tempfile`` +
``_os.system`` too: see ``_aliases``).
"""

from __future__ import annotations

import fnmatch
import functools
from typing import Final

from trainwarden.findings import Severity
from trainwarden.scan._pickle import compat_name

__all__ = [
    "CRITICAL_NAMES",
    "catalogue_match",
    "covers_below",
    "dangerous",
    "dangerous_reason",
]

_EXEC = "runs arbitrary code"
_SHELL = "runs shell commands or spawns processes"
_NESTED = "loads another pickle / serialized payload (a nested, unscanned load)"
_NET = "opens network connections (exfiltration, fetching payloads)"
_FILES = "reads, writes or deletes files"
_IMPORT = "imports arbitrary modules by name"
_ATTR = "reaches arbitrary attributes by name (a path to any callable)"
_STATE = "changes process-wide state (monkeypatching, RNG seeds, signal handlers, defaults)"
_CALLS = "calls the callable it is given, hiding the call from scanners that look at REDUCE"
_SCANNER = (
    "a model scanner's own code: calling into it can switch scanning off or patch it in the "
    "process that loads the file"
)

_C = Severity.CRITICAL
_H = Severity.HIGH


def _group(names: str, severity: Severity, reason: str) -> dict[str, tuple[Severity, str]]:
    return dict.fromkeys(names.split(), (severity, reason))


def _under(
    prefix: str, names: str, severity: Severity, reason: str
) -> dict[str, tuple[Severity, str]]:
    return {f"{prefix}.{n}": (severity, reason) for n in names.split()}


# Modules that exist to do something dangerous: every name in them is (the reason says why).
_MODULES: dict[str, tuple[Severity, str]] = {
    # processes and the shell
    **_group(
        "os posix nt subprocess _posixsubprocess _winapi pty commands popen2 pexpect sh "
        "plumbum fabric paramiko multiprocessing concurrent.futures.process asyncio "
        "_osx_support _aix_support torch.multiprocessing webbrowser antigravity",
        _C,
        _SHELL,
    ),
    "platform": (_C, "queries the system by running commands (architecture, _syscmd_ver)"),
    "mailcap": (_C, "runs the shell commands of mailcap entries (findmatch's test command)"),
    "ctypes": (_C, "calls native functions and writes raw memory"),
    "_ctypes": (_C, "calls native functions and writes raw memory"),
    "cffi": (_C, "calls native functions and writes raw memory"),
    # installing and importing code
    **_group(
        "ensurepip venv pip setuptools distutils pkg_resources _distutils_hack site "
        "sitecustomize usercustomize importlib imp importlib_metadata modulefinder zipimport "
        "pkgutil _imp _frozen_importlib _frozen_importlib_external torch.utils._import_utils",
        _C,
        _IMPORT,
    ),
    # running code
    **_group(
        "runpy code codeop pdb bdb timeit cProfile profile trace pydoc doctest rlcompleter "
        "_pyrepl _sitebuiltins _xxsubinterpreters _interpreters _xxinterpchannels "
        "_interpchannels _interpqueues concurrent.interpreters interpreters test idlelib "
        "lib2to3 tkinter _tkinter Tkinter turtle turtledemo logging.config unittest.mock "
        "numpy.f2py numpy.testing numpy.distutils torch.fx torch.jit torch._dynamo "
        "torch._inductor torch.package torch.library torch.classes torch.ops torch._ops "
        "torch.export torch._export torch._higher_order_ops torch.cuda.jiterator "
        "torch.utils.cpp_extension torch.utils.collect_env torch.utils.bottleneck "
        "torch.utils._config_module torch.distributed.rpc transformers.dynamic_module_utils "
        "transformers.models.auto transformers.pipelines dill cloudpickle cpickle execnet "
        "mlflow.projects readline sympy.parsing",
        _C,
        _EXEC,
    ),
    # deserializing (nested loads)
    **_group(
        "pickle _pickle cPickle shelve marshal jsonpickle joblib.numpy_pickle_compat "
        "joblib.externals sklearn.externals numpy.lib.npyio numpy.lib._npyio_impl "
        "numpy.lib.format torch.serialization torch.hub torch.utils.model_zoo "
        "torch.utils.data.datapipes lightning.pytorch.core.saving "
        "pytorch_lightning.core.saving lightning.fabric.utilities.cloud_io "
        "lightning.fabric.utilities.load pstats",
        _C,
        _NESTED,
    ),
    # introspection that reaches anything
    "sys": (_C, "reaches every loaded module (sys.modules) and the interpreter's hooks"),
    "gc": (_C, "reaches every live object (get_objects, get_referrers)"),
    "inspect": (_C, _ATTR),
    # network
    **_group(
        "socket _socket ssl _ssl http.client http.server http.cookiejar urllib.request "
        "urllib.robotparser urllib2 urllib3 httplib requests httpx aiohttp ftplib smtplib "
        "poplib imaplib nntplib telnetlib xmlrpc xmlrpclib socketserver SocketServer wsgiref "
        "smtpd asynchat asyncore boto3 botocore fsspec s3fs gcsfs huggingface_hub "
        "torch.distributed.elastic torch.distributed.launch torch.distributed.launcher "
        "torch.distributed.run torch.distributed.rendezvous torch.distributed.distributed_c10d",
        _H,
        _NET,
    ),
    # files
    **_group(
        "shutil tempfile glob fileinput linecache zipfile tarfile mmap fcntl filecmp netrc "
        "tabnanny mailbox dbm sqlite3 _sqlite3 zipapp py_compile compileall logging.handlers "
        "cgi cgitb torch.distributed.checkpoint.filesystem uu wave sunau aifc scipy.io",
        _H,
        _FILES,
    ),
    # process-wide state
    **_group("atexit signal _signal faulthandler resource copyreg _compat_pickle", _H, _STATE),
    "threading": (_H, "runs callables in new threads"),
    "_thread": (_H, "runs callables in new threads"),
    "sched": (_H, "runs the callables it is given at scheduled times"),
    # the scanners themselves
    **_group("trainwarden fickling picklescan modelscan modelaudit", _C, _SCANNER),
}

# Exact names inside namespaces that also hold plain data.
_NAMES: dict[str, tuple[Severity, str]] = {
    **_under(
        "builtins",
        "eval exec compile execfile apply breakpoint help input raw_input exit quit copyright "
        "credits license reload",
        _C,
        _EXEC,
    ),
    **_under(
        "builtins",
        "getattr setattr delattr hasattr globals locals vars dir __import__ super type "
        "object.__getattribute__",
        _C,
        _ATTR,
    ),
    "builtins.open": (_H, _FILES),
    **_under("builtins", "map filter", _H, _CALLS),
    **_under("operator", "attrgetter methodcaller", _C, _ATTR),
    **_under("_operator", "attrgetter methodcaller", _C, _ATTR),
    **_under("operator", "call setitem delitem __setitem__ __delitem__", _H, _CALLS),
    **_under("_operator", "call setitem delitem", _H, _CALLS),
    "functools.reduce": (_H, _CALLS),
    "_functools.reduce": (_H, _CALLS),
    **_under("functools", "update_wrapper wraps", _H, "sets attributes on the objects it is given"),
    "itertools.starmap": (_H, _CALLS),
    **_under("random", "seed setstate shuffle _inst", _H, _STATE),
    **_under(
        "numpy.random",
        "seed set_state mtrand.seed mtrand.set_state mtrand._rand",
        _H,
        _STATE,
    ),
    "weakref.finalize": (_H, "registers a callable that runs when an object dies or at exit"),
    **_under(
        "types",
        "FunctionType LambdaType CodeType MethodType new_class prepare_class coroutine",
        _C,
        "builds functions, code objects or classes from data (runs code from the pickle)",
    ),
    **_under("typing", "get_type_hints _eval_type ForwardRef", _C, "evaluates strings as code"),
    "gettext.c2py": (_C, "compiles a plural-forms expression to Python code"),
    **_under(
        "sympy",
        "sympify core.sympify.sympify S parse_expr core.parameters evaluate",
        _C,
        "parses strings as Python with eval",
    ),
    **_under("codecs", "open EncodedFile StreamReaderWriter StreamRecoder", _H, _FILES),
    "tokenize.open": (_H, _FILES),
    "sklearn.utils._joblib": (_C, _NESTED),
    **_under(
        "operator",
        "getitem itemgetter",
        _H,
        "calls __getitem__ of what it is given (a defaultdict's factory on a missing key)",
    ),
    **_under(
        "_operator",
        "getitem itemgetter",
        _H,
        "calls __getitem__ of what it is given (a defaultdict's factory on a missing key)",
    ),
    **_under(
        "numpy", "vectorize frompyfunc apply_along_axis apply_over_axes piecewise", _H, _CALLS
    ),
    "torch.utils.checkpoint.checkpoint": (_H, _CALLS),
    "cmd.Cmd": (_H, "dispatches commands to methods looked up by name"),
    "uuid._get_command_stdout": (_C, _SHELL),
    "ctypes.pythonapi": (_C, _ATTR),
    "pydoc.locate": (_C, _IMPORT),
    "__import__": (_C, _IMPORT),
    "numpy.ctypeslib.load_library": (_C, "loads a native library"),
    **_under("io", "open open_code FileIO", _H, _FILES),
    **_under("_io", "open open_code FileIO", _H, _FILES),
    **_under("gzip", "open GzipFile", _H, _FILES),
    **_under("bz2", "open BZ2File", _H, _FILES),
    **_under("lzma", "open LZMAFile", _H, _FILES),
    "mimetypes.init": (_H, _FILES),
    "mimetypes.read_mime_types": (_H, _FILES),
    **_under(
        "logging",
        "FileHandler StreamHandler WatchedFileHandler RotatingFileHandler "
        "TimedRotatingFileHandler SocketHandler DatagramHandler SysLogHandler SMTPHandler "
        "HTTPHandler QueueListener",
        _H,
        "a logging handler that opens files, streams or sockets",
    ),
    **_under("logging", "disable basicConfig setLoggerClass setLogRecordFactory", _H, _STATE),
    **_under("warnings", "filterwarnings simplefilter resetwarnings showwarning", _H, _STATE),
    **{
        f"pathlib.{cls}.{method}": (_H, _FILES)
        for cls in ("Path", "PosixPath", "WindowsPath")
        for method in (
            "write_text",
            "write_bytes",
            "open",
            "read_text",
            "read_bytes",
            "unlink",
            "rmdir",
            "mkdir",
            "touch",
            "rename",
            "replace",
            "symlink_to",
            "hardlink_to",
            "link_to",
            "chmod",
            "lchmod",
            "iterdir",
            "glob",
            "rglob",
            "walk",
            "expanduser",
            "home",
            "cwd",
        )
    },
    **_under("builtins.str", "format format_map", _H, _ATTR),
    **_under("numpy.ndarray", "tofile dump", _H, _FILES),
    **_under(
        "torch.Tensor",
        "register_hook register_post_accumulate_grad_hook",
        _H,
        "registers a callable that runs during backward",
    ),
    **_under("numpy", "save savez savez_compressed savetxt tofile", _H, _FILES),
    **_under("numpy", "load loadtxt fromfile genfromtxt fromregex memmap", _C, _NESTED),
    **_under("numpy.core", "memmap", _C, _FILES),
    **_under("numpy._core", "memmap", _C, _FILES),
    **_under("joblib", "load dump", _C, _NESTED),
    "joblib.numpy_pickle.load": (_C, _NESTED),
    "joblib.numpy_pickle.dump": (_H, _FILES),
    **_under("joblib", "parallel memory _store_backends pool Parallel Memory", _H, _SHELL),
    "safetensors.torch.load_file": (_C, _NESTED),
    "safetensors.torch.save_file": (_H, _FILES),
    **_under(
        "yaml",
        "load load_all unsafe_load unsafe_load_all full_load full_load_all "
        "UnsafeLoader Loader FullLoader",
        _C,
        _NESTED,
    ),
    **_under(
        "pandas",
        "read_pickle read_csv read_table read_json read_html read_xml "
        "read_parquet read_feather read_orc read_excel read_hdf read_sql read_fwf "
        "read_stata read_sas read_spss read_clipboard to_pickle",
        _H,
        "reads or writes files and URLs (read_pickle: a nested pickle load)",
    ),
    **_under(
        "keras.models", "load_model model_from_json model_from_yaml model_from_config", _C, _EXEC
    ),
    **_under(
        "tensorflow",
        "io py_function numpy_function load_op_library load_library saved_model "
        "keras.models.load_model keras.utils.get_file compat.v1.py_func raw_ops.ReadFile "
        "raw_ops.WriteFile raw_ops.PyFunc raw_ops.EagerPyFunc raw_ops.PyFuncStateless "
        "raw_ops.MatchingFiles python.ops.script_ops python.lib.io python.ops.gen_io_ops",
        _C,
        "runs Python or reads and writes files from a TensorFlow graph",
    ),
    # torch: exact names (the torch namespace is mostly data types and math)
    **_under("torch", "load compile", _C, _NESTED),
    "torch.save": (_H, _FILES),
    "torch.utils.data.datapipes.utils.decoder.basichandlers": (_C, _NESTED),
    "torch._utils._import_dotted_name": (_C, _ATTR),
    **_under(
        "torch",
        "manual_seed seed set_rng_state use_deterministic_algorithms set_anomaly_enabled "
        "set_autocast_cache_enabled set_autocast_cpu_dtype set_autocast_cpu_enabled "
        "set_autocast_dtype set_autocast_enabled set_autocast_gpu_dtype set_autocast_ipu_dtype "
        "set_autocast_ipu_enabled set_autocast_xla_dtype set_autocast_xla_enabled "
        "set_default_device set_default_dtype set_default_tensor_type "
        "set_deterministic_debug_mode set_float32_matmul_precision set_flush_denormal "
        "set_grad_enabled set_num_interop_threads set_num_threads set_printoptions "
        "set_warn_always default_generator",
        _H,
        _STATE,
    ),
    **_under("torch.random", "manual_seed seed set_rng_state default_generator", _H, _STATE),
    **_under(
        "torch.cuda",
        "manual_seed manual_seed_all seed seed_all set_rng_state "
        "set_rng_state_all set_device set_per_process_memory_fraction",
        _H,
        _STATE,
    ),
    **_under(
        "torch.autograd",
        "set_grad_enabled set_detect_anomaly detect_anomaly set_multithreading_enabled "
        "grad_mode.set_grad_enabled grad_mode.set_multithreading_enabled "
        "anomaly_mode.set_detect_anomaly anomaly_mode.detect_anomaly graph "
        "_push_saved_tensors_default_hooks _enable_profiler _enable_profiler_legacy profiler",
        _H,
        _STATE,
    ),
    **_under(
        "torch.backends",
        "cudnn.set_flags cudnn.flags mkldnn.set_flags mkldnn.flags nnpack.set_flags "
        "nnpack.flags mha.set_fastpath_enabled cuda.enable_cudnn_sdp cuda.enable_flash_sdp "
        "cuda.enable_math_sdp cuda.enable_mem_efficient_sdp cuda.preferred_blas_library "
        "cuda.preferred_linalg_library cuda.preferred_rocm_fa_library "
        "cuda.allow_fp16_bf16_reduction_math_sdp python_native",
        _H,
        _STATE,
    ),
    **_under(
        "torch._C",
        "_jit_script_compile _jit_script_class_compile CompilationUnit import_ir_module "
        "import_ir_module_from_buffer _import_ir_module_from_package _load_for_lite_interpreter "
        "_load_for_lite_interpreter_from_buffer _load_jit_module_from_bytes "
        "_load_jit_module_from_file _get_model_bytecode_version PyTorchFileReader "
        "PyTorchFileWriter _dynamo _distributed_c10d _distributed_rpc _distributed_autograd "
        "_c10d_init _rpc_init _jit_set_profiling_executor _jit_set_profiling_mode "
        "_jit_pass_inline _set_worker_signal_handlers _set_worker_pids",
        _C,
        "compiles or loads TorchScript code, reads or writes archives, or talks to other "
        "processes (torch's C entry points)",
    ),
    **{
        f"torch._C.{name}": (_H, _STATE)
        for name in [
            "_set_autograd_fallback_mode",
            "_set_backcompat_broadcast_warn",
            "_set_backcompat_keepdim_warn",
            "_set_blas_preferred_backend",
            "_set_cached_tensors_enabled",
            "_set_check_sparse_tensor_invariants",
            "_set_cpu_allow_fp16_reduced_precision_reduction",
            "_set_cublas_allow_bf16_reduced_precision_reduction",
            "_set_cublas_allow_fp16_accumulation",
            "_set_cublas_allow_fp16_reduced_precision_reduction",
            "_set_cublas_allow_tf32",
            "_set_cudnn_allow_tf32",
            "_set_cudnn_benchmark",
            "_set_cudnn_deterministic",
            "_set_cudnn_enabled",
            "_set_default_dtype",
            "_set_default_tensor_type",
            "_set_deterministic_algorithms",
            "_set_deterministic_fill_uninitialized_memory",
            "_set_dispatch_mode",
            "_set_float32_matmul_precision",
            "_set_fwd_grad_enabled",
            "_set_grad_enabled",
            "_set_linalg_preferred_backend",
            "_set_mkldnn_enabled",
            "_set_multithreading_enabled",
            "_set_nnpack_enabled",
            "_set_qengine",
            "_set_sdp_use_flash",
            "_set_sdp_use_math",
            "_set_sdp_use_mem_efficient",
            "_set_torch_function_state",
            "_set_tracing_state",
            "_set_warnAlways",
            "_set_print_stack_traces_on_fatal_signal",
            "_set_graph_executor_optimize",
            "set_anomaly_enabled",
            "set_autocast_enabled",
            "set_flush_denormal",
            "set_num_interop_threads",
            "set_num_threads",
            "default_generator",
        ]
    },
    **{
        f"torch.nn.modules.module.register_module_{hook}": (_H, _STATE)
        for hook in [
            "forward_hook",
            "forward_pre_hook",
            "backward_hook",
            "full_backward_hook",
            "full_backward_pre_hook",
            "buffer_registration_hook",
            "module_registration_hook",
            "parameter_registration_hook",
        ]
    },
    **_under(
        "torch.optim.optimizer",
        "register_optimizer_step_pre_hook register_optimizer_step_post_hook",
        _H,
        _STATE,
    ),
    **_under(
        "torch.distributed",
        "init_process_group new_group new_subgroups new_subgroups_by_enumeration "
        "destroy_process_group TCPStore FileStore HashStore PrefixStore init_device_mesh "
        "barrier broadcast all_reduce all_gather send recv isend irecv "
        "checkpoint.load checkpoint.save checkpoint.state_dict_loader "
        "checkpoint.state_dict_saver checkpoint.FileSystemReader checkpoint.FileSystemWriter",
        _H,
        _NET,
    ),
}

# The last part of a name says what it does, in every library that defines one.
_NAME_PATTERNS: tuple[tuple[str, Severity, str], ...] = (
    ("*.from_pretrained", _C, "downloads and loads a model (may run remote code)"),
    ("*.load_state_dict_from_url", _C, _NET),
    ("*.Unpickler", _C, _NESTED),
    ("torch.*.load", _C, _NESTED),
    ("torch.*._load", _C, _NESTED),
    ("numpy.*.load", _C, _NESTED),
)

# Exact names under a catalogued module that are plain data classes, not what the module is
# catalogued for: torch.distributed.checkpoint writes its `.metadata` file with _StorageInfo
# (FSDP / DCP checkpoints), a jagged nested tensor pickles the (dim, min, max) _DimRange
# of torch._dynamo, and torchrun's dynamic rendezvous (`--standalone`, c10d) passes its state
# between agents as a pickle of _RendezvousState and _NodeDesc. Only the exact names are
# exempt; their attributes still match.
_NOT_CATALOGUED = frozenset(
    {
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch._dynamo.decorators._DimRange",
        "torch.distributed.elastic.rendezvous.dynamic_rendezvous._RendezvousState",
        "torch.distributed.elastic.rendezvous.dynamic_rendezvous._NodeDesc",
    }
)

_CATALOGUE: dict[str, tuple[Severity, str]] = {**_MODULES, **_NAMES}

# Last components of critical names: an unresolved module with one of these names is unsafe.
CRITICAL_NAMES: Final = frozenset(
    {
        "system",
        "popen",
        "eval",
        "exec",
        "execv",
        "execve",
        "execvp",
        "execl",
        "spawnv",
        "spawnl",
        "compile",
        "__import__",
        "getattr",
        "Popen",
        "check_output",
        "check_call",
        "call",
        "run",
        "getoutput",
        "getstatusoutput",
        "load",
        "loads",
        "import_module",
        "run_path",
        "run_module",
        "fork_exec",
        "startfile",
        "execfile",
        "resolve_name",
    }
)

# Top-level names of modules the catalogue knows: a dotted name that walks through an
# attribute of that name reaches that module (``import os`` makes ``pathlib.os`` the os
# module; every library that imports a module by its own name re-exports it that way).
_MODULE_NAMES = frozenset(key.split(".", 1)[0] for key in _CATALOGUE)


@functools.lru_cache(maxsize=65536)
def catalogue_match(full: str) -> tuple[Severity, str, str] | None:
    """Catalogue match for a full dotted name: (severity, reason, matched entry) or None."""
    if full in _NOT_CATALOGUED:
        return None
    parts = full.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i]) if i < len(parts) else full
        hit = _CATALOGUE.get(prefix)
        if hit is not None:
            return hit[0], hit[1], prefix
    for pattern, severity, reason in _NAME_PATTERNS:
        if fnmatch.fnmatchcase(full, pattern):
            return severity, reason, pattern
    return None


@functools.lru_cache(maxsize=4096)
def covers_below(module: str) -> bool:
    """True when the catalogue has an entry at or below ``module`` (or covers it)."""
    if catalogue_match(module) is not None:
        return True
    dotted = module + "."
    return any(key.startswith(dotted) for key in _CATALOGUE)


def _is_dunder(part: str) -> bool:
    return len(part) > 4 and part.startswith("__") and part.endswith("__")


_DUNDER = (
    _C,
    "reaches a dunder attribute (__globals__, __builtins__, __class__...): a path from any "
    "object to the interpreter's internals",
    "dunder",
)


def _aliases() -> dict[str, str]:
    from trainwarden.scan._aliases import ALIASES

    return ALIASES


def _walk(module: str, parts: list[str]) -> tuple[Severity, str, str] | None:
    """Follow ``module`` then each attribute in ``parts`` as ``find_class`` would."""
    aliases = _aliases()
    current = module
    for part in parts:
        step = f"{current}.{part}"
        target = aliases.get(step)
        if target is None and part in _MODULE_NAMES and catalogue_match(step) is None:
            target = part  # a module re-exported under its own name
        current = target if target is not None else step
        hit = catalogue_match(current)
        if hit is not None:
            return hit
    return None


@functools.lru_cache(maxsize=65536)
def dangerous(module: str, name: str) -> tuple[Severity, str, str] | None:
    """Whether ``find_class(module, name)`` reaches a catalogued name, however it is spelled.

    Returns (severity, reason, the catalogue entry that matched) or None.
    """
    for mod, nam in {(module, name), compat_name(module, name)}:
        parts = nam.split(".")
        if any(_is_dunder(p) for p in parts) or any(_is_dunder(p) for p in mod.split(".")[1:]):
            return _DUNDER
        hit = catalogue_match(f"{mod}.{nam}")
        if hit is None:
            # The module itself may be an alias (``os.path`` is posixpath, imported by name).
            hit = _walk(_aliases().get(mod, mod), parts)
        if hit is not None:
            return hit
    return None


def dangerous_reason(module: str, name: str) -> str | None:
    """Why ``module.name`` is in the dangerous catalogue, or None (ignores any allowlist)."""
    hit = dangerous(module, name)
    return None if hit is None else hit[1]
