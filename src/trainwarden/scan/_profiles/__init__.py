"""Allowlist data: the globals legitimate checkpoints need, each with the reason it is safe.

``CORE`` (standard library), ``TORCH`` and ``NUMPY`` are always on; the framework profiles are
opt-in (``Policy.default(profiles=[...])``, ``--profile``, ``[tool.trainwarden] profiles``).
Entries are exact ``(module, qualname)`` pairs, as a pickler writes them: never prefixes, so a
module that also holds dangerous helpers (``uuid``, ``torch.storage``) cannot slip through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = ["ALWAYS_ON", "CALL", "NEW", "OPTIONAL", "VALUE", "Entry", "profile_entries"]

#: (module, qualname) -> (reason, mode). Modes: ``call`` (safe to import and call), ``value``
#: (a type tag or constant: safe to import, never called by a legitimate pickle), ``new``
#: (a class that legitimate pickles only build with NEWOBJ / copyreg reconstruction and a
#: state: running its ``__init__`` or body with pickle-chosen arguments is not vetted).
Entry = tuple[str, str]

CALL = "call"
VALUE = "value"
NEW = "new"

ALWAYS_ON = ("core", "torch", "numpy")
OPTIONAL = ("torch-modules", "transformers", "lightning", "accelerate", "sklearn")

# Reasons shared by many entries.
_DATA_CTOR = "constructs a plain data value from its arguments; runs no user-controlled code"
_HIGHER_ORDER = (
    "calls only the callables passed as its arguments, and those are globals the policy "
    "checks on their own"
)
_VALUE = "a constant or type tag: importing it runs nothing"
_CLASS_STATE = (
    "a class whose construction (__new__/__init__ with data) and __setstate__ only store data"
)


def _entries(
    module: str, names: Iterable[str], reason: str, *, value_only: bool = False
) -> dict[tuple[str, str], Entry]:
    return {(module, name): (reason, VALUE if value_only else CALL) for name in names}


def _core() -> dict[tuple[str, str], Entry]:
    out: dict[tuple[str, str], Entry] = {}
    out.update(
        _entries(
            "builtins",
            ["set", "frozenset", "slice", "range", "complex", "bytearray", "int", "float",
             "bool", "str", "tuple", "list", "dict"],
            _DATA_CTOR + " (iterating an argument calls only methods of classes that are "
            "themselves globals checked by the policy)",
        )
    )  # fmt: skip
    out.update(
        _entries(
            "builtins",
            ["object"],
            "object() and object.__new__ create an empty "
            "instance; copyreg._reconstructor names it as the base class",
        )
    )
    out.update(_entries("builtins", ["Ellipsis", "NotImplemented"], _VALUE, value_only=True))
    out.update(
        _entries(
            "collections",
            ["OrderedDict", "Counter", "deque"],
            "a C/stdlib container that stores the items it is given",
        )
    )
    out[("collections", "defaultdict")] = (
        "stores its default_factory; the factory is itself a global the policy checks on its "
        "own, and it is only called later for missing keys",
        CALL,
    )
    out[("copyreg", "_reconstructor")] = (
        "object.__new__(cls) or base.__new__/__init__(obj, state) for cls and base given as "
        "arguments: " + _HIGHER_ORDER,
        CALL,
    )
    out[("copyreg", "__newobj__")] = ("cls.__new__(cls, *args): " + _HIGHER_ORDER, CALL)
    out[("copyreg", "__newobj_ex__")] = ("cls.__new__(cls, *args, **kw): " + _HIGHER_ORDER, CALL)
    out[("_codecs", "encode")] = (
        "str -> bytes (protocol-2 pickles of bytes use it); the codec is looked up by name in "
        "the codec registry, whose search function imports only modules of the stdlib "
        "'encodings' package (names with dots are refused), which define codecs and run nothing",
        CALL,
    )
    out[("codecs", "encode")] = out[("_codecs", "encode")]
    out.update(
        _entries(
            "datetime",
            ["datetime", "date", "time", "timedelta", "timezone"],
            "C date/time types built from numbers, strings or bytes",
        )
    )
    out.update(
        _entries(
            "pathlib",
            ["Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"],
            "path objects are built from strings; construction touches no file",
        )
    )
    out[("decimal", "Decimal")] = ("parses a number from a string or tuple", CALL)
    out[("_decimal", "Decimal")] = out[("decimal", "Decimal")]
    out[("fractions", "Fraction")] = ("parses a rational from numbers or a string", CALL)
    out[("uuid", "UUID")] = (
        "parses 128 bits from a string/int; only this class is allowed (other uuid helpers "
        "run commands)",
        CALL,
    )
    out[("uuid", "SafeUUID")] = ("an enum of three constants", CALL)
    out[("argparse", "Namespace")] = (
        "a plain attribute bag: __init__ and BUILD only set attributes",
        CALL,
    )
    out[("types", "SimpleNamespace")] = out[("argparse", "Namespace")]
    out[("enum", "Enum")] = ("Enum base class; calling it looks a member up by value", CALL)
    out[("re", "_compile")] = (
        "compiles a regular expression (pickles of re.Pattern); no code runs",
        CALL,
    )
    return out


def _torch() -> dict[tuple[str, str], Entry]:
    out: dict[tuple[str, str], Entry] = {}
    rebuild = {
        "_rebuild_tensor": "a tensor view over a storage already loaded by persistent_load",
        "_rebuild_tensor_v2": "a tensor view over a storage, with requires_grad and hooks "
        "(the hooks dict holds only globals the policy checks on their own)",
        "_rebuild_tensor_v3": "as _rebuild_tensor_v2 with an explicit dtype",
        "_rebuild_parameter": "wraps a rebuilt tensor in nn.Parameter",
        "_rebuild_parameter_with_state": "nn.Parameter plus attributes set from a state dict",
        "_rebuild_sparse_tensor": "builds a sparse COO/CSR/CSC/BSR/BSC tensor from tensors",
        "_rebuild_qtensor": "builds a quantized tensor from a storage and quantizer numbers",
        "_rebuild_nested_tensor": "builds a nested tensor from buffers and size tensors",
        "_rebuild_meta_tensor_no_storage": "an empty meta tensor from dtype, size, stride",
        "_rebuild_wrapper_subclass": "Tensor._make_wrapper_subclass(cls, ...) where cls is a "
        "global the policy checks on its own",
        "_rebuild_device_tensor_from_numpy": "torch.from_numpy(array).to(dtype, device)",
        "_rebuild_device_tensor_from_cpu_tensor": "cpu_tensor.to(dtype, device)",
        "_rebuild_xla_tensor": "builds an XLA tensor from a CPU tensor",
        "_rebuild_mtia_tensor": "builds an MTIA tensor from a CPU tensor",
    }
    for name, why in rebuild.items():
        out[("torch._utils", name)] = (f"tensor rebuild function: {why}", CALL)
    out[("torch._tensor", "_rebuild_from_type_v2")] = (
        "func(*args) then as_subclass(new_type) and state: " + _HIGHER_ORDER,
        CALL,
    )
    out[("torch._tensor", "_rebuild_from_type")] = out[("torch._tensor", "_rebuild_from_type_v2")]
    out[("torch.nn.parameter", "Parameter")] = ("Parameter.__new__(data, requires_grad)", CALL)
    out[("torch.nn.parameter", "Buffer")] = ("Buffer.__new__(data, persistent)", CALL)
    out[("torch", "Size")] = ("a tuple subclass of ints", CALL)
    out[("torch", "device")] = ("parses a device from a string and index", CALL)
    out[("torch", "Tensor")] = (
        "the tensor base class, named as new_type by _rebuild_from_type_v2",
        CALL,
    )
    out[("torch._C", "Generator")] = (
        "a random-number generator built for a device; BUILD (Generator.__setstate__) sets the "
        "saved RNG state bytes: what torch.save(generator) writes",
        CALL,
    )
    out[("torch", "Generator")] = out[("torch._C", "Generator")]
    out[("torch.nested._internal.nested_tensor", "_rebuild_njt")] = (
        "NestedTensor(**kwargs) from the values/offsets tensors and sizes a jagged nested "
        "tensor's pickle holds",
        CALL,
    )
    out[("torch.nested._internal.nested_tensor", "NestedTensor")] = (
        "the jagged nested-tensor class, named as new_type by _rebuild_from_type_v2",
        VALUE,
    )
    out[("torch._dynamo.decorators", "_DimRange")] = (
        "a frozen (dim, min, max) dataclass a jagged tensor records for its ragged dimension; "
        "rebuilt with NEWOBJ and BUILD",
        NEW,
    )
    out[("torch.serialization", "_get_layout")] = (
        "returns a torch.layout from a fixed table by name",
        CALL,
    )
    storages = [
        "BFloat16Storage", "BoolStorage", "ByteStorage", "CharStorage", "ComplexDoubleStorage",
        "ComplexFloatStorage", "DoubleStorage", "FloatStorage", "HalfStorage", "IntStorage",
        "LongStorage", "QInt32Storage", "QInt8Storage", "QUInt2x4Storage", "QUInt4x2Storage",
        "QUInt8Storage", "ShortStorage",
    ]  # fmt: skip
    why = (
        "storage type tag inside torch persistent ids; torch's persistent_load reads only its "
        "dtype (the storage bytes come from the archive)"
    )
    out.update(_entries("torch", storages, why, value_only=True))
    out.update(_entries("torch.cuda", [*storages[:11], "ShortStorage"], why, value_only=True))
    # UntypedStorage/TypedStorage appear as tags too; their own __reduce__ path
    # (torch.storage._load_from_bytes) is a nested torch.load and stays out of the list.
    out.update(_entries("torch.storage", ["UntypedStorage", "TypedStorage"], why, value_only=True))
    out.update(_entries("torch", ["UntypedStorage", "TypedStorage"], why, value_only=True))
    dtypes = [
        "bfloat16", "bool", "complex128", "complex64", "complex32", "float16", "float32",
        "float64", "half", "float", "double", "int16", "int32", "int64", "int8", "short", "int",
        "long", "cfloat", "cdouble", "chalf", "qint32", "qint8", "quint2x4", "quint4x2", "quint8",
        "uint8", "uint16", "uint32", "uint64", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8",
        "float4_e2m1fn_x2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
        "float8_e8m0fnu", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "int1",
        "int2", "int3", "int4", "int5", "int6", "int7",
    ]  # fmt: skip
    out.update(_entries("torch", dtypes, "a torch.dtype constant", value_only=True))
    consts = [
        "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
        "_mkldnn", "jagged", "contiguous_format", "channels_last", "channels_last_3d",
        "preserve_format", "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
        "per_channel_symmetric", "per_channel_affine_float_qparams",
    ]  # fmt: skip
    out.update(
        _entries("torch", consts, "a torch layout / memory format / qscheme constant",
                 value_only=True)
    )  # fmt: skip
    tensor_types = [
        "BFloat16Tensor", "BoolTensor", "ByteTensor", "CharTensor", "DoubleTensor",
        "FloatTensor", "HalfTensor", "IntTensor", "LongTensor", "ShortTensor",
    ]  # fmt: skip
    out.update(_entries("torch", tensor_types, "a legacy tensor type tag", value_only=True))
    # torch.distributed.checkpoint (FSDP / DCP) writes its `.metadata` file as a pickle of
    # these dataclasses. They sit under torch.distributed (catalogued as network access), but
    # none touches the network: NEWOBJ makes an empty instance and BUILD fills __dict__ (or
    # TensorProperties.__setstate__ unpacks a 5-tuple and maps an enum to a memory format).
    dcp = "torch.distributed.checkpoint.metadata"
    dcp_why = (
        "a torch.distributed.checkpoint metadata dataclass (the .metadata file): rebuilt "
        "with NEWOBJ and BUILD, which only store fields"
    )
    for name in (
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta",
    ):  # fmt: skip
        out[(dcp, name)] = (dcp_why, NEW)
    out[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = (dcp_why, NEW)
    # torchrun's agents (`--standalone` and every c10d rendezvous) keep the rendezvous state in
    # the store as a pickle and load it with pickle.loads: under `trainwarden run` that load
    # goes through protect(). Both are dataclasses of strings, ints, sets, dicts and datetimes
    # (no __setstate__): NEWOBJ makes an empty instance and BUILD stores the fields.
    rdzv = "torch.distributed.elastic.rendezvous.dynamic_rendezvous"
    rdzv_why = (
        "torchrun's rendezvous state dataclass (agent to agent through the store): rebuilt "
        "with NEWOBJ and BUILD, which only store fields"
    )
    out[(rdzv, "_RendezvousState")] = (rdzv_why, NEW)
    out[(rdzv, "_NodeDesc")] = (rdzv_why, NEW)
    out[(dcp, "_MEM_FORMAT_ENCODING")] = (
        "an enum of three memory-format codes; calling it looks a member up by value",
        CALL,
    )
    return out


def _numpy() -> dict[tuple[str, str], Entry]:
    out: dict[tuple[str, str], Entry] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = (
            "ndarray.__new__(subtype, shape, dtype) for a subtype given as an argument (a "
            "global checked on its own); the data comes from BUILD (ndarray.__setstate__)",
            CALL,
        )
        out[(mod, "scalar")] = (
            "a numpy scalar from a dtype and its raw bytes (object dtype: the object itself)",
            CALL,
        )
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = ("an array over bytes with dtype, shape, order", CALL)
    out[("numpy", "ndarray")] = ("ndarray type; __setstate__ copies raw data", CALL)
    out[("numpy", "dtype")] = ("dtype from a type code; __setstate__ stores numbers", CALL)
    out[("numpy.ma.core", "_mareconstruct")] = (
        "masked array skeleton from shapes and dtypes",
        CALL,
    )
    out[("numpy.ma.core", "MaskedArray")] = ("masked array type; __setstate__ stores data", CALL)
    out[("numpy.ma", "MaskedArray")] = out[("numpy.ma.core", "MaskedArray")]
    out[("numpy.ma.core", "MaskedConstant")] = (
        "numpy.ma.masked: calling the class returns the one masked constant",
        CALL,
    )
    out[("numpy.ma.core", "mvoid")] = (
        "the masked record scalar type, named as the subtype _mareconstruct builds",
        VALUE,
    )
    for mod, name in (
        ("numpy", "recarray"), ("numpy.rec", "recarray"), ("numpy", "record"),
        ("numpy.char", "chararray"), ("numpy", "chararray"),
    ):  # fmt: skip
        out[(mod, name)] = (
            "an ndarray subclass or scalar type named as the subtype _reconstruct or scalar "
            "builds (numbers and bytes only)",
            VALUE,
        )
    for mod in ("numpy._core._internal", "numpy.core._internal"):
        out[(mod, "_convert_to_stringdtype_kwargs")] = (
            "StringDType(coerce=..., na_object=...): a string dtype from its two settings",
            CALL,
        )
    for name in ("finfo", "iinfo"):
        out[("numpy", name)] = (
            "machine limits of a dtype, recomputed from the dtype by __new__",
            NEW,
        )
    out[("joblib.numpy_pickle", "NumpyArrayWrapper")] = (
        "joblib's array header (subclass, shape, order, dtype); joblib's unpickler then reads "
        "the raw array bytes that follow, and object arrays as a nested pickle, which the "
        "scanner analyses as well",
        NEW,
    )
    rng = "numpy random state: constructs a known bit generator and sets its integer state"
    for name in ("__randomstate_ctor", "__generator_ctor", "__bit_generator_ctor"):
        out[("numpy.random._pickle", name)] = (
            rng + "; a generator class passed as argument is a global checked on its own",
            CALL,
        )
    for mod, cls in (
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pcg64", "PCG64DXSM"),
        ("numpy.random._philox", "Philox"),
        ("numpy.random._sfc64", "SFC64"),
        ("numpy.random._generator", "Generator"),
        ("numpy.random.mtrand", "RandomState"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ):
        out[(mod, cls)] = (rng, CALL)
    scalars = [
        "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32",
        "uint16", "uint8", "bool_", "complex64", "complex128", "longdouble", "str_", "bytes_",
        "datetime64", "timedelta64", "void", "object_",
    ]  # fmt: skip
    out.update(_entries("numpy", scalars, "a numpy scalar type (a dtype tag or constructor "
                        "of a number from a number)"))  # fmt: skip
    for mod in ("numpy.dtypes",):
        for name in (
            "Float64DType",
            "Float32DType",
            "Float16DType",
            "Int64DType",
            "Int32DType",
            "Int16DType",
            "Int8DType",
            "UInt64DType",
            "UInt32DType",
            "UInt16DType",
            "UInt8DType",
            "BoolDType",
            "Complex64DType",
            "Complex128DType",
            "ObjectDType",
            "StrDType",
            "BytesDType",
            "VoidDType",
            "DateTime64DType",
            "TimeDelta64DType",
            "LongDoubleDType",
            "StringDType",
        ):
            out[(mod, name)] = ("a numpy dtype class, used as a tag", VALUE)  # fmt: skip
    # np.matrix pickles as _reconstruct(matrix, (0,), b"b") plus BUILD: the class is only
    # the subtype handed to ndarray.__new__ (numbers, no code); calling it is not allowed.
    for mod in ("numpy", "numpy.matrixlib.defmatrix"):
        out[(mod, "matrix")] = (
            "the np.matrix ndarray subclass, named as the subtype _reconstruct builds",
            VALUE,
        )
    return out


def _load_optional(name: str) -> dict[tuple[str, str], Entry]:
    if name == "transformers":
        from trainwarden.scan._profiles import _transformers as mod
    elif name == "lightning":
        from trainwarden.scan._profiles import _lightning as mod  # type: ignore[no-redef]
    elif name == "accelerate":
        from trainwarden.scan._profiles import _accelerate as mod  # type: ignore[no-redef]
    elif name == "sklearn":
        from trainwarden.scan._profiles import _sklearn as mod  # type: ignore[no-redef]
    elif name == "torch-modules":
        from trainwarden.scan._profiles import _torch_modules as mod  # type: ignore[no-redef]
    else:  # pragma: no cover - callers validate names first
        raise KeyError(name)
    reason: str = mod.REASON
    out: dict[tuple[str, str], Entry] = {}
    for names, mode in ((mod.CALLABLE, CALL), (mod.NEW_ONLY, NEW)):
        for qual in names:
            module, _, attr = qual.partition(":")
            out[(module, attr)] = (reason, mode)
    values: tuple[str, ...] = getattr(mod, "VALUES", ())
    for qual in values:
        module, _, attr = qual.partition(":")
        out[(module, attr)] = (getattr(mod, "VALUE_REASON", reason), VALUE)
    return out


_CACHE: dict[str, Mapping[tuple[str, str], Entry]] = {}


def profile_entries(name: str) -> Mapping[tuple[str, str], Entry]:
    """The allowlist entries of one profile (loaded once, read-only)."""
    got = _CACHE.get(name)
    if got is None:
        if name == "core":
            data = _core()
        elif name == "torch":
            data = _torch()
        elif name == "numpy":
            data = _numpy()
        else:
            data = _load_optional(name)
        got = MappingProxyType(data)
        _CACHE[name] = got
    return got
