"""Ed25519 keys with an identity: generate, load (ours and OpenSSH), sign and verify.

Trust is in the key, never in the identity string: the identity is a label that travels with
the key for attribution, and the fingerprint (OpenSSH ``SHA256:`` form) is what binds it.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from trainwarden._fs import atomic_write, open_regular
from trainwarden.errors import InputError, VerificationError

__all__ = [
    "PrivateKey",
    "PublicKey",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
]

# Our key files are PEM (RFC 7468) preceded by one line of explanatory text naming the
# identity; RFC 7468 parsers ignore text outside the encapsulation boundaries.
_IDENTITY_PREFIX = "trainwarden-identity: "
_OPENSSH_PRIVATE_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_SSH_ED25519 = b"ssh-ed25519"
# Key files are tiny; refuse anything large before parsing it (untrusted input).
_MAX_KEY_FILE = 64 * 1024


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key and the identity that travels with it.

    Attributes:
        raw: The 32 raw public-key bytes.
        identity: Who holds the private key (``user@host`` or a chosen name). A label for
            attribution only; trust decisions use the key itself.
    """

    raw: bytes
    identity: str

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise InputError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style fingerprint, ``SHA256:<base64 without padding>``.

        Computed over the SSH wire form of the key, so it equals what ``ssh-keygen -lf``
        prints for the same key.
        """
        digest = hashlib.sha256(self.ssh_blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    @property
    def ssh_blob(self) -> bytes:
        """The key in SSH wire form (``string "ssh-ed25519" || string raw``)."""
        return _ssh_string(_SSH_ED25519) + _ssh_string(self.raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 ``signature`` over ``data``.

        Raises:
            VerificationError: The signature is not valid for this key and data.
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature as exc:
            raise VerificationError(
                f"bad signature: not made by key {self.fingerprint} ({self.identity})"
            ) from exc

    def to_pem(self) -> str:
        """Our public-key file text: an identity line, then a PEM SubjectPublicKeyInfo."""
        pem = (
            Ed25519PublicKey.from_public_bytes(self.raw)
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )
        return f"{_IDENTITY_PREFIX}{self.identity}\n{pem}"

    def to_openssh(self) -> str:
        """The key as one ``authorized_keys`` line: ``ssh-ed25519 AAAA... identity``."""
        b64 = base64.b64encode(self.ssh_blob).decode("ascii")
        return f"ssh-ed25519 {b64} {self.identity}".rstrip()


class PrivateKey:
    """An Ed25519 private key and the identity of its holder."""

    __slots__ = ("_key", "identity")

    def __init__(self, key: Ed25519PrivateKey, identity: str) -> None:
        self._key = key
        self.identity = identity

    def __repr__(self) -> str:
        # Never show key material in logs or tracebacks.
        return f"PrivateKey(identity={self.identity!r}, fingerprint={self.public.fingerprint!r})"

    @property
    def public(self) -> PublicKey:
        """The matching public key, with the same identity."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw=raw, identity=self.identity)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature over ``data``."""
        return self._key.sign(data)

    def to_pem(self) -> str:
        """Our private-key file text: an identity line, then an unencrypted PEM PKCS#8 key."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return f"{_IDENTITY_PREFIX}{self.identity}\n{pem}"

    @classmethod
    def generate(cls, identity: str | None = None) -> PrivateKey:
        """A fresh key in memory (``identity`` defaults to ``user@host``)."""
        return cls(
            Ed25519PrivateKey.generate(),
            _check_identity(default_identity() if identity is None else identity),
        )


def default_identity() -> str:
    """``user@host`` of the calling process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _check_identity(identity: str) -> str:
    if not identity or identity != identity.strip() or any(c in identity for c in "\r\n\0"):
        raise InputError(
            f"invalid identity {identity!r}: must be non-empty, one line, no surrounding spaces"
        )
    return identity


