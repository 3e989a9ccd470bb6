"""Signing and verifying checkpoints: every kind of tampering is named, nothing is followed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from sign_helpers import KeyPair, flip_byte, make_checkpoint

from trainwarden.errors import ConfigError, InputError
from trainwarden.findings import Verdict
from trainwarden.sign import (
    SignatureMismatch,
    default_sig_path,
    sign_path,
    verify_path,
)
from trainwarden.sign._bundle import build_bundle


def rules(exc: SignatureMismatch) -> dict[str, set[str]]:
    """rule_id -> set of file names (last path component) it was reported on."""
    out: dict[str, set[str]] = {}
    for f in exc.report.findings:
        if f.verdict is not Verdict.SAFE:
            out.setdefault(f.rule_id, set()).add(Path(f.location.path).name)
    return out


def mismatch(path: Path, key: KeyPair, **kwargs: object) -> SignatureMismatch:
    with pytest.raises(SignatureMismatch) as info:
        verify_path(path, [key.public], **kwargs)  # type: ignore[arg-type]
    assert info.value.report.command == "verify"
    return info.value


def test_sign_and_verify_directory(checkpoint: Path, alice: KeyPair) -> None:
    sig = sign_path(checkpoint, alice.private, run="run-a", step=100)
    assert sig.sig_path == checkpoint.parent / "step-100.sig"  # beside, never inside
    assert not any(p.name.endswith(".sig") for p in checkpoint.rglob("*"))
    assert sig.files == 4  # the empty DONE marker is covered too
    assert sig.digest.startswith("sha256:")
    result = verify_path(checkpoint, [alice.public])
    assert result.digest == sig.digest
    assert result.identity == "alice@cluster"
    assert result.fingerprint == alice.public.fingerprint
    assert (result.run, result.step, result.parent) == ("run-a", 100, None)
    assert result.report.verdict is Verdict.SAFE


def test_sign_and_verify_single_file(tmp_path: Path, alice: KeyPair) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights" * 1000)
    sig = sign_path(path, alice.private)
    assert sig.sig_path == tmp_path / "model.pt.sig"
    verify_path(path, alice.public)
    flip_byte(path, 10)
    assert rules(mismatch(path, alice)) == {"sign.modified": {"model.pt"}}


def test_default_sig_path_for_trailing_slash_and_dot(tmp_path: Path) -> None:
    assert default_sig_path(Path("ckpt/")) == Path("ckpt.sig")
    cwd = Path.cwd()
    assert default_sig_path(Path()) == cwd.with_name(cwd.name + ".sig")


def test_same_content_gives_same_digest(tmp_path: Path, alice: KeyPair) -> None:
    a = make_checkpoint(tmp_path / "a", seed=3)
    b = make_checkpoint(tmp_path / "b", seed=3)
    c = make_checkpoint(tmp_path / "c", seed=4)
    assert sign_path(a, alice.private).digest == sign_path(b, alice.private).digest
    assert sign_path(c, alice.private).digest != sign_path(a, alice.private).digest


def test_byte_flip(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    flip_byte(checkpoint / "optim" / "state.bin", 1234)
    exc = mismatch(checkpoint, alice)
    assert rules(exc) == {"sign.modified": {"state.bin"}}
    assert exc.tampered


def test_byte_flip_names_the_shard(tmp_path: Path, alice: KeyPair) -> None:
    path = tmp_path / "big"
    path.mkdir()
    (path / "w.bin").write_bytes(os.urandom(3 * (1 << 20) + 5))
    sign_path(path, alice.private, shard_size=1 << 20)
    flip_byte(path / "w.bin", (1 << 20) + 7)
    exc = mismatch(path, alice)
    (finding,) = [f for f in exc.report.findings if f.rule_id == "sign.modified"]
    assert finding.location.offset == 1 << 20
    assert "1 of 4 shards" in finding.message


def test_truncation(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    target = checkpoint / "model.safetensors"
    os.truncate(target, target.stat().st_size - 1)
    exc = mismatch(checkpoint, alice)
    assert rules(exc) == {"sign.size-changed": {"model.safetensors"}}
    assert "truncated" in exc.report.findings[0].message


def test_file_added(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    (checkpoint / "optim" / "extra.pkl").write_bytes(b"\x80\x04N.")
    (checkpoint / "empty-added").touch()
    assert rules(mismatch(checkpoint, alice)) == {"sign.extra": {"extra.pkl", "empty-added"}}


def test_file_removed(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    (checkpoint / "config.json").unlink()
    (checkpoint / "DONE").unlink()  # an empty file is covered as well
    assert rules(mismatch(checkpoint, alice)) == {"sign.missing": {"config.json", "DONE"}}


def test_file_renamed(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    (checkpoint / "optim" / "state.bin").rename(checkpoint / "optim" / "state.old")
    exc = mismatch(checkpoint, alice)
    assert rules(exc) == {"sign.renamed": {"state.bin", "state.old"}}
    messages = " ".join(f.message for f in exc.report.findings)
    assert "optim/state.bin" in messages


def test_file_swapped_for_symlink_to_identical_copy(
    checkpoint: Path, alice: KeyPair, tmp_path: Path
) -> None:
    sign_path(checkpoint, alice.private)
    outside = tmp_path / "outside.json"
    shutil.copy(checkpoint / "config.json", outside)
    (checkpoint / "config.json").unlink()
    (checkpoint / "config.json").symlink_to(outside)
    # Same bytes behind the link: still refused, the link is never followed.
    assert rules(mismatch(checkpoint, alice)) == {"sign.symlink": {"config.json"}}


def test_directory_swapped_for_symlink(checkpoint: Path, alice: KeyPair, tmp_path: Path) -> None:
    sign_path(checkpoint, alice.private)
    outside = tmp_path / "outside-optim"
    shutil.copytree(checkpoint / "optim", outside)
    shutil.rmtree(checkpoint / "optim")
    (checkpoint / "optim").symlink_to(outside, target_is_directory=True)
    exc = mismatch(checkpoint, alice)
    assert rules(exc) == {"sign.symlink": {"optim"}, "sign.missing": {"state.bin"}}


def test_symlink_to_fifo_is_never_opened(checkpoint: Path, alice: KeyPair, tmp_path: Path) -> None:
    sign_path(checkpoint, alice.private)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (checkpoint / "config.json").unlink()
    (checkpoint / "config.json").symlink_to(fifo)
    os.mkfifo(checkpoint / "pipe")
    # Opening either FIFO for reading would block forever; verification must not.
    done = threading.Event()
    result: list[SignatureMismatch] = []

    def run() -> None:
        try:
            verify_path(checkpoint, [alice.public])
        except SignatureMismatch as exc:
            result.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(30), "verification blocked on a FIFO"
    assert rules(result[0]) == {"sign.symlink": {"config.json"}, "sign.special-file": {"pipe"}}


def test_path_itself_replaced_by_symlink(checkpoint: Path, alice: KeyPair, tmp_path: Path) -> None:
    sign_path(checkpoint, alice.private)
    moved = tmp_path / "moved"
    checkpoint.rename(moved)
    checkpoint.symlink_to(moved, target_is_directory=True)
    assert "sign.symlink" in rules(mismatch(checkpoint, alice))


def test_wrong_key(checkpoint: Path, alice: KeyPair, mallory: KeyPair) -> None:
    sign_path(checkpoint, mallory.private)
    exc = mismatch(checkpoint, alice)
    assert rules(exc) == {"sign.untrusted-key": {"step-100.sig"}}
    assert mallory.public.fingerprint in exc.report.findings[0].message
    # Trusting several keys: any one of them may have signed.
    result = verify_path(checkpoint, [alice.public, mallory.public])
    assert result.identity == "mallory@cluster"


def test_no_trusted_key_is_an_error(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    with pytest.raises(ConfigError, match="trusted key"):
        verify_path(checkpoint, [])


def _edit_bundle(sig_path: Path, edit: object) -> None:
    bundle = json.loads(sig_path.read_text())
    edit(bundle)  # type: ignore[operator]
    sig_path.write_text(json.dumps(bundle))


def test_signature_bytes_flipped(checkpoint: Path, alice: KeyPair) -> None:
    sig = sign_path(checkpoint, alice.private)

    def flip(bundle: dict) -> None:  # type: ignore[type-arg]
        raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[5] ^= 0x40
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(raw).decode()

    _edit_bundle(sig.sig_path, flip)
    assert rules(mismatch(checkpoint, alice)) == {"sign.bad-signature": {"step-100.sig"}}


def test_statement_edited_to_match_tampered_file(checkpoint: Path, alice: KeyPair) -> None:
    """The attacker modifies a file and rewrites its digest (and the root) in the statement."""
    sig = sign_path(checkpoint, alice.private, run="run-a", step=100)
    (checkpoint / "config.json").write_text('{"seed": 0, "lr": 1000.0}\n')
    tampered = sign_path(
        checkpoint, alice.private, run="run-a", step=100, sig_path=checkpoint.parent / "t.sig"
    )
    forged = json.loads(sig.sig_path.read_text())
    forged["dsseEnvelope"]["payload"] = json.loads(tampered.sig_path.read_text())["dsseEnvelope"][
        "payload"
    ]
    sig.sig_path.write_text(json.dumps(forged))  # new statement, old signature bytes
    assert rules(mismatch(checkpoint, alice)) == {"sign.bad-signature": {"step-100.sig"}}


def test_statement_lineage_edited(checkpoint: Path, alice: KeyPair) -> None:
    sig = sign_path(checkpoint, alice.private, run="run-a", step=100)

    def edit(bundle: dict) -> None:  # type: ignore[type-arg]
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        statement["predicate"]["trainwarden"]["step"] = 900
        payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()

    _edit_bundle(sig.sig_path, edit)
    assert rules(mismatch(checkpoint, alice)) == {"sign.bad-signature": {"step-100.sig"}}


def test_signed_statement_claiming_another_signer(
    checkpoint: Path, alice: KeyPair, mallory: KeyPair
) -> None:
    """A trusted insider signs a statement that names a colleague's key as the signer."""
    sig = sign_path(checkpoint, alice.private)
    statement = json.loads(
        base64.b64decode(json.loads(sig.sig_path.read_text())["dsseEnvelope"]["payload"])
    )
    statement["predicate"]["trainwarden"]["signer"] = {
        "identity": alice.public.identity,
        "fingerprint": alice.public.fingerprint,
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    sig.sig_path.write_bytes(build_bundle(payload, mallory.private))
    with pytest.raises(SignatureMismatch) as info:
        verify_path(checkpoint, [alice.public, mallory.public])
    assert rules(info.value) == {"sign.signer-mismatch": {"step-100.sig"}}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"mediaType": "x"}',
        b"\xff\xfe",
        b'{"mediaType": '
        b'"application/vnd.dev.sigstore.bundle.v0.3+json", "dsseEnvelope": {"payload": "!!"}}',
    ],
)
def test_malformed_signature_is_an_error(checkpoint: Path, alice: KeyPair, content: bytes) -> None:
    sig = sign_path(checkpoint, alice.private)
    sig.sig_path.write_bytes(content)
    with pytest.raises(InputError, match="malformed"):
        verify_path(checkpoint, [alice.public])


