"""Fixtures for ledger tests: real Ed25519 keys on disk and helpers to tamper with files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainwarden.ledger import Ledger
from trainwarden.ledger._format import b64encode, canonical_json, hash_body, signing_message
from trainwarden.sign import PrivateKey, PublicKey, generate_key, load_private_key, load_public_key


@dataclass(frozen=True)
class KeyPair:
    """A key on disk: private and public paths and loaded objects."""

    path: Path
    pub_path: Path
    private: PrivateKey
    public: PublicKey


def _make(directory: Path, name: str) -> KeyPair:
    priv, pub = generate_key(directory / name, identity=f"{name}@cluster")
    return KeyPair(priv, pub, load_private_key(priv), load_public_key(pub))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """alice and bob (trusted writers), mallory (attacker), sealer and rogue_sealer."""
    directory = tmp_path_factory.mktemp("keys")
    names = ("alice", "bob", "mallory", "sealer", "rogue_sealer")
    return {name: _make(directory, name) for name in names}


@pytest.fixture
def ledger_dir(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    """A ledger with alice (6 entries: open + 5) and bob (4 entries: open + 3)."""
    root = tmp_path / "ledger"
    with Ledger(root, key=keys["alice"].private) as alice:
        for step in range(5):
            alice.append("train.step", run="run-a", step=step, loss=1.0 / (step + 1))
    with Ledger(root, key=keys["bob"].private) as bob:
        for step in range(3):
            bob.append("eval.done", run="run-b", step=step)
    return root


class Tamper:
    """Helpers to read, edit and re-sign ledger files, as an attacker with file access would."""

    @staticmethod
    def writer_file(root: Path, keys_: dict[str, KeyPair], name: str) -> Path:
        """The single writer file of key ``name`` in ``root``."""
        fp = keys_[name].public.fingerprint
        for path in sorted((root / "writers").glob("*.jsonl")):
            first = json.loads(path.read_text().splitlines()[0])
            if first["actor"]["key"] == fp:
                return path
        raise AssertionError(f"no writer file for {name}")

    @staticmethod
    def read_lines(path: Path) -> list[bytes]:
        """The file's lines, newline included."""
        return path.read_bytes().splitlines(keepends=True)

    @staticmethod
    def write_lines(path: Path, lines: list[bytes]) -> None:
        """Replace the file's content with ``lines``."""
        path.write_bytes(b"".join(lines))

    @staticmethod
    def resign(obj: dict[str, object], key: PrivateKey) -> bytes:
        """Re-sign an entry object with ``key`` (what an attacker holding a key can do)."""
        body = dict(obj)
        body.pop("sig", None)
        entry_hash = hash_body(canonical_json(body).encode())
        body["sig"] = b64encode(key.sign(signing_message(entry_hash)))
        return (canonical_json(body) + "\n").encode()

    @staticmethod
    def entry_hash_of(line: bytes) -> str:
        """Hash of an entry line (its body without ``sig``)."""
        obj = json.loads(line)
        obj.pop("sig")
        return hash_body(canonical_json(obj).encode())


@pytest.fixture
def tamper() -> type[Tamper]:
    """The :class:`Tamper` helpers."""
    return Tamper
