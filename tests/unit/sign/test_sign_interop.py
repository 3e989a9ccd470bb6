"""The signature format is OpenSSF model-signing's: checked structurally, and against the peer.

The structural tests re-derive everything (PAE, root digest, shard layout) independently of
trainwarden's code. The peer tests run the real `model-signing` package from its own venv
(created by tools/install-peers); they are skipped, saying so, only when that venv is absent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sign_helpers import KeyPair, flip_byte, make_checkpoint

from trainwarden.findings import Verdict
from trainwarden.manifest import Manifest, hash_tree, walk_tree
from trainwarden.sign import SignatureMismatch, sign_path, verify_path
from trainwarden.sign._bundle import parse_bundle, parse_statement

REPO = Path(__file__).resolve().parents[3]
PEERS = Path(os.environ.get("TRAINWARDEN_PEERS", REPO / ".peers"))
MS_PYTHON = PEERS / "model-signing" / "bin" / "python"
MS_CLI = PEERS / "model-signing" / "bin" / "model_signing"
HELPER = Path(__file__).with_name("ms_ed25519_verify.py")
needs_peer = pytest.mark.skipif(
    not MS_PYTHON.exists(),
    reason=f"model-signing peer venv not installed ({MS_PYTHON}); run tools/install-peers",
)


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    # DSSE v1 protocol.md, written out independently of trainwarden's implementation.
    return b"DSSEv1 %d %s %d %s" % (
        len(payload_type),
        payload_type.encode(),
        len(payload),
        payload,
    )


def load_bundle(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    bundle = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return bundle, statement


def tricky_tree(root: Path) -> Path:
    """Names whose component order differs from their string order (a/b vs a-b vs a.b)."""
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"1" * 3000)
    (root / "a-b").write_bytes(b"2" * 10)
    (root / "a.b").write_bytes(os.urandom(3 * (1 << 20) + 17))
    return root


def test_bundle_is_a_sigstore_bundle_with_dsse(checkpoint: Path, alice: KeyPair) -> None:
    sig = sign_path(checkpoint, alice.private)
    bundle, statement = load_bundle(sig.sig_path)
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    pem = Ed25519PublicKey.from_public_bytes(alice.public.raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    material = bundle["verificationMaterial"]
    assert material["publicKey"]["hint"] == hashlib.sha256(pem).hexdigest()
    assert material["tlogEntries"] == []
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    (signature,) = envelope["signatures"]
    assert signature["keyid"] == alice.public.fingerprint
    payload = base64.b64decode(envelope["payload"])
    Ed25519PublicKey.from_public_bytes(alice.public.raw).verify(
        base64.b64decode(signature["sig"]), dsse_pae(envelope["payloadType"], payload)
    )
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"


def test_statement_lays_out_shards_like_model_signing(tmp_path: Path, alice: KeyPair) -> None:
    root = tricky_tree(tmp_path / "model")
    shard = 1 << 20
    sig = sign_path(root, alice.private, run="r", step=7, shard_size=shard)
    _, statement = load_bundle(sig.sig_path)
    predicate = statement["predicate"]
    assert predicate["serialization"] == {
        "method": "shards",
        "hash_type": "sha256",
        "shard_size": shard,
        "allow_symlinks": False,
    }
    resources = predicate["resources"]
    names = [r["name"] for r in resources]
    size = (root / "a.b").stat().st_size
    assert names == [
        "a/b:0:3000",  # sorted by path components, as model-signing's PurePath keys sort
        "a-b:0:10",
        *(f"a.b:{s}:{min(s + shard, size)}" for s in range(0, size, shard)),
    ]
    for r in resources:
        path, start, end = r["name"].rsplit(":", 2)
        data = (root / path).read_bytes()[int(start) : int(end)]
        assert r["digest"] == hashlib.sha256(data).hexdigest()
        assert r["algorithm"] == f"sha256-sharded-{shard}"
    root_digest = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources))
    (subject,) = statement["subject"]
    assert subject == {"name": "model", "digest": {"sha256": root_digest.hexdigest()}}
    assert sig.digest == f"sha256:{root_digest.hexdigest()}"
    ext = predicate["trainwarden"]
    assert ext["run"] == "r"
    assert ext["step"] == 7
    assert ext["signer"]["fingerprint"] == alice.public.fingerprint
    assert {f["path"]: f["size"] for f in ext["files"]} == {
        "a/b": 3000,
        "a-b": 10,
        "a.b": size,
    }


@needs_peer
def test_model_signing_verifies_our_bundle(tmp_path: Path, alice: KeyPair) -> None:
    """model-signing's own pipeline (bundle parsing, manifest rebuild, re-hash) accepts ours.

    Its CLI verifies EC keys only, so the helper plugs in an Ed25519 signature check and
    leaves everything else to model-signing.
    """
    root = tricky_tree(tmp_path / "model")
    (root / "empty").touch()
    sig = sign_path(root, alice.private, run="r", step=1, shard_size=1 << 20)

    def ms_verify() -> str:
        proc = subprocess.run(
            [str(MS_PYTHON), str(HELPER), str(root), str(sig.sig_path), str(alice.pub_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        return proc.stdout + proc.stderr

    assert "VERIFIED" in ms_verify()
    flip_byte(root / "a.b", (1 << 20) + 1)
    out = ms_verify()
    assert "FAILED" in out
    assert "a.b:1048576:2097152" in out


@needs_peer
def test_we_read_a_bundle_signed_by_model_signing(tmp_path: Path, alice: KeyPair) -> None:
    model = make_checkpoint(tmp_path / "model", seed=5)
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "ec.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sig_path = tmp_path / "model.sig"
    subprocess.run(
        [
            str(MS_CLI),
            "sign",
            "key",
            str(model),
            "--private_key",
            str(key_path),
            "--signature",
            str(sig_path),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    envelope = parse_bundle(sig_path.read_bytes())
    # The ECDSA signature over the same DSSE encoding verifies with the EC public key.
    key.public_key().verify(
        envelope.signatures[0][1],
        dsse_pae(envelope.payload_type, envelope.payload),
        ec.ECDSA(hashes.SHA256()),
    )
    statement = parse_statement(envelope.payload)
    assert statement.manifest.method == "files"
    assert not statement.extended
    assert set(statement.ignore_paths) >= {".git", ".gitignore"}
    ours = hash_tree(walk_tree(model), method="files")
    recomputed = Manifest(name="model", files=ours.entries, method="files")
    assert recomputed.root_digest == statement.manifest.root_digest
    # Verification with our Ed25519 keys: a well-formed bundle by an untrusted key (exit 1),
    # not a malformed one (exit 2).
    with pytest.raises(SignatureMismatch) as info:
        verify_path(model, [alice.public], sig_path=sig_path)
    (finding,) = [f for f in info.value.report.findings if f.verdict is not Verdict.SAFE]
    assert finding.rule_id == "sign.untrusted-key"


@needs_peer
def test_model_signing_verifies_our_single_file_bundle(tmp_path: Path, alice: KeyPair) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(5000))
    sig = sign_path(path, alice.private)
    proc = subprocess.run(
        [str(MS_PYTHON), str(HELPER), str(path), str(sig.sig_path), str(alice.pub_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "VERIFIED" in proc.stdout, proc.stdout + proc.stderr
