"""The symbolic pickle machine: one run over one pickle, every import and call it would perform.

It walks the opcodes as ``_pickle.c`` (Python 3.10-3.13) and ``pickle._Unpickler`` read them,
from bytes and from files, following stack, marks and memo symbolically. Where loaders differ
it takes the union (it never stops where one of them goes on); where they read *different
bytes* (an argument that runs past a FRAME) each reading is run and the results merged. It
never imports, calls or unpickles.

The hot loop (:meth:`_Machine.run`) is one function on purpose: the common opcodes are inline
there, the rest in ``_cold``. Memory is bounded by :class:`~trainwarden.scan.Limits`: the memo
and the stack by count, every value the machine keeps alive by an estimate of its bytes.
"""

from __future__ import annotations

import binascii
import codecs
import re
import struct
import sys
import time
from typing import Any, Final

from trainwarden.findings import Verdict
from trainwarden.scan._limits import Limits
from trainwarden.scan._pickle.results import (
    CALLS_ARGUMENTS,
    NESTED_LOADERS,
    RULE_FRAME_OVERRUN,
    RULE_FRAME_SPLIT,
    RULE_GLOBAL_MUTATION,
    RULE_MALFORMED,
    RULE_TRUNCATED,
    RULE_UNRESOLVED,
    UNRESOLVED,
    GlobalRef,
    NestedPayload,
    PickleAnalysis,
    PickleIssue,
    compat_module,
    compat_name,
)

__all__ = ["Memo", "Raw", "cut", "freeze", "run_pickle", "starts_like_pickle", "to_buffer"]

# The highest protocol the C unpickler accepts in a PROTO opcode (3.8-3.13).
_HIGHEST_PROTOCOL = 5
# Strings longer than this are not decoded: no importable module or attribute is that long, and
# decoding a 100 MB string would break the memory bound. Used as a name they are "unresolved".
_MAX_NAME_CHARS = 4096
# A literal that may be a pickle kept as data (see _Machine._embed): bytes starting with PROTO's
# 0x80, or text starting like base64 ("gA...") or hex ("80...") of it. Shorter ones cannot hold
# a pickle that imports anything. Two characters, not one: a state dict's keys often start
# with "g" ("gpt_neox.layers..."), and candidates are capped.
_EMBED_MIN_BYTES = 16
_EMBED_MIN_TEXT = 24
# Pickles start with PROTO ("gA" in base64, "80" in hex), except those of protocols 0 and 1:
# ``pickle.dumps`` starts them with GLOBAL (an object: "c" and a module line), MARK (a dict
# or list: "(dp0", "(lp0"; a tuple or instance: "(V", "(S'", "(c", "(i") or EMPTY_DICT /
# EMPTY_LIST and BINPUT 0 ("}q\0"). Decoders skip what comes before the text:
# ``bytes.fromhex`` ASCII whitespace, ``base64.b64decode`` (not validating, its default) every
# character outside its alphabet, between characters too (MIME breaks base64 into lines).
# So a text literal is a candidate when its first byte is one a pickle's base64 ("g", "Y",
# "K", "f", "X") or hex ("8", "6", "2", "7", "5") starts with, or an ASCII byte that is not
# a letter or digit (a backslash too: UNICODE and STRING spell characters with escapes); the
# first bytes it decodes to then decide. Bytes literals are raw data as often as text, so
# only whitespace may come first there.
_EMBED_FIRST = frozenset(b"gYKfX86275") | frozenset(b for b in range(128) if not chr(b).isalnum())
_PICKLE01 = rb"c[A-Za-z_][\w.]{0,62}\n|\((?:[dl]p[0-9]|[ci][A-Za-z_][\w.]{0,62}\n|V|S')|[}\]]q\x00"
# What the first six bytes of such a pickle can be (base64 and hex are decoded that far).
_PICKLE01_PREFIX = re.compile(
    rb"c[A-Za-z_][\w.\n]{4}|\((?:[dl]p[0-9]|[ci][A-Za-z_]|V|S')|[}\]]q\x00"
)
_PICKLE_HEAD = re.compile(rb"\x80|" + _PICKLE01)
_PICKLE01_FIRST = frozenset(b"c(}]")
_PICKLE01_HEAD = re.compile(_PICKLE01)


def _encoded_heads(junk: bytes, alphabet: bytes) -> re.Pattern[bytes]:
    """The first eight base64 characters of ``alphabet`` after ``junk`` (and between)."""
    return re.compile((junk + b"([" + alphabet + b"])") * 8)


_STANDARD, _URLSAFE = rb"A-Za-z0-9+/", rb"A-Za-z0-9_\-"
_HEX_SIX = re.compile(rb"\s*" + rb"([0-9a-fA-F]{2})\s*" * 6)
# Text: everything outside either base64 alphabet may come first. Bytes: only whitespace.
_TEXT_HEADS = (
    _encoded_heads(rb"[^" + _STANDARD + rb"]*", _STANDARD),
    _encoded_heads(rb"[^" + _URLSAFE + rb"]*", _URLSAFE),
)
_BYTES_HEADS = (_encoded_heads(rb"\s*", _STANDARD), _encoded_heads(rb"\s*", _URLSAFE))
# The first two characters when nothing comes before: base64 of PROTO ("gA"), of GLOBAL and
# a letter or "_" ("Y0"-"Y3"), of "(d", "(l", "(c", "(i" ("KG") and "(V", "(S" ("KF"), of "}q"
# ("fX") and "]q" ("XX"); hex of the same first bytes. Anything else is no encoded pickle,
# and is dismissed without a pattern.
_ENCODED_PAIRS = frozenset((b"gA", b"Y0", b"Y1", b"Y2", b"Y3", b"KG", b"KF", b"fX", b"XX")) | (
    frozenset((b"80", b"63", b"28", b"7d", b"7D", b"5d", b"5D"))
)
_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def starts_like_pickle(data: bytes) -> bool:
    """Whether decoded bytes may be a pickle: PROTO first, or how protocols 0 and 1 start."""
    return _PICKLE_HEAD.match(data) is not None


def _encoded_pickle(buf: Any, start: int, end: int, *, text: bool) -> bool:
    """Whether base64 or hex at ``buf[start:end]`` decodes to what starts a pickle.

    ``text``: a str literal, where any character outside the base64 alphabet may come
    first; in bytes only whitespace may.
    """
    first = buf[start]
    if first in _ALNUM:
        if bytes(buf[start : start + 2]) not in _ENCODED_PAIRS:
            return False
    elif not text and first not in b" \t\n\r\x0b\x0c":
        return False
    for pattern in _TEXT_HEADS if text else _BYTES_HEADS:
        m = pattern.match(buf, start, end)
        if m is not None and _starts_pickle(_b64_head(b"".join(m.groups()))):
            return True
    m = _HEX_SIX.match(buf, start, end)
    return m is not None and _starts_pickle(_hex_head(b"".join(m.groups())))


def _starts_pickle(head: bytes) -> bool:
    return head[:1] == b"\x80" or _PICKLE01_PREFIX.match(head) is not None


def _b64_head(chars: bytes) -> bytes:
    return binascii.a2b_base64(chars.replace(b"-", b"+").replace(b"_", b"/"))


def _hex_head(chars: bytes) -> bytes:
    return bytes.fromhex(chars.decode("ascii"))


_MAX_EMBEDDED = 1_000
# Tuples longer than this are kept as an opaque tuple (persistent ids and call arguments are short).
_MAX_TUPLE = 64
# Text lines longer than this are never copied (a 200 MB line would double memory).
_MAX_LINE = 1 << 20
# Limits are checked every this many opcodes (stack, memo, memory, time): cheap and tight enough.
_CHUNK = 4096
_PY_SSIZE_T_MAX = 2**63 - 1
# Issues kept per run: a hostile stream may repeat one trick forever.
_MAX_ISSUES = 10_000

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u64 = struct.Struct("<Q").unpack_from

# How a reader consumed a FRAME whose end an argument runs past (see _Machine._cross).
_LINEAR: Final = "linear"
_JUMP: Final = "jump"


# --------------------------------------------------------------------------------------------
# Symbolic values. Python str / int / bool / None / tuple stand for themselves; everything whose
# content cannot matter to name resolution is an opaque marker, so memory stays bounded.
# Tuples are one level deep: a tuple inside a tuple is the opaque ``_TUPLE`` (no name, call or
# persistent id the machine needs is ever nested deeper), so no value is a deep tree.


class _Opaque:
    """A value of known type whose content is not tracked (containers, bytes, floats)."""

    __slots__ = ("kind", "strlike", "tuplelike")

    def __init__(self, kind: str, *, strlike: bool = False, tuplelike: bool = False) -> None:
        self.kind = kind
        # May be an exact ``str`` at load time (undecoded long text, py2 strings whose type
        # depends on the loader's *encoding*): a name built from it is unresolved, not an error.
        self.strlike = strlike
        self.tuplelike = tuplelike

    def __repr__(self) -> str:
        return f"<{self.kind}>"


_LIST = _Opaque("list")
_DICT = _Opaque("dict")
_SET = _Opaque("set")
_FROZENSET = _Opaque("frozenset")
_BYTEARRAY = _Opaque("bytearray")
_BUFFER = _Opaque("buffer")
_FLOAT = _Opaque("float")
_BIGINT = _Opaque("int")
_LONGSTR = _Opaque("str", strlike=True)
_PY2STR = _Opaque("py2-str", strlike=True)
_BIGTUPLE = _Opaque("tuple", tuplelike=True)
_TUPLE = _Opaque("nested-tuple", tuplelike=True)


