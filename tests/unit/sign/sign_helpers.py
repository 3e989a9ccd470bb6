"""Helpers for signing tests: real Ed25519 keys on disk and small checkpoint directories."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainwarden.sign import PrivateKey, PublicKey, generate_key, load_private_key, load_public_key


@dataclass(frozen=True)
class KeyPair:
    private: PrivateKey
    public: PublicKey
    path: Path

    @property
    def pub_path(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")


def keypair(directory: Path, name: str) -> KeyPair:
    directory.mkdir(exist_ok=True)
    priv, pub = generate_key(directory / name, identity=f"{name}@cluster")
    return KeyPair(load_private_key(priv), load_public_key(pub), priv)


def make_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    """A checkpoint-like directory: weights, optimizer state, a config, an empty marker."""
    directory.mkdir(parents=True)
    rng = bytes((seed * 7 + i * 31) % 251 for i in range(4096))
    (directory / "model.safetensors").write_bytes(rng * 64)  # 256 KiB
    (directory / "optim").mkdir()
    (directory / "optim" / "state.bin").write_bytes(rng[::-1] * 16)
    (directory / "config.json").write_text(f'{{"seed": {seed}, "lr": 0.001}}\n')
    (directory / "DONE").write_bytes(b"")
    return directory


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
    os.utime(path)
