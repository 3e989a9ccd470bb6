"""Differential mutation campaign against ``trainwarden scan`` (a script, not a CI test).

Every pickle-bearing attack of ``tests/attacks.py`` is rewritten with transformations that a
loader cannot tell apart (equivalent opcodes, no-op sequences, memo renumbering, frames moved,
zip members stored/deflated/reordered/renamed...). Each mutant is scanned first (its canary
must not appear), then loaded by the attack's natural loader in a separate interpreter (one
fork per mutant); a mutant whose canary does not appear there is discarded. A mutant that
runs and that the scanner calls ``safe`` is a bypass.

``--bytes`` instead feeds random byte-level damage (bit flips, truncations, splices) of the
attacks and of the legitimate files of ``tests/benign.py`` to the scanner only, looking for
exceptions, slow scans and ``safe`` verdicts on files that no longer parse as their format.

Usage: python scripts/mutate_attacks.py [--per-attack N] [--seed S] [--out DIR] [--bytes]
Results: one JSON line per mutant in DIR/results.jsonl and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import importlib.util
import io
import itertools
import json
import lzma
import os
import pickletools
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# ---------------------------------------------------------------------------------------------
# Pickle opcode rewriting
# ---------------------------------------------------------------------------------------------


@dataclass
class Op:
    """One opcode of a pickle: its name, argument and byte span."""

    name: str
    arg: Any
    pos: int
    end: int


def parse_ops(data: bytes) -> list[Op]:
    """The opcodes of the first pickle in ``data`` (raises on a malformed one)."""
    stream = io.BytesIO(data)
    raw = list(pickletools.genops(stream))
    ops = []
    for i, (opcode, arg, pos) in enumerate(raw):
        end = raw[i + 1][2] if i + 1 < len(raw) else stream.tell()
        ops.append(Op(opcode.name, arg, pos, end))
    return ops


def pickle_end(data: bytes) -> int:
    """Length of the first complete pickle in ``data``."""
    return parse_ops(data)[-1].end


def deframe(data: bytes) -> bytes:
    """The pickle without FRAME opcodes (what a loader reads is the same opcode stream)."""
    ops = parse_ops(data)
    return b"".join(data[o.pos : o.end] for o in ops if o.name != "FRAME")


def apply_edits(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Replace each ``[start, end)`` span (insertions: start == end) in one pass."""
    out, at = [], 0
    for start, end, repl in sorted(edits, key=lambda e: (e[0], e[1])):
        assert start >= at, "overlapping edits"
        out.append(data[at:start])
        out.append(repl)
        at = end
    out.append(data[at:])
    return b"".join(out)


def enc_str(text: str, kind: str) -> bytes | None:
    """``text`` pushed as a str by the opcode ``kind`` (None when it cannot be)."""
    raw = text.encode("utf-8", "surrogatepass")
    if kind == "SHORT_BINUNICODE":
        return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else None
    if kind == "BINUNICODE":
        return b"X" + struct.pack("<I", len(raw)) + raw
    if kind == "BINUNICODE8":
        return b"\x8d" + struct.pack("<Q", len(raw)) + raw
    if kind == "UNICODE":
        esc = text.encode("raw-unicode-escape")
        return (
            None if b"\n" in esc or b"\\" in text.encode("utf-8", "replace") else b"V" + esc + b"\n"
        )
    if not text.isascii():
        return None
    asc = text.encode("ascii")
    if kind == "SHORT_BINSTRING":
        return b"U" + bytes([len(asc)]) + asc if len(asc) < 256 else None
    if kind == "BINSTRING":
        return b"T" + struct.pack("<i", len(asc)) + asc
    if kind == "STRING":
        return None if "\n" in text or "\\" in text or "'" in text else b"S'" + asc + b"'\n"
    return None


STR_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
BYTESTR_OPS = ("SHORT_BINSTRING", "BINSTRING", "STRING")
INT_OPS = ("BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4")


def enc_int(value: int, kind: str) -> bytes | None:
    """``value`` pushed by the integer opcode ``kind`` (None when out of its range)."""
    if kind == "BININT1":
        return b"K" + bytes([value]) if 0 <= value < 256 else None
    if kind == "BININT2":
        return b"M" + struct.pack("<H", value) if 0 <= value < 65536 else None
    if kind == "BININT":
        return b"J" + struct.pack("<i", value) if -(2**31) <= value < 2**31 else None
    if kind == "INT":
        return b"I" + str(value).encode() + b"\n"  # "I01" is True; "I1" is 1
    if kind == "LONG":
        return b"L" + str(value).encode() + b"L\n"
    body = _encode_long(value)
    if kind == "LONG1":
        return b"\x8a" + bytes([len(body)]) + body if len(body) < 256 else None
    if kind == "LONG4":
        return b"\x8b" + struct.pack("<i", len(body)) + body
    return None


def _encode_long(value: int) -> bytes:
    """Two's-complement little-endian bytes, as ``pickle.encode_long``."""
    import pickle

    return pickle.encode_long(value)  # type: ignore[attr-defined,no-any-return]


def _memo_op(opcodes: bytes, index: int, style: str) -> bytes:
    """A memo opcode for ``index`` in ``style``; ``opcodes``: its text, 1-byte and 4-byte forms."""
    text, short, long = opcodes[0:1], opcodes[1:2], opcodes[2:3]
    if style == "text":
        return text + str(index).encode() + b"\n"
    if style == "bin" and index < 256:
        return short + bytes([index])
    return long + struct.pack("<I", index)


