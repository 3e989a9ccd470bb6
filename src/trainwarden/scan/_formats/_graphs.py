"""Graph formats that run code or touch files when loaded: TensorFlow, Keras metadata, ONNX.

Recognised from their protobuf bytes (no TensorFlow or ONNX import). Field numbers are those of
TensorFlow's ``saved_model.proto``, ``meta_graph.proto``, ``graph.proto``, ``node_def.proto``,
``function.proto`` and ``keras/protobuf/saved_metadata.proto``, and of ONNX's ``onnx.proto``.

* TensorFlow SavedModel (``saved_model.pb``) and frozen GraphDefs: ops that run Python
  (``PyFunc``, ``EagerPyFunc``) or read and write files (``ReadFile``, ``WriteFile``,
  ``MatchingFiles``, ``ImmutableConst``, file readers and writers) are ``unsafe``: they run
  when the graph does, inside the loading process.
* Keras ``keras_metadata.pb``: Lambda layers carry marshalled Python bytecode (``unsafe``),
  objects from modules outside keras are imported (``unknown``).
* ONNX: operators from custom domains (kernels from whatever native library registers them)
  are ``unknown``; external-data ``location`` paths that are absolute or leave the model's
  directory make the loader read files elsewhere (``unsafe``).
"""

from __future__ import annotations

import json
import posixpath
import re

from trainwarden.findings import Severity, Verdict
from trainwarden.scan._formats._base import Blob, Context, ScanAborted
from trainwarden.scan._formats._protobuf import (
    I32,
    I64,
    LEN,
    SGROUP,
    VARINT,
    ProtoError,
    read_string,
    spans,
)

__all__ = ["analyse_protobuf", "sniff_graph"]

# -- TensorFlow ------------------------------------------------------------------------------

_PYTHON_OPS = frozenset({"PyFunc", "EagerPyFunc", "PyFuncStateless"})
_FILE_READ_OPS = frozenset(
    {
        "ReadFile", "MatchingFiles", "ImmutableConst", "WholeFileReader", "WholeFileReaderV2",
        "TextLineReader", "TextLineReaderV2", "FixedLengthRecordReader",
        "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2", "LMDBReader",
        "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2", "MatchingFilesDataset", "ExperimentalMatchingFilesDataset",
        "LoadAndRemapMatrix", "DecodeProtoV2",
    }
)  # fmt: skip
_FILE_WRITE_OPS = frozenset(
    {
        "WriteFile", "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary",
        "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary",
        "WriteGraphSummary", "WriteRawProtoSummary", "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord", "SnapshotDataset", "SnapshotDatasetV2", "SaveDataset",
        "SaveDatasetV2",
    }
)  # fmt: skip
# Checkpoint save/restore ops are in every SavedModel (its saver); they read and write the
# variables files at a path the caller gives. Recorded, not flagged.
_CHECKPOINT_OPS = frozenset(
    {"Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints"}
)

# -- ONNX ------------------------------------------------------------------------------------

# Operator domains implemented by ONNX itself and by onnxruntime's built-in contrib kernels.
_ONNX_DOMAINS = frozenset(
    {
        "", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training",
        "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental",
    }
)  # fmt: skip
_ONNX_MODEL_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 21, 25, 26})
_MAX_DEPTH = 16  # subgraphs inside attributes inside subgraphs...

_WINDOWS_ABS = re.compile(r"^([A-Za-z]:|\\\\|//)")


def sniff_graph(blob: Blob, head: bytes) -> str | None:
    """``onnx``, ``tf-saved-model``, ``tf-graph``, ``tf-fingerprint`` or ``keras-metadata``.

    A guess from the top-level fields, made only when they match one schema exactly:
    protobuf bytes name no schema, and parsers read any message with any schema (fields they
    do not expect become unknown fields, in any order). The guess only names the file;
    :func:`analyse_protobuf` checks every reading a loader could take, guessed or not.
    """
    top = _top_fields(blob, head)
    return None if top is None else _guess(blob, *top)


def _guess(blob: Blob, fields: dict[int, int], first_len: tuple[int, int] | None) -> str | None:
    if _is_fingerprint(blob, fields):
        return "tf-fingerprint"
    if fields.get(1) == VARINT and fields.get(7) == LEN and set(fields) <= _ONNX_MODEL_FIELDS:
        return "onnx"
    if fields.get(1) == VARINT and fields.get(2) == LEN and set(fields) <= {1, 2}:
        return "tf-saved-model"
    if first_len is not None and set(fields) <= {1, 2, 3, 4} and fields.get(1) == LEN:
        return _sniff_nodes(blob, *first_len)
    return None


