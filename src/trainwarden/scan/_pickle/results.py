"""What the pickle machine reports: imports, issues, nested payloads, one analysis per pickle.

Plain frozen data with no behaviour beyond small derived properties, so the policy, the
format readers and the loader can share it without importing the machine itself.
"""

from __future__ import annotations

import _compat_pickle  # stdlib data tables (py2 -> py3 names); importing it runs no loader
from dataclasses import dataclass
from typing import Final

from trainwarden.findings import Verdict

__all__ = [
    "CALLS_ARGUMENTS",
    "NESTED_LOADERS",
    "RULE_FRAME_OVERRUN",
    "RULE_FRAME_SPLIT",
    "RULE_GLOBAL_MUTATION",
    "RULE_MALFORMED",
    "RULE_TRUNCATED",
    "RULE_UNRESOLVED",
    "UNRESOLVED",
    "GlobalRef",
    "NestedPayload",
    "PickleAnalysis",
    "PickleIssue",
    "compat_name",
]

#: Placeholder for a module or name the machine cannot know statically.
UNRESOLVED: Final = "<unresolved>"

#: Rule ids the machine emits (the policy turns them into findings).
RULE_UNRESOLVED: Final = "pickle.unresolved-global"
RULE_TRUNCATED: Final = "pickle.truncated"
RULE_MALFORMED: Final = "pickle.malformed"
RULE_GLOBAL_MUTATION: Final = "pickle.global-mutation"
RULE_FRAME_SPLIT: Final = "pickle.frame-split"
RULE_FRAME_OVERRUN: Final = "pickle.frame-overrun"

# Globals that deserialize a bytes argument: their literal payloads are recorded so the
# scanner can analyse what they would load (torch.storage._load_from_bytes is what plain
# pickle.dumps(tensor) writes: torch.load of an embedded torch.save archive).
NESTED_LOADERS: Final[dict[tuple[str, str], str]] = {
    ("torch.storage", "_load_from_bytes"): "torch",
    ("pickle", "loads"): "pickle",
    ("_pickle", "loads"): "pickle",
    ("pickle", "_loads"): "pickle",
}

# Allowlisted functions that call a callable they are handed: the positions of those
# arguments. Handing a global to one of them calls it (``__init__`` included) as surely as
# REDUCE does, so a value-only or reconstruct-only entry must not pass as merely named there.
CALLS_ARGUMENTS: Final[dict[tuple[str, str], tuple[int, ...]]] = {
    ("copyreg", "_reconstructor"): (1,),  # base.__new__(cls, state), base.__init__(obj, state)
    ("torch._tensor", "_rebuild_from_type_v2"): (0,),  # func(*args)
    ("torch._tensor", "_rebuild_from_type"): (0,),
    ("numpy.random._pickle", "__randomstate_ctor"): (1,),  # bit_generator_ctor(name)
    ("numpy.random._pickle", "__generator_ctor"): (1,),
    ("numpy.random._pickle", "__bit_generator_ctor"): (0,),  # a class argument is called
    ("collections", "defaultdict"): (0,),  # the factory, on every missing key
}

_NAME_MAPPING: dict[tuple[str, str], tuple[str, str]] = dict(_compat_pickle.NAME_MAPPING)
_IMPORT_MAPPING: dict[str, str] = dict(_compat_pickle.IMPORT_MAPPING)


def compat_name(module: str, name: str) -> tuple[str, str]:
    """Apply the Python 2 -> 3 renaming ``find_class`` does for protocols < 3 (fix_imports)."""
    mapped = _NAME_MAPPING.get((module, name))
    if mapped is not None:
        return mapped
    return _IMPORT_MAPPING.get(module, module), name


def compat_module(module: str) -> str:
    """The Python 3 name of a Python 2 module name (the module half of :func:`compat_name`)."""
    return _IMPORT_MAPPING.get(module, module)


@dataclass(frozen=True, slots=True)
class GlobalRef:
    """One import the loader performs (``find_class(module, name)``).

    Repeated imports of the same name in one pickle share one record: ``offset`` is the
    first, ``count`` how many there were, and the flags are true when any of them is.

    Attributes:
        module: module name, after the ``_compat_pickle`` mapping when the protocol is < 3
            (as ``find_class`` does); :data:`UNRESOLVED` when it cannot be known statically.
        name: attribute name; may be dotted (``Outer.Inner``); :data:`UNRESOLVED` when unknown.
        offset: byte offset of the (first) importing opcode in the buffer given to the machine.
        opcode: ``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``EXT1``, ``EXT2`` or ``EXT4``.
        called: the imported object is called by the pickle itself (REDUCE, NEWOBJ, NEWOBJ_EX,
            INST, OBJ) or has ``__setstate__``/attributes driven by BUILD.
        resolved: both module and name are known statically.
        init_called: called by REDUCE, INST or OBJ, which run the object itself (a function's
            body, a class's ``__init__``); NEWOBJ/NEWOBJ_EX only run ``cls.__new__``.
        count: how many times the pickle imports this name.
    """

    module: str
    name: str
    offset: int
    opcode: str
    called: bool
    resolved: bool = True
    init_called: bool = False
    count: int = 1

    @property
    def qualname(self) -> str:
        """``module.name``, the form the policy and the reports use."""
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class PickleIssue:
    """Something about the stream itself: unresolved names, truncation, limits.

    ``refs`` lists the globals the issue depends on (for an unresolved name: the partially known
    global and the globals whose calls produced the name), so the policy can make it unsafe when
    one of them is dangerous.
    """

    rule_id: str
    message: str
    offset: int
    verdict: Verdict
    evidence: str | None = None
    refs: tuple[GlobalRef, ...] = ()