def generate_key(
    path: str | os.PathLike[str], *, identity: str | None = None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``path`` (mode 0600) and its public key to ``path.pub``.

    Both files are written with :func:`trainwarden._fs.atomic_write`: a fresh temporary
    file created with mode 0600 (0644 for the public key) from its first byte, synced, then
    linked (never overwriting) or, with ``overwrite``, renamed over the old file. So the
    private key is never readable by others, not even briefly, and a symlink planted at
    ``path`` is never written through.

    Args:
        path: Where to write the private key (a file path, not a directory); its directory
            is created (mode 0700) when only it is missing.
        identity: Label of the key holder; default ``user@host``.
        overwrite: Replace existing key files instead of refusing.

    Returns:
        The paths of the private and the public key files.

    Raises:
        InputError: The path is empty or a directory, a file exists (without
            ``overwrite``), or a file cannot be written.
    """
    if str(path) == "":
        raise InputError("no key path given: name the private key file, e.g. keys/alice")
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a directory; give a file path for the key, e.g. {path / 'id_trainwarden'}"
        )
    if not path.name or path.name in (".", ".."):
        raise InputError(f"{path} is not a file name for a key")
    pub_path = path.with_name(path.name + ".pub")
    if pub_path.is_dir():
        raise InputError(f"{pub_path} is a directory; choose another key path")
    key = PrivateKey.generate(identity)
    _make_key_directory(path.parent)
    if not overwrite:
        for existing in (path, pub_path):
            if existing.exists() or existing.is_symlink():
                raise InputError(f"{existing} exists; use --force to overwrite it")
    atomic_write(
        path, key.to_pem().encode("ascii"), mode=0o600, exclusive=not overwrite, what="private key"
    )
    try:
        atomic_write(
            pub_path,
            key.public.to_pem().encode("utf-8"),
            mode=0o644,
            exclusive=not overwrite,
            what="public key",
        )
    except InputError:
        # A private key without its public half is a trap (nobody can verify its
        # signatures); remove the one this call just created.
        if not overwrite:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return path, pub_path


def _make_key_directory(directory: Path) -> None:
    """Create the key's directory when only it is missing (mode 0700, like ssh-keygen's ~/.ssh).

    ``keygen ~/.trainwarden/alice`` is the first thing a new user runs; refusing it because
    ``~/.trainwarden`` does not exist yet helps nobody. A deeper missing path is more likely a
    typo than a wish, so it stays an error, reported by the write.
    """
    if directory.exists() or directory.is_symlink() or not directory.parent.is_dir():
        return
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    except OSError as exc:
        raise InputError(f"cannot create key directory {directory}: {exc.strerror or exc}") from exc


def _read_key_file(path: Path, *, private: bool) -> tuple[str, os.stat_result]:
    """Read a key file (never blocking on a FIFO or device) and its ``fstat``.

    The mode is taken from the same open descriptor the key is read from, so a file swapped
    between the permission check and the read cannot slip through.
    """
    kind = "private key" if private else "public key"
    fd = open_regular(path, what=kind)
    try:
        st = os.fstat(fd)
        if st.st_size > _MAX_KEY_FILE:
            raise InputError(f"{path} is not a key file (larger than {_MAX_KEY_FILE} bytes)")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InputError(f"cannot read {kind} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"{path} is not a key file (larger than {_MAX_KEY_FILE} bytes)")
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not a key file (not text)") from exc


def _looks_public(text: str) -> bool:
    stripped = text.lstrip()
    first = stripped.split(None, 1)[0] if stripped else ""
    return "-----BEGIN PUBLIC KEY-----" in text or first.startswith(("ssh-", "ecdsa-", "sk-"))


def _looks_private(text: str) -> bool:
    return "PRIVATE KEY-----" in text


def _split_identity(text: str) -> tuple[str | None, str]:
    """Return the identity line's value (if any) and the text from the PEM block on."""
    identity = None
    for line in text.splitlines():
        if line.startswith(_IDENTITY_PREFIX):
            identity = line[len(_IDENTITY_PREFIX) :].strip()
            break
        if line.startswith("-----BEGIN"):
            break
    begin = text.find("-----BEGIN")
    return identity, text[begin:] if begin >= 0 else text


