"""env.lock: snapshot, signature, verification against the lock, and diff of two locks."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from envtools import Venv

from trainwarden.env import (
    LOCK_FORMAT,
    diff_locks,
    read_lock,
    signature_path,
    snapshot_environment,
    verify_environment,
    write_lock,
)
from trainwarden.errors import InputError, VerificationError
from trainwarden.findings import Report, Verdict
from trainwarden.sign import generate_key, load_private_key, load_public_key


def _bad_rules(report: Report) -> set[str]:
    return {f.rule_id for f in report.findings if f.verdict is not Verdict.SAFE}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_key(tmp_path / "env.key", identity="env-tests")


def _snapshot(venv: Venv, out: Path, key: Path | None = None) -> Path:
    lock, report = snapshot_environment([str(venv.site)])
    assert not report.fails(Verdict.UNKNOWN)
    write_lock(lock, out, key=load_private_key(key) if key else None)
    return out


def test_lock_records_every_file_canonically(venv: Venv, tmp_path: Path) -> None:
    out = _snapshot(venv, tmp_path / "env.lock")
    data = out.read_bytes()
    doc = json.loads(data)
    assert doc["format"] == LOCK_FORMAT
    # The file is its own canonical form: what is signed is exactly what is on disk.
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    [root] = doc["roots"]
    files = root["files"]
    on_disk = {p.relative_to(venv.site).as_posix() for p in venv.site.rglob("*") if not p.is_dir()}
    assert set(files) == on_disk
    pyc = next(k for k in files if k.endswith(".pyc"))
    assert len(files[pyc]["sha256"]) == 64
    record = "six-1.17.0.dist-info/RECORD"
    content = (venv.site / record).read_bytes()
    assert files[record]["sha256"] == hashlib.sha256(content).hexdigest()
    assert root["distributions"] == {"idna": "3.20", "six": "1.17.0"}


def test_verify_against_lock_catches_what_record_cannot(venv: Venv, tmp_path: Path) -> None:
    lock_path = _snapshot(venv, tmp_path / "env.lock")
    lock = read_lock(lock_path)
    assert _bad_rules(verify_environment(lock=lock)) == set()
    # The insider edits a file and rewrites RECORD to match: RECORD is fooled, the lock not.
    target = venv.site / "idna" / "core.py"
    new = target.read_bytes() + b"\n# edited\n"
    target.write_bytes(new)
    record = venv.site / "idna-3.20.dist-info" / "RECORD"
    digest = base64.urlsafe_b64encode(hashlib.sha256(new).digest()).rstrip(b"=").decode()
    record.write_text(
        "\n".join(
            f"idna/core.py,sha256={digest},{len(new)}" if ln.startswith("idna/core.py,") else ln
            for ln in record.read_text().splitlines()
        )
        + "\n"
    )
    (venv.site / "idna" / "extra.txt").write_text("x")
    (venv.site / "idna" / "codec.py").chmod(0o777)
    report = verify_environment(lock=lock)
    modified = {f.location.path for f in report.findings if f.rule_id == "env.lock-modified"}
    assert modified == {str(target), str(record)}
    added = [f.location.path for f in report.findings if f.rule_id == "env.lock-added"]
    assert added == [str(venv.site / "idna" / "extra.txt")]
    assert "env.lock-mode-changed" in _bad_rules(report)


def test_lock_trusts_pycs_it_recorded_and_still_catches_new_forgeries(
    venv: Venv, tmp_path: Path
) -> None:
    lock = read_lock(_snapshot(venv, tmp_path / "env.lock"))
    assert lock.pyc_verified
    pyc = next((venv.site / "__pycache__").glob("six.cpython-*.pyc"))
    data = bytearray(pyc.read_bytes())
    data[-1] ^= 1
    pyc.write_bytes(bytes(data))
    rules = _bad_rules(verify_environment(lock=lock))
    assert "env.lock-modified" in rules


def test_signed_lock_verifies_and_tampering_fails(
    venv: Venv, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    lock_path = _snapshot(venv, tmp_path / "env.lock", private)
    sig = json.loads(signature_path(lock_path).read_text())
    assert sig["identity"] == "env-tests"
    lock = read_lock(lock_path, key=load_public_key(public))
    assert lock.signer is not None
    assert "env-tests" in lock.signer
    # One byte changed in the lock: the signature no longer verifies.
    data = lock_path.read_bytes()
    lock_path.write_bytes(data.replace(b'"mode":420', b'"mode":511', 1))
    with pytest.raises(VerificationError):
        read_lock(lock_path, key=load_public_key(public))


def test_signature_required_when_key_given(
    venv: Venv, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    lock_path = _snapshot(venv, tmp_path / "env.lock")  # unsigned
    with pytest.raises(VerificationError, match="missing"):
        read_lock(lock_path, key=load_public_key(keys[1]))


def test_lock_signed_by_another_key_fails(
    venv: Venv, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    lock_path = _snapshot(venv, tmp_path / "env.lock", keys[0])
    _, other_public = generate_key(tmp_path / "other.key", identity="mallory")
    with pytest.raises(VerificationError):
        read_lock(lock_path, key=load_public_key(other_public))


def test_malformed_lock_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "env.lock"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(InputError):
        read_lock(path)
    path.write_text(
        json.dumps(
            {
                "format": LOCK_FORMAT,
                "version": 1,
                "algorithm": "sha256",
                "roots": [{"path": "/x", "files": {"../etc/passwd": {"mode": 1}}}],
            }
        )
    )
    with pytest.raises(InputError, match="clean relative path"):
        read_lock(path)


def test_diff_lists_added_removed_changed(venv: Venv, tmp_path: Path) -> None:
    first = read_lock(_snapshot(venv, tmp_path / "a.lock"))
    assert diff_locks(first, first).findings == ()
    (venv.site / "idna" / "package_data.py").write_text("__version__ = '9'\n")
    (venv.site / "idna" / "codec.py").unlink()
    (venv.site / "idna" / "new.py").write_text("")
    lock2, _ = snapshot_environment([str(venv.site)], check_pyc=False)
    write_lock(lock2, tmp_path / "b.lock")
    report = diff_locks(first, read_lock(tmp_path / "b.lock"))
    by_rule = {f.rule_id: f.location.path for f in report.findings}
    assert by_rule["env.diff-changed"].endswith("package_data.py")
    assert by_rule["env.diff-removed"].endswith("codec.py")
    assert by_rule["env.diff-added"].endswith("new.py")


def test_lock_vouches_for_pycs_only_when_the_snapshot_compared_them(
    venv: Venv, tmp_path: Path
) -> None:
    import importlib.util
    import marshal

    source = venv.site / "six.py"
    pyc = next((venv.site / "__pycache__").glob("six.cpython-*.pyc"))
    code = compile(source.read_text() + "\nEVIL = 1\n", str(source), "exec")
    pyc.write_bytes(pyc.read_bytes()[:16] + marshal.dumps(code))
    assert pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER
    # A snapshot that skipped the pyc comparison records the forged pyc as it is...
    lock, _ = snapshot_environment([str(venv.site)], check_pyc=False)
    assert not lock.pyc_verified
    write_lock(lock, tmp_path / "env.lock")
    reread = read_lock(tmp_path / "env.lock")
    assert not reread.pyc_verified
    # ...so verifying against it still compiles and compares: the forgery is caught.
    assert "env.pyc-forged" in _bad_rules(verify_environment(lock=reread))
    # A full snapshot sees the forgery and will not vouch for pycs either.
    full, report = snapshot_environment([str(venv.site)])
    assert "env.pyc-forged" in _bad_rules(report)
    assert not full.pyc_verified


def test_undecodable_file_names_are_reported_not_crashed_on(venv: Venv, tmp_path: Path) -> None:
    import os

    # A file name that is not UTF-8 (bytes paths: pathlib cannot spell it portably).
    fd = os.open(os.fsencode(venv.site) + b"/idna/\xff\xfe.py", os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    lock, report = snapshot_environment([str(venv.site)], check_pyc=False)
    assert "env.lock-unrecorded" in {f.rule_id for f in report.findings}
    write_lock(lock, tmp_path / "env.lock")  # the lock stays valid UTF-8 JSON
    json.loads((tmp_path / "env.lock").read_bytes().decode("utf-8"))
    verified = verify_environment(lock=read_lock(tmp_path / "env.lock"))
    added = [f for f in verified.findings if f.rule_id == "env.lock-added"]
    assert len(added) == 1
    assert "\ufffd" in added[0].location.path
    from trainwarden.report import render

    for fmt in ("text", "json", "sarif"):
        render(verified, fmt).encode("utf-8")  # every format can be written


def test_lock_bytes_are_the_documented_canonical_form_with_non_ascii_names(
    tmp_path: Path,
) -> None:
    from trainwarden.env import EditableRoot, EnvLock, LockedFile

    lock = EnvLock(
        roots=("/opt/venv/site-packages", "/src/proj"),
        files={
            "/opt/venv/site-packages": {
                "pkg/münchen.py": LockedFile("ab" * 32, 3, 0o644),
                "lib/x.so": LockedFile(None, 0, 0o777, link="x.so.1"),
            },
            "/src/proj": {"proj/__init__.py": LockedFile("cd" * 32, 0, 0o644)},
        },
        distributions={"/opt/venv/site-packages": {"pkg": "1.0"}},
        created="2026-01-01T00:00:00Z",
        python={"version": "3.11.7"},
        pyc_verified=True,
        editable={"/src/proj": EditableRoot(("proj",), "importable")},
    )
    data = lock.canonical_bytes()
    doc = json.loads(data)
    # docs/env-lock.md: exactly this, so locks signed by earlier versions still verify.
    assert (
        data == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert "münchen".encode() in data
    path = tmp_path / "env.lock"
    write_lock(lock, path)
    assert path.read_bytes() == data
    assert read_lock(path).editable == lock.editable


def test_lock_is_written_through_a_fresh_temporary_file(venv: Venv, tmp_path: Path) -> None:
    # The old writer used a predictable temporary name and followed a symlink planted there:
    # anyone who can write the lock's directory could make it overwrite another file.
    import os

    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "env.lock"
    (tmp_path / f".env.lock.tmp{os.getpid()}").symlink_to(victim)
    _snapshot(venv, out)
    assert victim.read_text() == "precious"
    assert json.loads(out.read_bytes())["format"] == LOCK_FORMAT
    assert not out.is_symlink()


def test_a_lock_signed_before_still_verifies(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    # A lock and signature as an earlier version wrote them, byte for byte.
    private, public = keys
    doc = {
        "algorithm": "sha256",
        "created": "2025-12-01T00:00:00Z",
        "format": LOCK_FORMAT,
        "pyc_verified": False,
        "python": {},
        "roots": [{"distributions": {}, "files": {}, "path": str(tmp_path)}],
        "version": 1,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    lock_path = tmp_path / "old.lock"
    lock_path.write_bytes(data)
    key = load_private_key(private)
    signature = {
        "algorithm": "ed25519",
        "format": "trainwarden.env-lock-signature",
        "identity": key.public.identity,
        "key_fingerprint": key.public.fingerprint,
        "lock_sha256": hashlib.sha256(data).hexdigest(),
        "signature": base64.b64encode(key.sign(data)).decode(),
        "version": 1,
    }
    signature_path(lock_path).write_text(json.dumps(signature))
    lock = read_lock(lock_path, key=load_public_key(public))
    assert lock.roots == (str(tmp_path),)
    assert lock.canonical_bytes() == data


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("lock_sha256", "0" * 64, "for another lock"),
        ("lock_sha256", None, "for another lock"),
        ("key_fingerprint", "SHA256:someone-else", "names key"),
        ("key_fingerprint", None, "names key"),
        ("version", 2, "unsupported version"),
        ("version", True, "unsupported version"),
        ("version", None, "unsupported version"),
    ],
)
def test_a_signature_file_that_disagrees_with_its_lock_or_key_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], field: str, value: object, says: str
) -> None:
    # The fields beside the signature are not what it covers; one that names another lock,
    # another key or another format was edited, and was believed (exit 0) before.
    from trainwarden.env import EnvLock

    private, public = keys
    lock_path = tmp_path / "env.lock"
    root = str(tmp_path)
    lock = EnvLock(roots=(root,), files={root: {}}, distributions={root: {}}, created="2026")
    write_lock(lock, lock_path, key=load_private_key(private))
    read_lock(lock_path, key=load_public_key(public))  # as written: verifies
    sig = signature_path(lock_path)
    doc = json.loads(sig.read_text())
    doc[field] = value
    sig.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match=says):
        read_lock(lock_path, key=load_public_key(public))
