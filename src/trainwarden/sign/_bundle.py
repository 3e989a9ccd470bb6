"""The on-disk signature: a Sigstore bundle holding a DSSE envelope over an in-toto Statement.

The layout is OpenSSF model-signing v1.x (predicate ``https://model_signing/signature/v1.0``);
trainwarden's lineage and signer fields live in ``predicate.trainwarden``, which v1.0 verifiers
ignore. See ``docs/signature.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from trainwarden._fs import read_regular
from trainwarden.errors import InputError
from trainwarden.keys import PrivateKey, PublicKey
from trainwarden.manifest import (
    DEFAULT_SHARD_SIZE,
    MAX_SHARD_SIZE,
    MIN_SHARD_SIZE,
    FileEntry,
    Manifest,
    Shard,
)

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "Envelope",
    "Statement",
    "build_bundle",
    "pae",
    "parse_bundle",
    "parse_statement",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
EXTENSION_VERSION = 1
# A manifest of a million files is ~150 MB of JSON; anything larger is not ours.
MAX_SIGNATURE_BYTES = 256 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    header = f"DSSEv1 {len(payload_type)} {payload_type} {len(payload)} "
    return header.encode("utf-8") + payload


def key_hint(key: PublicKey) -> str:
    """model-signing's public-key hint: SHA-256 (hex) of the key's PEM SubjectPublicKeyInfo."""
    pem = Ed25519PublicKey.from_public_bytes(key.raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


@dataclass(frozen=True, slots=True)
class Statement:
    """The signed content, decoded: the manifest and trainwarden's lineage fields."""

    manifest: Manifest
    kind: str  # "file" or "directory"; "unknown" for a bundle not written by trainwarden
    identity: str | None
    fingerprint: str | None
    signed_at: str | None
    run: str | None
    step: int | None
    parent: str | None
    # A bundle written by model-signing has no trainwarden extension: file sizes and empty
    # files are then not covered by the shard method (its own verifier shares that limit).
    extended: bool
    ignore_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a bundle needed to check its signature."""

    payload: bytes
    payload_type: str
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature bytes)
    hint: str | None


def statement_payload(
    manifest: Manifest,
    *,
    kind: str,
    key: PublicKey,
    signed_at: str,
    run: str | None,
    step: int | None,
    parent: str | None,
) -> bytes:
    """Serialize the in-toto Statement (sorted keys, no spaces, ASCII-only JSON escapes).

    ASCII escapes rather than raw UTF-8: a file name that is not valid UTF-8 (Linux allows
    any bytes) is carried as escaped surrogates and still names the same file on
    verification, where raw UTF-8 could not encode it at all.
    """
    algorithm = "sha256" if manifest.method == "files" else f"sha256-sharded-{manifest.shard_size}"
    serialization_args: dict[str, Any] = {
        "method": manifest.method,
        "hash_type": "sha256",
        "allow_symlinks": False,
    }
    if manifest.method == "shards":
        serialization_args["shard_size"] = manifest.shard_size
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest.name, "digest": {"sha256": manifest.root_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": serialization_args,
            "resources": [
                {"name": name, "algorithm": algorithm, "digest": digest}
                for name, digest in manifest.resources()
            ],
            "trainwarden": {
                "version": EXTENSION_VERSION,
                "kind": kind,
                "files": [{"path": f.path, "size": f.size} for f in manifest.files],
                "signer": {"identity": key.identity, "fingerprint": key.fingerprint},
                "signed_at": signed_at,
                "run": run,
                "step": step,
                "parent": parent,
            },
        },
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")


def build_bundle(payload: bytes, key: PrivateKey) -> bytes:
    """Sign ``payload`` with ``key`` and wrap it in a Sigstore bundle (JSON bytes)."""
    signature = key.sign(pae(payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_hint(key.public)},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [
                {
                    "sig": base64.b64encode(signature).decode("ascii"),
                    "keyid": key.public.fingerprint,
                }
            ],
        },
    }
    return (json.dumps(bundle, indent=2, sort_keys=False) + "\n").encode("utf-8")


def read_bundle_file(path: Path) -> bytes:
    """Read a signature file with a size bound, never blocking on a FIFO or device.

    Raises:
        InputError: Missing, unreadable, not a regular file (FIFO, directory, symlink loop)
            or too large.
    """
    return read_regular(path, limit=MAX_SIGNATURE_BYTES, what="signature")


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"malformed signature: {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"malformed signature: {what} is not valid base64") from exc


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"malformed signature: {what} is not a JSON object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(f"malformed signature: {what} is not a JSON list")
    return value


def parse_bundle(data: bytes) -> Envelope:
    """Decode the bundle's envelope (no signature check yet).

    Raises:
        InputError: Not a Sigstore bundle with a DSSE envelope.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"malformed signature: not JSON ({exc})") from exc
    doc = _obj(doc, "the bundle")
    media = doc.get("mediaType")
    if not isinstance(media, str) or not media.startswith("application/vnd.dev.sigstore.bundle"):
        raise InputError(f"malformed signature: not a Sigstore bundle (mediaType {media!r})")
    material = _obj(doc.get("verificationMaterial", {}), "verificationMaterial")
    public_key = material.get("publicKey")
    hint = None
    if isinstance(public_key, dict) and isinstance(public_key.get("hint"), str):
        hint = public_key["hint"]
    if "dsseEnvelope" not in doc:
        raise InputError("malformed signature: the bundle holds no DSSE envelope")
    env = _obj(doc["dsseEnvelope"], "dsseEnvelope")
    payload = _b64(env.get("payload"), "dsseEnvelope.payload")
    payload_type = env.get("payloadType")
    if not isinstance(payload_type, str):
        raise InputError("malformed signature: dsseEnvelope.payloadType is missing")
    signatures = []
    for i, item in enumerate(_list(env.get("signatures"), "dsseEnvelope.signatures")):
        item = _obj(item, f"signatures[{i}]")
        keyid = item.get("keyid") or ""
        signatures.append((keyid if isinstance(keyid, str) else "", _b64(item.get("sig"), "sig")))
    if not signatures:
        raise InputError("malformed signature: the envelope carries no signature")
    return Envelope(
        payload=payload, payload_type=payload_type, signatures=tuple(signatures), hint=hint
    )


