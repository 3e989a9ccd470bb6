"""Data formats (safetensors, GGUF, .npy), configuration that pulls in code (HF, Keras), and
the rule for unrecognised bytes (data unless the pickle machine reaches an import).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from trainwarden.findings import FileReport, Verdict
from trainwarden.scan import scan_bytes, sniff_format


def _rules(report: FileReport) -> set[str]:
    return {f.rule_id for f in report.findings}


# --- safetensors ------------------------------------------------------------------------


def _safetensors(header: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_written_by_library_is_safe(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    st.save_file({"a": np.ones((2, 3), dtype=np.float32), "b": np.arange(4)}, path)
    report = scan_bytes(path.read_bytes())
    assert report.format == "safetensors"
    assert report.verdict is Verdict.SAFE, report.findings


def test_safetensors_metadata_and_empty_tensor() -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
        "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
    }
    assert scan_bytes(_safetensors(header, b"\0" * 4)).verdict is Verdict.SAFE


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8),  # size
        ({"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),  # dtype
        (
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            b"\0" * 6,
        ),  # overlap
        ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 5),  # trailing
        ({"__metadata__": {"k": 1}}, b""),  # metadata values must be strings
        ({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, b""),  # negative dim
    ],
)
def test_safetensors_malformed_is_unknown(header: dict[str, object], data: bytes) -> None:
    report = scan_bytes(_safetensors(header, data))
    assert report.format == "safetensors"
    assert report.verdict is Verdict.UNKNOWN
    assert "safetensors.malformed" in _rules(report)


def test_safetensors_bad_json_is_unknown() -> None:
    raw = b"{not json" + b" " * 7
    report = scan_bytes(struct.pack("<Q", len(raw)) + raw)
    assert report.format == "safetensors"
    assert report.verdict is Verdict.UNKNOWN


# --- GGUF ----------------------------------------------------------------------------------


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _gguf(metadata: dict[str, str], *, version: int = 3, tensors: int = 1) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", version, tensors, len(metadata))
    for key, value in metadata.items():
        out += _gguf_string(key) + struct.pack("<I", 8) + _gguf_string(value)
    for i in range(tensors):
        out += _gguf_string(f"t{i}") + struct.pack("<I", 1) + struct.pack("<Q", 4)
        out += struct.pack("<I", 0) + struct.pack("<Q", 32 * i)
    out += b"\0" * (-len(out) % 32)
    return out + b"\0" * (32 * tensors)


def test_gguf_valid_is_safe() -> None:
    report = scan_bytes(_gguf({"general.name": "tiny", "tokenizer.chat_template": "{{ x }}"}))
    assert report.format == "gguf"
    assert report.verdict is Verdict.SAFE, report.findings


def test_gguf_malicious_chat_template_is_unknown() -> None:
    template = "{{ cycler.__init__.__globals__.os.popen('id').read() }}"
    report = scan_bytes(_gguf({"tokenizer.chat_template": template}))
    assert "gguf.chat-template" in _rules(report)
    assert report.verdict is Verdict.UNKNOWN


@pytest.mark.parametrize("cut", [6, 30, 60])
def test_gguf_truncated_is_unknown(cut: int) -> None:
    report = scan_bytes(_gguf({"general.name": "tiny"})[:cut])
    assert report.verdict is Verdict.UNKNOWN
    assert "gguf.malformed" in _rules(report)


def test_gguf_absurd_counts_are_unknown() -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60)
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNKNOWN


# --- NumPy ---------------------------------------------------------------------------------


def test_npy_plain_and_object(canary) -> None:  # type: ignore[no-untyped-def]
    np = pytest.importorskip("numpy")
    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    assert scan_bytes(buf.getvalue()).verdict is Verdict.SAFE

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (canary.shell_command,))

    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    report = scan_bytes(buf.getvalue())
    canary.assert_absent()
    assert report.format == "numpy-npy"
    assert report.verdict is Verdict.UNSAFE


def test_npy_malformed_header_is_unknown() -> None:
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", 20) + b"{'descr': <nope>}   "
    report = scan_bytes(data)
    assert report.format == "numpy-npy"
    assert "numpy.malformed-header" in _rules(report)


# --- configuration that pulls in code ------------------------------------------------------


def test_hf_config_with_auto_map_is_unknown() -> None:
    config = {"model_type": "custom", "auto_map": {"AutoModel": "modeling_custom.CustomModel"}}
    report = scan_bytes(json.dumps(config).encode(), name="config.json")
    assert report.format == "hf-config"
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.evidence and "modeling_custom" in f.evidence for f in report.findings)


def test_hf_config_plain_is_safe() -> None:
    report = scan_bytes(json.dumps({"model_type": "bert", "hidden_size": 8}).encode())
    assert report.format == "hf-config"
    assert report.verdict is Verdict.SAFE


def _keras(config: dict[str, object]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return out.getvalue()


def test_keras_lambda_layer_is_unsafe() -> None:
    config = {
        "class_name": "Sequential",
        "module": "keras",
        "config": {"layers": [{"class_name": "Lambda", "module": "keras.layers", "config": {}}]},
    }
    report = scan_bytes(_keras(config))
    assert report.format == "keras"
    assert report.verdict is Verdict.UNSAFE
    assert "keras.lambda-layer" in _rules(report)


def test_keras_foreign_module_is_unknown() -> None:
    config = {"class_name": "system", "module": "os", "config": {}}
    report = scan_bytes(_keras(config))
    assert "keras.foreign-module" in _rules(report)
    assert report.verdict is not Verdict.SAFE


def test_keras_plain_is_safe() -> None:
    config = {"class_name": "Sequential", "module": "keras", "config": {"layers": []}}
    assert scan_bytes(_keras(config)).verdict is Verdict.SAFE


def test_hdf5_keras_lambda_is_unsafe() -> None:
    config = json.dumps({"class_name": "Model", "config": {"layers": [{"class_name": "Lambda"}]}})
    data = b"\x89HDF\r\n\x1a\n" + b"\0" * 100 + b"model_config" + b"\0" * 8 + config.encode()
    report = scan_bytes(data)
    assert report.format == "keras"
    assert report.verdict is Verdict.UNSAFE


def test_hdf5_without_model_config_is_data() -> None:
    report = scan_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 1000)
    assert report.format == "hdf5"
    assert report.verdict is Verdict.SAFE


# --- the unrecognised-bytes rule -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"hello world\n", "text"),
        (b'{"a": [1, 2]}', "json"),
        (bytes(range(256)) * 4, "data"),
        (b"\x00\x01\x02\x03", "data"),
    ],
)
def test_unrecognised_bytes_are_data(data: bytes, fmt: str) -> None:
    report = scan_bytes(data)
    assert report.format == fmt
    assert report.verdict is Verdict.SAFE
    assert sniff_format(data) == fmt


def test_text_that_is_a_protocol_0_pickle_is_analysed(canary) -> None:  # type: ignore[no-untyped-def]
    data = f"cos\nsystem\n(S'{canary.shell_command}'\ntR.".encode()
    report = scan_bytes(data)
    canary.assert_absent()
    assert report.format == "pickle"
    assert report.verdict is Verdict.UNSAFE


@pytest.mark.parametrize("protocol", range(6))
def test_pickle_every_protocol(protocol: int) -> None:
    report = scan_bytes(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=protocol))
    assert report.format == "pickle"
    assert report.verdict is Verdict.SAFE


def test_several_pickles_and_trailing_data(canary) -> None:  # type: ignore[no-untyped-def]
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (canary.shell_command,))

    data = pickle.dumps(1) + pickle.dumps(Payload()) + b"\xff\xfetrailing"
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE
    assert "pickle.trailing-data" in _rules(report)


def test_empty_file() -> None:
    report = scan_bytes(b"")
    assert report.format == "empty"
    assert report.verdict is Verdict.SAFE


def test_gguf_pickle_polyglot_is_caught(canary) -> None:  # type: ignore[no-untyped-def]
    # "G" is BINFLOAT: it swallows "GUF" + version; the rest of the "header" is a pickle.
    data = b"GGUF\x03\x00\x00\x00\x00" + b"0"  # BINFLOAT(8 bytes), POP
    data += f"cos\nsystem\n(S'{canary.shell_command}'\ntR.".encode()
    assert sniff_format(data[:4] + b"\0" * 20) == "gguf"
    pickle.loads(data)
    canary.assert_present()
    canary.reset()
    report = scan_bytes(data)
    canary.assert_absent()
    assert report.format == "gguf"
    assert report.verdict is Verdict.UNSAFE
    assert "format.pickle-polyglot" in _rules(report)


def test_zip_behind_leading_bytes_is_still_read() -> None:
    # zipfile (and Keras, which opens archives with it) accepts bytes before the archive.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Lambda", "config": {}}))
        zf.writestr("metadata.json", "{}")
        zf.comment = b"a comment"
    report = scan_bytes(b"\x00 not a zip header " + out.getvalue())
    assert report.format == "keras"
    assert report.verdict is Verdict.UNSAFE


def test_keras_lambda_hidden_by_json_escape_is_unsafe() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", '{"class_name": "Lamb\\u0064a", "config": {}}')
    assert json.loads('{"n": "Lamb\\u0064a"}')["n"] == "Lambda"
    report = scan_bytes(out.getvalue())
    assert report.verdict is Verdict.UNSAFE