def test_truncated_signature_file(checkpoint: Path, alice: KeyPair) -> None:
    sig = sign_path(checkpoint, alice.private)
    data = sig.sig_path.read_bytes()
    sig.sig_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="malformed"):
        verify_path(checkpoint, [alice.public])


def test_missing_signature_and_missing_path(checkpoint: Path, alice: KeyPair) -> None:
    with pytest.raises(InputError, match="cannot open signature"):
        verify_path(checkpoint, [alice.public])
    sign_path(checkpoint, alice.private)
    shutil.rmtree(checkpoint)
    with pytest.raises(InputError, match="cannot read"):
        verify_path(checkpoint, [alice.public])


def test_checkpoint_swapped_between_runs(tmp_path: Path, alice: KeyPair) -> None:
    a = make_checkpoint(tmp_path / "run-a" / "step-100", seed=1)
    b = make_checkpoint(tmp_path / "run-b" / "step-100", seed=2)
    sign_path(a, alice.private, run="run-a", step=100)
    sign_path(b, alice.private, run="run-b", step=100)
    # Swap run-b's checkpoint (and its valid signature) into run-a's place.
    shutil.rmtree(a)
    shutil.copytree(b, a)
    shutil.copy(tmp_path / "run-b" / "step-100.sig", tmp_path / "run-a" / "step-100.sig")
    verify_path(a, [alice.public])  # a bare signature cannot tell: it is a valid checkpoint
    exc = mismatch(a, alice, run="run-a")
    assert rules(exc) == {"lineage.wrong-run": {"step-100.sig"}}