class _Bytes:
    """A bytes literal: where it sits in the buffer (a nested payload when a loader gets it)."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end


class _Global:
    """The object an import pushed; ``rec`` is its mutable record (see ``_new_record``)."""

    __slots__ = ("rec",)

    def __init__(self, rec: list[Any]) -> None:
        self.rec = rec


class _Result:
    """An object produced at load time: a call result or a persistent load.

    ``src`` is the record of the global whose call produced it (or None).
    """

    __slots__ = ("kind", "src")

    def __init__(self, src: list[Any] | None, kind: str = "call") -> None:
        self.src = src
        self.kind = kind


_MISSING = object()

# Record layout (a list, mutated while running, frozen at the end). One record per imported
# name and run: repeated imports share it (first offset, a count, flags or-ed together).
(_R_MODULE, _R_NAME, _R_OFFSET, _R_OPCODE, _R_CALLED, _R_RESOLVED, _R_INIT, _R_NESTED) = range(8)
_R_OPAQUE = 8  # calls of a nested loader whose payload is not a bytes literal
_R_COUNT = 9
_R_CALLS = 10  # argument positions the global calls (CALLS_ARGUMENTS), or None


def _flat(items: list[object] | tuple[object, ...]) -> tuple[object, ...]:
    """A tuple of ``items`` whose own tuples are replaced by the opaque ``_TUPLE``."""
    return tuple([_TUPLE if type(x) is tuple else x for x in items])


# Estimated bytes of the objects the machine creates (CPython 3.11, 64-bit); only the order of
# magnitude matters: they drive when the live state is measured (see _Machine._measure).
_SZ_INT = 32
_SZ_STR = 56
_SZ_TUPLE = 56
_SZ_RESULT = 64
_SZ_GLOBAL = 48
_SZ_RECORD = 240  # the 11-slot list, its key tuple in the index, the _Global


class _Stop(Exception):
    """STOP reached."""


class _Fail(Exception):
    """The C unpickler would raise here; the pickle ends at this opcode."""

    def __init__(self, rule_id: str, message: str) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.message = message


class _Cross(Exception):
    """An argument runs past a FRAME's end: loaders disagree on what comes next."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _Limit(Exception):
    """A resource limit was hit."""

    def __init__(self, name: str, value: float, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.value = value
        self.message = message


def _trunc(what: str) -> _Fail:
    return _Fail(RULE_TRUNCATED, f"pickle data ends inside {what}")


def _underflow() -> _Fail:
    return _Fail(RULE_MALFORMED, "unpickling stack underflow")


_OPNAMES: dict[int, str] = {
    0x28: "MARK", 0x2E: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT",
    0x49: "INT", 0x4A: "BININT", 0x4B: "BININT1", 0x4C: "LONG", 0x4D: "BININT2", 0x4E: "NONE",
    0x50: "PERSID", 0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING",
    0x55: "SHORT_BINSTRING", 0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD",
    0x63: "GLOBAL", 0x64: "DICT", 0x7D: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET",
    0x68: "BINGET", 0x69: "INST", 0x6A: "LONG_BINGET", 0x6C: "LIST", 0x5D: "EMPTY_LIST",
    0x6F: "OBJ", 0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT", 0x73: "SETITEM",
    0x74: "TUPLE", 0x29: "EMPTY_TUPLE", 0x75: "SETITEMS", 0x47: "BINFLOAT", 0x80: "PROTO",
    0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1", 0x86: "TUPLE2",
    0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8A: "LONG1", 0x8B: "LONG4",
    0x42: "BINBYTES", 0x43: "SHORT_BINBYTES", 0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8",
    0x8E: "BINBYTES8", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX",
    0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8",
    0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}  # fmt: skip

# Lowest protocol that introduced each opcode (for ``protocol`` when there is no PROTO).
_OP_PROTO: dict[int, int] = dict.fromkeys(range(128, 140), 2)
_OP_PROTO.update({0x42: 3, 0x43: 3})
_OP_PROTO.update(dict.fromkeys(range(140, 150), 4))
_OP_PROTO.update({0x96: 5, 0x97: 5, 0x98: 5})
_OP_PROTO.update({0x47: 1, 0x4A: 1, 0x4B: 1, 0x4D: 1, 0x51: 1, 0x54: 1, 0x55: 1, 0x58: 1})
_OP_PROTO.update({0x7D: 1, 0x65: 1, 0x68: 1, 0x6A: 1, 0x5D: 1, 0x6F: 1, 0x71: 1, 0x72: 1})
_OP_PROTO.update({0x29: 1, 0x75: 1})

# strtol(s, &end, 0) as used by load_int: optional whitespace and sign, 0x / 0 prefixes.
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _parse_int_line(line: bytes) -> int | _Opaque:
    """Value of an INT/LONG text line the way the C unpickler parses it, or raise ``_Fail``."""
    text = line.split(b"\0", 1)[0]
    if not text:
        return 0  # strtol converts nothing and stops on the NUL: the C loader accepts 0
    if len(text) > 1000:
        # Parsing would be quadratic and the value never matters for names: keep it opaque.
        return _BIGINT
    m = _STRTOL.match(text)
    if m is not None and m.end() == len(text):
        body = m.group(1)
        sign = -1 if b"-" in text[: m.start(1)] else 1
        if body[:2] in (b"0x", b"0X"):
            return sign * int(body[2:], 16)
        if body.startswith(b"0"):
            return sign * int(body, 8)
        return sign * int(body)
    try:
        return int(text, 0)
    except ValueError:
        raise _Fail(RULE_MALFORMED, "could not convert string to int") from None


def _parse_long_line(line: bytes) -> int | _Opaque:
    text = line[:-1] if line.endswith(b"L") else line
    text = text.split(b"\0", 1)[0]
    if len(text) > 1000:
        return _BIGINT
    try:
        return int(text, 0)
    except ValueError:
        raise _Fail(RULE_MALFORMED, "invalid literal for LONG") from None


class Memo:
    """The unpickler's memo: a list for the dense keys every writer produces, a dict for the rest.

    ``MEMOIZE`` and the ``PUT`` opcodes of Python's picklers number entries 0, 1, 2...; a list
    holds them at 8 bytes an entry (a dict of int keys costs ~100: a 5 MB pickle of MEMOIZE
    opcodes needed 350 MB). Keys at or past the list's length that are not next go to
    ``sparse``. ``MEMOIZE`` stores at the memo's *size*, as ``_Unpickler_MemoPut(memo_len)``.
    """

    __slots__ = ("dense", "sparse")

    def __init__(self, dense: list[object] | None = None, sparse: dict[int, object] | None = None):
        self.dense: list[object] = [] if dense is None else dense
        self.sparse: dict[int, object] = {} if sparse is None else sparse

    def __len__(self) -> int:
        return len(self.dense) + len(self.sparse)

    def copy(self) -> Memo:
        """An independent copy (for a reading that starts from the same memo)."""
        return Memo(list(self.dense), dict(self.sparse))

    def get(self, idx: int) -> object:
        """The entry at ``idx``, or ``_MISSING``."""
        if 0 <= idx < len(self.dense):
            return self.dense[idx]
        return self.sparse.get(idx, _MISSING)

    def put(self, idx: int, value: object) -> None:
        """Store ``value`` at ``idx``."""
        dense = self.dense
        n = len(dense)
        if idx < n:
            dense[idx] = value
        elif idx == n:
            dense.append(value)
            sparse = self.sparse
            if sparse:
                self.sparse.pop(idx, None)
                while len(dense) in sparse:
                    dense.append(sparse.pop(len(dense)))
        else:
            self.sparse[idx] = value

    def values(self) -> list[object]:
        """Every stored value."""
        return [*self.dense, *self.sparse.values()]


class Raw:
    """Mutable outcome of one run, frozen by :func:`freeze` (a plain class: cheap to import)."""

    __slots__ = (
        "complete",
        "crossed_at",
        "embedded",
        "end",
        "first_import",
        "frame_end",
        "inferred_protocol",
        "issues",
        "limited",
        "memo_dependent",
        "nested",
        "next_starts",
        "opcode_count",
        "ops_total",
        "pids",
        "protocol",
        "readings",
        "records",
        "start",
    )

    def __init__(self, start: int, end: int = 0, protocol: int | None = None) -> None:
        self.start = start
        self.end = end
        self.complete = False
        self.protocol = protocol
        self.inferred_protocol = 0
        self.records: list[list[Any]] = []
        self.issues: list[tuple[str, str, int, Verdict, str | None, tuple[list[Any], ...]]] = []
        self.pids: list[object] = []
        self.nested: list[tuple[int, int, str, list[Any]]] = []
        self.embedded: list[tuple[int, int]] = []
        self.opcode_count = 0
        self.ops_total = 0  # opcodes executed by every reading (the work done)
        self.first_import: int | None = None
        self.limited = False
        self.next_starts: list[int] = []
        # The exact frame buffer still held when STOP was read (a reused C unpickler goes on
        # reading it), else None.
        self.frame_end: int | None = None
        self.crossed_at: int | None = None
        self.readings = 1
        # Whether a memo left by earlier loads could change this reading (see run()).
        self.memo_dependent = True


class _Machine:
    """One run over one pickle; hot opcodes inline in ``run``, the rest in ``_cold``."""

    def __init__(
        self,
        buf: bytes | memoryview,
        start: int,
        end: int,
        real_end: int,
        limits: Limits,
        deadline: float | None,
        memo: Memo | None,
        choices: tuple[str, ...] = (),
        frame_end: int | None = None,
        max_ops: int | None = None,
    ) -> None:
        self.buf = buf
        self.start = start
        self.end = end
        self.real_end = real_end
        self.limits = limits
        # Opcodes this run may execute: what is left of the file's budget (Limits.max_opcodes
        # counts every pickle and every reading of one input).
        self.max_ops = limits.max_opcodes if max_ops is None else max(1, max_ops)
        self.ops_done = 0
        self.deadline = deadline
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo = Memo() if memo is None else memo
        self.records: list[list[Any]] = []
        self.rec_index: dict[tuple[str, str], list[Any]] = {}
        self.issues: list[tuple[str, str, int, Verdict, str | None, tuple[list[Any], ...]]] = []
        self.pids: list[object] = []
        self.nested: list[tuple[int, int, str, list[Any]]] = []
        # Literals that may hold a pickle as data (see _embed): spans of bytes or text.
        self.embedded: list[tuple[int, int]] = []
        self.embedded_capped = False
        self.dup_seen = False
        self.memo_tainted = False
        # MEMOIZE numbers entries by the memo's size, and a memo miss reads what an earlier
        # load may have left: only these make a reused unpickler read differently.
        self.memoized = False
        self.memo_missed = False
        self.proto = 0
        self.first_proto: int | None = None
        self.inferred = 0
        self.first_import: int | None = None
        # FRAME handling (see _frame): the end of the frame a file reader may hold as an exact
        # buffer (None: reads come straight from the file, or from bytes), and the choice
        # taken at each crossing of such an end ("linear" or "jump"), in order.
        self.frame_end = frame_end if frame_end is not None and frame_end > start else None
        self.cur_end = end if self.frame_end is None else min(self.frame_end, end)
        self.choices = choices
        self.crossings = 0
        self.crossed_at: int | None = None
        self.is_bytes = isinstance(buf, bytes)
        # Memory: bytes allocated since the live state was last measured (cold handlers add
        # here; the hot loop keeps its own count), and when to measure next.
        self.alloc_cold = 0
        self.live = 0
        self.slots_seen = 0
        budget = max(1 << 20, limits.max_memory // 4)
        self.memory_budget = budget
        self.next_measure = budget // 4

    # -- helpers used by cold handlers ------------------------------------------------------

    def _find_nl(self, pos: int, end: int) -> int:
        buf = self.buf
        if self.is_bytes:
            assert isinstance(buf, bytes)
            return buf.find(b"\n", pos, end)
        # memoryview: search in growing windows so a huge line costs O(n), never a full copy.
        window = 256
        at = pos
        while at < end:
            stop = min(end, at + window)
            i = bytes(buf[at:stop]).find(b"\n")
            if i >= 0:
                return at + i
            at = stop
            window = min(window * 2, 1 << 20)
        return -1

    def _readline(self, pos: int, what: str) -> tuple[bytes | None, int]:
        """Line without its newline and the position after it (``_Unpickler_Readline``).

        The line is None when longer than ``_MAX_LINE``: it is never copied (memory bound),
        and callers go on with an opaque value rather than stop where a loader would not.
        """
        pos, i = self._line_end(pos)
        if i < 0:
            raise _trunc(f"the text argument of {what} (no newline)")
        if i - pos > _MAX_LINE:
            return None, i + 1
        self.alloc_cold += i - pos + _SZ_STR
        return bytes(self.buf[pos:i]), i + 1

    def _name_lines(
        self, pos: int, opname: str, encoding: str
    ) -> tuple[str, str, int, _Fail | None]:
        """The module and name lines of GLOBAL/INST, read the way any loader would import.

        Returns the names, the position after them and the failure to raise *after* the
        import is recorded: the C loader refuses an empty line before importing, but
        pickle._Unpickler imports the module first (``find_class(module, "")``) and, at the
        very end of the data, even reads a last line without newline minus its last byte.
        """
        lines: list[bytes] = []
        failure: _Fail | None = None
        for _ in range(2):
            pos, i = self._line_end(pos)
            if i >= 0:
                if i - pos > _MAX_LINE:
                    # No module or attribute has such a name: every loader fails to import.
                    raise _Fail(RULE_MALFORMED, f"{opname} name line too long")
                lines.append(bytes(self.buf[pos:i]))
                pos = i + 1
                continue
            if self.end < self.real_end:
                raise _trunc(f"the text argument of {opname} (no newline)")
            if self.end - pos > _MAX_LINE:
                raise _Fail(RULE_MALFORMED, f"{opname} name line too long")
            lines.append(bytes(self.buf[pos : self.end])[:-1])
            pos = self.end
            failure = _trunc(f"the text argument of {opname} (no newline)")
            break
        while len(lines) < 2:
            lines.append(b"")
        module = str(lines[0], encoding)
        name = str(lines[1], encoding)
        self.alloc_cold += len(module) + len(name) + 2 * _SZ_STR
        if not module:
            raise _Fail(RULE_MALFORMED, f"{opname} with an empty module line")
        if failure is None and not name:
            failure = _Fail(RULE_MALFORMED, f"{opname} with an empty name line")
        return module, name, pos, failure

    # -- reads and frames ------------------------------------------------------------------
    #
    # The C unpickler parses FRAME contents in place, but *how* it reads past a frame's end
    # depends on the input. ``pickle.loads(bytes)`` reads linearly. A file reader fills its
    # buffer either with ``peek()`` (a buffered file, frames under 8 KiB when the file's buffer
    # holds them: linear again) or with ``read(n)`` of exactly the frame (``io.BytesIO``, which
    # torch.load uses for zip records; any frame of 8 KiB or more; a frame the file's buffer
    # does not hold whole). From an exact buffer, an argument read with ``_Unpickler_Read``
    # (lengths, strings, ints, lines) that runs past the frame's end makes it drop the rest of
    # the frame and read the argument from the file, *after* the frame ("jump"); bytes data
    # (``_Unpickler_ReadInto``) takes the rest of the buffer and then the file: linear. Which
    # buffer a frame gets depends on the file object and on its buffer's state, so each such
    # crossing is a fork: this run stops there (``_Cross``) and run_pickle() runs one reading
    # per choice. Pickles written by Python never split an argument across a frame.

    def _boundary(self, pos: int, n: int, what: str) -> tuple[int, int]:
        """A read of ``n`` bytes at ``pos`` (``_Unpickler_Read``) that reaches past the bound."""
        fe = self.frame_end
        if fe is not None:
            if pos >= fe:
                self.frame_end = None  # the frame is used up: reads come from the file
            elif pos + n > fe:
                pos = self._cross(pos, fe)
        self.cur_end = self.end if self.frame_end is None else self.frame_end
        if pos + n > self.end:
            raise _trunc(what)
        return pos, self.cur_end

    def _boundary_into(self, pos: int, n: int, what: str) -> tuple[int, int]:
        """A read of bytes data (``_Unpickler_ReadInto``): past a frame's end it reads on."""
        if self.frame_end is not None and pos + n > self.frame_end:
            self.frame_end = None
        self.cur_end = self.end if self.frame_end is None else self.frame_end
        if pos + n > self.end:
            raise _trunc(what)
        return pos, self.cur_end

    def _cross(self, pos: int, fe: int) -> int:
        """An argument starting at ``pos`` runs past the buffered frame ending at ``fe``."""
        k = self.crossings
        self.crossings += 1
        if k >= len(self.choices):
            raise _Cross(pos)
        self.frame_end = None
        if self.crossed_at is None:
            self.crossed_at = pos
        # jump: the loader drops the frame's last bytes and reads the argument after it.
        return fe if self.choices[k] == _JUMP else pos

    def _frame(self, pos: int, flen: int, op_at: int) -> tuple[int, int]:
        """Enter a FRAME of ``flen`` bytes whose data starts at ``pos``."""
        if flen == 0:
            # _Unpickler_Read(0) reads nothing; pickle._Unpickler opens an empty frame and
            # reads on from the file: a no-op for every loader.
            return pos, self.cur_end
        fe = self.frame_end
        if fe is not None and pos < fe:
            if pos + flen <= fe:
                return pos, self.cur_end  # inside the buffered frame: nothing is read
            pos = self._cross(pos, fe)
        if pos + flen > self.end:
            self.frame_end = None
            self.cur_end = self.end
            # The C loader fails here, but pickle._Unpickler (joblib) reads the short frame
            # and goes on: report, then keep parsing.
            self._frame_past_end(op_at, flen)
            return pos, self.cur_end
        self.frame_end = pos + flen
        self.cur_end = self.frame_end
        return pos, self.cur_end

    def _take(self, pos: int, n: int, what: str) -> tuple[int, int]:
        """Bounds of ``n`` argument bytes at ``pos`` (after any frame jump)."""
        if pos + n > self.cur_end:
            pos, _ = self._boundary(pos, n, what)
        return pos, pos + n

    def _take_into(self, pos: int, n: int, what: str) -> tuple[int, int]:
        """Bounds of ``n`` bytes of bytes data at ``pos`` (read on past a frame's end)."""
        if pos + n > self.cur_end:
            pos, _ = self._boundary_into(pos, n, what)
        return pos, pos + n

    def _line_end(self, pos: int) -> tuple[int, int]:
        """Start and newline index of the text line at ``pos`` (newline index -1: none)."""
        fe = self.frame_end
        if fe is not None:
            if pos >= fe:
                self.frame_end = None
                self.cur_end = self.end
            else:
                i = self._find_nl(pos, fe)
                if i >= 0:
                    return pos, i
                pos = self._cross(pos, fe)
                self.cur_end = self.end
        return pos, self._find_nl(pos, self.end)

    def _fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def _marker(self) -> int:
        if not self.marks:
            raise _Fail(RULE_MALFORMED, "could not find MARK")
        return self.marks.pop()

    def _pop(self) -> object:
        stack = self.stack
        if len(stack) <= self._fence():
            raise _underflow()
        return stack.pop()

    def _poptuple(self, start: int) -> object:
        stack = self.stack
        if start < self._fence() or start > len(stack):
            raise _underflow()
        items = stack[start:]
        del stack[start:]
        if len(items) > _MAX_TUPLE:
            return _BIGTUPLE
        self.alloc_cold += _SZ_TUPLE + 8 * len(items)
        return _flat(items)

    def _issue(
        self,
        rule_id: str,
        message: str,
        offset: int,
        verdict: Verdict = Verdict.UNKNOWN,
        evidence: str | None = None,
        refs: tuple[list[Any], ...] = (),
    ) -> None:
        if len(self.issues) < _MAX_ISSUES:
            self.issues.append((rule_id, message, offset, verdict, evidence, refs))

    def _record(
        self, module: str, name: str, offset: int, opcode: str, resolved: bool
    ) -> list[Any]:
        """The record of an import: shared by every import of the same resolved name."""
        if resolved:
            key = (module, name)
            rec = self.rec_index.get(key)
            if rec is not None:
                rec[_R_COUNT] += 1
                return rec
        if len(self.records) >= self.limits.max_globals:
            raise _Limit("max_globals", self.limits.max_globals, "too many imported names")
        nested = NESTED_LOADERS.get((module, name)) if resolved else None
        calls = CALLS_ARGUMENTS.get((module, name)) if resolved else None
        rec = [module, name, offset, opcode, False, resolved, False, nested, 0, 1, calls]
        self.records.append(rec)
        if resolved:
            self.rec_index[(module, name)] = rec
        self.alloc_cold += _SZ_RECORD
        if self.first_import is None:
            self.first_import = offset
        return rec

    def _import(self, module: str, name: str, offset: int, opcode: str) -> _Global:
        """``find_class``: the compat mapping for protocols < 3, then an import."""
        if self.proto < 3:
            module, name = compat_name(module, name)
        return _Global(self._record(module, name, offset, opcode, True))

    def _unresolved(
        self, module: object, name: object, offset: int, opcode: str, why: str
    ) -> _Global:
        mod = module if type(module) is str else UNRESOLVED
        nam = name if type(name) is str else UNRESOLVED
        if self.proto < 3 and mod is not UNRESOLVED and nam is not UNRESOLVED:
            mod, nam = compat_name(mod, nam)
        elif self.proto < 3 and mod is not UNRESOLVED:
            mod = compat_module(mod)
        rec = self._record(mod, nam, offset, opcode, False)
        producers = tuple(_producers(module)) + tuple(_producers(name))
        self._issue(
            RULE_UNRESOLVED,
            f"{opcode} imports a name the scanner cannot know statically ({why})",
            offset,
            Verdict.UNKNOWN,
            f"{mod}.{nam}",
            (rec, *producers),
        )
        return _Global(rec)

    def _embed_text(self, buf: Any, start: int, end: int, *, text: bool = True) -> None:
        """Record a literal whose base64 or hex decodes to what starts a pickle.

        What a decoder skips may come first (whitespace, line breaks, for base64 in a text
        literal any character outside its alphabet); the first bytes are decoded after it.
        """
        if _encoded_pickle(buf, start, end, text=text):
            self._embed(start, end)

    def _embed_escaped(self, start: int, raw: bytes, text: bytes) -> None:
        """Record a UNICODE or STRING argument whose decoded text starts like an encoded pickle.

        ``raw`` (at ``start``) still has its escapes, which can spell the "gA" or "80";
        ``text`` is what the loader gets, and what is matched.
        """
        if len(text) < _EMBED_MIN_TEXT or not raw or raw[0] not in _EMBED_FIRST:
            return
        if _encoded_pickle(text, 0, len(text), text=True):
            self._embed(start, start + len(raw))

    def _embed(self, start: int, end: int) -> None:
        """Record a literal that may hold a pickle as data (the format layer checks it).

        Nothing loads it here, but whoever unpickles the field does, so a pickle hidden in a
        checkpoint's data is analysed too (``torch.distributed.checkpoint`` unpickles the
        bytes it saved for non-tensor state).
        """
        if len(self.embedded) < _MAX_EMBEDDED:
            self.embedded.append((start, end))
        elif not self.embedded_capped:
            # Not silently: thousands of decoys would otherwise hide the one that matters.
            self.embedded_capped = True
            self._issue(
                "pickle.embedded-pickle",
                f"more than {_MAX_EMBEDDED} literals may hold a pickle as data: the rest were "
                "not analysed",
                start,
            )

    def _nested_call(self, rec: list[Any], args: object) -> None:
        """A nested loader is called: record its payload, or that it has none we can see."""
        if isinstance(args, tuple) and args and isinstance(args[0], _Bytes):
            payload = args[0]
            if len(self.nested) < 10_000:
                self.nested.append((payload.start, payload.end, rec[_R_NESTED], rec))
        else:
            rec[_R_OPAQUE] += 1

    @staticmethod
    def _calls_arguments(rec: list[Any], args: object) -> None:
        """A higher-order global is called: the globals it calls in turn are called too."""
        if type(args) is not tuple:
            return
        for i in rec[_R_CALLS]:
            if i < len(args) and type(args[i]) is _Global:
                target = args[i].rec
                target[_R_CALLED] = target[_R_INIT] = True

    def _mutation(self, target: object, offset: int, opname: str) -> None:
        if type(target) is _Global:
            rec = target.rec
            rec[_R_CALLED] = True
            self._issue(
                RULE_GLOBAL_MUTATION,
                f"{opname} modifies an imported object in place (process-wide monkeypatching)",
                offset,
                Verdict.UNSAFE,
                f"{rec[_R_MODULE]}.{rec[_R_NAME]}",
                (rec,),
            )

    def _check_limits(self, count: int, alloc: int) -> int:
        """Check every bound; returns the allocation count to carry on with."""
        lim = self.limits
        if count >= self.max_ops:
            raise _Limit(
                "max_opcodes",
                lim.max_opcodes,
                "opcode budget of this input spent (all its pickles)",
            )
        stack = self.stack
        if len(stack) > lim.max_stack_depth or len(self.marks) > lim.max_stack_depth:
            raise _Limit("max_stack_depth", lim.max_stack_depth, "pickle stack too deep")
        memo = self.memo
        if len(memo) > lim.max_memo:
            raise _Limit("max_memo", lim.max_memo, "too many memo entries")
        if len(self.pids) > lim.max_memo:
            raise _Limit("max_memo", lim.max_memo, "too many persistent ids")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _Limit("max_seconds", lim.max_seconds, "time budget exhausted")
        slots = len(stack) + len(memo.dense) + 4 * len(memo.sparse) + len(self.marks)
        alloc += self.alloc_cold + 8 * max(0, slots - self.slots_seen)
        self.alloc_cold = 0
        self.slots_seen = slots
        if self.live + alloc > self.next_measure:
            alloc = 0
            self._measure()
        return alloc

    def _measure(self) -> None:
        """Measure what the run keeps alive; stop at the memory budget.

        Called when the allocations since the last measurement could have taken the live
        state past the next threshold; thresholds grow with the live state, so the cost of
        measuring stays proportional to what was allocated.
        """
        memo = self.memo
        total = 8 * (len(self.stack) + len(memo.dense) + len(self.pids)) + 40 * len(self.marks)
        total += 100 * len(memo.sparse)
        getsize = sys.getsizeof
        for values in (self.stack, memo.dense, memo.sparse.values(), self.pids):
            for v in values:
                tv = type(v)
                if tv is str:
                    total += getsize(v)
                elif tv is tuple:
                    assert isinstance(v, tuple)
                    total += _SZ_TUPLE + 8 * len(v)
                    for x in v:
                        tx = type(x)
                        if tx is str:
                            total += getsize(x)
                        elif tx is int:
                            total += _SZ_INT
                        elif tx is _Result or tx is _Global or tx is _Bytes:
                            total += _SZ_RESULT
                elif tv is int:
                    total += _SZ_INT
                elif tv is _Result or tv is _Global or tv is _Bytes:
                    total += _SZ_RESULT
        for rec in self.records:
            total += _SZ_RECORD + getsize(rec[_R_MODULE]) + getsize(rec[_R_NAME])
        total += 160 * len(self.issues) + 120 * len(self.nested)
        self.live = total
        self.slots_seen = len(self.stack) + len(memo.dense) + 4 * len(memo.sparse)
        self.slots_seen += len(self.marks)
        if total > self.memory_budget:
            raise _Limit(
                "max_memory",
                self.limits.max_memory,
                f"the pickle's objects need more than {self.memory_budget >> 20} MiB to analyse",
            )
        self.next_measure = total + max(self.memory_budget // 4, total // 2)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> Raw:
        buf = self.buf
        end = self.cur_end
        stack = self.stack
        push = stack.append
        marks = self.marks
        memo = self.memo
        mdense = memo.dense
        mappend = mdense.append
        msparse = memo.sparse
        pids = self.pids
        cold = self._cold
        bound = self._boundary
        u32 = _u32
        i32 = _i32
        u16 = _u16
        Global = _Global
        Result = _Result
        TUPLE = _TUPLE
        fence = 0
        pos = self.start
        op_at = pos
        done = 0
        alloc = 0
        lim = self.max_ops
        raw = Raw(start=self.start)
        n = 0
        memoized = False
        try:
            while True:
                budget = min(_CHUNK, lim - done)
                if budget <= 0:
                    alloc = self._check_limits(done, alloc)
                for n in range(budget):  # noqa: B007 - n is read after the loop exits
                    op_at = pos
                    op = buf[pos]
                    pos += 1
                    if op == 0x94:  # MEMOIZE
                        if len(stack) <= fence:
                            raise _underflow()
                        if msparse:
                            memo.put(len(mdense) + len(msparse), stack[-1])
                        else:
                            mappend(stack[-1])
                        memoized = True  # a local: an attribute store per opcode is costly
                    elif op == 0x68:  # BINGET
                        i = buf[pos]
                        if i < len(mdense):
                            push(mdense[i])
                        else:
                            push(self._memo_get(i))
                        pos += 1
                    elif op == 0x71:  # BINPUT
                        if len(stack) <= fence:
                            raise _underflow()
                        i = buf[pos]
                        if i < len(mdense):
                            mdense[i] = stack[-1]
                        elif i == len(mdense) and not msparse:
                            mappend(stack[-1])  # protocols 1-3 number entries 0, 1, 2...
                        else:
                            memo.put(i, stack[-1])
                        pos += 1
                    elif op == 0x72:  # LONG_BINPUT
                        if pos + 4 > end:
                            pos, end = bound(pos, 4, "LONG_BINPUT")
                        if len(stack) <= fence:
                            raise _underflow()
                        i = u32(buf, pos)[0]
                        if i == len(mdense) and not msparse:
                            mappend(stack[-1])
                        else:
                            memo.put(i, stack[-1])
                        pos += 4
                    elif op == 0x4B:  # BININT1
                        push(buf[pos])
                        pos += 1
                    elif op == 0x4A:  # BININT
                        if pos + 4 > end:
                            pos, end = bound(pos, 4, "BININT")
                        push(i32(buf, pos)[0])
                        alloc += 32
                        pos += 4
                    elif op == 0x28:  # MARK
                        fence = len(stack)
                        marks.append(fence)
                    elif op == 0x8C:  # SHORT_BINUNICODE
                        ln = buf[pos]
                        pos += 1
                        e = pos + ln
                        if e > end:
                            pos, end = bound(pos, ln, "SHORT_BINUNICODE data")
                            e = pos + ln
                        push(str(buf[pos:e], "utf-8", "surrogatepass"))
                        alloc += ln + 56
                        if ln >= _EMBED_MIN_TEXT and buf[pos] in _EMBED_FIRST:
                            self._embed_text(buf, pos, e)
                        pos = e
                    elif op == 0x58:  # BINUNICODE
                        if pos + 4 > end:
                            pos, end = bound(pos, 4, "BINUNICODE length")
                        ln = u32(buf, pos)[0]
                        pos += 4
                        e = pos + ln
                        if e > end:
                            pos, end = bound(pos, ln, "BINUNICODE data")
                            e = pos + ln
                        if ln > _MAX_NAME_CHARS:
                            push(_LONGSTR)
                        else:
                            push(str(buf[pos:e], "utf-8", "surrogatepass"))
                            alloc += ln + 56
                        if ln >= _EMBED_MIN_TEXT and buf[pos] in _EMBED_FIRST:
                            self._embed_text(buf, pos, e)
                        pos = e
                    elif op == 0x74:  # TUPLE
                        if not marks:
                            raise _Fail(RULE_MALFORMED, "could not find MARK")
                        i = marks.pop()
                        fence = marks[-1] if marks else 0
                        if i < fence or i > len(stack):
                            raise _underflow()
                        if len(stack) - i <= _MAX_TUPLE:
                            t: object = _flat(stack[i:])
                            alloc += 56 + 8 * (len(stack) - i)
                        else:
                            t = _BIGTUPLE
                        del stack[i:]
                        push(t)
                    elif op == 0x85:  # TUPLE1
                        if len(stack) - 1 < fence:
                            raise _underflow()
                        a = stack[-1]
                        stack[-1] = (TUPLE if type(a) is tuple else a,)
                        alloc += 64
                    elif op == 0x52:  # REDUCE
                        if len(stack) - 2 < fence:
                            raise _underflow()
                        args = stack.pop()
                        fn = stack.pop()
                        tf = type(fn)
                        if tf is Global:
                            rec = fn.rec  # type: ignore[attr-defined]
                            rec[_R_CALLED] = rec[_R_INIT] = True
                            if rec[_R_NESTED] is not None:
                                self._nested_call(rec, args)
                            if rec[_R_CALLS] is not None:
                                self._calls_arguments(rec, args)
                            res = Result(fn.rec)  # type: ignore[attr-defined]
                        elif tf is Result:
                            res = Result(fn.src)  # type: ignore[attr-defined]
                        else:
                            raise _Fail(RULE_MALFORMED, "REDUCE on an object that is not callable")
                        # The C loader wants a tuple of arguments, but the pure-Python one
                        # (pickle._Unpickler, used by joblib) calls func(*args) with any
                        # iterable: never stop here, or later opcodes would go unseen.
                        del args
                        push(res)
                        alloc += 64
                    elif op == 0x29:  # EMPTY_TUPLE
                        if len(stack) < fence:
                            raise _underflow()
                        push(())
                    elif op == 0x89:  # NEWFALSE
                        push(False)
                    elif op == 0x51:  # BINPERSID
                        if len(stack) <= fence:
                            raise _underflow()
                        pids.append(stack[-1])
                        stack[-1] = Result(None, "persistent")
                        alloc += 72
                    elif op == 0x4E:  # NONE
                        push(None)
                    elif op == 0x4D:  # BININT2
                        if pos + 2 > end:
                            pos, end = bound(pos, 2, "BININT2")
                        push(u16(buf, pos)[0])
                        alloc += 32
                        pos += 2
                    elif op == 0x6A:  # LONG_BINGET
                        if pos + 4 > end:
                            pos, end = bound(pos, 4, "LONG_BINGET")
                        i = u32(buf, pos)[0]
                        if i < len(mdense):
                            push(mdense[i])
                        else:
                            push(self._memo_get(i))
                        pos += 4
                    elif op == 0x88:  # NEWTRUE
                        push(True)
                    elif op == 0x86:  # TUPLE2
                        if len(stack) - 2 < fence:
                            raise _underflow()
                        b = stack.pop()
                        a = stack[-1]
                        if type(a) is tuple or type(b) is tuple:
                            stack[-1] = _flat((a, b))
                        else:
                            stack[-1] = (a, b)
                        alloc += 72
                    elif op == 0x87:  # TUPLE3
                        if len(stack) - 3 < fence:
                            raise _underflow()
                        c = stack.pop()
                        b = stack.pop()
                        stack[-1] = _flat((stack[-1], b, c))
                        alloc += 80
                    elif op == 0x7D:  # EMPTY_DICT
                        push(_DICT)
                    elif op == 0x5D:  # EMPTY_LIST
                        push(_LIST)
                    elif op == 0x75 or op == 0x65:  # SETITEMS / APPENDS
                        if not marks:
                            raise _Fail(RULE_MALFORMED, "could not find MARK")
                        x = marks.pop()
                        fence = marks[-1] if marks else 0
                        ln = len(stack)
                        # Python <= 3.12 checks x <= 0 here, 3.13 x <= fence: take the lenient
                        # one so the machine never stops where some loader goes on.
                        if x > ln or x <= 0:
                            raise _underflow()
                        if op == 0x75 and (ln - x) % 2:
                            raise _Fail(RULE_MALFORMED, "odd number of items for SETITEMS")
                        if x < ln:
                            tgt = stack[x - 1]
                            if type(tgt) is Global:
                                self._mutation(tgt, op_at, "SETITEMS" if op == 0x75 else "APPENDS")
                            del stack[x:]
                    elif op == 0x47:  # BINFLOAT
                        if pos + 8 > end:
                            pos, end = bound(pos, 8, "BINFLOAT")
                        push(_FLOAT)
                        pos += 8
                    elif op == 0x95:  # FRAME
                        if pos + 8 > end:
                            pos, end = bound(pos, 8, "FRAME length")
                        flen = _u64(buf, pos)[0]
                        pos += 8
                        if flen > _PY_SSIZE_T_MAX:
                            raise _Fail(RULE_MALFORMED, "FRAME length exceeds the maximum")
                        pos, end = self._frame(pos, flen, op_at)
                    elif op == 0x2E:  # STOP
                        raise _Stop
                    else:
                        pos = cold(op, pos, op_at)
                        fence = marks[-1] if marks else 0
                        end = self.cur_end
                done += budget
                n = -1
                alloc = self._check_limits(done, alloc)
        except _Cross:
            self.ops_done = done + n + 1  # the work of a reading cut short at a fork counts
            raise
        except _Stop:
            raw.complete = True
            # load() pops the result after STOP: an empty stack (or a MARK on top) fails.
            if len(stack) <= fence:
                raw.complete = False
                self._issue(RULE_MALFORMED, "STOP with an empty stack", op_at)
            else:
                self._after_stop(raw, pos)
        except IndexError:
            raw.complete = False
            raw.limited = self.end < self.real_end
            self._end_of_data(op_at)
            pos = op_at
        except _Fail as exc:
            pos = op_at  # the failing opcode is not part of what was consumed
            if exc.rule_id == RULE_TRUNCATED and self.end < self.real_end:
                raw.limited = True
                self._limit_issue("max_pickle_bytes", self.limits.max_pickle_bytes, op_at)
            else:
                verdict = Verdict.UNKNOWN
                self._issue(exc.rule_id, exc.message, op_at, verdict, _OPNAMES.get(buf[op_at]))
        except _Limit as exc:
            raw.limited = True
            self._limit_issue(exc.name, exc.value, op_at, exc.message)
        except (ValueError, UnicodeDecodeError, struct.error, OverflowError) as exc:
            pos = op_at
            self._issue(
                RULE_MALFORMED,
                f"the loader would fail here: {exc.__class__.__name__}",
                op_at,
                Verdict.UNKNOWN,
                _OPNAMES.get(buf[op_at]),
            )
        except MemoryError:  # pragma: no cover - the memory budget stops runs long before
            raw.limited = True
            self._limit_issue("max_memory", self.limits.max_memory, op_at)
        raw.opcode_count = done + n + 1
        raw.ops_total = self.ops_done = raw.opcode_count
        raw.end = pos
        raw.protocol = self.first_proto
        raw.inferred_protocol = self.inferred
        raw.records = self.records
        raw.issues = self.issues
        raw.pids = pids
        raw.nested = self.nested
        raw.embedded = self.embedded
        raw.first_import = self.first_import
        raw.crossed_at = self.crossed_at
        raw.memo_dependent = memoized or self.memoized or self.memo_missed
        return raw

    def _after_stop(self, raw: Raw, pos: int) -> None:
        """Where the next ``pickle.load`` on the same file can start, for every reader."""
        raw.next_starts.append(pos)
        fe = self.frame_end
        if fe is not None and fe > pos:
            # STOP inside a frame that goes on: a reader that read the frame exactly
            # (io.BytesIO, a frame of 8 KiB or more, pickle._Unpickler) stands at the frame's
            # end, one that peeked (a buffered file) right after STOP. Python never writes
            # this; it is how a second pickle is hidden from scanners that follow one reader.
            raw.next_starts.append(fe)
            raw.frame_end = fe
            self._issue(
                RULE_FRAME_OVERRUN,
                "a FRAME reaches past STOP: loaders reading a file continue at different "
                "offsets (every continuation was analysed)",
                pos - 1,
                Verdict.UNKNOWN,
                f"FRAME ends at {fe}",
            )

    def _frame_past_end(self, op_at: int, flen: int) -> None:
        if self.end < self.real_end:
            return  # the data goes on past the byte limit; the limit issue comes later
        self._issue(
            RULE_TRUNCATED,
            f"a FRAME of {flen} bytes runs past the end of the data",
            op_at,
            Verdict.UNKNOWN,
            "FRAME",
        )

    def _end_of_data(self, op_at: int) -> None:
        if self.end < self.real_end:
            self._limit_issue("max_pickle_bytes", self.limits.max_pickle_bytes, op_at)
        elif op_at >= self.end:
            self._issue(RULE_TRUNCATED, "pickle data ends before STOP", op_at)
        else:
            self._issue(
                RULE_TRUNCATED,
                "pickle data ends inside an opcode argument",
                op_at,
                Verdict.UNKNOWN,
                _OPNAMES.get(self.buf[op_at]),
            )

    def _limit_issue(
        self, name: str, value: float, offset: int, message: str | None = None
    ) -> None:
        short = name.removeprefix("max_").replace("_", "-")
        text = message or f"limit {name} reached"
        self._issue(
            f"limit.{short}",
            f"{text}; the rest of the pickle was not analysed",
            offset,
            Verdict.UNKNOWN,
            f"{name}={value}",
        )

    # -- the other opcodes ----------------------------------------------------------------------

    def _cold(self, op: int, pos: int, op_at: int) -> int:
        stack = self.stack
        buf = self.buf
        p = _OP_PROTO.get(op, 0)
        if p > self.inferred:
            self.inferred = p
        if op == 0x63:  # GLOBAL
            g_mod, g_name, pos, failure = self._name_lines(pos, "GLOBAL", "utf-8")
            glob = self._import(g_mod, g_name, op_at, "GLOBAL")
            if failure is not None:
                raise failure
            stack.append(glob)
            return pos
        if op == 0x93:  # STACK_GLOBAL
            name = self._pop()
            module = self._pop()
            if type(module) is str and type(name) is str:
                stack.append(self._import(module, name, op_at, "STACK_GLOBAL"))
                return pos
            if _certainly_not_str(module) or _certainly_not_str(name):
                raise _Fail(RULE_MALFORMED, "STACK_GLOBAL requires str")
            stack.append(
                self._unresolved(module, name, op_at, "STACK_GLOBAL", _why_unresolved(module, name))
            )
            return pos
        if op == 0x69:  # INST
            # INST decodes its names as ASCII (GLOBAL uses UTF-8). The C loader pops the MARK
            # first, the pure-Python one imports first: record the import either way.
            i_mod, i_name, pos, failure = self._name_lines(pos, "INST", "ascii")
            glob = self._import(i_mod, i_name, op_at, "INST")
            if failure is not None:
                raise failure
            args = self._poptuple(self._marker())
            glob.rec[_R_CALLED] = glob.rec[_R_INIT] = True
            if glob.rec[_R_CALLS] is not None:
                self._calls_arguments(glob.rec, args)
            stack.append(_Result(glob.rec))
            return pos
        if op == 0x6F:  # OBJ
            mark = self._marker()
            if len(stack) - mark < 1:
                raise _underflow()
            args = self._poptuple(mark + 1)
            cls = self._pop()
            if type(cls) is _Global and cls.rec[_R_CALLS] is not None:
                self._calls_arguments(cls.rec, args)
            stack.append(self._call(cls, "OBJ", init=True))
            return pos
        if op in (0x81, 0x92):  # NEWOBJ, NEWOBJ_EX
            # The C loader checks that cls is a type, args a tuple and kwargs a dict; the
            # pure-Python loader calls cls.__new__(cls, *args, **kwargs) with any iterable
            # and mapping, so only a non-callable cls is certain to stop every loader.
            if op == 0x92:
                self._pop()
            self._pop()
            cls = self._pop()
            stack.append(self._call(cls, _OPNAMES[op], init=False))
            return pos
        if op == 0x62:  # BUILD
            if len(stack) - 2 < self._fence():
                raise _underflow()
            stack.pop()
            inst = stack[-1]
            if type(inst) is _Global:
                self._mutation(inst, op_at, "BUILD")
            elif type(inst) is _Result and inst.src is not None:
                # __setstate__ of the instance's class runs: that class is the global it
                # was made from, already recorded as called.
                inst.src[_R_CALLED] = True
            return pos
        if op in (0x73, 0x61):  # SETITEM, APPEND
            ln = len(stack)
            x = ln - (2 if op == 0x73 else 1)
            if x > ln or x <= 0:
                raise _underflow()
            tgt = stack[x - 1]
            if type(tgt) is _Global:
                self._mutation(tgt, op_at, _OPNAMES[op])
            del stack[x:]
            return pos
        if op == 0x90:  # ADDITEMS
            mark = self._marker()
            ln = len(stack)
            if mark > ln or mark <= 0:
                raise _underflow()
            if mark < ln:
                tgt = stack[mark - 1]
                if type(tgt) is _Global:
                    self._mutation(tgt, op_at, "ADDITEMS")
                del stack[mark:]
            return pos
        if op == 0x80:  # PROTO
            if pos >= self.end:
                raise _trunc("PROTO")
            proto = buf[pos]
            if proto > _HIGHEST_PROTOCOL:
                raise _Fail(RULE_MALFORMED, f"unsupported pickle protocol: {proto}")
            if op_at != self.start:
                # Loaders accept it, but no pickler writes one: crafted to make readers (and
                # scanners keyed on the protocol) disagree.
                self._issue(
                    RULE_MALFORMED, "PROTO after the first opcode (no pickler writes one)", op_at
                )
            self.proto = proto
            if self.first_proto is None:
                self.first_proto = proto
            return pos + 1
        if op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
            size = {0x82: 1, 0x83: 2, 0x84: 4}[op]
            p0, e = self._take(pos, size, "EXT code")
            code = int.from_bytes(buf[p0:e], "little", signed=size == 4)
            if code <= 0:
                raise _Fail(RULE_MALFORMED, "EXT specifies code <= 0")
            opname = _OPNAMES[op]
            rec = self._record(UNRESOLVED, f"<extension code {code}>", op_at, opname, False)
            # The copyreg extension registry is empty in a fresh interpreter (the load fails),
            # but any library may register codes: the import is whatever the process mapped.
            self._issue(
                RULE_UNRESOLVED,
                f"{opname} imports through the copyreg extension registry (code {code})",
                op_at,
                Verdict.UNKNOWN,
                f"{opname} {code}",
                (rec,),
            )
            stack.append(_Global(rec))
            return e
        if op == 0x30:  # POP
            marks = self.marks
            ln = len(stack)
            if marks and marks[-1] == ln:
                marks.pop()
            elif ln <= self._fence():
                raise _underflow()
            else:
                stack.pop()
            return pos
        if op == 0x31:  # POP_MARK
            mark = self._marker()
            del stack[mark:]
            return pos
        if op == 0x32:  # DUP
            if len(stack) <= self._fence():
                raise _underflow()
            if not self.dup_seen:
                # No pickler writes DUP; hand-built pickles use it to multiply references
                # (an expansion that makes whatever walks the result run for ever).
                self.dup_seen = True
                self._issue(RULE_MALFORMED, "DUP (no pickler writes one: hand-built pickle)", op_at)
            stack.append(stack[-1])
            return pos
        if op in (0x67, 0x70):  # GET, PUT
            line, pos = self._readline(pos, _OPNAMES[op])
            if line is not None and not line:
                raise _Fail(RULE_MALFORMED, f"{_OPNAMES[op]} with an empty line")
            if op == 0x70 and len(stack) <= self._fence():
                raise _underflow()
            if line is None:
                # An index padded past the line bound: unknown, so memo misses stop nothing.
                self.memo_tainted = True
                if op == 0x67:
                    stack.append(_Result(None, "memo"))
                return pos
            try:
                idx = int(line.split(b"\0", 1)[0], 10)
            except ValueError:
                raise _Fail(RULE_MALFORMED, f"{_OPNAMES[op]} argument is not an integer") from None
            if idx > _PY_SSIZE_T_MAX or idx < -_PY_SSIZE_T_MAX - 1:
                raise _Fail(RULE_MALFORMED, f"{_OPNAMES[op]} argument out of range")
            if op == 0x67:
                stack.append(self._memo_get(idx))
            else:
                if idx < 0:
                    raise _Fail(RULE_MALFORMED, "negative PUT argument")
                self.memo.put(idx, stack[-1])
            return pos
        if op in (0x43, 0x42, 0x8E, 0x96):  # SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
            size = {0x43: 1, 0x42: 4, 0x8E: 8, 0x96: 8}[op]
            p0, e = self._take(pos, size, f"{_OPNAMES[op]} length")
            ln = int.from_bytes(buf[p0:e], "little")
            if ln > _PY_SSIZE_T_MAX:
                raise _Fail(RULE_MALFORMED, f"{_OPNAMES[op]} length exceeds the maximum")
            # Bounded by the bytes that exist: a gigantic length never allocates anything.
            # The data is read with _Unpickler_ReadInto, which reads on past a frame's end.
            fe = self.frame_end
            if fe is not None and op_at < fe < e + ln:
                # Every loader reads on past the frame here, but no pickler writes an opcode
                # inside a frame and its data past it: crafted, for readers to disagree.
                self._issue(RULE_FRAME_SPLIT, "bytes data runs past the end of its FRAME", op_at)
            p1, e2 = self._take_into(e, ln, f"{_OPNAMES[op]} data")
            stack.append(_BYTEARRAY if op == 0x96 else _Bytes(e, e2))
            # PROTO 2-5 first, as every pickler writes it: raw weights rarely start so.
            if ln >= _EMBED_MIN_BYTES and buf[p1] == 0x80 and 2 <= buf[p1 + 1] <= 5:
                self._embed(p1, e2)
            elif (
                ln >= _EMBED_MIN_BYTES
                and buf[p1] in _PICKLE01_FIRST
                and _PICKLE01_HEAD.match(buf, p1, e2)
            ):
                self._embed(p1, e2)  # protocol 0 or 1: no PROTO
            elif ln >= _EMBED_MIN_TEXT and buf[p1] in _EMBED_FIRST:
                self._embed_text(buf, p1, e2, text=False)  # base64 or hex kept as bytes
            self.alloc_cold += _SZ_RESULT
            return e2
        if op in (0x8D,):  # BINUNICODE8
            p0, e = self._take(pos, 8, "BINUNICODE8 length")
            ln = _u64(buf, p0)[0]
            if ln > _PY_SSIZE_T_MAX:
                raise _Fail(RULE_MALFORMED, "BINUNICODE8 length exceeds the maximum")
            p1, e2 = self._take(e, ln, "BINUNICODE8 data")
            if ln > _MAX_NAME_CHARS:
                stack.append(_LONGSTR)
            else:
                stack.append(str(buf[p1:e2], "utf-8", "surrogatepass"))
                self.alloc_cold += ln + _SZ_STR
            if ln >= _EMBED_MIN_TEXT and buf[p1] in _EMBED_FIRST:
                self._embed_text(buf, p1, e2)
            return e2
        if op in (0x55, 0x54):  # SHORT_BINSTRING, BINSTRING
            size = 1 if op == 0x55 else 4
            p0, e = self._take(pos, size, f"{_OPNAMES[op]} length")
            ln = int.from_bytes(buf[p0:e], "little")
            p1, e2 = self._take(e, ln, f"{_OPNAMES[op]} data")
            stack.append(self._py2_string(buf[p1:e2]))
            if ln >= _EMBED_MIN_TEXT and buf[p1] in _EMBED_FIRST:
                self._embed_text(buf, p1, e2)  # a str under the loader's encoding
            return e2
        if op == 0x53:  # STRING
            line, pos = self._readline(pos, "STRING")
            if line is None:
                stack.append(_PY2STR)
                return pos
            if len(line) >= 2 and line[0] == line[-1] and line[0] in (0x22, 0x27):
                body = codecs.escape_decode(line[1:-1])[0]
            else:
                raise _Fail(RULE_MALFORMED, "the STRING opcode argument must be quoted")
            stack.append(self._py2_string(body))
            self._embed_escaped(pos - len(line), line[1:-1], body)
            return pos
        if op == 0x56:  # UNICODE
            line, pos = self._readline(pos, "UNICODE")
            if line is None:
                stack.append(_LONGSTR)
                return pos
            if len(line) <= _MAX_NAME_CHARS:
                text = codecs.raw_unicode_escape_decode(line)[0]
                stack.append(text)
            else:
                stack.append(_LONGSTR)
                if line[0] not in _EMBED_FIRST:
                    return pos
                try:
                    text = codecs.raw_unicode_escape_decode(line)[0]
                except UnicodeDecodeError:
                    return pos  # the loader fails here; nothing is embedded
            self._embed_escaped(pos - 1 - len(line), line, text.encode("utf-8", "surrogatepass"))
            return pos
        if op in (0x49, 0x4C):  # INT, LONG
            line, pos = self._readline(pos, _OPNAMES[op])
            if line is None:
                stack.append(_BIGINT)
                return pos
            if not line:
                raise _Fail(RULE_MALFORMED, f"{_OPNAMES[op]} with an empty line")
            if op == 0x49:
                if line in (b"00", b"01"):
                    stack.append(line == b"01")
                else:
                    stack.append(_parse_int_line(line))
            else:
                stack.append(_parse_long_line(line))
            return pos
        if op == 0x46:  # FLOAT
            line, pos = self._readline(pos, "FLOAT")
            if line is None:
                stack.append(_FLOAT)
                return pos
            if not line:
                raise _Fail(RULE_MALFORMED, "FLOAT with an empty line")
            try:
                float(line.split(b"\0", 1)[0])
            except ValueError:
                raise _Fail(RULE_MALFORMED, "could not convert string to float") from None
            stack.append(_FLOAT)
            return pos
        if op in (0x8A, 0x8B):  # LONG1, LONG4
            size = 1 if op == 0x8A else 4
            p0, e = self._take(pos, size, f"{_OPNAMES[op]} length")
            ln = int.from_bytes(buf[p0:e], "little", signed=size == 4)
            if ln < 0:
                raise _Fail(RULE_MALFORMED, "LONG pickle has negative byte count")
            p1, e2 = self._take(e, ln, f"{_OPNAMES[op]} data")
            if ln <= 64:
                stack.append(int.from_bytes(buf[p1:e2], "little", signed=True))
                self.alloc_cold += _SZ_INT + ln
            else:
                stack.append(_BIGINT)
            return e2
        if op == 0x50:  # PERSID
            line, pos = self._readline(pos, "PERSID")
            try:
                pid = None if line is None else str(line, "ascii")
            except UnicodeDecodeError:
                raise _Fail(
                    RULE_MALFORMED, "persistent IDs in protocol 0 must be ASCII strings"
                ) from None
            self.pids.append(pid)
            stack.append(_Result(None, "persistent"))
            return pos
        if op == 0x64:  # DICT
            mark = self._marker()
            if (len(stack) - mark) % 2:
                raise _Fail(RULE_MALFORMED, "odd number of items for DICT")
            del stack[mark:]
            stack.append(_DICT)
            return pos
        if op == 0x6C:  # LIST
            mark = self._marker()
            if mark > len(stack):
                raise _underflow()
            del stack[mark:]
            stack.append(_LIST)
            return pos
        if op == 0x91:  # FROZENSET
            self._poptuple(self._marker())
            stack.append(_FROZENSET)
            return pos
        if op == 0x8F:  # EMPTY_SET
            stack.append(_SET)
            return pos
        if op == 0x97:  # NEXT_BUFFER: out-of-band data given by the caller (raw bytes)
            stack.append(_BUFFER)
            return pos
        if op == 0x98:  # READONLY_BUFFER
            if len(stack) <= self._fence():
                raise _underflow()
            return pos
        if op in (0x68, 0x6A, 0x71, 0x72):  # pragma: no cover - handled in the hot loop
            raise AssertionError("hot opcode in the cold path")
        raise _Fail(RULE_MALFORMED, f"invalid load key {op:#04x}")

    def _memo_get(self, idx: int) -> object:
        v = self.memo.get(idx)
        if v is _MISSING:
            v = self._memo_miss(idx)
        return v

    def _memo_miss(self, idx: int) -> object:
        """A GET of an index never stored: the loader fails, unless a PUT index was unknown."""
        self.memo_missed = True
        if self.memo_tainted:
            return _Result(None, "memo")
        raise _Fail(RULE_MALFORMED, f"memo value not found at index {idx}")

    def _call(self, fn: object, opname: str, *, init: bool) -> _Result:
        tf = type(fn)
        self.alloc_cold += _SZ_RESULT
        if tf is _Global:
            assert isinstance(fn, _Global)
            fn.rec[_R_CALLED] = True
            if init:
                fn.rec[_R_INIT] = True
            return _Result(fn.rec)
        if tf is _Result:
            assert isinstance(fn, _Result)
            return _Result(fn.src)
        raise _Fail(RULE_MALFORMED, f"{opname} on an object that is not callable")

    @staticmethod
    def _py2_string(raw: bytes | memoryview) -> object:
        """A Python 2 ``str``: decoded with the loader's *encoding* (ASCII by default).

        ASCII text is the same str under every encoding a loader uses; anything else depends on
        the loader (``utf-8`` for torch.load, ``latin1`` for numpy) and stays unresolved.
        """
        if len(raw) > _MAX_NAME_CHARS:
            return _PY2STR
        data = bytes(raw)
        if data.isascii():
            return data.decode("ascii")
        return _PY2STR


def _certainly_not_str(value: object) -> bool:
    if type(value) in (_Global, _Result):
        return False
    if type(value) is _Opaque:
        assert isinstance(value, _Opaque)
        return not value.strlike
    return type(value) is not str


def _producers(value: object) -> list[list[Any]]:
    if type(value) is _Global:
        assert isinstance(value, _Global)
        return [value.rec]
    if type(value) is _Result:
        assert isinstance(value, _Result)
        if value.src is not None:
            return [value.src]
    return []


def _describe(value: object) -> str:
    if type(value) is str:
        return "a literal string"
    if type(value) is _Global:
        return "an imported object"
    if type(value) is _Result:
        assert isinstance(value, _Result)
        return "a persistent load" if value.kind == "persistent" else "the result of a call"
    if value is _LONGSTR:
        return "a very long string"
    return "a Python 2 string whose value depends on the loader's encoding"


def _why_unresolved(module: object, name: object) -> str:
    parts = []
    if type(module) is not str:
        parts.append(f"module from {_describe(module)}")
    if type(name) is not str:
        parts.append(f"name from {_describe(name)}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Running one pickle in every reading, and freezing the results.


def to_buffer(data: bytes | bytearray | memoryview) -> Any:
    """A buffer indexable by byte (``bytes`` as is; views cast to unsigned bytes, no copy)."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def cut(buf: Any, start: int, limits: Limits) -> tuple[Any, int, int]:
    """Bound the run to ``limits.max_pickle_bytes`` from ``start``."""
    real_end = len(buf)
    end = min(real_end, start + limits.max_pickle_bytes)
    if end < real_end:
        # Cut the view at the byte limit so indexing past it ends the run like end of data.
        buf = memoryview(buf)[:end]
    return buf, end, real_end


def run_pickle(
    buf: Any,
    start: int,
    end: int,
    real_end: int,
    limits: Limits,
    deadline: float | None,
    memo: Memo | None = None,
    frame_end: int | None = None,
    max_ops: int | None = None,
) -> tuple[Raw, Memo]:
    """Run the pickle at ``start`` in every way a loader can read it; merge the readings.

    Returns the merged outcome (``ops_total``: opcodes executed by all readings) and the memo
    the first reading left (for a reused unpickler). ``memo`` and ``frame_end`` are what a
    reused C unpickler carries over from its last load; ``max_ops`` is the opcode budget left
    (``limits.max_opcodes`` by default), shared by every reading.
    """
    budget = limits.max_opcodes if max_ops is None else max_ops
    if start >= end:
        machine = _Machine(buf, start, end, real_end, limits, deadline, memo)
        raw = Raw(start=start, end=start)
        if end < real_end:
            machine._limit_issue("max_pickle_bytes", limits.max_pickle_bytes, start)
        else:
            machine._issue(RULE_TRUNCATED, "no pickle data (empty input)", start)
        raw.issues = machine.issues
        return raw, machine.memo
    snapshot = memo.copy() if memo is not None and len(memo) else None
    first = _Machine(buf, start, end, real_end, limits, deadline, memo, (), frame_end, budget)
    try:
        return first.run(), first.memo
    except _Cross as cross:
        split_at = cross.offset
    spent = first.ops_done
    # An argument crosses a frame's end: run one reading per choice at every crossing (a
    # reading that meets a new crossing forks again), and merge them.
    raws: list[Raw] = []
    memos: list[Memo] = []
    pending: list[tuple[str, ...]] = [(_JUMP,), (_LINEAR,)]
    capped = False
    while pending:
        if len(raws) >= limits.max_readings or spent >= budget:
            capped = True
            break
        choices = pending.pop()
        again = _Machine(
            buf,
            start,
            end,
            real_end,
            limits,
            deadline,
            snapshot.copy() if snapshot is not None else None,
            choices,
            frame_end,
            budget - spent,
        )
        try:
            raws.append(again.run())
            memos.append(again.memo)
        except _Cross:
            pending.extend([(*choices, _JUMP), (*choices, _LINEAR)])
        spent += again.ops_done
    if not raws:
        # The budget was spent before any reading finished: report the limit alone.
        limit = Raw(start=start, end=start)
        limit.limited = True
        raws.append(limit)
        memos.append(Memo())
    merged = merge(raws)
    merged.ops_total = spent
    merged.issues.insert(
        0,
        (
            RULE_FRAME_SPLIT,
            "an opcode argument runs past the end of a FRAME: pickle.loads and file-based "
            f"loaders read different opcodes from here ({len(raws)} readings analysed)",
            split_at,
            Verdict.UNKNOWN,
            "FRAME",
            (),
        ),
    )
    if capped:
        merged.limited = True
        merged.issues.append(
            (
                "limit.readings",
                "more readings of this pickle than the limits allow (frames split arguments "
                "again and again); the rest were not analysed",
                split_at,
                Verdict.UNKNOWN,
                f"max_readings={limits.max_readings}, max_opcodes={limits.max_opcodes}",
                (),
            )
        )
    return merged, memos[0] if memos else Memo()


def merge(raws: list[Raw]) -> Raw:
    """One result holding everything any of the readings would do."""
    base = raws[0]
    out = Raw(start=base.start, end=base.end, protocol=base.protocol)
    # Complete when some loader completes it: that loader returns an object and may read on.
    out.complete = any(r.complete for r in raws)
    out.inferred_protocol = max(r.inferred_protocol for r in raws)
    out.opcode_count = max(r.opcode_count for r in raws)
    out.limited = any(r.limited for r in raws)
    out.readings = len(raws)
    out.ops_total = sum(r.ops_total for r in raws)
    out.memo_dependent = any(r.memo_dependent for r in raws)
    firsts = [r.first_import for r in raws if r.first_import is not None]
    out.first_import = min(firsts) if firsts else None
    out.end = max(r.end for r in raws if r.complete or not out.complete)
    starts: set[int] = set()
    for raw in raws:
        starts.update(raw.next_starts)
    out.next_starts = sorted(starts)
    frame_ends = [r.frame_end for r in raws if r.frame_end is not None]
    out.frame_end = max(frame_ends) if frame_ends else None
    crossed = [r.crossed_at for r in raws if r.crossed_at is not None]
    out.crossed_at = min(crossed) if crossed else None
    by_key: dict[tuple[Any, ...], list[Any]] = {}
    seen_issues: set[tuple[Any, ...]] = set()
    nested_seen: set[tuple[int, int, str]] = set()
    embedded_seen: set[tuple[int, int]] = set()
    for raw in raws:
        for rec in raw.records:
            key = (rec[_R_MODULE], rec[_R_NAME], rec[_R_RESOLVED] or rec[_R_OFFSET])
            kept = by_key.get(key)
            if kept is None:
                by_key[key] = rec
                out.records.append(rec)
            elif kept is not rec:
                # Or the flags so that the merged record says what any reading does.
                kept[_R_CALLED] = kept[_R_CALLED] or rec[_R_CALLED]
                kept[_R_INIT] = kept[_R_INIT] or rec[_R_INIT]
                kept[_R_OPAQUE] += rec[_R_OPAQUE]
                kept[_R_COUNT] = max(kept[_R_COUNT], rec[_R_COUNT])
                kept[_R_OFFSET] = min(kept[_R_OFFSET], rec[_R_OFFSET])
        for issue in raw.issues:
            ikey = (*issue[:3], issue[4])
            if ikey not in seen_issues:
                seen_issues.add(ikey)
                out.issues.append(issue)
        if len(out.pids) < len(raw.pids):
            out.pids = list(raw.pids)
        for item in raw.nested:
            if item[:3] not in nested_seen:
                nested_seen.add(item[:3])
                out.nested.append(item)
        for span in raw.embedded:
            if span not in embedded_seen:
                embedded_seen.add(span)
                out.embedded.append(span)
    return out


def freeze(raws: list[Raw]) -> list[PickleAnalysis]:
    """Turn runs into immutable analyses (records shared between runs become one GlobalRef)."""
    frozen: dict[int, GlobalRef] = {}

    def ref(rec: list[Any]) -> GlobalRef:
        key = id(rec)
        got = frozen.get(key)
        if got is None:
            got = GlobalRef(
                module=rec[_R_MODULE],
                name=rec[_R_NAME],
                offset=rec[_R_OFFSET],
                opcode=rec[_R_OPCODE],
                called=rec[_R_CALLED],
                resolved=rec[_R_RESOLVED],
                init_called=rec[_R_INIT],
                count=rec[_R_COUNT],
            )
            frozen[key] = got
        return got

    simple = (str, int, bool, type(None))

    def freeze_value(value: object) -> object:
        tv = type(value)
        if tv in simple:
            return value
        if tv is tuple:
            assert isinstance(value, tuple)
            return tuple([v if type(v) in simple else freeze_value(v) for v in value])
        if tv is _Global:
            assert isinstance(value, _Global)
            return ref(value.rec)
        return None

    out = []
    for raw in raws:
        records = raw.records
        issues = tuple(
            PickleIssue(rule, msg, off, verdict, evidence, tuple(ref(r) for r in refs))
            for rule, msg, off, verdict, evidence, refs in raw.issues
        )
        starts = tuple(raw.next_starts)
        out.append(
            PickleAnalysis(
                start=raw.start,
                end=raw.end,
                complete=raw.complete,
                protocol=raw.protocol if raw.protocol is not None else raw.inferred_protocol,
                globals=tuple(ref(r) for r in records),
                issues=issues,
                persistent_ids=tuple(freeze_value(p) for p in raw.pids),
                opcode_count=raw.opcode_count,
                first_import_offset=raw.first_import,
                read_end=max([raw.end, *starts]),
                next_starts=starts,
                nested=tuple(
                    NestedPayload(start, end, loader, ref(rec))
                    for start, end, loader, rec in raw.nested
                ),
                opaque_nested=tuple(ref(r) for r in records if r[_R_OPAQUE]),
                embedded=tuple(raw.embedded),
                readings=raw.readings,
                work=raw.ops_total,
            )
        )
    return out
