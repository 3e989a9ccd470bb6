"""Which protobuf a ``.pb`` file is: ONNX, a TF SavedModel, a GraphDef, a SavedModel fingerprint.

Protobuf bytes carry no type: the same wire format can be read with any schema, and a
protobuf parser puts fields whose number or wire type its schema does not expect among the
unknown fields instead of failing. So the scanner's guess of a schema only picks a reader;
a reading that the real parser would reject (a length running past its message, a wire type
that does not exist) is no reading at all, and one the parser accepts is always checked.

TensorFlow writes ``fingerprint.pb`` into every SavedModel (``fingerprint.proto``:
FingerprintDef {saved_model_checksum=1, graph_def_program_hash=2, signature_def_hash=3,
saved_object_graph_hash=4, checkpoint_hash=5 (uint64 each), version=6 (VersionDef),
uuid=7 (string)}). Its field numbers are all ONNX ModelProto field numbers, so it used to be
read as ONNX and reported ``graph.malformed``: every benign SavedModel directory was unknown.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from protobuf_bytes import s, v, varint

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes, scan_path, sniff_format


def fingerprint(uuid: bytes = b"28588518008874058600987277397678228307") -> bytes:
    """A FingerprintDef laid out as TensorFlow 2.21 writes it (hashes are 64-bit values)."""
    hashes = b"".join(v(n, (0x9E3779B97F4A7C15 * n) & (2**64 - 1)) for n in range(1, 6))
    return hashes + s(6, v(1, 4)) + s(7, uuid)


def _rules(data: bytes, name: str) -> set[str]:
    return {f.rule_id for f in scan_bytes(data, name=name).findings}


def test_savedmodel_fingerprint_is_recognised_and_safe() -> None:
    data = fingerprint()
    assert sniff_format(data) == "tf-fingerprint"
    report = scan_bytes(data, name="fingerprint.pb")
    assert report.format == "tf-fingerprint"
    assert report.verdict is Verdict.SAFE, report.findings


def _onnx_graph_with_escaping_external_data() -> bytes:
    # GraphProto {initializer=5: TensorProto {name=8, data_location=14 (EXTERNAL=1),
    # external_data=13: {key=1 "location", value=2 "/etc/passwd"}}}
    entry = s(1, b"location") + s(2, b"/etc/passwd")
    tensor = v(1, 4) + v(2, 1) + s(8, b"W") + s(13, entry) + v(14, 1)
    return s(5, tensor) + s(2, b"g")


def test_fingerprint_shaped_file_is_still_read_as_onnx() -> None:
    # onnx.load parses any protobuf as a ModelProto: field 7 is its graph, whatever the
    # other fields say. A file shaped like a fingerprint whose field 7 is a graph that reads
    # files outside the model's directory is that ONNX model to onnx.load.
    data = fingerprint(uuid=_onnx_graph_with_escaping_external_data())
    report = scan_bytes(data, name="fingerprint.pb")
    assert report.verdict is Verdict.UNSAFE
    assert "onnx.external-data-escape" in {f.rule_id for f in report.findings}


def test_protobuf_whose_onnx_graph_the_parser_rejects_is_not_onnx() -> None:
    # Field 7 holds text, whose bytes run past their own length as protobuf: onnx.load
    # raises on it, so there is no ONNX reading to be malformed.
    data = v(1, 8) + s(7, b"2858851800887405")
    assert scan_bytes(data, name="blob.dat").format == "data"
    assert "graph.malformed" not in _rules(data, "blob.dat")
    assert scan_bytes(data, name="blob.dat").verdict is Verdict.SAFE
    # Named like a model, it is still not called safe (a loader picked by the name reads it).
    assert scan_bytes(data, name="model.onnx").verdict is Verdict.UNKNOWN


def _group(number: int, *inner: bytes) -> bytes:
    return varint(number << 3 | 3) + b"".join(inner) + varint(number << 3 | 4)


def test_groups_are_skipped_as_parsers_skip_them() -> None:
    # No ONNX or TensorFlow field is a group: parsers keep one as an unknown field and go
    # on, so what follows it is read (and checked) as usual, even at the very start.
    graph = _group(9, v(1, 1), _group(2)) + _onnx_graph_with_escaping_external_data()
    for data in (v(1, 8) + s(7, graph), _group(3) + s(7, graph) + v(1, 8)):
        report = scan_bytes(data, name="blob.dat")
        assert report.verdict is Verdict.UNSAFE, report.findings


@pytest.mark.parametrize(
    "graph",
    [
        varint(9 << 3 | 3) + v(1, 1) + varint(8 << 3 | 4),
        varint(9 << 3 | 3) + v(1, 1),
        varint(9 << 3 | 4),
    ],
    ids=["mismatched-end", "never-closed", "end-without-start"],
)
def test_groups_parsers_reject_make_no_onnx_model(graph: bytes) -> None:
    report = scan_bytes(v(1, 8) + s(7, graph + _onnx_graph_with_escaping_external_data()))
    assert report.format == "data"
    assert "graph.not-onnx" in {f.rule_id for f in report.findings}


@pytest.mark.parametrize("first", "0123456789")
def test_fingerprint_uuid_digits_never_make_it_onnx(first: str) -> None:
    # The uuid is a decimal string; as protobuf its digits are keys of field 6 or 7 with
    # every wire type (3 and 4 are groups, 6 and 7 do not exist).
    data = fingerprint(uuid=(first + "3405860098727739767822830790").encode())
    report = scan_bytes(data, name="fingerprint.pb")
    assert (report.format, report.verdict) == ("tf-fingerprint", Verdict.SAFE), report.findings


def test_real_onnx_model_is_still_onnx(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g", [x], [x])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    assert sniff_format(path.read_bytes()) == "onnx"
    assert scan_path(path).files[0].verdict is Verdict.SAFE


def test_real_tensorflow_saved_model_directory_is_safe(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")

    class Scale(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.w = tf.Variable(tf.ones([4, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: object) -> object:
            return tf.matmul(x, self.w)

    tf.saved_model.save(Scale(), str(tmp_path / "sm"))
    report = scan_path(tmp_path / "sm")
    verdicts = {Path(f.path).name: (f.format, f.verdict) for f in report.files}
    assert verdicts["fingerprint.pb"] == ("tf-fingerprint", Verdict.SAFE)
    assert verdicts["saved_model.pb"] == ("tf-saved-model", Verdict.SAFE)
    assert all(f.verdict is Verdict.SAFE for f in report.files), verdicts


def _custom_op_model_fields() -> tuple[bytes, bytes]:
    """(the ModelProto bytes before its graph, the graph field) of a real custom-op model."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])
    op = helper.make_node("Evil", ["X"], ["Y"], domain="com.attacker")
    graph = helper.make_graph([op], "g", [x], [x])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    graph_field = s(7, model.graph.SerializeToString())
    model.ClearField("graph")
    assert onnx.ModelProto.FromString(model.SerializeToString() + graph_field).graph.node
    return model.SerializeToString(), graph_field


