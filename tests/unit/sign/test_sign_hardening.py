"""Signing never destroys what it signs, checks before it acts, and says what was done.

Every check that can run before hashing does, which the tests prove with a progress hook that
must never be called.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sign_helpers import KeyPair

from trainwarden.errors import ConfigError, InputError
from trainwarden.events import MemorySink
from trainwarden.findings import Verdict
from trainwarden.keys import generate_key, load_private_key, load_public_key
from trainwarden.ledger import Ledger, init_ledger, read_ledger
from trainwarden.sign import (
    SignatureMismatch,
    SignatureNotRecorded,
    TreeChanged,
    sign_path,
    verify_path,
)


def never(done: int, total: int) -> None:
    raise AssertionError("hashing started although a check should have refused first")


def _after_first_mib(action: Callable[[], None]) -> Callable[[int, int], None]:
    fired: list[bool] = []

    def hook(done: int, total: int) -> None:
        if not fired:
            fired.append(True)
            action()

    return hook


def _rewrite(path: Path) -> None:
    time.sleep(0.02)  # a later clock tick than the walk (coarse file times); not asserted on
    with path.open("r+b") as fh:
        fh.write(b"\xee" * 4096)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(3 << 20))
    return path


# -- the output never replaces an input ----------------------------------------------------------


def test_signature_over_the_signed_file_is_refused(weights: Path, alice: KeyPair) -> None:
    before = weights.read_bytes()
    with pytest.raises(ConfigError, match="must not be the signed file"):
        sign_path(weights, alice.private, sig_path=weights, progress=never)
    os.link(weights, weights.with_name("hardlink.sig"))
    with pytest.raises(ConfigError, match="must not be the signed file"):
        sign_path(weights, alice.private, sig_path=weights.with_name("hardlink.sig"))
    assert weights.read_bytes() == before


def test_signature_over_or_inside_the_signed_directory_is_refused(
    checkpoint: Path, alice: KeyPair
) -> None:
    with pytest.raises(ConfigError, match="signed directory"):
        sign_path(checkpoint, alice.private, sig_path=checkpoint, progress=never)
    with pytest.raises(ConfigError, match="inside the signed directory"):
        sign_path(checkpoint, alice.private, sig_path=checkpoint / "optim" / "x.sig")
    assert not (checkpoint / "optim" / "x.sig").exists()


@pytest.mark.parametrize("kind", ["symlink-loop", "dangling-symlink", "fifo", "directory"])
def test_unusable_signature_path_is_refused_before_hashing(
    checkpoint: Path, alice: KeyPair, kind: str
) -> None:
    sig = checkpoint.with_name(checkpoint.name + ".sig")
    if kind == "symlink-loop":
        sig.symlink_to(sig)
    elif kind == "dangling-symlink":
        sig.symlink_to(checkpoint.parent / "elsewhere")
    elif kind == "fifo":
        os.mkfifo(sig)
    else:
        sig.mkdir()
    with pytest.raises(InputError, match="remove it or choose another"):
        sign_path(checkpoint, alice.private, progress=never)
    assert not (checkpoint.parent / "elsewhere").exists()  # never written through


def test_signature_directory_must_exist_before_hashing(checkpoint: Path, alice: KeyPair) -> None:
    with pytest.raises(InputError, match="cannot write signature"):
        sign_path(
            checkpoint, alice.private, sig_path=checkpoint.parent / "no" / "x.sig", progress=never
        )


# -- the ledger is checked first, and a late failure says what was done ---------------------------


@pytest.mark.parametrize("kind", ["missing", "plain-file", "plain-directory"])
def test_unusable_ledger_is_refused_before_anything_is_written(
    checkpoint: Path, alice: KeyPair, tmp_path: Path, kind: str
) -> None:
    ledger = tmp_path / "ledger"
    if kind == "plain-file":
        ledger.write_text("not a ledger")
    elif kind == "plain-directory":
        ledger.mkdir()
        (ledger / "notes").write_text("x")
    with pytest.raises(InputError, match="cannot record the signature in ledger"):
        sign_path(checkpoint, alice.private, ledger=ledger, progress=never)
    assert not checkpoint.with_name(checkpoint.name + ".sig").exists()
    assert kind != "missing" or not ledger.exists()  # a typo never creates a ledger


class _BrokenSink:
    """An event sink whose disk filled up between opening and appending."""

    def append(self, event: str, /, run: str | None = None, **data: object) -> object:
        raise InputError("cannot write ledger file L: No space left on device")


def test_failed_record_after_signing_says_exactly_what_was_done(
    checkpoint: Path, alice: KeyPair
) -> None:
    with pytest.raises(SignatureNotRecorded) as info:
        sign_path(checkpoint, alice.private, run="r", step=1, ledger=_BrokenSink())
    err = info.value
    sig = checkpoint.with_name(checkpoint.name + ".sig")
    assert str(err).startswith(f"signature written to {sig} ({err.signature.digest}); recording")
    assert "No space left on device" in str(err)
    assert verify_path(checkpoint, [alice.public]).digest == err.signature.digest


def test_ledger_may_be_an_open_writer_or_any_event_sink(
    checkpoint: Path, alice: KeyPair, tmp_path: Path
) -> None:
    sink = MemorySink()
    sig = sign_path(checkpoint, alice.private, run="r", step=1, ledger=sink)
    (event,) = sink.events
    assert (event.event, event.run, event.data["digest"]) == ("checkpoint.signed", "r", sig.digest)
    root = init_ledger(tmp_path / "ledger")
    with Ledger(root, key=alice.private) as writer:
        sign_path(checkpoint, alice.private, run="r", step=2, parent=sig.digest, ledger=writer)
        sign_path(checkpoint, alice.private, run="r", step=3, parent=sig.digest, ledger=root)
    steps = [e.data["step"] for e in read_ledger(root) if e.event == "checkpoint.signed"]
    assert steps == [2, 3]
    with pytest.raises(ConfigError, match="event sink"):
        sign_path(checkpoint, alice.private, ledger=42)  # type: ignore[arg-type]


# -- a file rewritten while it is hashed ----------------------------------------------------------


def test_file_rewritten_while_signing_is_never_signed(weights: Path, alice: KeyPair) -> None:
    sig = weights.with_name("model.pt.sig")
    with pytest.raises(TreeChanged, match="never existed together"):
        sign_path(
            weights,
            alice.private,
            workers=1,
            shard_size=1 << 20,
            progress=_after_first_mib(lambda: _rewrite(weights)),
        )
    assert not sig.exists()


def test_file_rewritten_by_another_thread_while_signing(weights: Path, alice: KeyPair) -> None:
    # The same race with a real concurrent writer: the hook only lets it run and waits for it.
    def writer_thread() -> None:
        thread = threading.Thread(target=_rewrite, args=(weights,))
        thread.start()
        thread.join()

    with pytest.raises(TreeChanged):
        sign_path(weights, alice.private, progress=_after_first_mib(writer_thread))


def test_file_rewritten_while_verifying_is_not_verified(weights: Path, alice: KeyPair) -> None:
    sign_path(weights, alice.private, shard_size=1 << 20)
    with pytest.raises(SignatureMismatch) as info:
        verify_path(
            weights,
            [alice.public],
            workers=1,
            progress=_after_first_mib(lambda: _rewrite(weights)),
        )
    (finding,) = [f for f in info.value.report.findings if f.verdict is not Verdict.SAFE]
    assert (finding.rule_id, finding.verdict) == ("sign.changing", Verdict.ERROR)
    assert not info.value.tampered  # an error (exit 2), not proof of tampering


# -- keys and signatures are read without blocking, and confusions are named ------------------


def _no_hang(fn: Callable[[], object], fifo: Path) -> BaseException | None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"blocked on {fifo}")
    return errors[0] if errors else None


def test_fifo_key_and_fifo_signature_are_errors_not_hangs(
    checkpoint: Path, alice: KeyPair, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for fn in (lambda: load_private_key(fifo), lambda: load_public_key(fifo)):
        err = _no_hang(fn, fifo)
        assert isinstance(err, InputError)
        assert "FIFO" in str(err)
    sign_path(checkpoint, alice.private)
    err = _no_hang(lambda: verify_path(checkpoint, [alice.public], sig_path=fifo), fifo)
    assert isinstance(err, InputError)
    assert "FIFO" in str(err)


def test_public_and_private_keys_mixed_up(alice: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a public key; signing needs the private key"):
        load_private_key(alice.pub_path)
    with pytest.raises(InputError, match=r"is a private key; verification needs the public key"):
        load_public_key(alice.path)
    ssh_pub = tmp_path / "id.pub"
    ssh_pub.write_text(alice.public.to_openssh() + "\n")
    ssh_pub.chmod(0o644)
    with pytest.raises(InputError, match="is a public key") as info:
        load_private_key(ssh_pub)
    assert "chmod" not in str(info.value)
    with pytest.raises(ConfigError, match="public keys"):
        verify_path(tmp_path, [alice.private])  # type: ignore[list-item]


@pytest.mark.parametrize("path", ["", ".", "DIR"])
def test_keygen_needs_a_file_path(tmp_path: Path, path: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = str(tmp_path) if path == "DIR" else path
    with pytest.raises(InputError, match=r"no key path given|is a directory"):
        generate_key(target)
    assert list(tmp_path.iterdir()) == []