def memo_put(index: int, style: str) -> bytes:
    """PUT ``index`` in the given style (text, BINPUT, LONG_BINPUT)."""
    return _memo_op(b"pqr", index, style)


def memo_get(index: int, style: str) -> bytes:
    """GET ``index`` in the given style (text, BINGET, LONG_BINGET)."""
    return _memo_op(b"ghj", index, style)


@dataclass
class Slot:
    """One stack entry of the simulation: where its first opcode starts, what pushed it."""

    start: int
    op_index: int
    is_mark: bool = False


def simulate(ops: list[Op]) -> list[list[Slot]]:
    """For each opcode, the stack slots it consumed (in stack order), per ``pickletools``."""
    by_name = {o.name: o for o in pickletools.opcodes}
    stack: list[Slot] = []
    consumed: list[list[Slot]] = []
    for i, op in enumerate(ops):
        info = by_name[op.name]
        popped: list[Slot] = []
        for item in reversed(info.stack_before):
            if item is pickletools.stackslice:
                while stack and not stack[-1].is_mark:
                    popped.insert(0, stack.pop())
            elif stack:
                popped.insert(0, stack.pop())
        consumed.append(popped)
        start = min([s.start for s in popped] + [op.pos])
        for item in info.stack_after:
            if item is pickletools.markobject:
                stack.append(Slot(op.pos, i, is_mark=True))
            else:
                stack.append(Slot(start, i))
    return consumed


Mutator = Callable[[bytes, random.Random], bytes | None]


def m_noframe(data: bytes, rng: random.Random) -> bytes | None:
    """Remove every FRAME (a pickle of protocol 4+ need not be framed)."""
    out = deframe(data)
    return out if out != data else None


def m_reframe(data: bytes, rng: random.Random) -> bytes | None:
    """Frames cut at other opcode boundaries (several small frames, one big one)."""
    flat = deframe(data)
    ops = parse_ops(flat)
    if not ops or ops[0].name != "PROTO" or ops[0].arg < 4:
        return None
    body_ops = ops[1:]
    cuts = sorted(rng.sample(range(len(body_ops)), k=min(len(body_ops), rng.randint(1, 4))))
    out = [flat[: ops[0].end]]
    bounds = [0, *cuts, len(body_ops)]
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        chunk = flat[body_ops[a].pos : body_ops[b - 1].end]
        if b == len(body_ops):  # STOP outside the frame, as the pickler does
            chunk = chunk[:-1]
            out.append(b"\x95" + struct.pack("<Q", len(chunk)) + chunk + b".")
        else:
            out.append(b"\x95" + struct.pack("<Q", len(chunk)) + chunk)
    return b"".join(out)


def m_proto(data: bytes, rng: random.Random) -> bytes | None:
    """PROTO changed, removed or added (the unpickler accepts any opcode under any PROTO)."""
    ops = parse_ops(data)
    if ops[0].name == "PROTO":
        choice = rng.choice(["drop", 2, 3, 4, 5])
        if choice == "drop":
            return data[ops[0].end :]
        return b"\x80" + bytes([choice]) + data[ops[0].end :]
    return b"\x80" + bytes([rng.choice([2, 3, 4, 5])]) + data


NOPS = [
    b"(1",  # MARK POP_MARK
    b"N0",  # NONE POP
    b"\x880",  # NEWTRUE POP
    b"K\x070",  # BININT1 POP
    b"\x8c\x02os0",  # a string nobody uses
    b"\x8c\x0cposix system0",
    b"](1",  # empty list, MARK, POP_MARK, then popped below
    b")0",  # EMPTY_TUPLE POP
    b"}0",  # EMPTY_DICT POP
    b"(N1",  # MARK NONE POP_MARK
]


def _boundaries(ops: list[Op]) -> list[int]:
    """Positions between opcodes where a no-op may go: after PROTO, before STOP."""
    first = 1 if ops[0].name == "PROTO" else 0
    return [ops[i].pos for i in range(first, len(ops))]


def m_nops(data: bytes, rng: random.Random) -> bytes | None:
    """No-op opcode sequences inserted between opcodes."""
    flat = deframe(data)
    ops = parse_ops(flat)
    edits = []
    for pos in rng.sample(_boundaries(ops), k=min(len(ops) - 1, rng.randint(1, 6))):
        nop = rng.choice(NOPS)
        if nop == b"](1":
            nop = b"](10"
        edits.append((pos, pos, nop))
    return apply_edits(flat, edits)


def m_dead_put(data: bytes, rng: random.Random) -> bytes | None:
    """A value stored in the memo under an index nobody reads, then popped."""
    flat = deframe(data)
    ops = parse_ops(flat)
    used = {
        o.arg
        for o in ops
        if o.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET")
    }
    if any(o.name == "MEMOIZE" for o in ops):
        # MEMOIZE numbers by count: a dead PUT must not shift what later MEMOIZEs number.
        count = sum(o.name == "MEMOIZE" for o in ops) + len(used) + 10
        idx = count + rng.randint(10, 300)
    else:
        idx = rng.randint(0, 400)
        while idx in used:
            idx += 1
    pos = rng.choice(_boundaries(ops))
    style = rng.choice(["text", "bin", "long"])
    return apply_edits(flat, [(pos, pos, b"N" + memo_put(idx, style) + b"0")])


def m_memoize_end(data: bytes, rng: random.Random) -> bytes | None:
    """MEMOIZE of the result just before STOP (changes no later index)."""
    flat = deframe(data)
    ops = parse_ops(flat)
    return apply_edits(flat, [(ops[-1].pos, ops[-1].pos, b"\x94")])