def _top_fields(blob: Blob, head: bytes) -> tuple[dict[int, int], tuple[int, int] | None] | None:
    """Wire type of each top-level field, and the span of the first field 1 (or None)."""
    if not head or not _is_field_key(head[0]):
        return None
    top: dict[int, int] = {}
    first_len: tuple[int, int] | None = None
    try:
        for number, wire, value, end in spans(blob, 0, None, max_fields=100_000):
            if top.setdefault(number, wire) != wire:
                top[number] = -1  # one field number with two wire types: no schema's
            if number == 1 and wire == LEN and first_len is None:
                first_len = (value, end)
            if len(top) > 16:
                return None
    except ProtoError:
        return None
    return top, first_len


def _readings(top: dict[int, int]) -> list[str]:
    """Loaders that act on a message with these top-level fields, whatever else is there.

    ``onnx.load`` reads field 7 as the graph and 25 as functions; a SavedModel's field 2 is
    its meta graphs; a GraphDef's fields 1 and 2 are its nodes and function library.
    """
    found = []
    if top.get(7) == LEN or top.get(25) == LEN:
        found.append("onnx")
    if top.get(2) == LEN:
        found.append("tf-saved-model")
    if top.get(1) == LEN or top.get(2) == LEN:
        found.append("tf-graph")
    return found


def _is_field_key(byte: int) -> bool:
    # The first byte of a message is a field key: a field number from 1 and a wire type
    # parsers accept at the start (varint, 64-bit, length-delimited, group start, 32-bit).
    return byte >> 3 != 0 and byte & 7 in (VARINT, I64, LEN, SGROUP, I32)


# fingerprint.proto: FingerprintDef {saved_model_checksum=1, graph_def_program_hash=2,
# signature_def_hash=3, saved_object_graph_hash=4, checkpoint_hash=5 (uint64 each),
# version=6 (VersionDef), uuid=7 (string)}. TensorFlow writes it into every SavedModel.
_FINGERPRINT_WIRES = {1: VARINT, 2: VARINT, 3: VARINT, 4: VARINT, 5: VARINT, 6: LEN, 7: LEN}


def _is_fingerprint(blob: Blob, top: dict[int, int]) -> bool:
    """True when every top-level field has FingerprintDef's wire type, with 2+ hashes.

    Its field numbers are all ONNX ModelProto's too (2-4 there are strings), so without this
    every SavedModel's fingerprint was read as a broken ONNX model.
    """
    if not top.items() <= _FINGERPRINT_WIRES.items():
        return False
    return len(top.keys() & {1, 2, 3, 4, 5}) >= 2


def _sniff_nodes(blob: Blob, start: int, end: int) -> str | None:
    # keras_metadata.pb: SavedObject {node_id=2, node_path=3, identifier=4, metadata=5}.
    # A frozen GraphDef: NodeDef {name=1, op=2, input=3, device=4, attr=5}.
    try:
        sub = {n: (w, v, e) for n, w, v, e in spans(blob, start, end, max_fields=10_000)}
    except ProtoError:
        return None
    ident = sub.get(4)
    if ident is not None and ident[0] == LEN:
        text = read_string(blob, ident[1], ident[2])
        if text.startswith(("_tf_keras", "trackable")):
            return "keras-metadata"
    op = sub.get(2)
    if op is not None and op[0] == LEN and set(sub) <= {1, 2, 3, 4, 5, 6, 7, 8}:
        name = read_string(blob, op[1], op[2])
        if name.isidentifier():
            return "tf-graph"
    return None


def analyse_protobuf(ctx: Context, blob: Blob, member: str | None, head: bytes) -> str | None:
    """Report what a loader reading the bytes as protobuf would run or read.

    Every reading the top-level fields allow is checked (an ONNX model, a SavedModel, a
    GraphDef), each on a scratch context: one that a protobuf parser rejects (a length past
    its message, a wire type that does not exist) makes that loader raise before it reads
    or runs anything, so what the walk found before that point is dropped. Returns the
    guessed format (:func:`sniff_graph`) if a reading stands, else None: the caller names
    the bytes (data, text...), and the findings of the readings stay.
    """
    top = _top_fields(blob, head)
    if top is None:
        return None
    guess = _guess(blob, *top)
    if guess == "keras-metadata":
        try:
            _keras_metadata(ctx, blob, member)
        except ProtoError as exc:
            _malformed(ctx, member, guess, exc)
    standing = [kind for kind in _readings(top[0]) if _reading(ctx, blob, member, kind, guess)]
    if guess is None:
        return None
    if guess in ("tf-fingerprint", "keras-metadata") or guess in standing:
        return guess
    return standing[0] if standing else None


