"""The symbolic pickle machine on hand-built pickles: every opcode path and stack/memo trick."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import pathlib
import pickle
import struct
import uuid
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan._limits import Limits
from trainwarden.scan._pickle import (
    UNRESOLVED,
    PickleAnalysis,
    analyse_pickle,
    analyse_pickle_stream,
    compat_name,
)

P2 = b"\x80\x02"
P4 = b"\x80\x04"


def su(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def bu(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def names(analysis: PickleAnalysis) -> list[tuple[str, str]]:
    return [(g.module, g.name) for g in analysis.globals]


def rules(analysis: PickleAnalysis) -> list[str]:
    return [i.rule_id for i in analysis.issues]


# -- imports ---------------------------------------------------------------------------------


def test_global_text_opcode_is_resolved_and_called() -> None:
    data = b"cos\nsystem\n(S'echo hi'\ntR."
    a = analyse_pickle(data)
    assert a.complete
    assert a.end == len(data)
    assert names(a) == [("os", "system")]
    g = a.globals[0]
    assert (g.opcode, g.offset, g.called, g.resolved) == ("GLOBAL", 0, True, True)
    assert a.first_import_offset == 0
    assert a.issues == ()


def test_global_not_called_when_only_referenced() -> None:
    a = analyse_pickle(b"cos\nsystem\n.")
    assert names(a) == [("os", "system")]
    assert not a.globals[0].called


def test_protocol_below_3_applies_compat_mapping() -> None:
    a = analyse_pickle(b"c__builtin__\neval\n.")
    assert names(a) == [("builtins", "eval")]
    a = analyse_pickle(P2 + b"ccopy_reg\n_reconstructor\n.")
    assert names(a) == [("copyreg", "_reconstructor")]
    a = analyse_pickle(P2 + b"ccommands\ngetoutput\n.")
    assert names(a) == [("subprocess", "getoutput")]
    a = analyse_pickle(P2 + b"c__builtin__\nreduce\n.")
    assert names(a) == [("functools", "reduce")]


def test_protocol_3_and_later_keep_names_and_proto_is_dynamic() -> None:
    assert names(analyse_pickle(b"\x80\x03c__builtin__\neval\n.")) == [("__builtin__", "eval")]
    # PROTO can appear anywhere: the mapping follows the current value, as find_class does.
    data = b"\x80\x03c__builtin__\neval\n0\x80\x02c__builtin__\neval\n."
    a = analyse_pickle(data)
    assert names(a) == [("__builtin__", "eval"), ("builtins", "eval")]
    assert a.protocol == 3


def test_stack_global_names_from_memo() -> None:
    data = P4 + su("os") + b"\x94" + su("system") + b"\x94" + b"00" + b"h\x00h\x01\x93."
    a = analyse_pickle(data)
    assert a.complete
    assert names(a) == [("os", "system")]
    assert a.globals[0].opcode == "STACK_GLOBAL"
    assert a.globals[0].offset == len(data) - 2


def test_stack_global_names_from_long_binget_put_and_text_get() -> None:
    data = P2 + su("posix") + b"r\x07\x00\x00\x00" + su("system") + b"p9\n" + b"00"
    data += b"j\x07\x00\x00\x00g9\n\x93."
    assert names(analyse_pickle(data)) == [("posix", "system")]


def test_memoize_index_is_the_memo_size_not_the_highest_index() -> None:
    # BINPUT 5 then MEMOIZE: MEMOIZE stores at len(memo) == 1, as _Unpickler_MemoPut counts.
    data = P4 + su("zzz") + b"q\x05" + b"0" + su("os") + b"\x94" + b"0"
    data += b"h\x01" + su("system") + b"\x93."
    assert names(analyse_pickle(data)) == [("os", "system")]


def test_dup_and_pop_mark_tricks() -> None:
    # MARK, junk, POP_MARK discards it; DUP duplicates the module string.
    data = P4 + b"(" + su("junk") + su("more") + b"1" + su("os") + b"2" + b"0" + su("system")
    data += b"\x93."
    assert names(analyse_pickle(data)) == [("os", "system")]


def test_pop_removes_a_mark_when_it_is_on_top() -> None:
    # The C unpickler's POP drops the mark when the mark is at the top of the stack.
    data = P4 + su("os") + b"(0" + su("system") + b"\x93."
    a = analyse_pickle(data)
    assert a.complete
    assert names(a) == [("os", "system")]


@pytest.mark.parametrize(
    ("module_op", "name_op"),
    [
        (b"S'os'\n", b'S"system"\n'),
        (b"T\x02\x00\x00\x00os", b"U\x06system"),
        (b"Vo\\u0073\n", b"Vsystem\n"),
        (bu("os"), b"\x8d\x06\x00\x00\x00\x00\x00\x00\x00system"),
    ],
)
def test_every_string_opcode_can_name_a_global(module_op: bytes, name_op: bytes) -> None:
    a = analyse_pickle(P2 + module_op + name_op + b"\x93.")
    assert a.complete
    assert names(a) == [("os", "system")]


def test_string_escapes_are_decoded_like_the_loader() -> None:
    a = analyse_pickle(b"S'o\\x73'\nS'sys\\164em'\n\x93.")
    assert names(a) == [("os", "system")]


def test_non_ascii_py2_string_name_is_unresolved() -> None:
    # The value of a py2 string depends on the loader's encoding (ASCII, utf-8, latin1, bytes).
    a = analyse_pickle(P2 + b"U\x02\xc3\xa9" + su("system") + b"\x93.")
    assert [g.resolved for g in a.globals] == [False]
    assert a.globals[0].module == UNRESOLVED
    assert a.globals[0].name == "system"
    assert rules(a) == ["pickle.unresolved-global"]
    assert a.issues[0].verdict is Verdict.UNKNOWN


def test_bytes_names_fail_like_find_class() -> None:
    # STACK_GLOBAL requires str: the loader raises before importing anything.
    a = analyse_pickle(P4 + b"C\x02os" + su("system") + b"\x93.")
    assert not a.complete
    assert a.globals == ()
    assert a.first_import_offset is None
    assert rules(a) == ["pickle.malformed"]


def test_inst_imports_calls_and_decodes_ascii() -> None:
    data = b"(S'echo hi'\nios\nsystem\n."
    a = analyse_pickle(data)
    assert a.complete
    assert names(a) == [("os", "system")]
    assert a.globals[0].opcode == "INST"
    assert a.globals[0].called
    # INST decodes its lines as ASCII: non-ASCII fails in the loader, before the import.
    bad = analyse_pickle("(ios\nsyst\u00e9m\n.".encode())
    assert bad.globals == ()
    assert not bad.complete


def test_inst_without_a_mark_still_records_the_import() -> None:
    # The C loader checks the MARK first; pickle._Unpickler (joblib) imports first.
    a = analyse_pickle(b"ios\nsystem\n.")
    assert names(a) == [("os", "system")]
    assert rules(a) == ["pickle.malformed"]


def test_obj_calls_the_first_item_after_the_mark() -> None:
    a = analyse_pickle(b"(cos\nsystem\nS'x'\no.")
    assert a.complete
    assert names(a) == [("os", "system")]
    assert a.globals[0].called


def test_newobj_and_newobj_ex_call_the_class() -> None:
    a = analyse_pickle(P2 + b"cbuiltins\nobject\n)\x81.")
    assert a.complete
    assert a.globals[0].called
    a = analyse_pickle(P4 + su("builtins") + su("object") + b"\x93)}\x92.")
    assert a.complete
    assert a.globals[0].called


def test_non_tuple_arguments_do_not_stop_the_machine() -> None:
    # pickle._Unpickler (used by joblib) calls func(*args) / cls.__new__(cls, *args) with any
    # iterable, so a list of arguments must not hide the opcodes that follow.
    for call in (b"]R", b"]\x81", b"]}\x92"):
        data = P2 + b"cbuiltins\nobject\n" + call + b"0cos\nsystem\n."
        a = analyse_pickle(data)
        assert a.complete
        assert names(a) == [("builtins", "object"), ("os", "system")]


def test_reduce_on_a_non_callable_fails_like_the_loader() -> None:
    a = analyse_pickle(P2 + su("x") + b")R.")
    assert not a.complete
    assert rules(a) == ["pickle.malformed"]


def test_extension_codes_are_unresolved_imports() -> None:
    for op, arg, code in ((b"\x82", b"\x01", 1), (b"\x83", b"\x00\x01", 256)):
        a = analyse_pickle(P2 + op + arg + b")R.")
        assert a.complete
        assert [g.resolved for g in a.globals] == [False]
        assert a.globals[0].opcode in ("EXT1", "EXT2")
        assert a.globals[0].called
        assert rules(a) == ["pickle.unresolved-global"]
        assert a.issues[0].evidence is not None
        assert str(code) in a.issues[0].evidence
    # EXT4 is signed and codes <= 0 are refused by the loader before any lookup.
    a = analyse_pickle(P2 + b"\x84\xff\xff\xff\xff.")
    assert a.globals == ()
    assert rules(a) == ["pickle.malformed"]


# -- names the machine cannot know ------------------------------------------------------------


def test_name_produced_by_a_call_is_unresolved_with_its_producer() -> None:
    data = P4 + su("builtins") + su("getattr") + b"\x93" + su("o") + su("s") + b"\x86R"
    data += su("system") + b"\x93."
    a = analyse_pickle(data)
    assert a.complete
    assert [(g.module, g.name, g.resolved) for g in a.globals] == [
        ("builtins", "getattr", True),
        (UNRESOLVED, "system", False),
    ]
    (issue,) = a.issues
    assert issue.rule_id == "pickle.unresolved-global"
    assert ("builtins", "getattr") in [(r.module, r.name) for r in issue.refs]


def test_name_from_a_persistent_load_is_unresolved() -> None:
    data = P2 + su("pid") + b"Q" + su("system") + b"\x93."
    a = analyse_pickle(data)
    assert [g.resolved for g in a.globals] == [False]
    assert a.persistent_ids == ("pid",)


def test_a_global_used_as_a_name_is_unresolved() -> None:
    # os.name is a str ("posix"): an import can produce the next import's module name.
    data = P4 + su("os") + su("name") + b"\x93" + su("system") + b"\x93."
    a = analyse_pickle(data)
    assert [(g.module, g.name, g.resolved) for g in a.globals] == [
        ("os", "name", True),
        (UNRESOLVED, "system", False),
    ]


def test_long_strings_are_not_decoded_but_stay_unresolved_names() -> None:
    long = "x" * 5000
    a = analyse_pickle(P4 + bu(long) + su("system") + b"\x93.")
    assert a.complete
    assert [g.resolved for g in a.globals] == [False]


# -- calls, mutation, persistent ids ------------------------------------------------------------


def test_build_on_an_imported_object_is_global_mutation() -> None:
    data = P2 + b"cargparse\nNamespace\n" + b"N}" + su("x") + b"K\x01s\x86b."
    a = analyse_pickle(data)
    assert a.complete
    (issue,) = a.issues
    assert issue.rule_id == "pickle.global-mutation"
    assert issue.verdict is Verdict.UNSAFE
    assert issue.evidence == "argparse.Namespace"


def test_setitem_on_an_imported_object_is_global_mutation() -> None:
    data = P2 + b"cos\nenviron\n" + su("A") + su("B") + b"s."
    a = analyse_pickle(data)
    assert "pickle.global-mutation" in rules(a)


def test_build_on_a_call_result_marks_the_class_called() -> None:
    data = P2 + b"cargparse\nNamespace\n)\x81}b."
    a = analyse_pickle(data)
    assert a.complete
    assert a.issues == ()
    assert a.globals[0].called


def test_torch_like_persistent_ids_are_reconstructed() -> None:
    data = P2 + b"ctorch._utils\n_rebuild_tensor_v2\n(("
    data += su("storage") + b"ctorch\nFloatStorage\n" + su("0") + su("cpu") + b"K\x04tQ"
    data += b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtR."
    a = analyse_pickle(data)
    assert a.complete, a.issues
    (pid,) = a.persistent_ids
    assert isinstance(pid, tuple)
    assert pid[0] == "storage"
    assert pid[2:] == ("0", "cpu", 4)
    ref = pid[1]
    assert (ref.module, ref.name, ref.called) == ("torch", "FloatStorage", False)
    assert [(g.name, g.called) for g in a.globals] == [
        ("_rebuild_tensor_v2", True),
        ("FloatStorage", False),
        ("OrderedDict", True),
    ]


def test_text_persistent_id() -> None:
    a = analyse_pickle(b"Pabc\n.")
    assert a.complete
    assert a.persistent_ids == ("abc",)


def test_dotted_names_are_kept_whole() -> None:
    a = analyse_pickle(P4 + su("builtins") + su("str.format") + b"\x93.")
    assert names(a) == [("builtins", "str.format")]


# -- containers and the C unpickler's stack rules -----------------------------------------------


def test_setitem_may_reach_below_a_mark_like_older_unpicklers() -> None:
    # Python <= 3.12 check only x > 0 in do_setitems: the dict may sit under a MARK.
    data = P2 + b"}(" + su("k") + su("v") + b"s0cos\nsystem\n."
    a = analyse_pickle(data)
    assert names(a) == [("os", "system")]


def test_pops_cannot_cross_a_mark() -> None:
    a = analyse_pickle(P2 + su("os") + b"(" + su("system") + b"\x93.")
    assert not a.complete
    assert a.globals == ()
    assert rules(a) == ["pickle.malformed"]


def test_dict_list_set_frozenset_opcodes() -> None:
    data = P4 + b"((K\x01K\x02d(K\x01l\x8f(K\x01\x90(K\x02\x91]K\x01a(K\x02et."
    a = analyse_pickle(data)
    assert a.complete, a.issues
    assert pickle.loads(data) == ({1: 2}, [1], {1}, frozenset({2}), [1, 2])
    assert not analyse_pickle(P4 + b"(K\x01d.").complete  # odd number of items for DICT


def test_every_numeric_opcode() -> None:
    data = b"I42\nI0x10\nI010\nI00\nL12L\nF1.5\nJ\xff\xff\xff\xffM\x01\x00G" + b"\0" * 8
    data = b"(" + data + b"\x8a\x01\x05\x8b\x01\x00\x00\x00\x05t."
    a = analyse_pickle(data)
    assert a.complete, a.issues
    assert pickle.loads(data) == (42, 16, 8, False, 12, 1.5, -1, 1, 0.0, 5, 5)


def test_int_line_is_parsed_like_strtol() -> None:
    # strtol stops at a NUL byte: the loader accepts "1\0junk".
    assert analyse_pickle(b"I1\x00junk\n.").complete
    assert analyse_pickle(b"I\x00junk\n.").complete  # no digits, stops on NUL: 0
    assert not analyse_pickle(b"Iabc\n.").complete


def test_bytes_and_bytearray_opcodes() -> None:
    data = P4 + b"(C\x01a" + b"B\x01\x00\x00\x00b" + b"\x8e\x01" + b"\0" * 7 + b"c"
    data += b"\x96\x01" + b"\0" * 7 + b"d\x98" + b"t."
    a = analyse_pickle(data)
    assert a.complete, a.issues
    assert pickle.loads(data) == (b"a", b"b", b"c", bytearray(b"d"))


def test_out_of_band_buffer_is_data() -> None:
    a = analyse_pickle(b"\x80\x05\x97\x98.")
    assert a.complete
    assert a.globals == ()


# -- framing, truncation, malformed input ----------------------------------------------------------


def test_frames_are_parsed_in_place() -> None:
    data = P4 + b"\x95" + struct.pack("<Q", 12) + su("os") + su("system") + b"\x93."
    a = analyse_pickle(data)
    assert a.complete
    assert names(a) == [("os", "system")]
    assert a.issues == ()


def _frame_split_polyglot(pad: int) -> bytes:
    """A pickle that pickle.loads reads as data and file readers as a call of os.system.

    A SHORT_BINUNICODE of 5 bytes starts 1 byte before the frame's end: pickle.loads takes
    1 + 4 bytes and goes on linearly; a file reader holding exactly the frame in its buffer
    (io.BytesIO always; a buffered file for frames of 8 KiB or more) drops the frame's last
    byte and reads the 5 bytes after the frame, so both continue at different offsets.
    """
    payload = su("os") + su("system") + b"\x93" + su("id") + b"\x85R0"
    payload += b"N0" * ((48 - len(payload)) // 2)
    assert len(payload) == 48
    after = b"ABCD" + b"C" + bytes([48]) + payload + b"N."
    body = b"N0" * pad + b"\x8c\x05X"
    return P4 + b"\x95" + struct.pack("<Q", len(body)) + body + after


class _Names(pickle.Unpickler):
    seen: list[tuple[str, str]]

    def find_class(self, module: str, name: str) -> object:
        self.seen.append((module, name))
        return lambda *args: None  # never import: a stub the pickle may call


def _imports_of(stream: object) -> list[tuple[str, str]]:
    reader = _Names(stream)  # type: ignore[arg-type]
    reader.seen = []
    reader.load()
    return reader.seen


@pytest.mark.parametrize(("pad", "buffered_file_runs_it"), [(10, False), (5000, True)])
def test_frame_split_is_analysed_for_every_reader(
    tmp_path: Path, pad: int, buffered_file_runs_it: bool
) -> None:
    import io

    data = _frame_split_polyglot(pad)
    path = tmp_path / "polyglot.pkl"
    path.write_bytes(data)
    # The real readers disagree: bytes are data, a BytesIO file runs os.system, and a
    # buffered file does too when the frame is large.
    assert pickle.loads(data) is None
    assert _imports_of(io.BytesIO(data)) == [("os", "system")]
    with path.open("rb") as f:
        assert (_imports_of(f) == [("os", "system")]) is buffered_file_runs_it
    a = analyse_pickle(data)
    assert ("os", "system") in names(a)
    assert rules(a)[0] == "pickle.frame-split"
    assert next(g for g in a.globals if g.name == "system").called


def test_gigantic_lengths_never_allocate() -> None:
    for op in (b"\x8d", b"\x8e", b"\x96"):
        a = analyse_pickle(P4 + op + struct.pack("<Q", 2**62) + b"x")
        assert not a.complete
        assert rules(a) == ["pickle.truncated"]
    a = analyse_pickle(P4 + b"X\xff\xff\xff\xff" + b"x")
    assert rules(a) == ["pickle.truncated"]


def test_frame_past_the_end_is_reported_and_parsing_goes_on() -> None:
    # The C loader fails on a short frame; pickle._Unpickler (joblib) parses what is there.
    data = P4 + b"\x95" + struct.pack("<Q", 2**62) + su("os") + su("system") + b"\x93."
    a = analyse_pickle(data)
    assert a.complete
    assert names(a) == [("os", "system")]
    assert rules(a) == ["pickle.truncated"]


def test_last_line_without_newline_is_imported_like_pickle_py() -> None:
    # pickle._Unpickler reads the unterminated last line minus its last byte and imports.
    a = analyse_pickle(b"cos\nsystemX")
    assert names(a) == [("os", "system")]
    assert rules(a) == ["pickle.truncated"]
    a = analyse_pickle(b"cantigravityX")
    assert names(a) == [("antigravity", "")]
    a = analyse_pickle(b"cos\n\n.")
    assert names(a) == [("os", "")]
    assert rules(a) == ["pickle.malformed"]


def test_truncated_after_an_import_keeps_the_import() -> None:
    a = analyse_pickle(b"cos\nsystem\n(S'echo")
    assert not a.complete
    assert names(a) == [("os", "system")]
    assert rules(a) == ["pickle.truncated"]
    assert all(i.verdict is not Verdict.SAFE for i in a.issues)


def test_malformed_after_an_import_keeps_the_import() -> None:
    a = analyse_pickle(b"cos\nsystem\n\xff")
    assert names(a) == [("os", "system")]
    assert rules(a) == ["pickle.malformed"]
    assert a.end == len(b"cos\nsystem\n")


def test_stop_with_an_empty_stack_is_malformed() -> None:
    a = analyse_pickle(b".")
    assert not a.complete
    assert rules(a) == ["pickle.malformed"]


def test_overlong_text_lines_are_not_copied_and_do_not_stop_the_machine() -> None:
    pad = b" " * (2 << 20)
    # PUT index padded with 2 MiB of spaces: the loader accepts it; the machine cannot know
    # the index, so later memo misses yield unknown values instead of stopping.
    data = P2 + su("os") + b"p" + pad + b"7\n" + b"0" + b"h\x07" + su("system") + b"\x93."
    a = analyse_pickle(data)
    assert a.complete
    assert [(g.module, g.resolved) for g in a.globals] == [(UNRESOLVED, False)]
    # A module name that long cannot be imported by any loader.
    assert rules(analyse_pickle(b"c" + b"a" * (2 << 20) + b"\nb\n.")) == ["pickle.malformed"]


def test_memo_miss_and_bad_proto_are_malformed() -> None:
    assert rules(analyse_pickle(P2 + b"h\x05.")) == ["pickle.malformed"]
    assert rules(analyse_pickle(b"\x80\x06N.")) == ["pickle.malformed"]


def test_empty_input_is_truncated() -> None:
    a = analyse_pickle(b"")
    assert not a.complete
    assert a.end == 0
    assert rules(a) == ["pickle.truncated"]


def test_memoryview_input_and_start_offset() -> None:
    blob = b"JUNK" + P2 + b"cos\nsystem\n."
    a = analyse_pickle(memoryview(blob), 4)
    assert a.complete
    assert a.start == 4
    assert a.end == len(blob)
    assert a.globals[0].offset == 6


# -- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "rule"),
    [
        (Limits(max_opcodes=5), "limit.opcodes"),
        (Limits(max_memo=3), "limit.memo"),
        (Limits(max_stack_depth=10), "limit.stack-depth"),
        (Limits(max_pickle_bytes=20), "limit.pickle-bytes"),
    ],
)
def test_limits_yield_an_issue_never_a_crash(limits: Limits, rule: str) -> None:
    data = P2 + b"(" + b"N\x94" * 10000 + b"t0cos\nsystem\n."
    a = analyse_pickle(data, limits=limits)
    assert not a.complete
    (issue,) = a.issues
    assert issue.rule_id == rule
    assert issue.verdict is Verdict.UNKNOWN
    assert issue.evidence is not None
    assert "=" in issue.evidence


def test_time_limit() -> None:
    a = analyse_pickle(P2 + b"N0" * 10000 + b".", deadline=0.0)
    assert [i.rule_id for i in a.issues] == ["limit.seconds"]


# -- streams ---------------------------------------------------------------------------------------


def test_stream_of_several_pickles_and_trailing_data() -> None:
    first = pickle.dumps({"a": 1}, protocol=2)
    second = b"cos\nsystem\n."
    data = first + second + b"\x00\x01TRAILING"
    analyses, end = analyse_pickle_stream(data)
    assert [a.complete for a in analyses] == [True, True]
    assert analyses[1].start == len(first)
    assert names(analyses[1]) == [("os", "system")]
    assert analyses[1].globals[0].offset == len(first)
    assert end == len(first) + len(second)


def test_stream_stops_after_a_pickle_that_fails_after_an_import() -> None:
    data = b"cos\nsystem\n\xff" + b"cposix\nsystem\n."
    analyses, end = analyse_pickle_stream(data)
    assert len(analyses) == 1
    assert names(analyses[0]) == [("os", "system")]
    assert end == len(b"cos\nsystem\n")


def test_stream_carries_the_memo() -> None:
    first = P4 + su("os") + b"\x94" + su("system") + b"\x94\x86."
    second = P4 + b"h\x00h\x01\x93."
    analyses, _ = analyse_pickle_stream(first + second)
    # A fresh unpickler (pickle.load, torch.load) misses the memo; one reused for both loads
    # imports os.system: that reading is kept beside the fresh one.
    assert names(analyses[1]) == []
    assert analyses[1].shared_memo is not None
    assert names(analyses[1].shared_memo) == [("os", "system")]


def test_stream_pickle_cap() -> None:
    one = pickle.dumps(1, protocol=2)
    analyses, end = analyse_pickle_stream(one * 5, max_pickles=2)
    assert len(analyses) == 2
    assert end == 2 * len(one)
    assert analyses[-1].issues[-1].rule_id == "limit.pickles-per-stream"


def test_stream_limit_hit_is_reported_even_without_imports() -> None:
    data = P2 + b"N0" * 100 + b"cos\nsystem\n."
    analyses, _ = analyse_pickle_stream(data, limits=Limits(max_opcodes=10))
    assert len(analyses) == 1
    assert analyses[0].issues[0].rule_id == "limit.opcodes"


# -- real pickles ------------------------------------------------------------------------------


class _Recorder(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.seen: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str) -> object:
        self.seen.append((module, name))
        return super().find_class(module, name)


_OBJECTS: list[object] = [
    None,
    [1, 2.5, "s", b"b", (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), True, False, 2**100, -(2**70)],
    {"k": {"n": [set(), frozenset({1})]}, 3: bytearray(b"x")},
    collections.OrderedDict(a=1),
    collections.Counter("abca"),
    collections.defaultdict(list, a=[1]),
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    decimal.Decimal("1.5"),
    fractions.Fraction(1, 3),
    pathlib.PurePosixPath("/a/b"),
    uuid.UUID(int=5),
    complex(1, 2),
    range(3),
    slice(1, 2),
    ["shared"] * 3,
    "x" * 300,
    list(range(2000)),
]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_real_pickles_match_the_loader_imports(protocol: int) -> None:
    for obj in _OBJECTS:
        data = pickle.dumps(obj, protocol=protocol)
        a = analyse_pickle(data)
        assert a.complete, (obj, a.issues)
        assert a.end == len(data)
        assert a.issues == ()
        recorder = _Recorder(data)
        recorder.load()
        # find_class maps py2 names (written by protocols < 3) after the override sees them.
        expected = [compat_name(m, n) if protocol < 3 else (m, n) for m, n in recorder.seen]
        assert names(a) == expected, obj
        assert a.protocol == (protocol if protocol >= 2 else a.protocol)