def _swap_ops(data: bytes, respell: Callable[[Op], bytes | None]) -> bytes | None:
    """``data`` with each opcode ``respell`` gives new bytes for rewritten (None: unchanged)."""
    flat = deframe(data)
    edits = []
    for op in parse_ops(flat):
        repl = respell(op)
        if repl is not None:
            edits.append((op.pos, op.end, repl))
    return apply_edits(flat, edits) if edits else None


def m_strings(data: bytes, rng: random.Random) -> bytes | None:
    """String opcodes swapped for equivalent ones (BINUNICODE8, UNICODE, BINSTRING...)."""

    def respell(op: Op) -> bytes | None:
        if op.name in STR_OPS + BYTESTR_OPS and isinstance(op.arg, str) and rng.random() < 0.7:
            kinds = list(STR_OPS) + (list(BYTESTR_OPS) if rng.random() < 0.3 else [])
            return enc_str(op.arg, rng.choice(kinds))
        return None

    return _swap_ops(data, respell)


def m_ints(data: bytes, rng: random.Random) -> bytes | None:
    """Integer opcodes swapped for equivalent ones (INT text, LONG1, BININT...)."""

    def respell(op: Op) -> bytes | None:
        if op.name in INT_OPS and isinstance(op.arg, int) and not isinstance(op.arg, bool):
            return enc_int(op.arg, rng.choice(INT_OPS))
        return None

    return _swap_ops(data, respell)


def m_bytes(data: bytes, rng: random.Random) -> bytes | None:
    """Bytes opcodes swapped (SHORT_BINBYTES, BINBYTES, BINBYTES8)."""

    def respell(op: Op) -> bytes | None:
        if op.name not in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            return None
        if not isinstance(op.arg, bytes):
            return None
        current = {"SHORT_BINBYTES": "C", "BINBYTES": "B", "BINBYTES8": "\x8e"}[op.name]
        kind = rng.choice([k for k in ("C", "B", "\x8e") if k != current])
        if kind == "C" and len(op.arg) < 256:
            return b"C" + bytes([len(op.arg)]) + op.arg
        if kind == "B":
            return b"B" + struct.pack("<I", len(op.arg)) + op.arg
        return b"\x8e" + struct.pack("<Q", len(op.arg)) + op.arg

    return _swap_ops(data, respell)


def m_tuples(data: bytes, rng: random.Random) -> bytes | None:
    """TUPLE1/2/3 and EMPTY_TUPLE written as MARK ... TUPLE, and back."""
    flat = deframe(data)
    ops = parse_ops(flat)
    consumed = simulate(ops)
    edits: list[tuple[int, int, bytes]] = []
    taken: set[int] = set()
    for i, op in enumerate(ops):
        if rng.random() < 0.3:
            continue
        if op.name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            start = consumed[i][0].start if consumed[i] else op.pos
            if start in taken:
                continue
            taken.add(start)
            edits.append((start, start, b"("))
            edits.append((op.pos, op.end, b"t"))
        elif op.name == "EMPTY_TUPLE":
            edits.append((op.pos, op.end, b"(t"))
        elif op.name == "TUPLE":
            items = consumed[i]
            mark_pos = _mark_before(ops, consumed, i)
            if mark_pos is None or len(items) > 3 or mark_pos in taken:
                continue
            taken.add(mark_pos)
            edits.append((mark_pos, mark_pos + 1, b""))
            edits.append((op.pos, op.end, (b")", b"\x85", b"\x86", b"\x87")[len(items)]))
    if not edits:
        return None
    try:
        return apply_edits(flat, edits)
    except AssertionError:
        return None


def _mark_before(ops: list[Op], consumed: list[list[Slot]], i: int) -> int | None:
    """Where the MARK that opcode ``i`` pops to is (a MARK opcode's position), if known."""
    items = consumed[i]
    start = items[0].start if items else ops[i].pos
    for j in range(i - 1, -1, -1):
        if ops[j].name == "MARK" and ops[j].end <= start:
            return ops[j].pos
    return None


def m_globals(data: bytes, rng: random.Random) -> bytes | None:
    """GLOBAL written as two strings and STACK_GLOBAL, and STACK_GLOBAL as GLOBAL."""
    flat = deframe(data)
    ops = parse_ops(flat)
    edits = []
    for i, op in enumerate(ops):
        if op.name == "GLOBAL":
            module, name = op.arg.split(" ", 1)
            a = enc_str(module, rng.choice(STR_OPS[:3]))
            b = enc_str(name, rng.choice(STR_OPS[:3]))
            if a and b:
                edits.append((op.pos, op.end, a + b + b"\x93"))
        elif op.name == "STACK_GLOBAL":
            rewritten = _stack_global_as_global(flat, ops, i)
            if rewritten is not None:
                edits.append(rewritten)
    return apply_edits(flat, edits) if edits else None


MEMO_OPS = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")


def _stack_global_as_global(flat: bytes, ops: list[Op], i: int) -> tuple[int, int, bytes] | None:
    """STACK_GLOBAL at ``i`` as GLOBAL; the two strings' memo entries are kept (pushed, popped)."""
    strs = STR_OPS + BYTESTR_OPS
    found: list[int] = []
    j = i - 1
    while j >= 0 and len(found) < 2:
        if ops[j].name in strs:
            found.insert(0, j)
        elif ops[j].name not in MEMO_OPS:
            return None
        j -= 1
    if len(found) < 2:
        return None
    m, n = ops[found[0]], ops[found[1]]
    if "\n" in m.arg + n.arg:
        return None
    kept = b""
    for k in range(found[0], i):
        kept += flat[ops[k].pos : ops[k].end]
        if k + 1 == i or ops[k + 1].name in strs:
            kept += b"0"
    return (m.pos, ops[i].end, kept + b"c" + f"{m.arg}\n{n.arg}\n".encode())