def parse_statement(payload: bytes) -> Statement:
    """Decode and check a signed in-toto Statement (model-signing v1.0 predicate).

    Raises:
        InputError: The statement is not a model-signing v1.0 statement or is inconsistent.
    """
    try:
        doc = _obj(json.loads(payload), "the statement")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"malformed statement: not JSON ({exc})") from exc
    if doc.get("_type") != STATEMENT_TYPE:
        raise InputError(f"malformed statement: _type is {doc.get('_type')!r}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise InputError(
            f"unsupported predicateType {doc.get('predicateType')!r} (expected {PREDICATE_TYPE})"
        )
    subjects = _list(doc.get("subject"), "subject")
    if len(subjects) != 1:
        raise InputError(f"malformed statement: expected one subject, got {len(subjects)}")
    subject = _obj(subjects[0], "subject[0]")
    name = subject.get("name")
    root = _obj(subject.get("digest"), "subject.digest").get("sha256")
    if not isinstance(name, str) or not isinstance(root, str):
        raise InputError("malformed statement: subject needs a name and a sha256 digest")
    predicate = _obj(doc.get("predicate"), "predicate")
    ser = _obj(predicate.get("serialization"), "predicate.serialization")
    method = ser.get("method")
    if ser.get("hash_type") != "sha256" or method not in ("files", "shards"):
        raise InputError(
            f"unsupported serialization {method!r}/{ser.get('hash_type')!r} "
            "(trainwarden reads sha256 files and shards)"
        )
    if ser.get("allow_symlinks") not in (False, "false", None):
        raise InputError("unsupported serialization: signed with symlinks allowed")
    shard_size = ser.get("shard_size", 0) if method == "shards" else 0
    if method == "shards" and (
        not isinstance(shard_size, int) or not MIN_SHARD_SIZE <= shard_size <= MAX_SHARD_SIZE
    ):
        raise InputError(f"malformed statement: shard_size {shard_size!r} out of range")
    ignore = ser.get("ignore_paths", [])
    ignore_paths = tuple(p for p in _list(ignore, "ignore_paths") if isinstance(p, str))
    resources = _parse_resources(predicate.get("resources"), method, shard_size)
    ext = predicate.get("trainwarden")
    if ext is not None:
        return _with_extension(
            _obj(ext, "predicate.trainwarden"), name, root, method, shard_size, resources
        )
    files = _files_from_resources(resources, method, None)
    manifest = Manifest(
        name=name, files=files, method=method, shard_size=shard_size or DEFAULT_SHARD_SIZE
    )
    _check_root(manifest, root)
    return Statement(
        manifest=manifest,
        kind="unknown",
        identity=None,
        fingerprint=None,
        signed_at=None,
        run=None,
        step=None,
        parent=None,
        extended=False,
        ignore_paths=ignore_paths,
    )


