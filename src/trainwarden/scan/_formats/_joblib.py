"""joblib pickles: numpy arrays are written raw in the middle of the opcode stream.

joblib's unpickler, on the BUILD of a ``NumpyArrayWrapper``, reads the array's bytes (or, for
object arrays, a nested pickle) straight from the file, then goes on unpickling. We replay
that with a small value-tracking walk over the opcodes, cut the raw array bytes out, analyse
the spliced opcode stream as the single pickle it is, and analyse nested pickles on their own.
"""

from __future__ import annotations

import io
import pickletools
import re
from dataclasses import replace
from typing import IO, Any, cast

from trainwarden.scan._formats._base import Blob, Context, MemoryBlob, join_member

__all__ = ["analyse_joblib_compat", "analyse_joblib_stream"]

# Compared as "module.name": ("joblib", "numpy_pickle.NumpyArrayWrapper") names the same class.
_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
_STRINGDTYPE_MODULES = frozenset({"numpy._core._internal", "numpy.core._internal"})
_DTYPE_RE = re.compile(r"^[<>|=]?([a-zA-Z])(\d*)$")
# Streams up to this size are walked in memory with io.BytesIO (see _splice).
_IN_MEMORY_MAX = 4 << 20


# Plain slotted classes rather than dataclasses: cheaper to define (import time counts for
# `trainwarden scan`) and to create (one per opcode that builds an object).
class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name


class _Obj:
    __slots__ = ("args", "callable", "state")

    def __init__(self, callable: Any, args: Any, state: Any = None) -> None:
        self.callable = callable
        self.args = args
        self.state = state


class _Unknown:
    pass


_MARK = object()
_UNKNOWN = _Unknown()


class _GiveUp(Exception):
    pass


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise _GiveUp("no mark")


_PUSH_ARG = frozenset(
    {
        *("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"),
        *("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"),
        *("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BYTEARRAY8"),
    }
)


def _dtype_spec(dtype: Any) -> tuple[str, int]:
    """(kind letter, size digits or -1) of a pickled ``numpy.dtype(spec, ...)`` call."""
    if not isinstance(dtype, _Obj) or not isinstance(dtype.args, tuple) or not dtype.args:
        raise _GiveUp("wrapper dtype")
    if (
        isinstance(dtype.callable, _Global)
        and dtype.callable.module in _STRINGDTYPE_MODULES
        and dtype.callable.name == "_convert_to_stringdtype_kwargs"
    ):
        # NumPy 2's StringDType pickles this way; it has hasobject, so joblib pickles the
        # strings after the wrapper exactly as for an object array.
        return "O", -1
    spec = dtype.args[0]
    match = _DTYPE_RE.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise _GiveUp(f"dtype {spec!r}")
    return match.group(1), int(match.group(2)) if match.group(2) else -1


def _holds_object(value: Any, depth: int = 0) -> bool:
    """Whether a dtype's pickled state (fields, subarray) contains an object dtype.

    numpy's ``hasobject`` is true for structured or subarray dtypes with an object part;
    joblib then unpickles a nested pickle instead of reading raw bytes.
    """
    if depth > 32 or isinstance(value, _Unknown):
        raise _GiveUp("dtype state cannot be followed")
    if isinstance(value, _Obj):
        if isinstance(value.callable, _Global) and value.callable.name == "dtype":
            kind, _ = _dtype_spec(value)
            return kind == "O" or _holds_object(value.state, depth + 1)
        raise _GiveUp("unexpected object in a dtype state")
    if isinstance(value, (tuple, list)):
        return any(_holds_object(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_holds_object(v, depth + 1) for v in value.values())
    return False


def _array_skip(state: Any) -> tuple[str, int, bool]:
    """(kind, byte size, has alignment padding) of the array a wrapper state describes.

    Computed when the wrapper is BUILT, as joblib reads it then: later changes to the state
    objects (through the memo) must not change what we skip.
    """
    if not isinstance(state, dict):
        raise _GiveUp("wrapper state is not a dict")
    shape = state.get("shape")
    dtype = state.get("dtype")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _GiveUp("wrapper shape")
    kind, digits = _dtype_spec(dtype)
    assert isinstance(dtype, _Obj)  # _dtype_spec checked it
    if kind == "O" or _holds_object(dtype.state):
        return "O", 0, False
    dtype_state = dtype.state
    if kind in "SUV" and isinstance(dtype_state, tuple) and len(dtype_state) >= 6:
        # Flexible dtypes take their item size from the pickled state (elsize), not from
        # the spec string; numpy's __setstate__ does the same.
        elsize = dtype_state[5]
        if not isinstance(elsize, int) or isinstance(elsize, bool) or elsize < 0:
            raise _GiveUp("dtype elsize")
        itemsize = elsize
    elif digits < 0:
        raise _GiveUp("dtype without size")
    else:
        itemsize = digits * 4 if kind == "U" else digits
    count = 1
    for dim in shape:
        count *= dim
    return kind, count * itemsize, state.get("numpy_array_alignment_bytes") is not None


class _Stream:
    """Buffered sequential reads over a blob for ``pickletools.genops``, seekable.

    Array bytes are skipped by seeking, so they are never read: the work and the memory
    scale with the pickle's opcodes, not with the arrays. ``readline`` is bounded (a text
    opcode without a newline must not read gigabytes).
    """

    _CHUNK = 1 << 16
    _MAX_LINE = 1 << 16

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.pos = 0
        self._buf = b""
        self._buf_start = 0

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int) -> None:
        self.pos = pos

    def _fill(self, need: int) -> None:
        rel = self.pos - self._buf_start
        if rel < 0 or rel + need > len(self._buf):
            self._buf = bytes(self.blob.read(self.pos, max(need, self._CHUNK)))
            self._buf_start = self.pos

    def read(self, n: int) -> bytes:
        if n > self.blob.size - self.pos:
            n = max(0, self.blob.size - self.pos)  # short read: genops reports truncation
        self._fill(n)
        rel = self.pos - self._buf_start
        out = self._buf[rel : rel + n]
        self.pos += len(out)
        return out

    def readline(self) -> bytes:
        self._fill(self._MAX_LINE)
        rel = self.pos - self._buf_start
        end = self._buf.find(b"\n", rel, rel + self._MAX_LINE)
        if end < 0:
            raise _GiveUp("text opcode argument without a newline")
        out = self._buf[rel : end + 1]
        self.pos += len(out)
        return out