def m_reduce(data: bytes, rng: random.Random) -> bytes | None:
    """REDUCE of a literal argument tuple written as OBJ, or INST when the callable is a GLOBAL."""
    flat = deframe(data)
    ops = parse_ops(flat)
    consumed = simulate(ops)
    edits: list[tuple[int, int, bytes]] = []
    for i, op in enumerate(ops):
        if op.name != "REDUCE" or len(consumed[i]) != 2 or i < 1:
            continue
        fn, args = consumed[i]
        t_index = args.op_index
        while t_index > 0 and ops[t_index].name in MEMO_OPS:
            t_index -= 1
        t = ops[t_index]
        if any(ops[k].name not in MEMO_OPS for k in range(t_index + 1, i)) or t.name not in (
            "TUPLE1",
            "TUPLE2",
            "TUPLE3",
            "EMPTY_TUPLE",
            "TUPLE",
        ):
            continue
        drop_mark = _mark_before(ops, consumed, t_index) if t.name == "TUPLE" else None
        if t.name == "TUPLE" and drop_mark is None:
            continue
        fn_ops = [o for o in ops if fn.start <= o.pos and o.end <= args.start]
        inst = None
        if len(fn_ops) == 1 and fn_ops[0].name == "GLOBAL" and rng.random() < 0.5:
            module, name = fn_ops[0].arg.split(" ", 1)
            inst = b"i" + f"{module}\n{name}\n".encode()
        local: list[tuple[int, int, bytes]] = []
        if inst is not None:
            local.append((fn_ops[0].pos, fn_ops[0].end, b"("))
        else:
            local.append((fn.start, fn.start, b"("))
        if drop_mark is not None:
            local.append((drop_mark, drop_mark + 1, b""))
        local.append((t.pos, t.end, b""))
        # The tuple's memo entries are kept, with a stand-in value.
        local.extend(
            (ops[k].pos, ops[k].end, b"N" + flat[ops[k].pos : ops[k].end] + b"0")
            for k in range(t_index + 1, i)
        )
        local.append((op.pos, op.end, inst if inst is not None else b"o"))
        spans = [(a, b) for a, b, _ in edits]
        if any(not (b2 <= a or a2 >= b) or a == a2 for a, b, _ in local for a2, b2 in spans):
            continue
        edits.extend(local)
    if not edits:
        return None
    try:
        return apply_edits(flat, edits)
    except AssertionError:
        return None


def m_memo(data: bytes, rng: random.Random) -> bytes | None:
    """Memo indices renumbered (MEMOIZE made explicit PUTs) in text, BIN or LONG_BIN form."""
    flat = deframe(data)
    ops = parse_ops(flat)
    names = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET"}
    if not any(o.name in names for o in ops):
        return None
    mapping: dict[int, int] = {}
    base = rng.choice([0, 7, 250, 300, 70000])
    spread = rng.choice([1, 3])

    def new(old: int) -> int:
        if old not in mapping:
            mapping[old] = base + spread * len(mapping) + rng.randint(0, spread - 1)
        return mapping[old]

    seen: set[int] = set()
    edits = []
    for op in ops:
        style = rng.choice(["text", "bin", "long"])
        if op.name == "MEMOIZE":
            idx = len(seen)
            seen.add(idx)
            edits.append((op.pos, op.end, memo_put(new(idx), style)))
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            seen.add(int(op.arg))
            edits.append((op.pos, op.end, memo_put(new(int(op.arg)), style)))
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            edits.append((op.pos, op.end, memo_get(new(int(op.arg)), style)))
    return apply_edits(flat, edits)


def m_proto0(data: bytes, rng: random.Random) -> bytes | None:
    """As close to a protocol-0 text pickle as the opcodes allow (all rewrites at once)."""
    out: bytes | None = deframe(data)
    forced = rng.random()
    for step in (m_memo, m_globals, m_tuples, m_strings, m_ints):
        assert out is not None
        nxt = step(out, _Always(forced))
        out = nxt if nxt is not None else out
    ops = parse_ops(out)
    return out[ops[0].end :] if ops[0].name == "PROTO" else out


class _Always(random.Random):
    """A random source whose ``random()`` never skips a rewrite and picks text forms."""

    def random(self) -> float:
        return 0.99

    def choice(self, seq: Any) -> Any:
        for preferred in ("UNICODE", "INT", "text"):
            if preferred in seq:
                return preferred
        return super().choice(seq)


PICKLE_MUTATORS: dict[str, Mutator] = {
    "noframe": m_noframe,
    "reframe": m_reframe,
    "proto": m_proto,
    "nops": m_nops,
    "dead-put": m_dead_put,
    "memoize-end": m_memoize_end,
    "strings": m_strings,
    "ints": m_ints,
    "bytes": m_bytes,
    "tuples": m_tuples,
    "globals": m_globals,
    "reduce-obj-inst": m_reduce,
    "memo": m_memo,
    "proto0": m_proto0,
}


