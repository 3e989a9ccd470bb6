"""The writer: entry format, batching, fsync policy, resume, locking, fork safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainwarden.errors import ConfigError, InputError
from trainwarden.ledger import Ledger, read_ledger, verify_ledger
from trainwarden.ledger._entry import parse_line
from trainwarden.ledger._format import canonical_json


def test_entry_carries_attribution_and_chains(tmp_path, keys):
    with Ledger(tmp_path / "l", key=keys["alice"].path) as ledger:
        first = ledger.append("checkpoint.saved", run="r1", path=tmp_path / "c", step=3)
        second = ledger.append("train.step", step=4)
    assert (first.seq, second.seq) == (1, 2)
    assert second.prev == first.hash
    assert first.actor.pid == os.getpid()
    assert first.actor.uid == os.getuid()
    assert first.actor.key == keys["alice"].public.fingerprint
    assert first.actor.identity == "alice@cluster"
    assert first.data == {"path": str(tmp_path / "c"), "step": 3}
    lines = ledger.path.read_bytes().splitlines()
    assert len(lines) == 3
    opened = parse_line(lines[0])
    assert (opened.event, opened.seq, opened.prev) == ("ledger.open", 0, None)
    assert parse_line(lines[1]) == first  # what append returned is what is on disk
    assert first.prev == opened.hash


def test_lines_are_canonical_json(tmp_path, keys):
    with Ledger(tmp_path / "l", key=keys["alice"].private) as ledger:
        ledger.append("note", text="héllo\nwörld\u2028", nested={"b": [1, 2.5], "a": None})
    for line in ledger.path.read_bytes().splitlines():
        assert canonical_json(json.loads(line)).encode() == line
    assert "héllo" in ledger.path.read_text(encoding="utf-8")


def test_hash_and_signature_follow_the_spec(tmp_path, keys):
    # docs/ledger.md: hash = sha256(canonical(entry minus sig)); the key signs
    # "trainwarden/ledger/entry/v1" 0x00 || sha256(body). Recomputed here from scratch.
    import base64
    import hashlib

    with Ledger(tmp_path / "l", key=keys["alice"].private) as ledger:
        ledger.append("note", sig="a data member named sig", nested={"sig": "x"})
    prev = None
    for line in ledger.path.read_bytes().splitlines():
        obj = json.loads(line)
        sig = base64.b64decode(obj.pop("sig"))
        body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(body.encode()).digest()
        assert parse_line(line).hash == "sha256:" + digest.hex()
        assert obj["prev"] == prev
        keys["alice"].public.verify(sig, b"trainwarden/ledger/entry/v1\x00" + digest)
        prev = "sha256:" + digest.hex()


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("", {}),
        ("has space", {}),
        ("ledger.seal", {}),
        ("ok", {"bad": float("nan")}),
        ("ok", {"bad": {1: "int key"}}),
        ("ok", {"bad": object()}),
        ("ok", {"bad": "\ud800"}),
        ("ok", {"big": "x" * (1 << 20)}),
    ],
)
def test_invalid_input_is_refused_and_leaves_the_chain_intact(tmp_path, keys, event, data):
    with Ledger(tmp_path / "l", key=keys["alice"].private) as ledger:
        with pytest.raises(InputError):
            ledger.append_data(event, data)
        ledger.append("after", ok=True)
    report = verify_ledger(tmp_path / "l", keys=[keys["alice"].public])
    assert [e.event for e in report.entries] == ["ledger.open", "after"]


def test_bad_options_are_config_errors(tmp_path, keys):
    with pytest.raises(ConfigError):
        Ledger(tmp_path / "l", key=keys["alice"].private, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Ledger(tmp_path / "l", key=keys["alice"].private, batch_size=0)


def test_batch_writes_once_at_the_end(tmp_path, keys):
    with Ledger(tmp_path / "l", key=keys["alice"].private, fsync="batch") as ledger:
        size = ledger.path.stat().st_size
        with ledger.batch():
            entries = [ledger.append("step", step=i) for i in range(50)]
            assert ledger.path.stat().st_size == size  # nothing written inside the batch
        assert ledger.path.stat().st_size > size
        many = ledger.append_many([("eval", "r", {"i": i}) for i in range(10)])
    assert [e.seq for e in entries] == list(range(1, 51))
    assert many[-1].seq == 60
    assert len(verify_ledger(tmp_path / "l", keys=[keys["alice"].public]).entries) == 61


def test_batch_size_bounds_memory(tmp_path, keys):
    ledger = Ledger(tmp_path / "l", key=keys["alice"].private, batch_size=10)
    with ledger, ledger.batch():
        for i in range(25):
            ledger.append("step", step=i)
        assert len(ledger.path.read_bytes().splitlines()) == 21  # open + two full batches
    assert len(ledger.path.read_bytes().splitlines()) == 26


def test_batch_is_written_even_when_the_block_raises(tmp_path, keys):
    ledger = Ledger(tmp_path / "l", key=keys["alice"].private)

    def crash() -> None:
        with ledger.batch():
            ledger.append("step", step=1)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        crash()
    ledger.close()
    assert [e.event for e in read_ledger(tmp_path / "l")] == ["ledger.open", "step"]


def test_each_ledger_object_owns_its_own_file(tmp_path, keys):
    first = Ledger(tmp_path / "l", key=keys["alice"].private, resume=True)
    second = Ledger(tmp_path / "l", key=keys["alice"].private, resume=True)  # first holds the lock
    assert first.path != second.path
    first.append("a")
    second.append("b")
    first.close()
    second.close()
    third = Ledger(tmp_path / "l", key=keys["alice"].private, resume=True)
    assert third.path in (first.path, second.path)
    assert third.next_seq == 2
    third.append("c")
    third.close()
    assert len(verify_ledger(tmp_path / "l", keys=[keys["alice"].public]).entries) == 5


def test_resume_skips_other_keys_and_torn_files(tmp_path, keys):
    with Ledger(tmp_path / "l", key=keys["alice"].private) as alice:
        alice.append("a")
    with Ledger(tmp_path / "l", key=keys["bob"].private, resume=True) as bob:
        assert bob.path != alice.path  # never continues another key's chain
    with alice.path.open("ab") as fh:
        fh.write(b'{"partial')
    with Ledger(tmp_path / "l", key=keys["alice"].private, resume=True) as again:
        assert again.path != alice.path  # never appends after a torn line
        assert again.next_seq == 1


def test_closed_writer_refuses_appends(tmp_path, keys):
    ledger = Ledger(tmp_path / "l", key=keys["alice"].private)
    ledger.close()
    ledger.close()
    with pytest.raises(InputError):
        ledger.append("late")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_cannot_share_the_writer(tmp_path, keys):
    ledger = Ledger(tmp_path / "l", key=keys["alice"].private)
    pid = os.fork()
    if pid == 0:  # child: must be refused, and must not touch the parent's file
        try:
            ledger.append("from-child")
        except InputError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    ledger.append("from-parent")
    ledger.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert [e.event for e in read_ledger(tmp_path / "l")] == ["ledger.open", "from-parent"]


def test_symlinked_ledger_subdirectory_is_refused(tmp_path, keys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "writers").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="symbolic link"):
        Ledger(tmp_path / "l", key=keys["alice"].private)


def test_writers_directory_gets_the_sticky_bit(tmp_path, keys):
    with Ledger(tmp_path / "l", key=keys["alice"].private):
        pass
    assert (tmp_path / "l" / "writers").stat().st_mode & 0o1000


def test_read_ledger_filters_runs_and_refuses_garbage(tmp_path, keys):
    with Ledger(tmp_path / "l", key=keys["alice"].private) as ledger:
        ledger.append("a", run="r1")
        ledger.append("b", run="r2")
    assert [e.event for e in read_ledger(tmp_path / "l", run="r2")] == ["b"]
    with ledger.path.open("ab") as fh:
        fh.write(b"garbage\n")
    with pytest.raises(InputError, match="ledger verify"):
        read_ledger(tmp_path / "l")


def test_not_a_ledger_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError):
        read_ledger(tmp_path)
    with pytest.raises(InputError):
        read_ledger(tmp_path / "missing")
