"""Formats that run code when loaded, read as opaque data before (issue 8): TF, Keras, ONNX.

TensorFlow is not a dependency (it is large): SavedModel, GraphDef and keras_metadata.pb bytes
are written here with the field numbers of TensorFlow's protos (saved_model.proto: SavedModel
{schema_version=1, meta_graphs=2}; meta_graph.proto: MetaGraphDef {graph_def=2}; graph.proto:
GraphDef {node=1, library=2}; node_def.proto: NodeDef {name=1, op=2, input=3}; function.proto:
FunctionDefLibrary {function=1}, FunctionDef {node_def=3}; keras saved_metadata.proto:
SavedMetadata {nodes=1}, SavedObject {node_id=2, node_path=3, identifier=4, metadata=5}).
ONNX files are real ones written by the onnx package (CVE-2024-27318 and CVE-2024-5187 are
the path-traversal reads through external data that the escape check is about).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from protobuf_bytes import m, s, v

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes, scan_path, sniff_format


def node(name: str, op: str, *inputs: str) -> bytes:
    return m(1, s(1, name), s(2, op), *(s(3, i) for i in inputs))


def saved_model(*nodes: bytes, library: bytes = b"") -> bytes:
    graph = b"".join(nodes) + library
    return v(1, 1) + m(2, m(2, graph))


BENIGN_NODES = (
    node("x", "Placeholder"),
    node("w", "VarHandleOp"),
    node("read", "ReadVariableOp", "w"),
    node("y", "MatMul", "x", "read"),
    node("save/Const", "Const"),
    node("save/SaveV2", "SaveV2", "save/Const"),
    node("save/RestoreV2", "RestoreV2", "save/Const"),
)


def test_benign_saved_model_is_recognised_and_safe() -> None:
    data = saved_model(*BENIGN_NODES)
    assert sniff_format(data) == "tf-saved-model"
    report = scan_bytes(data, name="saved_model.pb")
    assert report.format == "tf-saved-model"
    assert report.verdict is Verdict.SAFE, report.findings


@pytest.mark.parametrize(
    ("op", "why"),
    [
        ("ReadFile", "reads files"),
        ("WriteFile", "writes files"),
        ("PyFunc", "Python"),
        ("EagerPyFunc", "Python"),
        ("PyFuncStateless", "Python"),
        ("MatchingFiles", "reads files"),
        ("ImmutableConst", "reads files"),
    ],
)
def test_saved_model_ops_that_run_python_or_touch_files_are_unsafe(op: str, why: str) -> None:
    data = saved_model(*BENIGN_NODES, node("evil", op, "x"))
    report = scan_bytes(data, name="saved_model.pb")
    assert report.verdict is Verdict.UNSAFE
    finding = next(f for f in report.findings if f.rule_id == "tf.dangerous-op")
    assert op in (finding.evidence or "")
    assert why in finding.message


def test_ops_inside_tf_functions_are_seen() -> None:
    # tf.function bodies live in the graph's function library, not in its node list.
    library = m(2, m(1, m(3, s(1, "f/read"), s(2, "ReadFile"))))
    report = scan_bytes(saved_model(*BENIGN_NODES, library=library))
    assert report.verdict is Verdict.UNSAFE


def test_frozen_graph_def_is_recognised() -> None:
    graph = b"".join(BENIGN_NODES) + node("w2", "WriteFile", "x")
    assert sniff_format(graph) == "tf-graph"
    assert scan_bytes(graph, name="frozen.pb").verdict is Verdict.UNSAFE
    assert scan_bytes(b"".join(BENIGN_NODES), name="frozen.pb").verdict is Verdict.SAFE


def _keras_metadata(*layers: dict[str, object]) -> bytes:
    return b"".join(
        m(1, v(2, i), s(3, f"root.layer-{i}"), s(4, "_tf_keras_layer"), s(5, json.dumps(layer)))
        for i, layer in enumerate(layers)
    )


def test_keras_metadata_lambda_layer_is_unsafe() -> None:
    dense = {"class_name": "Dense", "config": {"units": 2}}
    lam = {
        "class_name": "Lambda",
        "config": {"function": {"class_name": "__lambda__", "config": {"code": "4wEAAA=="}}},
    }
    assert sniff_format(_keras_metadata(dense)) == "keras-metadata"
    assert scan_bytes(_keras_metadata(dense), name="keras_metadata.pb").verdict is Verdict.SAFE
    report = scan_bytes(_keras_metadata(dense, lam), name="keras_metadata.pb")
    assert report.verdict is Verdict.UNSAFE
    assert any(f.rule_id == "keras.lambda-layer" for f in report.findings)


def test_keras_metadata_foreign_module_is_unknown() -> None:
    layer = {"class_name": "Custom", "module": "evilpkg.layers", "config": {}}
    report = scan_bytes(_keras_metadata(layer))
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.evidence == "evilpkg.layers" for f in report.findings)


def test_truncated_protobuf_graph_is_never_safe() -> None:
    data = saved_model(*BENIGN_NODES, node("evil", "ReadFile", "x"))
    cut = data[: len(data) - 5]
    report = scan_bytes(cut, name="saved_model.pb")
    assert report.verdict is not Verdict.SAFE


# -- ONNX -----------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")


def _onnx_model(nodes: list[object], **kw: object) -> object:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])
    w = numpy_helper.from_array(np.ones(2, np.float32), "W")
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(graph, **kw)


def test_onnx_model_is_recognised_and_safe(tmp_path: Path) -> None:
    from onnx import helper

    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model([helper.make_node("Add", ["X", "W"], ["Y"])]), path)
    assert sniff_format(path.read_bytes()) == "onnx"
    report = scan_path(path).files[0]
    assert report.format == "onnx"
    assert report.verdict is Verdict.SAFE


def test_onnx_custom_domain_operator_is_unknown(tmp_path: Path) -> None:
    from onnx import helper

    model = _onnx_model(
        [helper.make_node("Backdoor", ["X"], ["Y"], domain="evil.ops")],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("evil.ops", 1)],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    report = scan_path(path).files[0]
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.evidence == "evil.ops::Backdoor" for f in report.findings)


def test_onnx_custom_operator_inside_a_subgraph_is_found(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    inner_out = helper.make_tensor_value_info("Z", TensorProto.FLOAT, [2])
    then = helper.make_graph(
        [helper.make_node("Hidden", ["X"], ["Z"], domain="evil.ops")], "then", [], [inner_out]
    )
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["Z"])], "else", [], [inner_out])
    cond = helper.make_node("If", ["C"], ["Y"], then_branch=then, else_branch=other)
    path = tmp_path / "nested.onnx"
    onnx.save(_onnx_model([cond]), path)
    report = scan_path(path).files[0]
    assert any(f.evidence == "evil.ops::Hidden" for f in report.findings)


@pytest.mark.parametrize(
    ("location", "verdict"),
    [
        ("../../etc/passwd", Verdict.UNSAFE),
        ("/etc/shadow", Verdict.UNSAFE),
        ("weights/../../../x", Verdict.UNSAFE),
        ("C:\\Windows\\win.ini", Verdict.UNSAFE),
        ("model.onnx.data", Verdict.SAFE),
        ("weights/part-0.bin", Verdict.SAFE),
    ],
)
def test_onnx_external_data_location_must_stay_in_the_model_directory(
    tmp_path: Path, location: str, verdict: Verdict
) -> None:
    from onnx import TensorProto, helper

    model = _onnx_model([helper.make_node("Add", ["X", "W"], ["Y"])])
    tensor = model.graph.initializer[0]  # type: ignore[attr-defined]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    path = tmp_path / "ext.onnx"
    onnx.save(model, path)
    report = scan_path(path).files[0]
    assert report.verdict is verdict, report.findings