def m_combo(data: bytes, rng: random.Random) -> bytes | None:
    """Two to four of the rewrites above, one after the other."""
    out = data
    for name in rng.sample([n for n in PICKLE_MUTATORS if n != "proto"], k=rng.randint(2, 4)):
        try:
            nxt = PICKLE_MUTATORS[name](out, rng)
        except Exception:
            nxt = None
        out = nxt if nxt is not None else out
    return out if out != data else None


PICKLE_MUTATORS["combo"] = m_combo


# ---------------------------------------------------------------------------------------------
# Containers: where the pickles are, and how the container itself can be rewritten
# ---------------------------------------------------------------------------------------------


def split_pickles(data: bytes) -> list[tuple[bool, bytes]]:
    """Consecutive pickles then the trailing bytes: ``(is_pickle, bytes)`` segments."""
    out: list[tuple[bool, bytes]] = []
    at = 0
    while at < len(data):
        try:
            n = pickle_end(data[at:])
        except Exception:
            break
        out.append((True, data[at : at + n]))
        at += n
    if at < len(data):
        out.append((False, data[at:]))
    return out


def mutate_pickle_stream(data: bytes, kind: str, rng: random.Random) -> bytes | None:
    """Apply pickle mutator ``kind`` to one (or every) pickle in a stream of pickles."""
    segs = split_pickles(data)
    idx = [i for i, (p, _) in enumerate(segs) if p]
    if not idx:
        return None
    chosen = idx if rng.random() < 0.4 else [rng.choice(idx)]
    changed = False
    parts = []
    for i, (_is_pickle, seg) in enumerate(segs):
        if i in chosen:
            try:
                new = PICKLE_MUTATORS[kind](seg, rng)
            except Exception:
                new = None
            if new is not None and new != seg:
                seg, changed = new, True
        parts.append(seg)
    return b"".join(parts) if changed else None


NPY_MAGIC = b"\x93NUMPY"


def npy_split(data: bytes) -> tuple[bytes, bytes] | None:
    """``(header, body)`` of an .npy file."""
    if not data.startswith(NPY_MAGIC):
        return None
    major = data[6]
    if major == 1:
        hlen, off = struct.unpack("<H", data[8:10])[0], 10
    else:
        hlen, off = struct.unpack("<I", data[8:12])[0], 12
    return data[: off + hlen], data[off + hlen :]


def mutate_member(name: str, data: bytes, kind: str, rng: random.Random) -> bytes | None:
    """A pickle mutation of one archive member (a pickle, or an .npy's object body)."""
    parts = npy_split(data)
    if parts is not None:
        new = mutate_pickle_stream(parts[1], kind, rng)
        return None if new is None else parts[0] + new
    if data[:1] == b"\x80" or name.endswith(".pkl"):
        return mutate_pickle_stream(data, kind, rng)
    return None


ZIP_KINDS = (
    "stored",
    "deflated",
    "reorder",
    "extra-member",
    "comment",
    "zip64",
    "descriptor",
    "prefix",
    "bzip2",
    "lzma",
)


def rezip(data: bytes, kind: str, rng: random.Random, member_kind: str | None) -> bytes | None:
    """The archive rewritten by ``zipfile`` with one container-level change (and optionally
    a pickle mutation of its pickle members)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [(i, z.read(i)) for i in z.infolist()]
    names = [i.filename for i, _ in members]
    prefix = names[0].split("/", 1)[0] if "/" in names[0] else None
    entries: list[tuple[str, bytes, int]] = []
    changed = False
    for info, body in members:
        name = info.filename
        if member_kind is not None:
            new = mutate_member(name, body, member_kind, rng)
            if new is not None:
                body, changed = new, True
        method = info.compress_type
        if kind == "stored":
            method = zipfile.ZIP_STORED
        elif kind == "deflated":
            method = zipfile.ZIP_DEFLATED
        elif kind == "bzip2":
            method = zipfile.ZIP_BZIP2
        elif kind == "lzma":
            method = zipfile.ZIP_LZMA
        if kind == "prefix" and prefix and all(n.startswith(prefix + "/") for n in names):
            name = "renamed_" + str(rng.randint(0, 999)) + name[len(prefix) :]
        entries.append((name, body, method))
    if kind == "reorder":
        rng.shuffle(entries)
    if kind == "extra-member":
        where = rng.randint(0, len(entries))
        extra = (prefix + "/" if prefix else "") + rng.choice(
            ["README", ".data/extra", "notes.txt"]
        )
        entries.insert(where, (extra, b"harmless extra member\n", zipfile.ZIP_STORED))
    from attacks import _NoSeek  # zipfile writes data descriptors to a sink it cannot seek

    sink: Any = _NoSeek() if kind == "descriptor" else io.BytesIO()
    with zipfile.ZipFile(sink, "w") as out:
        for name, body, method in entries:
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zi.compress_type = method
            with out.open(zi, "w", force_zip64=(kind == "zip64")) as f:
                f.write(body)
        if kind == "comment":
            out.comment = b"trainwarden mutation campaign " * rng.randint(1, 3)
    result = bytes(sink.data) if kind == "descriptor" else sink.getvalue()
    if member_kind is not None and not changed:
        return None
    return result


COMPRESSORS: dict[str, tuple[bytes, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (b"\x1f\x8b", gzip.decompress, lambda b: gzip.compress(b, mtime=0)),
    "bz2": (b"BZh", bz2.decompress, bz2.compress),
    "xz": (b"\xfd7zXZ\x00", lzma.decompress, lzma.compress),
    "zlib": (b"\x78", zlib.decompress, zlib.compress),
    "lzma-alone": (
        b"\x5d\x00",
        lambda b: lzma.decompress(b, format=lzma.FORMAT_ALONE),
        lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
    ),
}


def container_of(data: bytes) -> str:
    """What holds the pickles: zip, npy, a compressor's name, or raw."""
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if data.startswith(NPY_MAGIC):
        return "npy"
    for name, (magic, decomp, _) in COMPRESSORS.items():
        if data.startswith(magic):
            try:
                decomp(data)
            except Exception:
                continue
            return name
    return "raw"