def test_onnx_model_with_its_graph_first_is_still_onnx() -> None:
    # Parsers take fields in any order; onnx.save writes ir_version first, an attacker need not.
    rest, graph = _custom_op_model_fields()
    report = scan_bytes(graph + rest, name="weights.dat")
    assert report.format == "onnx"
    assert "onnx.custom-op" in {f.rule_id for f in report.findings}


def test_onnx_model_with_an_unknown_field_is_still_onnx() -> None:
    # A field ModelProto does not define is kept as an unknown field by onnx.load.
    rest, graph = _custom_op_model_fields()
    report = scan_bytes(rest + graph + s(99, b"padding"), name="weights.dat")
    assert report.verdict is Verdict.UNKNOWN  # matches no schema exactly: named data
    assert "onnx.custom-op" in {f.rule_id for f in report.findings}


def _node(name: str, op: str) -> bytes:
    return s(1, s(1, name.encode()) + s(2, op.encode()))


def test_frozen_graph_with_an_unknown_field_is_still_read() -> None:
    # GraphDef().ParseFromString keeps field 99 as an unknown field; the WriteFile node
    # still runs when the graph does, whatever the file is called.
    data = _node("x", "Placeholder") + _node("w", "WriteFile") + s(99, b"pad")
    report = scan_bytes(data, name="graph.dat")
    assert report.verdict is Verdict.UNSAFE
    assert "tf.dangerous-op" in {f.rule_id for f in report.findings}


def test_saved_model_with_an_unknown_field_is_still_read() -> None:
    graph = _node("x", "Placeholder") + _node("r", "ReadFile")
    data = v(1, 1) + s(2, s(2, graph)) + s(5, b"pad")  # SavedModel{meta_graphs{graph_def}}
    report = scan_bytes(data, name="saved_model.pb")
    assert report.verdict is Verdict.UNSAFE
    assert "tf.dangerous-op" in {f.rule_id for f in report.findings}


def test_graph_readings_a_parser_rejects_are_dropped() -> None:
    # A SavedModel whose meta graph runs past its message: TensorFlow refuses to load it.
    data = v(1, 1) + s(2, s(2, b"\x0a\x40" + b"x" * 4))
    report = scan_bytes(data, name="blob.dat")
    assert report.verdict is Verdict.SAFE, report.findings


def test_keras_metadata_shaped_graph_is_still_read_as_a_graph() -> None:
    # Node 1 is a Keras SavedObject (identifier "trackable...") and a NodeDef (op WriteFile)
    # at once: each parser keeps the other's fields as unknown ones.
    both = s(1, b"x") + s(2, b"WriteFile") + s(4, b"trackable_object")
    report = scan_bytes(s(1, both), name="graph.dat")
    assert report.verdict is Verdict.UNSAFE
    assert "tf.dangerous-op" in {f.rule_id for f in report.findings}