def _splice(ctx: Context, blob: Blob, member: str | None) -> tuple[bytes, list[int], int]:
    """Return the outer pickle's opcode bytes, nested-pickle offsets, and where it ended."""
    stream: _Stream | io.BytesIO
    if isinstance(blob, MemoryBlob) and blob.size <= _IN_MEMORY_MAX:
        # Small streams (most joblib files) are walked through BytesIO, whose reads are C
        # calls: the walk costs half as much. Lines stay bounded by the buffer's size.
        stream = io.BytesIO(blob.data)
    else:
        stream = _Stream(blob)
    segments: list[tuple[int, int]] = []
    nested: list[int] = []
    seg_start = 0
    frame_end: int | None = None
    pending: list[tuple[str, int, bool]] = []
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    ops = 0
    gen = pickletools.genops(cast(IO[bytes], stream))
    while True:
        try:
            opcode, arg, _ = next(gen)
        except StopIteration:
            raise _GiveUp("no STOP") from None
        except ValueError as exc:
            raise _GiveUp(str(exc)) from None
        ops += 1
        here = stream.tell()
        if frame_end is not None and here > frame_end:
            raise _GiveUp("opcode straddles the end of a frame")
        if ops > ctx.limits.max_opcodes:
            raise _GiveUp("too many opcodes")
        if ops % 10000 == 0:
            ctx.check_time(member)
        name = opcode.name
        if name == "STOP":
            end = stream.tell()
            segments.append((seg_start, end))
            resume = frame_end if frame_end is not None else end
            for skip in pending:  # raw reads joblib made from after the final frame
                resume = _raw_read(ctx, blob, resume, skip, member, nested)
            return _join(ctx, blob, segments), nested, max(end, resume)
        # The memo opcodes and the argument pushes are most of every stream: tested first.
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in _PUSH_ARG:
            stack.append(arg)
        elif name in ("BINPUT", "PUT", "LONG_BINPUT"):
            memo[_int(arg)] = stack[-1]
        elif name in ("BINGET", "GET", "LONG_BINGET"):
            stack.append(memo.get(_int(arg), _UNKNOWN))
        elif name in ("NONE",):
            stack.append(None)
        elif name == "NEWTRUE":
            stack.append(True)
        elif name == "NEWFALSE":
            stack.append(False)
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "FRAME":
            if frame_end is not None and here != frame_end:
                raise _GiveUp("new frame before the end of the current one")
            frame_end = here + _int(arg)
        elif name in ("PROTO", "READONLY_BUFFER"):
            pass
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise _GiveUp("stack underflow")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack)))
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            stack.append([])
        elif name in ("LIST", "FROZENSET"):
            stack.append(list(_pop_mark(stack)))
        elif name in ("APPEND",):
            stack.pop()
        elif name in ("APPENDS", "ADDITEMS"):
            _pop_mark(stack)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "DICT":
            stack.append(_pairs({}, _pop_mark(stack)))
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _pairs(stack[-1], [key, value])
        elif name == "SETITEMS":
            marked = _pop_mark(stack)  # pop first: the dict is below the mark
            _pairs(stack[-1], marked)
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(str(module), str(attr)))
        elif name == "REDUCE" or name == "NEWOBJ":
            args, func = stack.pop(), stack.pop()
            stack.append(_Obj(func, args))
        elif name == "NEWOBJ_EX":
            stack.pop()
            args, func = stack.pop(), stack.pop()
            stack.append(_Obj(func, args))
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            stack.append(_Obj(_Global(module, attr), tuple(_pop_mark(stack))))
        elif name == "OBJ":
            marked = _pop_mark(stack)
            if not marked:
                raise _GiveUp("OBJ without class")
            stack.append(_Obj(marked[0], tuple(marked[1:])))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if (
                isinstance(target, _Obj)
                and isinstance(target.callable, _Global)
                and f"{target.callable.module}.{target.callable.name}" == _WRAPPER
            ):
                # joblib reads the array from the file object, bypassing the unpickler's
                # frame buffer: inside a frame, the raw bytes start where the frame ends.
                pending.append(_array_skip(state))
            elif isinstance(target, _Obj):
                target.state = state
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            _pop_mark(stack)
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "BINPERSID":
            stack.pop()
            stack.append(_UNKNOWN)
        elif name in ("PERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER"):
            stack.append(_UNKNOWN)
        else:
            raise _GiveUp(f"opcode {name}")
        here = stream.tell()
        if frame_end is not None and here >= frame_end:
            frame_end = None
        if pending and frame_end is None:
            segments.append((seg_start, here))
            resume = here
            for skip in pending:
                resume = _raw_read(ctx, blob, resume, skip, member, nested)
            pending.clear()
            seg_start = resume
            stream.seek(resume)
            gen = pickletools.genops(cast(IO[bytes], stream))


