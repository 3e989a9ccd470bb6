"""Route a blob to its reader by sniffed format; nested archives come back through here."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from trainwarden.findings import Severity, Verdict
from trainwarden.scan._formats._base import Blob, Context, ScanAborted
from trainwarden.scan._formats._sniff import is_tar_header, sniff_head

if TYPE_CHECKING:
    from trainwarden.scan._pickle import PickleAnalysis

__all__ = ["analyse", "analyse_unrecognised", "is_plain_data"]

_HEAD = 1024


class _Dispatcher:
    """The :class:`~trainwarden.scan._formats._base.Dispatcher` readers hand members back to."""

    def analyse(self, ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
        return analyse(ctx, blob, member, depth)

    def analyse_unrecognised(
        self, ctx: Context, blob: Blob, member: str | None, head: bytes, depth: int
    ) -> str:
        return analyse_unrecognised(ctx, blob, member, head, depth)


DISPATCHER = _Dispatcher()


def analyse(ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
    """Analyse ``blob`` (the file, or an archive member named ``member``); return its format.

    Findings go to ``ctx``. ``depth`` counts archive nesting for ``Limits.max_nesting``.
    """
    if ctx.dispatcher is None:
        ctx.dispatcher = DISPATCHER
    if depth > ctx.limits.max_nesting:
        ctx.unknown(
            "limit.nesting",
            "archive nesting is deeper than the scanner follows; the member was not analysed",
            member,
            evidence=f"max_nesting={ctx.limits.max_nesting}",
        )
        return "data"
    ctx.check_time(member)
    if depth > 0:
        key = blob.key()
        done = ctx.analysed.get(key)
        if done is not None:
            # The same bytes again (entries sharing one span, a payload nested twice): their
            # findings are already in the report; analysing them again only costs time.
            ctx.info(
                "archive.same-content",
                "member holds the same bytes as one analysed before (reported there)",
                member,
                evidence=done,
            )
            return "duplicate"
        ctx.analysed[key] = member or "(top)"
    head = bytes(blob.read(0, _HEAD))
    fmt = sniff_head(head, blob.size)
    if member is None:
        ctx.sniffed = "pickle" if fmt == "unrecognised" else fmt
    outer_depth = ctx.depth
    ctx.depth = depth  # payloads nested in pickles found below are one level deeper
    try:
        fmt = _route_checked(ctx, blob, member, depth, fmt, head)
        _check_model_name(ctx, member, fmt)
        return fmt
    finally:
        ctx.depth = outer_depth


# Extensions of model files: bytes named like this that no reader recognises were not
# analysed, and a loader chosen by the name (torch.load for .pt, np.load for .npy...) may
# still read them; they are never reported safe.
MODEL_SUFFIXES = frozenset(
    {
        ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz",
        ".safetensors", ".h5", ".hdf5", ".keras", ".pb", ".onnx", ".gguf", ".pt2", ".tflite",
        ".mlmodel",
    }
)  # fmt: skip
_UNANALYSED = frozenset({"data", "text", "empty"})


def _check_model_name(ctx: Context, member: str | None, fmt: str) -> None:
    if fmt not in _UNANALYSED:
        return
    name = (member.rsplit("!", 1)[-1] if member else ctx.path).lower()
    dot = name.rfind(".")
    suffix = name[dot:] if dot > max(name.rfind("/"), name.rfind("\\")) else ""
    if suffix in MODEL_SUFFIXES:
        ctx.unknown(
            "format.unrecognised-model-file",
            f"named like a model file ({suffix}) but its bytes match no format the scanner "
            f"reads ({fmt}): not analysed, while a loader picked by the name would read it",
            member,
            evidence=suffix,
        )


def _route_checked(
    ctx: Context, blob: Blob, member: str | None, depth: int, fmt: str, head: bytes
) -> str:
    try:
        # Zip files start with PERSID ("P"), which fails before any import in a plain
        # unpickler (no persistent_load); every other opcode byte is followed.
        if fmt not in _PICKLE_READERS and head and head[0] in _OPCODE_BYTES and head[0] != 0x50:
            _polyglot(ctx, blob, member)
        if fmt != "tar" and is_tar_header(head):
            _tar_polyglot(ctx, blob, member, depth)
        routed = _route(ctx, blob, member, depth, fmt, head)
        if routed not in _ZIP_FORMATS and fmt != "zip" and _ends_with_zip(blob):
            _zip_polyglot(ctx, blob, member, depth)
        return routed
    except (ScanAborted, RecursionError, MemoryError):
        raise
    except Exception as exc:  # a reader bug must not make a file safe
        ctx.add(
            "scan.internal-error",
            Severity.HIGH,
            f"the {fmt} reader failed ({type(exc).__name__}: {exc}); the file was not "
            "fully analysed",
            member,
            verdict=Verdict.ERROR,
        )
        return fmt


# Readers that already run the pickle machine from the first byte.
_PICKLE_READERS = frozenset({"unrecognised", "torch-legacy", "empty"})


def _polyglot(ctx: Context, blob: Blob, member: str | None) -> None:
    # A file can be two formats at once. If the pickle machine gets from byte 0 to an import,
    # `pickle.load` (or torch.load's legacy path, for a file named model.bin) would run it,
    # whatever the other format says. The whole stream is followed, not just the head: a
    # long first opcode argument can carry the pickle into attacker-chosen bytes far away.
    from trainwarden.scan._formats._pickles import analyse_stream, judge

    analyses, _ = analyse_stream(ctx, blob, member, judge_all=False)
    # A limit hit before the first import counts too: the import may lie beyond it.
    if any(_reaches_import(a) or a.limited for a in analyses):
        ctx.unknown(
            "format.pickle-polyglot",
            "the file is also a pickle that reaches an import from its first byte",
            member,
        )
        for analysis in analyses:
            judge(ctx, analysis, member, source=blob)


def _reaches_import(analysis: PickleAnalysis) -> bool:
    shared = analysis.shared_memo
    return analysis.first_import_offset is not None or (
        shared is not None and shared.first_import_offset is not None
    )


def _tar_polyglot(ctx: Context, blob: Blob, member: str | None, depth: int) -> None:
    # The first block is a tar header tarfile accepts, so torch's legacy loader (which tries
    # tarfile before anything else on a real file) reads a tar archive here, whatever the
    # format we recognised says: its members are analysed too.
    from trainwarden.scan._formats._archives import analyse_tar

    ctx.unknown(
        "format.tar-polyglot",
        "the file is also a tar archive (its first block is a valid tar header)",
        member,
    )
    analyse_tar(ctx, blob, member, depth)


# What the zip reader returns: a file routed to one of these was read as the zip it is.
_ZIP_FORMATS = frozenset(
    {"zip", "torch-zip", "torchscript", "numpy-npz", "keras", "torch-export", "skops"}
)


def _zip_polyglot(ctx: Context, blob: Blob, member: str | None, depth: int) -> None:
    # zipfile finds an archive by its end record, whatever precedes it: a valid gzip stream,
    # pickle or .npy followed by a zip is that zip to zipfile, Keras and skops. (Bytes no
    # reader recognises are entered the same way by _data.)
    from trainwarden.scan._formats._zipfamily import analyse_zip

    if any(f.rule_id == "archive.prefix" and f.location.member == member for f in ctx.findings):
        return  # already read as a zip behind leading bytes
    ctx.unknown(
        "archive.zip-polyglot",
        "the file also ends with a zip archive, which zipfile (and Keras, skops...) reads "
        "whatever precedes it",
        member,
    )
    analyse_zip(ctx, blob, member, depth)


def _route(ctx: Context, blob: Blob, member: str | None, depth: int, fmt: str, head: bytes) -> str:
    if fmt == "empty":
        return "empty"
    if fmt == "zip":
        from trainwarden.scan._formats._zipfamily import analyse_zip

        return analyse_zip(ctx, blob, member, depth)
    if fmt == "numpy-npy":
        from trainwarden.scan._formats._numpy import analyse_npy

        return analyse_npy(ctx, blob, member)
    if fmt == "safetensors":
        from trainwarden.scan._formats._tensors import analyse_safetensors

        return analyse_safetensors(ctx, blob, member)
    if fmt == "gguf":
        from trainwarden.scan._formats._tensors import analyse_gguf

        return analyse_gguf(ctx, blob, member)
    if fmt == "hdf5":
        from trainwarden.scan._formats._configs import analyse_hdf5

        return analyse_hdf5(ctx, blob, member)
    if fmt == "7z":
        from trainwarden.scan._formats._archives import analyse_7z

        return analyse_7z(ctx, blob, member, depth)
    if fmt == "tar":
        from trainwarden.scan._formats._archives import analyse_tar

        return analyse_tar(ctx, blob, member, depth)
    if fmt == "torch-legacy":
        from trainwarden.scan._formats._torch import analyse_torch_legacy

        return analyse_torch_legacy(ctx, blob, member)
    if fmt == "joblib":
        from trainwarden.scan._formats._joblib import analyse_joblib_compat

        return analyse_joblib_compat(ctx, blob, member, depth)
    if fmt in ("gzip", "bz2", "xz", "lz4", "zstd", "zlib", "lzma"):
        from trainwarden.scan._formats._archives import analyse_compressed

        return analyse_compressed(ctx, blob, member, depth, fmt)
    return analyse_unrecognised(ctx, blob, member, head, depth)


# Every byte that starts a pickle opcode. The unpickler rejects any other first byte
# ("invalid load key") before it can import anything.
_OPCODE_BYTES = frozenset(b"().012BCFGIJKLMNPQRSTUVX]abcdeghijlopqrstu}" + bytes(range(0x80, 0x99)))


def analyse_unrecognised(
    ctx: Context, blob: Blob, member: str | None, head: bytes, depth: int = 0
) -> str:
    """The pickle rule: bytes the pickle machine rejects before any import are plain data.

    Anything else is a pickle stream and is judged (joblib streams are spliced first).
    Data that ends with a zip end record is also read as the zip it carries.
    """
    if head and head[0] not in _OPCODE_BYTES:
        return _data(ctx, blob, member, head, depth)
    from trainwarden.scan._formats._pickles import analyse_stream, judge, report_trailing

    analyses, end = analyse_stream(ctx, blob, member, judge_all=False)
    cut_short = any(
        f.rule_id == "limit.pickle-bytes" and f.location.member == member for f in ctx.findings
    )
    if cut_short:
        # A pickle longer than the scanner reads (the limit finding says so): judge what
        # was read, dangerous imports in it included.
        for analysis in analyses:
            judge(ctx, analysis, member, source=blob)
        return "pickle"
    # Only bytes every unpickler rejects before an import are data. A pickle cut short by
    # a limit is never data: what lies beyond the limit (an import) was not seen.
    if analyses and is_plain_data(analyses[0]):
        return _data(ctx, blob, member, head, depth)
    if any(_is_joblib(a) for a in analyses):
        from trainwarden.scan._formats._joblib import analyse_joblib_stream

        fmt = analyse_joblib_stream(ctx, blob, member)
        _judge_plain_view(ctx, analyses, member)
        return fmt
    for analysis in analyses:
        judge(ctx, analysis, member, source=blob)
    report_trailing(ctx, blob, member, end)
    return "pickle"


def is_plain_data(analysis: PickleAnalysis) -> bool:
    """True when no unpickler can run anything from the pickle read at the file's start.

    Either it fails before any import (``PickleAnalysis.inert``), or its first import goes
    through the copyreg extension registry, or names a module whose top-level name is not
    a Python identifier. Text is often a protocol-0 pickle: ``compute_environment:
    LOCAL_MACHINE`` (accelerate's config) is GLOBAL of module ``ompute_environment:
    LOCAL_MACHINE``, ``import torch`` is INST of ``mport torch``. No installed package
    provides such a module, so the import fails and the load stops there; only a file of
    that exact odd name placed on ``sys.path`` could answer it, and whoever can place files
    there runs code without any pickle.
    """
    if analysis.inert:
        return True
    # A complete pickle would let a stream go on to the next one: only a failed one counts.
    if analysis.complete or analysis.limited or analysis.shared_memo is not None:
        return False
    if not analysis.globals:
        return False
    first = analysis.globals[0]
    if first.offset != analysis.first_import_offset:
        return False
    if first.opcode in _EXT_OPCODES:
        # The copyreg extension registry is filled by the running program, never by the
        # file, and is empty unless the program itself registers codes (no library in
        # common use does): the load fails there. msgpack maps of 2-4 keys (Flax's
        # flax_model.msgpack) begin with these opcode bytes. In case a program did register
        # the code, nothing else may be imported after it.
        return len(analysis.globals) == 1
    return first.resolved and not first.module.split(".", 1)[0].isidentifier()


_EXT_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})


def _judge_plain_view(ctx: Context, analyses: list[PickleAnalysis], member: str | None) -> None:
    # joblib.load reads each array's bytes raw, but pickle.load on the same file reads them
    # as opcodes: a crafted "array" runs code under pickle.load while joblib sees numbers.
    # In that view only dangerous imports are reported; array data read as opcodes is
    # otherwise noise (malformed opcodes, random names) that must not flag real arrays.
    seen = {(f.rule_id, f.evidence) for f in ctx.findings if f.location.member == member}
    location = ctx.location(member)
    for analysis in analyses:
        for finding in ctx.policy.judge(analysis, location):
            if finding.verdict is not Verdict.UNSAFE or (finding.rule_id, finding.evidence) in seen:
                continue
            seen.add((finding.rule_id, finding.evidence))
            ctx.record(replace(finding, message=f"{finding.message} (when read by pickle.load)"))


def _data(ctx: Context, blob: Blob, member: str | None, head: bytes, depth: int) -> str:
    from trainwarden.scan._formats._configs import classify_data

    if _ends_with_zip(blob):
        # A zip with bytes before it (a self-extracting stub, or a disguise): zipfile and
        # every loader built on it (Keras, numpy's npz reader when given the file) read it.
        from trainwarden.scan._formats._zipfamily import analyse_zip

        ctx.unknown(
            "archive.prefix",
            "a zip archive follows leading bytes that are not part of it",
            member,
            severity=Severity.LOW,
        )
        return analyse_zip(ctx, blob, member, depth)
    from trainwarden.scan._formats._graphs import analyse_protobuf

    graph = analyse_protobuf(ctx, blob, member, head)
    if graph is not None:
        return graph
    return classify_data(ctx, blob, member, head)


def _ends_with_zip(blob: Blob) -> bool:
    # An end record whose comment length reaches exactly to the end of the file, as zipfile
    # requires: random data almost never looks like that.
    span = min(blob.size, 22 + 0xFFFF)
    tail = bytes(blob.read(blob.size - span, span))
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return False
    comment_len = int.from_bytes(tail[pos + 20 : pos + 22], "little")
    return pos + 22 + comment_len == len(tail)


def _is_joblib(analysis: object) -> bool:
    return any(
        g.qualname == "joblib.numpy_pickle.NumpyArrayWrapper"
        for g in getattr(analysis, "globals", ())
    )