def make_mutant(data: bytes, kind: str, rng: random.Random) -> bytes | None:
    """One mutant of a sample.

    ``kind`` is a pickle mutator, ``zip:<kind>`` or ``zip:<kind>+<pickle mutator>``.
    """
    box = container_of(data)
    if kind.startswith("zip:"):
        if box != "zip":
            return None
        zkind, _, pkind = kind[4:].partition("+")
        return rezip(data, zkind, rng, pkind or None)
    if box == "zip":
        return rezip(data, rng.choice(["stored", "deflated"]), rng, kind)
    if box == "npy":
        parts = npy_split(data)
        assert parts is not None
        new = mutate_pickle_stream(parts[1], kind, rng)
        return None if new is None else parts[0] + new
    if box in COMPRESSORS:
        _, decomp, comp = COMPRESSORS[box]
        inner = mutate_pickle_stream(decomp(data), kind, rng)
        return None if inner is None else comp(inner)
    return mutate_pickle_stream(data, kind, rng)


# ---------------------------------------------------------------------------------------------
# The natural-load server: a fresh interpreter that forks once per mutant
# ---------------------------------------------------------------------------------------------

SERVER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import attacks
import importlib.util
for mod in ("numpy", "torch", "joblib"):
    if importlib.util.find_spec(mod) is not None:
        __import__(mod)
for line in sys.stdin:
    loader_name, sample, canary, settle = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(os.devnull, os.O_RDWR)
            for i in (0, 1, 2):
                os.dup2(fd, i)
            os.chdir(os.path.dirname(sample))
            getattr(attacks, loader_name)(attacks.Path(sample))
        except BaseException:
            pass
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, 9); os.waitpid(pid, 0); break
        time.sleep(0.005)
    end = time.monotonic() + settle
    while not os.path.exists(canary) and time.monotonic() < end:
        time.sleep(0.02)
    print(json.dumps(os.path.exists(canary)), flush=True)