def test_sign_refuses_symlinks_and_special_files(checkpoint: Path, alice: KeyPair) -> None:
    (checkpoint / "link").symlink_to("/etc/hostname")
    with pytest.raises(InputError, match="symlink"):
        sign_path(checkpoint, alice.private)
    (checkpoint / "link").unlink()
    os.mkfifo(checkpoint / "pipe")
    with pytest.raises(InputError, match="not a regular file"):
        sign_path(checkpoint, alice.private)


def test_sign_refuses_signature_inside_directory(checkpoint: Path, alice: KeyPair) -> None:
    with pytest.raises(ConfigError, match="inside"):
        sign_path(checkpoint, alice.private, sig_path=checkpoint / "model.sig")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 3}, "need --run"),
        ({"run": "r", "step": -1}, "non-negative"),
        ({"run": "r", "parent": "abc"}, "digest"),
        ({"run": "a\nb"}, "run name"),
    ],
)
def test_sign_validates_lineage_arguments(
    checkpoint: Path,
    alice: KeyPair,
    kwargs: dict,
    match: str,  # type: ignore[type-arg]
) -> None:
    with pytest.raises(ConfigError, match=match):
        sign_path(checkpoint, alice.private, **kwargs)


def test_parent_digest_is_normalised(checkpoint: Path, alice: KeyPair) -> None:
    hex64 = "AB" * 32
    sig = sign_path(checkpoint, alice.private, run="r", step=2, parent=hex64)
    assert sig.parent == "sha256:" + "ab" * 32
    assert verify_path(checkpoint, [alice.public]).parent == sig.parent


def test_progress_reports_all_bytes(checkpoint: Path, alice: KeyPair) -> None:
    seen: list[tuple[int, int]] = []
    sig = sign_path(
        checkpoint, alice.private, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (sig.size, sig.size)


def test_checkpoint_digest_matches_signature(checkpoint: Path, alice: KeyPair) -> None:
    from trainwarden.sign import checkpoint_digest

    sig = sign_path(checkpoint, alice.private)
    assert checkpoint_digest(checkpoint) == sig.digest
    flip_byte(checkpoint / "config.json", 0)
    assert checkpoint_digest(checkpoint) != sig.digest
    (checkpoint / "link").symlink_to(checkpoint / "DONE")
    with pytest.raises(InputError, match="symlink"):
        checkpoint_digest(checkpoint)


def test_signed_file_replaced_by_fifo(checkpoint: Path, alice: KeyPair) -> None:
    sign_path(checkpoint, alice.private)
    (checkpoint / "config.json").unlink()
    os.mkfifo(checkpoint / "config.json")
    assert rules(mismatch(checkpoint, alice)) == {"sign.special-file": {"config.json"}}
