"""Several processes append at once, each to its own file; readers see consistent prefixes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from trainwarden.ledger import Ledger, inspect_ledger, verify_ledger

PROCS, PER_PROC = 4, 500


def _writer(root: str, key: str, worker: int, fsync: str) -> None:
    with Ledger(Path(root), key=key, fsync=fsync, batch_size=7) as ledger:  # type: ignore[arg-type]
        for i in range(PER_PROC):
            if i % 100 == 50:
                with ledger.batch():
                    ledger.append("burst", run="r", worker=worker, i=i)
            else:
                ledger.append("step", run="r", worker=worker, i=i)


def test_concurrent_processes_lose_nothing(tmp_path, keys):
    ctx = multiprocessing.get_context("fork")
    root = tmp_path / "ledger"
    procs = [
        ctx.Process(target=_writer, args=(str(root), str(keys["alice"].path), w, "never"))
        for w in range(PROCS)
    ]
    for p in procs:
        p.start()
    # Read while they write: every snapshot must be an intact prefix (at most a torn tail).
    snapshots = 0
    while any(p.is_alive() for p in procs) and snapshots < 20:
        if (root / "writers").is_dir():
            report = inspect_ledger(root, keys=[keys["alice"].public])
            assert report.issues == (), report.issues
            snapshots += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    report = verify_ledger(root, keys=[keys["alice"].public])
    assert len(report.writers) == PROCS
    steps = sorted((e.data["worker"], e.data["i"]) for e in report.entries if e.run == "r")
    assert steps == [(w, i) for w in range(PROCS) for i in range(PER_PROC)]
    assert len({e.actor.pid for e in report.entries}) == PROCS


def _sealer(root: str, key: str, writer_key: str, rounds: int) -> None:
    from trainwarden.ledger import seal_ledger
    from trainwarden.sign import load_public_key

    for _ in range(rounds):
        seal_ledger(Path(root), key=key, writer_keys=[load_public_key(Path(writer_key))])


def test_verifying_while_writers_append_and_a_sealer_seals(tmp_path, keys):
    # Seals made while a verifier reads must never make an honest ledger look truncated.
    ctx = multiprocessing.get_context("fork")
    root = tmp_path / "ledger"
    with Ledger(root, key=keys["alice"].private) as ledger:
        ledger.append("start")
    writers = [
        ctx.Process(target=_writer, args=(str(root), str(keys["alice"].path), w, "never"))
        for w in range(2)
    ]
    sealer = ctx.Process(
        target=_sealer,
        args=(str(root), str(keys["sealer"].path), str(keys["alice"].pub_path), 8),
    )
    for p in [*writers, sealer]:
        p.start()
    checks = 0
    while any(p.is_alive() for p in writers) or sealer.is_alive():
        report = inspect_ledger(
            root, keys=[keys["alice"].public], seal_keys=[keys["sealer"].public]
        )
        assert [i.kind for i in report.issues if i.kind != "seal_missing"] == []
        checks += 1
    for p in [*writers, sealer]:
        p.join(60)
        assert p.exitcode == 0
    assert checks > 0
    final = verify_ledger(root, keys=[keys["alice"].public], seal_keys=[keys["sealer"].public])
    assert len([s for s in final.seals if s.trusted]) == 8


def test_seal_made_during_verification_is_not_false_truncation(tmp_path, keys, monkeypatch):
    # Deterministic version of the race above: the moment the verifier reads a writer
    # file, the writer appends and the sealer seals. The verifier read the seals before
    # the writer files, so the new seal is not seen and nothing looks truncated.
    from trainwarden.ledger import _verify, seal_ledger

    root = tmp_path / "ledger"
    writer = Ledger(root, key=keys["alice"].private)
    writer.append("a")
    seal_ledger(root, key=keys["sealer"].private)
    real = _verify.read_records
    fired = []

    def read_during_activity(path):
        records = real(path)
        if path.parent.name == "writers" and not fired:
            fired.append(path)
            writer.append("b")
            seal_ledger(root, key=keys["sealer"].private)
        return records

    monkeypatch.setattr(_verify, "read_records", read_during_activity)
    report = verify_ledger(root, keys=[keys["alice"].public], seal_keys=[keys["sealer"].public])
    writer.close()
    assert fired
    assert report.intact
    monkeypatch.undo()
    final = verify_ledger(root, keys=[keys["alice"].public], seal_keys=[keys["sealer"].public])
    assert len(final.seals) == 2


def test_threads_sharing_one_writer_keep_one_chain(tmp_path, keys):
    import threading

    root = tmp_path / "ledger"
    ledger = Ledger(root, key=keys["alice"].private, fsync="never", batch_size=13)

    def work(worker: int) -> None:
        for i in range(300):
            if i % 50 == 0:
                with ledger.batch():
                    ledger.append("burst", worker=worker, i=i)
            else:
                ledger.append("step", worker=worker, i=i)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    report = verify_ledger(root, keys=[keys["alice"].public])
    seen = sorted((e.data["worker"], e.data["i"]) for e in report.entries if "worker" in e.data)
    assert seen == [(w, i) for w in range(4) for i in range(300)]