def _reading(ctx: Context, blob: Blob, member: str | None, kind: str, guess: str | None) -> bool:
    """Check one reading; False when every protobuf parser rejects it (nothing kept)."""
    scratch = Context(ctx.path, ctx.policy, ctx.limits, deadline=ctx.deadline)
    try:
        _WALKS[kind](scratch, blob, member)
    except ProtoError as exc:
        if exc.rejected:
            if kind == guess:
                ctx.info(
                    "graph.not-" + kind,
                    f"not a {kind} after all: a protobuf parser rejects it ({exc}), so its "
                    "loader fails before reading or running anything",
                    member,
                )
            return False
        _keep(ctx, scratch)
        _malformed(ctx, member, kind, exc)
        return True
    except ScanAborted:
        _keep(ctx, scratch)
        raise
    _keep(ctx, scratch)
    return True


def _malformed(ctx: Context, member: str | None, fmt: str, exc: ProtoError) -> None:
    ctx.unknown(
        "graph.malformed",
        f"{fmt} protobuf could not be read to its end ({exc}); the rest was not analysed",
        member,
    )


def _keep(ctx: Context, scratch: Context) -> None:
    for finding in scratch.findings:
        ctx.record(finding)
    for key, value in scratch.details.items():
        ctx.details.setdefault(key, value)


def _saved_model(ctx: Context, blob: Blob, member: str | None) -> None:
    for number, wire, start, end in spans(blob):
        if number == 2 and wire == LEN:  # meta_graphs
            _meta_graph(ctx, blob, member, start, end)


def _frozen_graph(ctx: Context, blob: Blob, member: str | None) -> None:
    _graph_def(ctx, blob, member, 0, blob.size, 0)


def _meta_graph(ctx: Context, blob: Blob, member: str | None, start: int, end: int) -> None:
    for number, wire, s, e in spans(blob, start, end):
        if number == 2 and wire == LEN:  # graph_def
            _graph_def(ctx, blob, member, s, e, 0)


def _graph_def(
    ctx: Context, blob: Blob, member: str | None, start: int, end: int, depth: int
) -> None:
    ctx.check_time(member)
    if depth > _MAX_DEPTH:
        ctx.unknown("graph.too-deep", "graph nesting deeper than the scanner reads", member)
        return
    for number, wire, s, e in spans(blob, start, end):
        if number == 1 and wire == LEN:  # node
            _tf_node(ctx, blob, member, s, e)
        elif number == 2 and wire == LEN:  # library: FunctionDefLibrary
            for fnum, fwire, fs, fe in spans(blob, s, e):
                if fnum == 1 and fwire == LEN:  # function: FunctionDef
                    for dnum, dwire, ds, de in spans(blob, fs, fe):
                        if dnum == 3 and dwire == LEN:  # node_def
                            _tf_node(ctx, blob, member, ds, de)


def _tf_node(ctx: Context, blob: Blob, member: str | None, start: int, end: int) -> None:
    op = name = ""
    for number, wire, s, e in spans(blob, start, end):
        if wire != LEN:
            continue
        if number == 2:
            op = read_string(blob, s, e)
        elif number == 1:
            name = read_string(blob, s, e)
    if op in _PYTHON_OPS:
        what, severity = "runs Python code (a py_function) when the graph runs", Severity.CRITICAL
    elif op in _FILE_READ_OPS:
        what, severity = "reads files when the graph runs", Severity.HIGH
    elif op in _FILE_WRITE_OPS:
        what, severity = "writes files when the graph runs", Severity.HIGH
    else:
        if op in _CHECKPOINT_OPS:
            ctx.details.setdefault("checkpoint_ops", True)
        return
    ctx.add(
        "tf.dangerous-op",
        severity,
        f"TensorFlow op {op} {what}",
        member,
        verdict=Verdict.UNSAFE,
        offset=start,
        evidence=f"{op} ({name[:80]})" if name else op,
    )


def _keras_metadata(ctx: Context, blob: Blob, member: str | None) -> None:
    from trainwarden.scan._formats._configs import check_keras_config

    for number, wire, start, end in spans(blob):
        if number != 1 or wire != LEN:
            continue
        ctx.check_time(member)
        for snum, swire, s, e in spans(blob, start, end):
            if snum == 5 and swire == LEN:  # metadata: the layer's JSON
                check_keras_config(ctx, bytes(blob.read(s, e - s)), member)