def load_private_key(path: Path) -> PrivateKey:
    """Load an Ed25519 private key: ours (PEM PKCS#8) or OpenSSH (unencrypted).

    A private key that group or others may access is refused, as OpenSSH does: a key
    others can read identifies nobody, and signatures made with it prove nothing.

    Raises:
        InputError: The file is unreadable, readable by others, encrypted, not Ed25519 or
            not a key.
    """
    path = Path(path)
    text, st = _read_key_file(path, private=True)
    if _looks_public(text) and not _looks_private(text):
        # Said first: "chmod 600 alice.pub" would send the user the wrong way.
        raise InputError(
            f"{path} is a public key; signing needs the private key"
            + (f" ({path.with_suffix('')})" if path.suffix == ".pub" else "")
        )
    _check_private_permissions(path, st)
    if _OPENSSH_PRIVATE_BEGIN in text:
        return _load_openssh_private(path, text)
    identity, pem = _split_identity(text)
    if "-----BEGIN" not in pem:
        raise InputError(f"{path} is not a PEM or OpenSSH private key")
    if "ENCRYPTED" in pem.split("\n", 1)[0] or "Proc-Type: 4,ENCRYPTED" in pem:
        raise InputError(f"{path} is encrypted; trainwarden needs an unencrypted Ed25519 key")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except TypeError as exc:  # cryptography: "Password was not given but private key is encrypted"
        raise InputError(
            f"{path} is encrypted; trainwarden needs an unencrypted Ed25519 key"
        ) from exc
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise InputError(f"{path} is not a valid PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(
            f"{path} holds a {type(key).__name__.lstrip('_')}; only Ed25519 keys are supported"
        )
    return PrivateKey(key, _check_identity(identity or default_identity()))


