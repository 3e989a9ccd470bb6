"""Zip formats: torch, TorchScript, torch.export, ``.npz``, ``.keras``, ``.skops`` and zip.

Every member a loader could deserialise is analysed: any name ending in ``pkl`` (compared
case-insensitively, as torch's miniz lookup does), duplicates included. Tensor storages are
never read: only their sizes are checked against the storages the pickle declares.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from trainwarden.findings import Severity
from trainwarden.scan._formats._base import Blob, Context, join_member
from trainwarden.scan._formats._zip import ZipArchive, ZipEntry, member_blob, read_zip

if TYPE_CHECKING:
    from trainwarden.scan._pickle import PickleAnalysis

__all__ = ["analyse_zip", "classify_zip"]

# Bytes per element of each legacy typed-storage class torch names in persistent ids.
STORAGE_ITEMSIZE: dict[str, int] = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "QUInt8Storage": 1,
    "QInt8Storage": 1,
    "QInt32Storage": 4,
    "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}

# TorchScript operator namespaces that are part of torch itself. Anything else is an
# extension operator whose implementation comes from a library loaded at run time.
_TORCHSCRIPT_OPS = frozenset({"aten", "prim", "quantized", "_quantized", "profiler", "cuda"})
# Compiled on first use (re caches them): only TorchScript archives need them.
_OPS_RE = rb"\bops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)"
_CLASSES_RE = rb"\btorch\.classes\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)"


def _archive_name(archive: ZipArchive) -> str | None:
    if not archive.entries:
        return None
    first = archive.entries[0].name
    return first.split("/", 1)[0] if "/" in first else None


def classify_zip(archive: ZipArchive, names: frozenset[str] | None = None) -> str:
    """Which zip-based format the member names (lower-cased, if given) say this is."""
    names = _lower_names(archive) if names is None else names
    root = (_archive_name(archive) or "").lower()
    if root:
        if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
            return "torchscript"
        if f"{root}/data.pkl" in names:
            return "torch-zip"
    export, skops = _program_kinds(names, root)
    if export:
        return "torch-export"
    if skops:
        return "skops"
    if names and all(n.endswith(".npy") for n in names):
        return "numpy-npz"
    if "config.json" in names and (
        "metadata.json" in names or "model.weights.h5" in names or "model.weights.npz" in names
    ):
        return "keras"
    return "zip"


def _lower_names(archive: ZipArchive) -> frozenset[str]:
    return frozenset(e.name.lower() for e in archive.entries)


def _program_kinds(names: frozenset[str], root: str) -> tuple[bool, bool]:
    """(torch.export program, skops archive): the records their loaders read first.

    torch.export.load wants ``<root>/archive_format`` (or the older layout's
    ``serialized_exported_program.json``), skops.io.load a top-level ``schema.json``.
    """
    export = f"{root}/archive_format" in names or "serialized_exported_program.json" in names
    return export, "schema.json" in names


def analyse_zip(ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
    """Analyse a zip archive and every member of it a loader could deserialise."""
    archive = read_zip(ctx, blob, member)
    if archive is None:
        return "zip"
    names = _lower_names(archive)
    fmt = classify_zip(archive, names)
    root = _archive_name(archive)
    torch_like = fmt in ("torch-zip", "torchscript")
    if torch_like and archive.prefix:
        ctx.unknown(
            "archive.prefix",
            "bytes precede the zip archive; torch and zipfile locate members differently",
            member,
            evidence=f"{archive.prefix} byte(s)",
        )
    if torch_like:
        _case_collisions(ctx, archive, member)
    # Checked whatever the names made of the archive: torch.export.load and skops.io.load
    # read their records from an archive that also looks like a checkpoint or a Keras model.
    export, skops = _program_kinds(names, (root or "").lower())
    pickles: dict[str, list[PickleAnalysis]] = {}
    code_members: list[ZipEntry] = []
    tensor_members: dict[str, ZipEntry] = {}
    storage_dirs = ("data/", "constants/") if fmt == "torchscript" else ("data/",)
    root_slash = root.lower() + "/" if root else ""
    spans: dict[tuple[int, int, int], str] = {}
    for entry in archive.entries:
        ctx.check_time(member)
        lower = entry.name.lower()
        relative = lower[len(root_slash) :] if root_slash and lower.startswith(root_slash) else ""
        if (
            torch_like
            and relative.startswith(storage_dirs)
            and "/" not in relative.split("/", 1)[1]
            and not lower.endswith("pkl")
            and not entry.is_symlink
        ):
            # Raw tensor bytes: torch never unpickles them; skip without reading.
            tensor_members[relative] = entry
            continue
        where = join_member(member, entry.name)
        if entry.is_symlink:
            # Extractors make a link of it; torch and zipfile read its bytes (the link
            # target text), which may be a pickle: reported, then analysed as bytes.
            ctx.unknown(
                "archive.symlink",
                "member is a symbolic link; it was not followed",
                where,
                severity=Severity.LOW,
            )
        if entry.is_dir:
            continue
        if torch_like and _is_torch_record(relative, entry, blob):
            continue
        span = (entry.header_offset, entry.compressed_size, entry.method)
        first = spans.setdefault(span, entry.name)
        if first != entry.name:
            # Another entry of the central directory points at the same data (reported as
            # archive.overlap): it is those bytes again; inflating and analysing them once
            # more for each of thousands of entries is how overlap bombs burn time.
            ctx.info(
                "archive.same-content",
                "member's data is another member's data (analysed there)",
                where,
                evidence=first[:200],
            )
            continue
        if fmt == "torchscript" and relative.startswith("code/") and lower.endswith(".py"):
            code_members.append(entry)
            continue
        cap = min(ctx.limits.max_member_bytes, ctx.limits.max_pickle_bytes)
        if lower.endswith("pkl"):
            # torch (and torch.package, TorchScript's debug info) unpickles these.
            mblob = member_blob(ctx, blob, entry, where, cap=cap)
            if mblob is None:
                _unreadable(ctx, entry, where)
                continue
            _check_stored_crc(ctx, mblob, entry, where)
            pickles.setdefault(relative or lower, []).append(
                _analyse_pickle_member(ctx, mblob, where, torchscript=fmt == "torchscript")
            )
            continue
        mblob = member_blob(ctx, blob, entry, where, cap=ctx.limits.max_member_bytes)
        if mblob is None:
            _unreadable(ctx, entry, where)
            continue
        if export:
            _check_export_member(ctx, mblob, lower, where)
        elif skops and lower == "schema.json":
            from trainwarden.scan._formats._skops import check_skops_schema

            check_skops_schema(ctx, bytes(mblob.read(0, mblob.size)), where)
        ctx.analyse(mblob, where, depth + 1)
        # keras.saving.load_model builds the model from the root config.json before it looks
        # for weights or metadata: any zip holding one is a Keras archive to it.
        if lower == "config.json":
            from trainwarden.scan._formats._configs import check_keras_config

            check_keras_config(ctx, bytes(mblob.read(0, mblob.size)), where)
    if torch_like:
        _check_storages(ctx, pickles, tensor_members, member)
    if any(e.name.lower().endswith("/.data/extern_modules") for e in archive.entries):
        _check_torch_package(ctx, archive, member)
    if fmt == "torchscript":
        _check_torchscript(ctx, blob, archive, code_members, member)
    if fmt == "torch-zip" and "data.pkl" not in pickles:
        ctx.unknown("torch.no-data-pkl", "torch archive has no readable data.pkl", member)
    return fmt


def _check_export_member(ctx: Context, mblob: Blob, lower: str, where: str) -> None:
    # torch.export.load evaluates strings of the program JSON (sympy.sympify) and
    # aoti_load_package dlopens the shared libraries of an AOTInductor package: neither is
    # a pickle, so the generic member analysis would call them data.
    from trainwarden.scan._formats._export import check_export_program, is_native_library

    if lower.endswith(".json"):
        check_export_program(ctx, bytes(mblob.read(0, mblob.size)), where)
    elif is_native_library(lower, bytes(mblob.read(0, 4))):
        ctx.unknown(
            "torch-export.native-code",
            "torch.export / AOTInductor package holds a shared library, which its loader "
            "(torch._inductor.aoti_load_package) loads and runs; native code is not analysed",
            where,
        )


# Small text records torch reads as numbers or short strings, never as pickles.
_TORCH_RECORDS = frozenset(
    {
        "version",
        ".data/version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
    }
)


def _is_torch_record(relative: str, entry: ZipEntry, blob: Blob) -> bool:
    # No loader unpickles these names; skipping them saves most of the per-archive work on
    # small checkpoints. Only short stored records are skipped; a record that is anything
    # else is analysed like any other member.
    return (
        relative in _TORCH_RECORDS
        and entry.method == 0
        and entry.size <= 64
        and entry.size == entry.compressed_size
    )


def _check_torch_package(ctx: Context, archive: ZipArchive, member: str | None) -> None:
    # torch.package archives ship Python modules that PackageImporter imports (runs) when
    # a pickle inside refers to them: code by design, which static analysis cannot clear.
    modules = [e.name for e in archive.entries if e.name.endswith(".py")]
    if modules:
        ctx.unknown(
            "torch.package-code",
            "torch.package archive: its Python modules run when the package is imported "
            "or one of its pickles is loaded",
            member,
            evidence=", ".join(modules[:5])[:200],
        )


def _case_collisions(ctx: Context, archive: ZipArchive, member: str | None) -> None:
    # torch's miniz lookup ignores case: "data.pkl" and "DATA.PKL" are the same record to it,
    # and which one it reads depends on its binary search. (Exact duplicates are reported by
    # the zip reader.)
    seen: dict[bytes, ZipEntry] = {}
    for entry in archive.entries:
        key = entry.raw_name.lower()
        first = seen.setdefault(key, entry)
        if first is not entry and first.raw_name != entry.raw_name:
            ctx.unknown(
                "archive.duplicate-name",
                "two members' names differ only in case; torch's reader treats them as one "
                "and loaders disagree on which one they read",
                join_member(member, entry.name),
                offset=entry.header_offset,
                evidence=f"also {first.name[:80]}",
            )


def _unreadable(ctx: Context, entry: ZipEntry, where: str) -> None:
    if not any(f.location.member == where for f in ctx.findings):
        ctx.unknown("archive.unreadable-member", "member could not be read", where)


def _check_stored_crc(ctx: Context, mblob: Blob, entry: ZipEntry, where: str) -> None:
    if entry.method != 0:
        return  # compressed members are checked when inflated
    import zlib

    if zlib.crc32(mblob.read(0, mblob.size)) != entry.crc:
        ctx.unknown(
            "archive.crc-mismatch",
            "member CRC-32 does not match (torch does not check it; zipfile refuses it)",
            where,
            severity=Severity.LOW,
        )


def _analyse_pickle_member(
    ctx: Context, mblob: Blob, where: str, *, torchscript: bool
) -> PickleAnalysis:
    from trainwarden.scan._formats._pickles import analyse_stream, judge, report_trailing

    # torch reads one pickle from each record, but whoever extracts the archive and calls
    # pickle.load again reads the next one: every pickle in the member is judged, as for a
    # file of its own (a legitimate record holds exactly one).
    analyses, end = analyse_stream(ctx, mblob, where, judge_all=False)
    for analysis in analyses:
        judge(
            ctx,
            _without_torchscript_classes(ctx, analysis, where) if torchscript else analysis,
            where,
            source=mblob,
        )
    report_trailing(ctx, mblob, where, end)
    return analyses[0]


def _without_torchscript_classes(
    ctx: Context, analysis: PickleAnalysis, where: str
) -> PickleAnalysis:
    # TorchScript's unpickler resolves `__torch__.*` names to classes compiled from the
    # archive's own code/ members (checked separately) and `torch.jit._pickle.*` to its
    # own list/tag builders, never through Python imports.
    kept = tuple(
        g
        for g in analysis.globals
        if not g.module.startswith("__torch__") and g.module != "torch.jit._pickle"
    )
    ctx.details.setdefault("torchscript_classes", [])
    classes = ctx.details["torchscript_classes"]
    assert isinstance(classes, list)
    classes.extend(
        f"{g.module}.{g.name}" for g in analysis.globals if g.module.startswith("__torch__")
    )
    return replace(analysis, globals=kept)


def _pid_storages(analyses: list[PickleAnalysis]) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for analysis in analyses:
        for pid in analysis.persistent_ids:
            if (
                isinstance(pid, tuple)
                and len(pid) == 5
                and pid[0] == "storage"
                and isinstance(pid[2], str)
                and isinstance(pid[4], int)
            ):
                kind = getattr(pid[1], "name", "")
                out.append((pid[2], str(kind), pid[4]))
    return out


def _check_storages(
    ctx: Context,
    pickles: dict[str, list[PickleAnalysis]],
    tensors: dict[str, ZipEntry],
    member: str | None,
) -> None:
    for record, directory in (("data.pkl", "data/"), ("constants.pkl", "constants/")):
        for key, kind, numel in _pid_storages(pickles.get(record, [])):
            entry = tensors.get(f"{directory}{key}".lower())
            where = join_member(member, f"{directory}{key}")
            if entry is None:
                ctx.unknown(
                    "torch.missing-storage",
                    "the pickle refers to a tensor storage the archive does not contain",
                    where,
                )
                continue
            itemsize = STORAGE_ITEMSIZE.get(kind)
            if itemsize is not None and entry.size < numel * itemsize:
                ctx.unknown(
                    "torch.storage-size-mismatch",
                    "tensor storage is smaller than the pickle declares",
                    where,
                    evidence=f"{entry.size} < {numel} x {itemsize}",
                )


def _check_torchscript(
    ctx: Context,
    blob: Blob,
    archive: ZipArchive,
    code_members: list[ZipEntry],
    member: str | None,
) -> None:
    defined: set[str] = set()
    for entry in code_members:
        where = join_member(member, entry.name)
        mblob = member_blob(ctx, blob, entry, where, cap=ctx.limits.max_member_bytes)
        if mblob is None:
            _unreadable(ctx, entry, where)
            continue
        source = bytes(mblob.read(0, mblob.size))
        module = entry.name.split("/code/", 1)[-1].removesuffix(".py").replace("/", ".")
        defined.update(
            f"{module}.{m.group(1).decode()}"
            for m in re.finditer(rb"^class ([A-Za-z_][A-Za-z0-9_]*)", source, re.MULTILINE)
        )
        for match in re.finditer(_OPS_RE, source):
            namespace = match.group(1).decode()
            if namespace not in _TORCHSCRIPT_OPS:
                ctx.unknown(
                    "torchscript.extension-op",
                    "TorchScript code calls an operator from outside torch; its "
                    "implementation comes from whatever library registers it",
                    where,
                    offset=match.start(),
                    evidence=f"ops.{namespace}.{match.group(2).decode()}",
                )
        for match in re.finditer(_CLASSES_RE, source):
            ctx.unknown(
                "torchscript.custom-class",
                "TorchScript code uses a custom C++ class registered by an extension",
                where,
                offset=match.start(),
                evidence=f"torch.classes.{match.group(1).decode()}.{match.group(2).decode()}",
            )
    if code_members:
        # TorchScript runs when torch.jit.load loads the archive (module __setstate__
        # methods included). It cannot import Python, but its operators are not a sandbox:
        # published exploits reach memory corruption through them. We check which operators
        # it calls; we cannot prove the code harmless, so the archive is never safe.
        ctx.unknown(
            "torchscript.code",
            "TorchScript archive: its code runs when torch.jit.load loads it and is not "
            "proven safe by static analysis (use --fail-on unsafe to accept TorchScript "
            "whose pickles and operators raise no other finding)",
            member,
            severity=Severity.LOW,
            evidence=f"{len(code_members)} code file(s)",
        )
    classes = ctx.details.get("torchscript_classes", [])
    assert isinstance(classes, list)
    for name in sorted(set(classes)):
        if name not in defined:
            ctx.unknown(
                "torchscript.undefined-class",
                "the archive's pickle names a TorchScript class its code does not define",
                member,
                evidence=name,
            )
    ctx.details.pop("torchscript_classes", None)