def _parse_resources(
    value: object, method: str, shard_size: int
) -> dict[str, list[tuple[int, int, str]]]:
    expected_algo = "sha256" if method == "files" else f"sha256-sharded-{shard_size}"
    out: dict[str, list[tuple[int, int, str]]] = {}
    for i, item in enumerate(_list(value, "predicate.resources")):
        item = _obj(item, f"resources[{i}]")
        name, algo, digest = item.get("name"), item.get("algorithm"), item.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise InputError(f"malformed statement: resources[{i}] needs a name and a digest")
        if algo != expected_algo:
            raise InputError(f"malformed statement: resources[{i}] algorithm {algo!r}")
        if method == "files":
            path, start, end = name, 0, -1
        else:
            path, sep1, rest = name.rpartition(":")
            path, sep2, start_text = path.rpartition(":")
            if not (sep1 and sep2 and start_text.isdigit() and rest.isdigit()):
                raise InputError(f"malformed statement: shard name {name!r}")
            start, end = int(start_text), int(rest)
        _check_rel_path(path)
        out.setdefault(path, []).append((start, end, digest))
    return out


def _check_rel_path(path: str) -> None:
    # Paths come from a signed statement, but a trusted signer's statement still must not
    # name anything outside the tree.
    if path == ".":
        return
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise InputError(f"malformed statement: unsafe path {path!r}")


def _files_from_resources(
    resources: dict[str, list[tuple[int, int, str]]],
    method: str,
    sizes: dict[str, int] | None,
) -> tuple[FileEntry, ...]:
    entries = []
    for path, shards in resources.items():
        if method == "files":
            if len(shards) != 1:
                raise InputError(f"malformed statement: {path!r} listed twice")
            size = sizes[path] if sizes is not None and path in sizes else -1
            entries.append(FileEntry(path, size, (Shard(0, size, shards[0][2]),)))
            continue
        shards.sort()
        pos = 0
        for start, end, _ in shards:
            if start != pos or end <= start:
                raise InputError(f"malformed statement: shards of {path!r} do not tile the file")
            pos = end
        entries.append(FileEntry(path, pos, tuple(Shard(s, e, d) for s, e, d in shards)))
    return tuple(sorted(entries, key=lambda f: f.path))


def _check_root(manifest: Manifest, root: str) -> None:
    if manifest.root_digest != root:
        raise InputError(
            "malformed statement: the subject digest does not match the resources "
            f"({root} != {manifest.root_digest})"
        )


def _with_extension(
    ext: dict[str, Any],
    name: str,
    root: str,
    method: str,
    shard_size: int,
    resources: dict[str, list[tuple[int, int, str]]],
) -> Statement:
    if ext.get("version") != EXTENSION_VERSION:
        raise InputError(f"unsupported trainwarden statement version {ext.get('version')!r}")
    sizes: dict[str, int] = {}
    for i, item in enumerate(_list(ext.get("files"), "trainwarden.files")):
        item = _obj(item, f"trainwarden.files[{i}]")
        path, size = item.get("path"), item.get("size")
        if not isinstance(path, str) or not isinstance(size, int) or size < 0 or path in sizes:
            raise InputError(f"malformed statement: trainwarden.files[{i}]")
        _check_rel_path(path)
        sizes[path] = size
    listed = _files_from_resources(resources, method, sizes)
    by_path = {f.path: f for f in listed}
    # The file list is authoritative (it covers empty files, which the shard method omits);
    # it must agree with the resources exactly.
    empty = hashlib.sha256(b"").hexdigest()
    entries = []
    for path, size in sorted(sizes.items()):
        entry = by_path.pop(path, None)
        if entry is None:
            if size != 0 or method == "files":
                raise InputError(f"malformed statement: {path!r} has no digest")
            entry = FileEntry(path, 0, () if method == "shards" else (Shard(0, 0, empty),))
        elif entry.size != size and method == "shards":
            raise InputError(f"malformed statement: size of {path!r} disagrees with its shards")
        entries.append(entry)
    if by_path:
        raise InputError(f"malformed statement: {sorted(by_path)[0]!r} has digests but no size")
    manifest = Manifest(
        name=name, files=tuple(entries), method=method, shard_size=shard_size or DEFAULT_SHARD_SIZE
    )
    _check_root(manifest, root)
    signer = _obj(ext.get("signer", {}), "trainwarden.signer")
    step = ext.get("step")
    kind = ext.get("kind")
    if kind not in ("file", "directory"):
        raise InputError(f"malformed statement: kind {kind!r}")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise InputError("malformed statement: step is not an integer")
    return Statement(
        manifest=manifest,
        kind=kind,
        identity=_opt_str(signer.get("identity")),
        fingerprint=_opt_str(signer.get("fingerprint")),
        signed_at=_opt_str(ext.get("signed_at")),
        run=_opt_str(ext.get("run")),
        step=step,
        parent=_opt_str(ext.get("parent")),
        extended=True,
    )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