def _raw_read(
    ctx: Context,
    blob: Blob,
    at: int,
    skip: tuple[str, int, bool],
    member: str | None,
    nested: list[int],
) -> int:
    """Where joblib's raw read of one wrapped array, starting at ``at``, leaves the file."""
    from trainwarden.scan._formats._pickles import analyse_stream

    kind, size, padded = skip
    if kind == "O":
        # joblib unpickles a whole nested pickle from the file here.
        _, resume = analyse_stream(ctx, blob, member, start=at, max_pickles=1)
        nested.append(at)
    else:
        resume = at
        if padded:
            pad = bytes(blob.read(at, 1))
            resume += 1 + (pad[0] if pad else 0)
        resume += size
    if resume > blob.size:
        raise _GiveUp("array data runs past the end of the stream")
    return resume


def _join(ctx: Context, blob: Blob, segments: list[tuple[int, int]]) -> bytes:
    total = sum(end - start for start, end in segments)
    if total > ctx.limits.max_pickle_bytes:
        raise _GiveUp(f"pickle opcodes exceed max_pickle_bytes={ctx.limits.max_pickle_bytes}")
    return b"".join(bytes(blob.read(start, end - start)) for start, end in segments)


def _int(arg: Any) -> int:
    if not isinstance(arg, int):
        raise _GiveUp("opcode argument is not an integer")
    return arg


def _pairs(target: Any, items: list[Any]) -> Any:
    if isinstance(target, dict):
        for key, value in zip(items[::2], items[1::2]):  # noqa: B905
            if isinstance(key, (str, int, bytes)):
                target[key] = value
    return target


def analyse_joblib_stream(ctx: Context, blob: Blob, member: str | None) -> str:
    """Analyse a joblib pickle (uncompressed, or already decompressed)."""
    from trainwarden.scan._formats._pickles import analyse_stream, judge, report_trailing
    from trainwarden.scan._pickle import analyse_pickle

    try:
        spliced, _, end = _splice(ctx, blob, member)
    except (_GiveUp, IndexError, TypeError, AttributeError) as exc:
        # We could not replay joblib's reads: judge the raw stream (its failure is reported,
        # so the file is not safe) and say why.
        ctx.unknown(
            "joblib.unparsed",
            f"could not follow the numpy arrays embedded in this joblib stream ({exc})",
            member,
        )
        analyse_stream(ctx, blob, member, max_pickles=1)
        return "joblib"
    # Offsets below are in the spliced stream (array bytes removed), not in the file.
    analysis = analyse_pickle(
        spliced, 0, limits=ctx.limits, deadline=ctx.deadline, max_ops=ctx.opcodes_left
    )
    ctx.opcodes_used += analysis.work
    # What the wrapper makes joblib do (read raw array bytes, or load a nested pickle that
    # was analysed above) is exactly what we replayed, so it is not an unknown load here.
    kept = tuple(g for g in analysis.globals if g.qualname != _WRAPPER)
    judge(ctx, replace(analysis, globals=kept), member, source=MemoryBlob(spliced))
    report_trailing(ctx, blob, member, end)
    return "joblib"


def analyse_joblib_compat(ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
    """Joblib < 0.9.3 ``ZF`` files: a hex length, then a zlib stream holding the pickle."""
    from trainwarden.scan._formats._base import SubBlob
    from trainwarden.scan._formats._compressed import decompress_bounded

    start = 2 + 19
    if blob.read(start, 1) == b" ":
        start += 1
    data = decompress_bounded(
        ctx,
        SubBlob(blob, start, blob.size - start),
        "zlib",
        member,
        cap=ctx.limits.max_member_bytes,
    )
    if data is not None:
        ctx.analyse(MemoryBlob(data), join_member(member, "(inflated)"), depth + 1)
    return "joblib"
