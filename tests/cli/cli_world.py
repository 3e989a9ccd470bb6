"""Small real inputs for every command, and a working argv for each (a plain module, imported by
the CLI tests that walk every command)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from trainwarden.cli import main

World = dict[str, Path]
Argv = Callable[[World, Path], list[str]]

PY = sys.executable
# `trainwarden run` without its slow pre-flight checks.
FAST_RUN = ["--env-check", "off", "--no-access-audit", "--no-progress"]


def make_world(root: Path) -> World:
    """Keys, a signed file, a ledger, a signed env lock, a provenance statement, a run dir."""
    from trainwarden.keys import generate_key, load_private_key
    from trainwarden.provenance import TrainingRun, build_statement, write_provenance
    from trainwarden.report._synthetic import write_synthetic_run

    w: World = {"root": root}
    (root / "keys").mkdir()
    w["key"], w["pub"] = generate_key(root / "keys" / "alice", identity="alice@node")
    w["model"] = root / "model.json"
    w["model"].write_text("{}", encoding="utf-8")
    w["ckpt"] = root / "ckpt.bin"
    w["ckpt"].write_bytes(b"\0" * 1024)
    assert main(["sign", str(w["ckpt"]), "--key", str(w["key"]), "--no-progress"]) == 0
    w["ledger"] = root / "ledger"
    assert main(["ledger", "init", str(w["ledger"])]) == 0
    append = ["ledger", "append", str(w["ledger"]), "--key", str(w["key"]), "--event", "x.y"]
    assert main(append) == 0
    w["site"] = root / "site"
    w["site"].mkdir()
    w["lock"] = root / "env.lock"
    lock = ["env", "snapshot", "--path", str(w["site"]), "--lock", str(w["lock"])]
    assert main([*lock, "--key", str(w["key"]), "--no-progress"]) == 0
    statement = build_statement(
        TrainingRun(
            run_id="r1",
            outputs=(),
            external_parameters={"command": ["python", "train.py"]},
            internal_parameters={"cwd": str(root)},
            dependencies=(),
            byproducts=(),
            started="2026-01-01T00:00:00.000000Z",
            finished="2026-01-01T00:10:00.000000Z",
        )
    )
    w["provenance"] = root / "provenance.intoto.json"
    write_provenance(w["provenance"], statement, load_private_key(w["key"]))
    run = write_synthetic_run(root / "run", ranks=2, steps=50)
    w["run_dir"] = run.run_dir
    w["run_pub"] = run.keys[0]
    return w


#: A working invocation of every command that writes a report (``--output``), from the world
#: and a scratch directory. ``None``: not run here (the reason beside it).
COMMAND_ARGV: dict[tuple[str, ...], Argv | None] = {
    ("drill",): None,  # minutes; its JSON is checked by tests/unit/drill/test_drill_run.py
    ("scan",): lambda w, tmp: ["scan", str(w["model"]), "--no-progress"],
    ("demo",): lambda w, tmp: ["demo"],
    ("convert",): None,  # needs torch; tests/cli/test_convert_cli.py checks its output
    ("env", "verify"): lambda w, tmp: [
        *("env", "verify", "--path", str(w["site"]), "--lock", str(w["lock"])),
        *("--pubkey", str(w["pub"]), "--no-progress"),
    ],
    ("env", "snapshot"): lambda w, tmp: [
        *("env", "snapshot", "--path", str(w["site"]), "--lock", str(tmp / "e.lock")),
        "--no-progress",
    ],
    ("env", "diff"): lambda w, tmp: ["env", "diff", str(w["lock"]), str(w["lock"])],
    ("keygen",): lambda w, tmp: ["keygen", str(tmp / "k")],
    ("sign",): lambda w, tmp: ["sign", str(w["model"]), "--key", str(w["key"]), "--no-progress"],
    ("verify",): lambda w, tmp: ["verify", str(w["ckpt"]), "--pubkey", str(w["pub"])],
    ("ledger", "init"): lambda w, tmp: ["ledger", "init", str(tmp / "l")],
    ("ledger", "append"): lambda w, tmp: [
        *("ledger", "append", str(w["ledger"]), "--key", str(w["key"]), "--event", "a.b"),
    ],
    ("ledger", "seal"): lambda w, tmp: [
        *("ledger", "seal", str(w["ledger"]), "--key", str(w["key"])),
        *("--pubkey", str(w["pub"])),
    ],
    ("ledger", "verify"): lambda w, tmp: [
        *("ledger", "verify", str(w["ledger"]), "--pubkey", str(w["pub"])),
    ],
    ("ledger", "show"): lambda w, tmp: ["ledger", "show", str(w["ledger"])],
    ("provenance", "verify"): lambda w, tmp: [
        *("provenance", "verify", str(w["provenance"]), "--pubkey", str(w["pub"])),
    ],
    ("provenance", "show"): lambda w, tmp: ["provenance", "show", str(w["provenance"])],
    ("report",): lambda w, tmp: [
        *("report", str(w["run_dir"]), "--pubkey", str(w["run_pub"])),
        *("--skip-checkpoint-digests", "--no-progress"),
    ],
}
