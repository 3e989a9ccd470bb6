"""Ed25519 keys: generation, permissions, our PEM format and OpenSSH keys."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from trainwarden.errors import InputError, VerificationError
from trainwarden.keys import default_identity
from trainwarden.sign import generate_key, load_private_key, load_public_key

SSH_KEYGEN = shutil.which("ssh-keygen")


def test_generate_writes_private_0600_and_public(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask the key is never readable by others
    try:
        priv, pub = generate_key(tmp_path / "k", identity="alice@node1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub == tmp_path / "k.pub"
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    key = load_private_key(priv)
    public = load_public_key(pub)
    assert key.identity == public.identity == "alice@node1"
    assert key.public == public
    assert "PRIVATE" not in pub.read_text()
    assert "BEGIN PRIVATE KEY" in priv.read_text()


def test_default_identity_is_user_at_host(tmp_path: Path) -> None:
    _, pub = generate_key(tmp_path / "k")
    identity = load_public_key(pub).identity
    assert identity == default_identity()
    assert "@" in identity


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    priv, _ = generate_key(tmp_path / "k", identity="a")
    before = priv.read_bytes()
    with pytest.raises(InputError, match="exists"):
        generate_key(tmp_path / "k", identity="b")
    assert priv.read_bytes() == before
    priv.chmod(0o644)  # an old, badly protected key: replacing it must not inherit the mode
    generate_key(tmp_path / "k", identity="b", overwrite=True)
    assert priv.read_bytes() != before
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert load_private_key(priv).identity == "b"


def test_generate_does_not_follow_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "k").symlink_to(victim)
    with pytest.raises(InputError):
        generate_key(tmp_path / "k", identity="a")
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("identity", ["", " x", "a\nb"])
def test_bad_identity_is_refused(tmp_path: Path, identity: str) -> None:
    with pytest.raises(InputError, match="identity"):
        generate_key(tmp_path / "k", identity=identity)


def test_sign_verify_roundtrip_and_wrong_data(tmp_path: Path) -> None:
    priv, pub = generate_key(tmp_path / "k", identity="a")
    key, public = load_private_key(priv), load_public_key(pub)
    sig = key.sign(b"checkpoint")
    public.verify(sig, b"checkpoint")
    with pytest.raises(VerificationError, match="bad signature"):
        public.verify(sig, b"checkpoinT")
    _, other_pub = generate_key(tmp_path / "o", identity="b")
    with pytest.raises(VerificationError):
        load_public_key(other_pub).verify(sig, b"checkpoint")


def test_fingerprint_is_openssh_sha256(tmp_path: Path) -> None:
    _, pub = generate_key(tmp_path / "k", identity="a")
    key = load_public_key(pub)
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + key.raw
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert key.fingerprint == f"SHA256:{expected}"


def test_private_key_repr_hides_material(tmp_path: Path) -> None:
    priv, _ = generate_key(tmp_path / "k", identity="a")
    text = priv.read_text()
    secret_b64 = text.split("-----")[2].strip()
    assert secret_b64 not in repr(load_private_key(priv))


def test_group_readable_private_key_is_refused(tmp_path: Path) -> None:
    priv, _ = generate_key(tmp_path / "k", identity="a")
    priv.chmod(0o640)
    with pytest.raises(InputError, match="chmod 600"):
        load_private_key(priv)


def _write_private(path: Path, key: object, fmt: serialization.PrivateFormat, enc: object) -> Path:
    data = key.private_bytes(serialization.Encoding.PEM, fmt, enc)  # type: ignore[attr-defined]
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_encrypted_pem_key_is_refused_clearly(tmp_path: Path) -> None:
    path = _write_private(
        tmp_path / "enc",
        ed25519.Ed25519PrivateKey.generate(),
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(InputError, match="encrypted"):
        load_private_key(path)


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)],
    ids=["ec", "rsa"],
)
def test_non_ed25519_keys_are_refused(tmp_path: Path, key: object) -> None:
    priv = _write_private(
        tmp_path / "k", key, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InputError, match="Ed25519"):
        load_private_key(priv)
    pub = tmp_path / "k.pub"
    pub.write_bytes(
        key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InputError, match="Ed25519"):
        load_public_key(pub)
    ssh = tmp_path / "k.ssh.pub"
    ssh.write_bytes(
        key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    with pytest.raises(InputError, match="Ed25519"):
        load_public_key(ssh)


@pytest.mark.parametrize(
    "content", [b"", b"hello", b"\xff\xfe\x00", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END"]
)
def test_garbage_key_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(InputError):
        load_public_key(path)
    with pytest.raises(InputError):
        load_private_key(path)


def test_private_key_given_as_public_key(tmp_path: Path) -> None:
    priv, _ = generate_key(tmp_path / "k", identity="a")
    with pytest.raises(InputError, match="private key"):
        load_public_key(priv)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open public key"):
        load_public_key(tmp_path / "nope.pub")


def test_openssh_keys_written_by_cryptography(tmp_path: Path) -> None:
    raw = ed25519.Ed25519PrivateKey.generate()
    priv = _write_private(
        tmp_path / "id_ed25519",
        raw,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    line = raw.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (tmp_path / "id_ed25519.pub").write_bytes(line + b" carol@login2\n")
    key = load_private_key(priv)
    public = load_public_key(tmp_path / "id_ed25519.pub")
    assert public.identity == "carol@login2"
    assert key.public.raw == public.raw
    public.verify(key.sign(b"x"), b"x")


@pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen not installed")
def test_openssh_keys_from_ssh_keygen(tmp_path: Path) -> None:
    assert SSH_KEYGEN is not None
    path = tmp_path / "id_ed25519"
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "dave@gpu7", "-f", str(path)],
        check=True,
    )
    key = load_private_key(path)
    public = load_public_key(path.with_name("id_ed25519.pub"))
    assert key.identity == public.identity == "dave@gpu7"
    listed = subprocess.run(
        [SSH_KEYGEN, "-l", "-f", str(path.with_name("id_ed25519.pub"))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert public.fingerprint in listed
    public.verify(key.sign(b"x"), b"x")


@pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen not installed")
def test_encrypted_openssh_key_is_refused_clearly(tmp_path: Path) -> None:
    assert SSH_KEYGEN is not None
    path = tmp_path / "id_ed25519"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)], check=True)
    with pytest.raises(InputError, match="encrypted"):
        load_private_key(path)


@pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen not installed")
def test_openssh_rsa_private_key_is_refused(tmp_path: Path) -> None:
    assert SSH_KEYGEN is not None
    path = tmp_path / "id_rsa"
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)], check=True
    )
    with pytest.raises(InputError, match="Ed25519"):
        load_private_key(path)