def _check_private_permissions(path: Path, st: os.stat_result) -> None:
    if os.name == "posix" and stat.S_IMODE(st.st_mode) & 0o077:
        raise InputError(
            f"private key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )


def _load_openssh_private(path: Path, text: str) -> PrivateKey:
    start = text.index(_OPENSSH_PRIVATE_BEGIN)
    blob = _openssh_blob(path, text[start:])
    comment = _openssh_comment(path, blob)
    try:
        key = serialization.load_ssh_private_key(text[start:].encode("ascii"), password=None)
    except TypeError as exc:  # encrypted, no password given
        raise InputError(
            f"{path} is encrypted; decrypt a copy with `ssh-keygen -p -N '' -f COPY`"
        ) from exc
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise InputError(f"{path} is not a valid OpenSSH private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 key; only Ed25519 keys are supported")
    return PrivateKey(key, _check_identity(comment or default_identity()))


def _openssh_blob(path: Path, armored: str) -> bytes:
    lines = armored.strip().splitlines()
    body = "".join(line.strip() for line in lines[1:] if not line.startswith("-----"))
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise InputError(f"{path} is not a valid OpenSSH private key (bad base64)") from exc


def _openssh_comment(path: Path, blob: bytes) -> str | None:
    """Read the key comment from an unencrypted ``openssh-key-v1`` blob (PROTOCOL.key).

    ``cryptography`` does not expose the comment; we read it ourselves for the identity.
    Encrypted keys yield ``None`` here and are refused by the loader afterwards.
    """
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic):
        raise InputError(f"{path} is not a valid OpenSSH private key (bad magic)")
    pos = len(magic)

    def read_string() -> bytes:
        nonlocal pos
        if pos + 4 > len(blob):
            raise InputError(f"{path} is not a valid OpenSSH private key (truncated)")
        (n,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise InputError(f"{path} is not a valid OpenSSH private key (truncated)")
        out = blob[pos : pos + n]
        pos += n
        return out

    cipher = read_string()
    read_string()  # kdfname
    read_string()  # kdfoptions
    if pos + 4 > len(blob):
        raise InputError(f"{path} is not a valid OpenSSH private key (truncated)")
    (nkeys,) = struct.unpack_from(">I", blob, pos)
    pos += 4
    if cipher != b"none":
        raise InputError(f"{path} is encrypted; decrypt a copy with `ssh-keygen -p -N '' -f COPY`")
    if nkeys != 1:
        raise InputError(f"{path} holds {nkeys} keys; expected exactly one")
    read_string()  # public key
    private = read_string()
    blob, pos = private, 8  # skip the two check integers
    keytype = read_string()
    if keytype != _SSH_ED25519:
        raise InputError(
            f"{path} holds a {keytype.decode('ascii', 'replace')} key; "
            "only Ed25519 keys are supported"
        )
    read_string()  # public
    read_string()  # private (seed || public)
    comment = read_string().decode("utf-8", "replace").strip()
    return comment or None


def load_public_key(path: Path) -> PublicKey:
    """Load an Ed25519 public key: ours (identity line + PEM) or an OpenSSH ``.pub`` line.

    For OpenSSH keys the identity is the comment (``ssh-ed25519 AAAA... alice@node3``).

    Raises:
        InputError: The file is unreadable, not a public key, or not Ed25519.
    """
    path = Path(path)
    text, _ = _read_key_file(path, private=False)
    stripped = text.strip()
    if stripped.startswith(("ssh-", "ecdsa-", "sk-")):
        return _parse_openssh_public(path, stripped)
    identity, pem = _split_identity(text)
    if _looks_private(text):
        raise InputError(
            f"{path} is a private key; verification needs the public key ({path}.pub), "
            "and a private key should never be handed to a verifier"
        )
    if not pem.startswith("-----BEGIN PUBLIC KEY-----"):
        raise InputError(
            f"{path} is not a public key (expected PEM 'BEGIN PUBLIC KEY' or 'ssh-ed25519 ...')"
        )
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise InputError(f"{path} is not a valid PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(
            f"{path} holds a {type(key).__name__.lstrip('_')}; only Ed25519 keys are supported"
        )
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(raw=raw, identity=_check_identity(identity or path.name))


def load_public_keys(
    sources: Iterable[PublicKey | str | os.PathLike[str]],
) -> list[PublicKey]:
    """Load trusted public keys from keys, key files, or directories of ``*.pub`` files.

    A directory stands for every ``*.pub`` file directly in it (sorted by name): the usual way
    to hand over "the team's keys". Every file must be a valid key: a bad one is an error, not
    skipped, so a typo never silently narrows (or a planted file never widens) whom to trust.

    Raises:
        InputError: A key cannot be read or parsed, or a directory holds no ``*.pub`` file.
    """
    keys: list[PublicKey] = []
    for source in sources:
        if isinstance(source, PublicKey):
            keys.append(source)
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(path.glob("*.pub"))
            if not found:
                raise InputError(f"key directory {path} holds no *.pub file")
            keys.extend(load_public_key(p) for p in found)
        else:
            keys.append(load_public_key(path))
    return keys


def _parse_openssh_public(path: Path, line: str) -> PublicKey:
    parts = line.splitlines()[0].split(None, 2)
    if parts[0] != "ssh-ed25519":
        raise InputError(f"{path} holds a {parts[0]} key; only Ed25519 keys are supported")
    if len(parts) < 2:
        raise InputError(f"{path} is not a valid OpenSSH public key (no key data)")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise InputError(f"{path} is not a valid OpenSSH public key (bad base64)") from exc
    expected_prefix = _ssh_string(_SSH_ED25519) + struct.pack(">I", 32)
    if len(blob) != len(expected_prefix) + 32 or not blob.startswith(expected_prefix):
        raise InputError(f"{path} is not a valid OpenSSH Ed25519 public key")
    comment = parts[2].strip() if len(parts) > 2 else ""
    return PublicKey(
        raw=blob[len(expected_prefix) :], identity=_check_identity(comment or path.name)
    )