@dataclass(frozen=True, slots=True)
class NestedPayload:
    """A bytes literal handed to a loader of serialized data (a pickle inside the pickle).

    Attributes:
        start: offset of the payload's first byte in the buffer given to the machine.
        end: offset after its last byte.
        loader: ``torch`` (``torch.load`` of a torch.save archive) or ``pickle``.
        ref: the loader global that is called with it.
    """

    start: int
    end: int
    loader: str
    ref: GlobalRef


@dataclass(frozen=True, slots=True)
class PickleAnalysis:
    """What one pickle (from one ``PROTO``/first opcode to ``STOP``) would do when loaded.

    When loaders read the bytes differently (a FRAME that an argument runs past), every reading
    is analysed and this holds their union: every import any of them performs.

    Attributes:
        start: offset of the first opcode.
        end: offset after the last opcode the loader completes: after ``STOP`` when
            ``complete``, else the offset of the opcode that fails (or of the next opcode
            not analysed when a limit was hit).
        complete: ``STOP`` was reached (in every reading) and the loader would return an object.
        protocol: the first ``PROTO`` value, else the highest protocol of the opcodes seen.
        globals: every import (``find_class``), in order of first appearance.
        issues: unresolved names, global mutation, truncation, malformed data, limits.
        persistent_ids: statically rebuilt persistent ids (str/int/None/bool/GlobalRef and
            tuples of those; anything else is ``None``), in order.
        opcode_count: opcodes executed (including the failing one).
        first_import_offset: offset of the first import, None when none ran.
        read_end: how far a loader reading from a file has read when it stops: ``end``, or
            the end of the FRAME a file reader holds in its buffer when STOP sits inside it.
        next_starts: every offset where the next ``pickle.load`` on the same file may start,
            one for each way a loader can have consumed the stream (after ``STOP`` for
            ``pickle.loads``-like and peeking readers, the end of the buffered frame for
            ``io.BytesIO`` and pure-Python readers); empty when the pickle is not complete.
        nested: payloads handed to nested loaders (``NESTED_LOADERS``) as bytes literals;
            the scanner analyses them like files of their own.
        opaque_nested: nested loaders also called with a payload that is not a literal
            (computed at load time): what they load cannot be checked.
        embedded: spans of bytes or text literals that may hold a pickle as data (raw,
            base64 or hex); this load does not run them, whoever unpickles the field does.
        shared_memo: this pickle as an ``Unpickler`` reused for every earlier load of the
            stream reads it (its memo kept), when that can differ from a fresh unpickler's
            reading (the analysis itself); ``None`` for the first pickle of a stream.
        readings: how many distinct readings of the bytes were analysed (1 unless frames
            make loaders disagree).
        work: opcodes executed to analyse this pickle, every reading included (what it
            cost of the input's ``max_opcodes`` budget).
    """

    start: int
    end: int
    complete: bool
    protocol: int | None
    globals: tuple[GlobalRef, ...]
    issues: tuple[PickleIssue, ...]
    persistent_ids: tuple[object, ...]
    opcode_count: int
    first_import_offset: int | None
    read_end: int = -1
    next_starts: tuple[int, ...] = ()
    nested: tuple[NestedPayload, ...] = ()
    opaque_nested: tuple[GlobalRef, ...] = ()
    embedded: tuple[tuple[int, int], ...] = ()
    shared_memo: PickleAnalysis | None = None
    readings: int = 1
    work: int = 0

    @property
    def imports(self) -> bool:
        """True when the loader would import something (or run a persistent load)."""
        return self.first_import_offset is not None or bool(self.persistent_ids)

    @property
    def limited(self) -> bool:
        """True when a resource limit stopped the analysis (the rest was not seen)."""
        return any(issue.rule_id.startswith("limit.") for issue in self.issues)

    @property
    def inert(self) -> bool:
        """True when every loader fails on these bytes before it could import or call.

        Only then may bytes that merely look like a pickle be treated as plain data. A limit
        hit is never inert: what lies beyond it was not seen. A persistent id alone does not
        count: the loaders that read a file from its first byte (``pickle.load``,
        ``numpy.load``, ``joblib.load``, the first pickle of torch's legacy format) have no
        ``persistent_load`` there and fail on it, and torch's own ``persistent_load`` (zip
        and legacy records) only looks values up. This is what makes a PNG (byte 0x89 is
        NEWFALSE, then "PNG" is PERSID) plain data.
        """
        return (
            not self.complete
            and self.first_import_offset is None
            and not self.limited
            and (self.shared_memo is None or self.shared_memo.inert)
        )