def _onnx_model(ctx: Context, blob: Blob, member: str | None) -> None:
    local_domains: set[str] = set()
    for number, wire, start, end in spans(blob):
        if number == 25 and wire == LEN:  # functions: model-local operators
            for fnum, fwire, fs, fe in spans(blob, start, end):
                if fnum == 10 and fwire == LEN:
                    local_domains.add(read_string(blob, fs, fe))
    seen: set[tuple[str, str]] = set()
    for number, wire, start, end in spans(blob):
        if number == 7 and wire == LEN:  # graph
            _onnx_graph(ctx, blob, member, start, end, local_domains, seen, 0)
        elif number == 25 and wire == LEN:
            for fnum, fwire, fs, fe in spans(blob, start, end):
                if fnum == 7 and fwire == LEN:  # node
                    _onnx_node(ctx, blob, member, fs, fe, local_domains, seen, 1)


def _onnx_graph(
    ctx: Context,
    blob: Blob,
    member: str | None,
    start: int,
    end: int,
    local: set[str],
    seen: set[tuple[str, str]],
    depth: int,
) -> None:
    ctx.check_time(member)
    if depth > _MAX_DEPTH:
        ctx.unknown("graph.too-deep", "graph nesting deeper than the scanner reads", member)
        return
    for number, wire, s, e in spans(blob, start, end):
        if number == 1 and wire == LEN:  # node
            _onnx_node(ctx, blob, member, s, e, local, seen, depth)
        elif number in (5, 15) and wire == LEN:  # initializer / sparse_initializer
            _onnx_tensor(ctx, blob, member, s, e, number == 15)


def _onnx_node(
    ctx: Context,
    blob: Blob,
    member: str | None,
    start: int,
    end: int,
    local: set[str],
    seen: set[tuple[str, str]],
    depth: int,
) -> None:
    domain = op = ""
    for number, wire, s, e in spans(blob, start, end):
        if wire != LEN:
            continue
        if number == 7:
            domain = read_string(blob, s, e)
        elif number == 4:
            op = read_string(blob, s, e)
        elif number == 5:  # attribute: subgraphs of If/Loop/Scan
            for anum, awire, as_, ae in spans(blob, s, e):
                if anum in (6, 11) and awire == LEN:  # g, graphs
                    _onnx_graph(ctx, blob, member, as_, ae, local, seen, depth + 1)
    if domain in _ONNX_DOMAINS or domain in local or (domain, op) in seen:
        return
    seen.add((domain, op))
    ctx.unknown(
        "onnx.custom-op",
        "operator from a custom domain: its kernel is native code from whatever library "
        "registers the domain (e.g. an onnxruntime custom-op library) and is not analysed",
        member,
        offset=start,
        evidence=f"{domain}::{op}"[:200],
    )


def _onnx_tensor(
    ctx: Context, blob: Blob, member: str | None, start: int, end: int, sparse: bool
) -> None:
    if sparse:  # SparseTensorProto {values = 1, indices = 2}: both TensorProtos
        for number, wire, s, e in spans(blob, start, end):
            if number in (1, 2) and wire == LEN:
                _onnx_tensor(ctx, blob, member, s, e, False)
        return
    for number, wire, s, e in spans(blob, start, end):
        if number != 13 or wire != LEN:  # external_data: StringStringEntryProto
            continue
        key = value = ""
        for knum, kwire, ks, ke in spans(blob, s, e):
            if kwire == LEN and knum == 1:
                key = read_string(blob, ks, ke)
            elif kwire == LEN and knum == 2:
                value = read_string(blob, ks, ke)
        if key == "location":
            _external_location(ctx, member, value, s)


def _external_location(ctx: Context, member: str | None, location: str, offset: int) -> None:
    normal = posixpath.normpath(location.replace("\\", "/"))
    escapes = (
        location.startswith(("/", "~"))
        or bool(_WINDOWS_ABS.match(location))
        or normal == ".."
        or normal.startswith("../")
        or "\0" in location
    )
    if escapes:
        ctx.add(
            "onnx.external-data-escape",
            Severity.HIGH,
            "external tensor data lives outside the model's directory: loading the model "
            "reads that file (any file the loader can read)",
            member,
            verdict=Verdict.UNSAFE,
            offset=offset,
            evidence=json.dumps(location)[:200],
        )
    else:
        ctx.info(
            "onnx.external-data",
            "tensor data is read from a file next to the model (not analysed here)",
            member,
            evidence=location[:200],
        )


_WALKS = {"onnx": _onnx_model, "tf-saved-model": _saved_model, "tf-graph": _frozen_graph}