"""

ASYNC_HINTS = ("popen", "asyncio", "pty", "spawn", "subprocess", "webbrowser", "getoutput")


class Loader:
    """A long-lived interpreter that natural-loads one mutant at a time (fork per mutant)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(ROOT / "tests")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )

    def runs(self, attack_id: str, loader: str, sample: Path, canary: Path) -> bool:
        """Whether ``loader`` (a function of tests/attacks.py) on ``sample`` creates ``canary``."""
        settle = 3.0 if any(h in attack_id for h in ASYNC_HINTS) else 0.3
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([loader, str(sample), str(canary), settle]) + "\n")
        self.proc.stdin.flush()
        return bool(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def reset(canary: Path) -> None:
    """Remove the canary (some payloads, venv.create, make it a directory)."""
    if canary.is_dir() and not canary.is_symlink():
        shutil.rmtree(canary)
    else:
        canary.unlink(missing_ok=True)


class _Timeout(Exception):
    pass


def _alarm(_sig: int, _frame: Any) -> None:
    raise _Timeout


def scan_one(path: Path) -> tuple[str, str, float, str]:
    """``(verdict, format, seconds, error)`` of one file; a hang past 30 s is an error."""
    from trainwarden.scan import scan_path

    t0 = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        report = scan_path(path)
    except _Timeout:
        return "hang", "", time.monotonic() - t0, "timeout"
    except Exception:
        return "crash", "", time.monotonic() - t0, traceback.format_exc()[-800:]
    finally:
        signal.alarm(0)
    fmt = report.files[0].format if report.files else ""
    return report.verdict.value, fmt, time.monotonic() - t0, ""


PICKLE_KINDS = list(PICKLE_MUTATORS)

# Containers a raw pickle payload can be moved into, with the loader that then runs it.
TRANSPLANTS = {
    "torch-zip": "torch_load_unsafe",
    "torch-legacy-0": "torch_load_unsafe",
    "torch-legacy-1": "torch_load_unsafe",
    "torch-legacy-2": "torch_load_unsafe",
    "torch-legacy-3": "torch_load_unsafe",
    "torch-legacy-4": "torch_load_unsafe",
    "npy": "numpy_load_pickle",
    "npz": "numpy_load_pickle",
    "joblib-raw": "joblib_load",
    "joblib-gzip": "joblib_load",
    "joblib-zlib": "joblib_load",
    "joblib-bz2": "joblib_load",
    "joblib-xz": "joblib_load",
    "joblib-lzma": "joblib_load",
    "gzip": "unpack_and_pickle_load",
    "bz2": "unpack_and_pickle_load",
    "xz": "unpack_and_pickle_load",
    "zip": "unpack_and_pickle_load",
    "tar": "unpack_and_pickle_load",
    "second-pickle": "pickle_load_all",
}

_TORCH_CACHE: dict[str, Any] = {}


def _torch_benign() -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """The members of a benign torch zip and the parts of a benign legacy file (built once)."""
    if not _TORCH_CACHE:
        import attacks

        state = attacks._benign_state()
        _TORCH_CACHE["zip"] = attacks._torch_zip_members(state)
        _TORCH_CACHE["legacy"] = attacks._legacy_parts()
    return _TORCH_CACHE["zip"], _TORCH_CACHE["legacy"]


def _npy(payload: bytes) -> bytes:
    """An .npy of one object element whose body is ``payload``."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def transplant(data: bytes, target: str, rng: random.Random) -> bytes | None:
    """The first pickle of ``data`` (optionally mutated) moved into another container."""
    payload = data[: pickle_end(data)]
    if rng.random() < 0.5:
        mutated = mutate_pickle_stream(payload, rng.choice(PICKLE_KINDS), rng)
        payload = mutated if mutated is not None else payload
    if target == "torch-zip":
        members = [(n, payload if n.endswith("data.pkl") else d) for n, d in _torch_benign()[0]]
        return _zip(members, rng)
    if target.startswith("torch-legacy-"):
        parts = list(_torch_benign()[1])
        parts[int(target[-1])] = payload
        return b"".join(parts)
    if target == "npy":
        return _npy(payload) + payload
    if target == "npz":
        return _zip(
            [("w.npy", _npy(b"") + b"\x80\x04N."), ("meta.npy", _npy(payload) + payload)], rng
        )
    if target.startswith("joblib-"):
        comp = target[len("joblib-") :]
        if comp == "raw":
            return payload
        comp = "lzma-alone" if comp == "lzma" else comp
        return COMPRESSORS[comp][2](payload)
    if target in ("gzip", "bz2", "xz"):
        return COMPRESSORS[target][2](payload)
    if target == "zip":
        return _zip([("model.pkl", payload)], rng)
    if target == "tar":
        import tarfile

        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as t:
            info = tarfile.TarInfo("model.pkl")
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
        return out.getvalue()
    if target == "second-pickle":
        return b"\x80\x04}." + payload
    return None


def _zip(members: list[tuple[str, bytes]], rng: random.Random) -> bytes:
    """A zip of ``members``, each stored or deflated at random."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, body in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
            z.writestr(info, body)
    return out.getvalue()


ZIP_ONLY = [f"zip:{k}" for k in ZIP_KINDS]
ZIP_MIXED = [
    f"zip:{k}+{p}"
    for k in ("stored", "deflated", "descriptor", "zip64", "prefix")
    for p in PICKLE_KINDS
]


def campaign(args: argparse.Namespace) -> int:
    """Mutate, scan and natural-load; write results and print the summary table."""
    from attacks import ATTACKS, missing_requirements
    from canary import Canary

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = (out / "results.jsonl").open("w")
    rng = random.Random(args.seed)
    env = {"HF_HOME": str(out / "_hf"), "TORCHINDUCTOR_CACHE_DIR": str(out / "_ind")}
    loader = Loader(env)
    table: dict[str, Counter[str]] = defaultdict(Counter)
    bypasses = []
    only = set(args.only.split(",")) if args.only else None
    for attack in ATTACKS:
        if only and attack.id not in only:
            continue
        if missing_requirements(attack) or not attack.executes:
            continue
        canary = Canary(out / attack.id / "canary-payload-ran")
        try:
            sample = attack.build(out / attack.id / "sample", canary)
        except Exception:
            continue
        if not sample.is_file():
            continue
        data = sample.read_bytes()
        box = container_of(data)
        kinds = PICKLE_KINDS + (ZIP_ONLY + ZIP_MIXED if box == "zip" else [])
        own = attack.natural_load.__name__
        plans: list[tuple[str, str]] = [(k, own) for k in kinds]
        if own == "pickle_load" and box == "raw":
            plans += [(f"tx:{t}", loader) for t, loader in TRANSPLANTS.items()]
        n = 0
        for k in range(args.per_attack * 3):
            if n >= args.per_attack:
                break
            kind, loader_name = plans[k] if k < len(plans) else rng.choice(plans)
            try:
                mutant = (
                    transplant(data, kind[3:], rng)
                    if kind.startswith("tx:")
                    else make_mutant(data, kind, rng)
                )
            except Exception:
                mutant = None
            if mutant is None or mutant == data:
                continue
            n += 1
            path = sample.with_name(f"mutant-{n:04d}{sample.suffix}")
            path.write_bytes(mutant)
            reset(canary.path)
            verdict, fmt, secs, err = scan_one(path)
            leaked = canary.exists()
            reset(canary.path)
            ran = loader.runs(attack.id, loader_name, path, canary.path)
            reset(canary.path)
            row = {
                "attack": attack.id,
                "kind": kind,
                "container": box,
                "loader": loader_name,
                "verdict": verdict,
                "format": fmt,
                "seconds": round(secs, 3),
                "ran": ran,
                "canary_during_scan": leaked,
                "error": err,
                "file": str(path),
            }
            results.write(json.dumps(row) + "\n")
            results.flush()
            base = kind.split("+")[0] if kind.startswith(("zip:", "tx:")) else kind
            if kind.startswith("zip:") and "+" in kind:
                base = "zip+pickle:" + kind.split("+")[1]
            t = table[base]
            t["tried"] += 1
            if ran:
                t["ran"] += 1
                t[verdict] += 1
            if verdict in ("crash", "hang") or leaked:
                t["crash/leak"] += 1
            if (ran and verdict == "safe") or verdict in ("crash", "hang") or leaked:
                bypasses.append(row)
            if not (ran and verdict == "safe"):
                path.unlink()
    loader.close()
    _print_table(table)
    print(f"\n{len(bypasses)} bypass/crash rows")
    for row in bypasses[:200]:
        print(json.dumps(row))
    return 1 if bypasses else 0


def _print_table(table: dict[str, Counter[str]]) -> None:
    cols = ["tried", "ran", "safe", "unknown", "unsafe", "crash/leak"]
    print(f"{'kind':32} " + " ".join(f"{c:>10}" for c in cols))
    total: Counter[str] = Counter()
    for kind in sorted(table):
        total.update(table[kind])
        print(f"{kind:32} " + " ".join(f"{table[kind][c]:>10}" for c in cols))
    print(f"{'TOTAL':32} " + " ".join(f"{total[c]:>10}" for c in cols))


# ---------------------------------------------------------------------------------------------
# Byte-level damage, scanner only
# ---------------------------------------------------------------------------------------------


def damage(data: bytes, other: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random byte-level mutation: bit flips, truncation, splice, byte run insert/delete."""
    kind = rng.choice(["flip", "flip", "truncate", "splice", "insert", "delete", "set"])
    buf = bytearray(data)
    if not buf:
        return kind, bytes(buf)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)) :]
    elif kind == "splice":
        cut = rng.randrange(len(buf))
        buf = buf[:cut] + other[rng.randrange(max(1, len(other))) :]
    elif kind == "insert":
        i = rng.randrange(len(buf))
        buf[i:i] = rng.randbytes(rng.randint(1, 16))
    elif kind == "delete":
        i = rng.randrange(len(buf))
        del buf[i : i + rng.randint(1, 16)]
    else:
        i = rng.randrange(len(buf))
        buf[i] = rng.choice([0, 0xFF, 0x80, 0x7F, ord("."), ord("("), ord("R")])
    return kind, bytes(buf)


def parses_as(fmt: str, data: bytes) -> bool | None:
    """Whether ``data`` still parses as the format the scanner named (None: no reference).

    Parses as its loader does, as far as what the scanner judges goes: torch's reader does not
    check the zip's CRCs (a flipped bit in tensor data still loads), and an ``.npy`` whose data
    is cut short still has the header that says whether loading unpickles.
    """
    try:
        if fmt in ("pickle",):
            parse_ops(data)
            return True
        if fmt == "torch-zip":
            import torch

            reader = torch._C.PyTorchFileReader(io.BytesIO(data))
            for name in reader.get_all_records():
                reader.get_record(name)
            return True
        if fmt in ("zip", "numpy-npz", "torchscript", "keras", "skops"):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                return z.testzip() is None
        if fmt == "numpy-npy":
            import numpy as np

            fmt_ = np.lib.format
            stream = io.BytesIO(data)
            version = fmt_.read_magic(stream)
            read = fmt_.read_array_header_1_0 if version == (1, 0) else fmt_.read_array_header_2_0
            read(stream)
            return True
    except Exception:
        return False
    return None


SLOW_BENIGN = ("hf-trainer", "lightning", "accelerate", "keras", "peft", "diffusers", "tf-", "onnx")


def byte_campaign(args: argparse.Namespace) -> int:
    """Random damage of attacks and legitimate files, scanned only."""
    from attacks import ATTACKS
    from benign import BENIGN
    from canary import Canary

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    seeds: list[tuple[str, bytes]] = []
    for attack in ATTACKS:
        try:
            p = attack.build(out / "a" / attack.id, Canary(out / "a" / attack.id / "canary"))
        except Exception:
            continue
        if p.is_file() and p.stat().st_size < 4 << 20:
            seeds.append((attack.id, p.read_bytes()))
    for benign in BENIGN:
        # Whole training runs and the heavier frameworks take minutes to build: left out.
        if benign.id.startswith(SLOW_BENIGN) or any(
            importlib.util.find_spec(r) is None for r in benign.requires
        ):
            continue
        try:
            p = benign.build(out / "b" / benign.id)
        except Exception:
            continue
        if p.is_file() and p.stat().st_size < 4 << 20:
            seeds.append((benign.id, p.read_bytes()))
    print(f"{len(seeds)} seed files")
    counts: Counter[str] = Counter()
    problems = []
    work = out / "work"
    work.mkdir(exist_ok=True)
    for n in range(args.byte_mutants):
        sid, data = rng.choice(seeds)
        kind, mutant = damage(data, rng.choice(seeds)[1], rng)
        path = work / f"m{n % 4}.bin"
        path.write_bytes(mutant)
        verdict, fmt, secs, err = scan_one(path)
        counts[verdict] += 1
        counts[f"{kind}"] += 1
        bad = verdict in ("crash", "hang") or secs > 10
        if verdict == "safe" and parses_as(fmt, mutant) is False:
            bad = True
            err = f"safe but does not parse as {fmt}"
        if bad:
            keep = out / f"problem-{n}.bin"
            keep.write_bytes(mutant)
            problems.append(
                {
                    "seed": sid,
                    "kind": kind,
                    "verdict": verdict,
                    "format": fmt,
                    "seconds": round(secs, 2),
                    "error": err,
                    "file": str(keep),
                }
            )
    print(dict(counts))
    print(f"{len(problems)} problems")
    for p in problems[:100]:
        print(json.dumps(p))
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-attack", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", default="", help="comma-separated attack ids")
    parser.add_argument("--bytes", action="store_true", help="byte-level damage, scanner only")
    parser.add_argument("--byte-mutants", type=int, default=3000)
    args = parser.parse_args()
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="tw-mutants-")
    print(f"output: {args.out}", file=sys.stderr)
    return byte_campaign(args) if args.bytes else campaign(args)


if __name__ == "__main__":
    sys.exit(main())
