"""``trainwarden run`` end to end: real jobs, real signals, real torchrun, a real ledger.

Every job here runs as a separate process tree under a real supervisor (``python -m
trainwarden run``): the supervisor blocks signals, becomes a subreaper and non-dumpable, which
must not happen to the test process itself. Jobs that do not need torch are small scripts
(a second each); the torch ones use the real tinygpt training job.
"""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canary import Canary
from trainwarden.keys import generate_key, load_public_key
from trainwarden.ledger import Entry, inspect_ledger, read_ledger, verify_ledger

PY = sys.executable
BIN = Path(PY).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    # The local test server is reached directly, whatever proxy the CI machine sets.
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
FAST = ["--env-check", "off", "--no-access-audit", "--no-progress"]
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "trainwarden" / "examples"

# A job step without torch: report progress, say "ready", wait for "go" (or 60 s).
WAIT_JOB = """
import os, sys, time
from pathlib import Path
from trainwarden.supervise import heartbeat
heartbeat(1)
Path("ready.tmp").write_text(str(os.getpid()))
os.replace("ready.tmp", "ready")  # never seen half-written
deadline = time.monotonic() + 60
while not Path("go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("finished", flush=True)
"""

HANG_JOB = """
import os, time
from pathlib import Path
import torch
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
def step():
    opt.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
for _ in range(3):
    step()
def stuck_in_a_collective():
    # Hangs until the supervisor has dumped our stacks (no timing in the test).
    dump = Path(os.environ["TRAINWARDEN_RUN_DIR"]) / "stacks" / "rank-0-1.txt"
    deadline = time.monotonic() + 120
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
stuck_in_a_collective()
step()
"""

EGRESS_JOB = """
import ctypes, sys, urllib.request
for _ in range(2):
    assert urllib.request.urlopen(sys.argv[1], timeout=30).read() == b"training data"
ctypes.CDLL("libm.so.6")
"""

CRASH_JOB = """
import os, sys
rank = int(os.environ.get("RANK", "0"))
if rank == int(sys.argv[1]):
    raise SystemExit(3)
import time
time.sleep(120)  # the other ranks wait until torchrun ends them
"""


# Trains for a while under `run --no-guard`, then reports what each of trainwarden's threads
# in this rank did meanwhile: CPU ticks and wake-ups (context switches) from /proc.
IDLE_JOB = """
import json, os, threading, time
import torch
def per_thread():
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        name = names.get(int(tid), "")
        if not name.startswith("trainwarden-"):
            continue
        with open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/self/task/{tid}/status") as fh:
            switches = sum(int(l.split()[1]) for l in fh if "ctxt_switches" in l)
        out[name] = (int(fields[11]) + int(fields[12]), switches)
    return out
model = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
def step():
    opt.zero_grad()
    model(torch.ones(8, 64)).sum().backward()
    opt.step()
step()  # the heartbeat thread starts on the first step
before, start = per_thread(), time.monotonic()
steps = 0
while time.monotonic() - start < 3.0:
    step()
    steps += 1
after, seconds = per_thread(), time.monotonic() - start
report = {}
for name, (ticks, switches) in after.items():
    ticks0, switches0 = before.get(name, (0, 0))
    report[name] = [ticks - ticks0, switches - switches0]
tick = os.sysconf("SC_CLK_TCK")
print(json.dumps({"seconds": seconds, "steps": steps, "threads": report, "tick": tick}))
"""


def tw(
    *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "trainwarden", *args],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "trainwarden", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def entries(run_dir: Path) -> list[Entry]:
    return read_ledger(run_dir / "ledger")


def named(items: list[Entry], event: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in items if e.event == event]


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    return generate_key(directory / "supervisor", identity="platform@cluster")


# -- a clean run: python launcher, real training, every pre-flight check -------------------


@pytest.fixture(scope="module")
def tinygpt_run(tmp_path_factory: pytest.TempPathFactory, key_pair: tuple[Path, Path]) -> Any:
    cwd = tmp_path_factory.mktemp("tinygpt")
    proc = tw(
        "run",
        "--key",
        str(key_pair[0]),
        "--run-id",
        "tiny-1",
        "--run-dir",
        "rd",
        "--summary",
        "summary.json",
        "--",
        PY,
        "-m",
        "trainwarden.examples.tinygpt",
        "--steps",
        "30",
        "--ckpt-dir",
        "ck",
        "--ckpt-every",
        "10",
        "--out",
        "result.json",
        "--lr",
        "0.003",
        cwd=cwd,
    )
    return cwd, proc


@pytest.mark.torch
@pytest.mark.slow
def test_clean_run_records_everything_and_attests(
    tinygpt_run: Any, key_pair: tuple[Path, Path]
) -> None:
    cwd, proc = tinygpt_run
    assert proc.returncode == 0, proc.stderr
    run_dir = cwd / "rd"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["schema_version"] == 1
    assert (record["run_id"], record["launcher"], record["exit"]) == (
        "tiny-1",
        "python",
        {"status": 0, "signal": None},
    )
    assert record["ended"] is not None
    assert record["supervisor"]["key"] == load_public_key(key_pair[1]).fingerprint
    # The ledger verifies under the supervisor's key alone: every entry is ours.
    report = verify_ledger(run_dir / "ledger", keys=[load_public_key(key_pair[1])])
    events = [e.event for e in report.entries if e.run == "tiny-1"]
    assert events[0] == "run.start"
    for expected in (
        "preflight.env",
        "preflight.code",
        "preflight.access",
        "preflight.decision",
        "rank.start",
        "rank.exit",
        "run.exit",
        "provenance.signed",
    ):
        assert expected in events, expected
    assert events.index("preflight.decision") < events.index("rank.start")
    assert events.index("run.exit") < events.index("provenance.signed")
    # An operator checking the recorded files from anywhere finds them all unchanged.
    files = inspect_ledger(
        run_dir / "ledger", keys=[load_public_key(key_pair[1])], check_files=True
    ).files
    assert {Path(f.path).name for f in files} >= {"ckpt-000010.pt", "provenance.intoto.json"}
    assert [f.path for f in files if f.status != "ok"] == []
    items = entries(run_dir)
    start = named(items, "run.start")[0]
    assert start["seed_commitment"].startswith("sha256:")
    assert start["launcher"] == "python"
    env = named(items, "preflight.env")[0]
    assert env["verdict"] in ("safe", "unknown")  # an editable install is unknown
    roles = {a["role"] for a in named(items, "preflight.access")}
    assert {"environment", "code", "checkpoints", "ledger", "run"} <= roles
    # Checkpoints: signed as completed, chained, with the step from their names.
    signed = named(items, "checkpoint.signed")
    assert [Path(s["path"]).name for s in signed] == [
        "ckpt-000010.pt",
        "ckpt-000020.pt",
        "ckpt-000030.pt",
    ]
    assert [s["step"] for s in signed] == [10, 20, 30]
    assert signed[0]["parent"] is None
    assert [s["parent"] for s in signed[1:]] == [s["digest"] for s in signed[:-1]]
    (rank_exit,) = named(items, "rank.exit")
    assert (rank_exit["rank"], rank_exit["status"]) == (0, 0)
    # The provenance verifies, with the checkpoints and the declared output as subjects.
    check = tw(
        "provenance",
        "verify",
        "rd/provenance.intoto.json",
        "--key",
        str(key_pair[1]),
        "--format",
        "json",
        cwd=cwd,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    statement = json.loads(
        __import__("base64").b64decode(
            json.loads((run_dir / "provenance.intoto.json").read_text())["payload"]
        )
    )
    names = {s["name"] for s in statement["subject"]}
    assert names == {"ck/ckpt-000010.pt", "ck/ckpt-000020.pt", "ck/ckpt-000030.pt", "result.json"}
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert external["hyperparameters"]["lr"] == 0.003
    assert external["hyperparameters"]["steps"] == 30
    assert external["seedCommitment"] == start["seed_commitment"]
    byproducts = {b["name"]: b for b in statement["predicate"]["runDetails"]["byproducts"]}
    assert {"ledger", "ledger-seal", "findings", "exit"} <= set(byproducts)
    # The statement names the ledger's head: the supervisor's last entry before it.
    mine = [e for e in report.entries if e.writer == byproducts["ledger"]["annotations"]["writer"]]
    before = mine[[e.event for e in mine].index("provenance.signed") - 1]
    assert "sha256:" + byproducts["ledger"]["digest"]["sha256"] == before.hash
    assert byproducts["exit"]["annotations"]["status"] == 0
    # Progress on stderr (not a terminal): the run's events always; long steps as a plain
    # line only once the work has taken 5 s, then at most one every 5 s, never one a file.
    progress = [line for line in proc.stderr.splitlines() if line.startswith("trainwarden: ")]
    assert any(line.startswith("trainwarden: preflight: ") for line in progress)
    assert any("provenance" in line for line in progress)
    transient = ("trainwarden: env: ", "trainwarden: scan: ", "trainwarden: access: ")
    seconds = [int(line.rsplit(", ", 1)[1][:-2]) for line in progress if line.startswith(transient)]
    assert all(s >= 5 for s in seconds), progress
    assert all(b - a >= 4 for a, b in itertools.pairwise(seconds)), progress  # rounded
    # The summary: the run's outcome as JSON, with a schema version like every JSON output.
    summary = json.loads((cwd / "summary.json").read_text())
    assert summary["schema_version"] == 1
    assert (summary["run_id"], summary["decision"], summary["exit_code"]) == (
        "tiny-1",
        "proceed",
        0,
    )
    assert [Path(c["path"]).name for c in summary["checkpoints"]] == [
        "ckpt-000010.pt",
        "ckpt-000020.pt",
        "ckpt-000030.pt",
    ]


# -- tampering after the run: modification, deletion --------------------------------------


@pytest.mark.torch
@pytest.mark.slow
def test_checkpoints_modified_or_deleted_after_the_run_are_caught(
    tmp_path: Path, key_pair: tuple[Path, Path]
) -> None:
    proc = tw(
        "run",
        *FAST,
        "--key",
        str(key_pair[0]),
        "--run-id",
        "victim",
        "--run-dir",
        "rd",
        "--",
        PY,
        "-m",
        "trainwarden.examples.tinygpt",
        "--steps",
        "20",
        "--ckpt-dir",
        "ck",
        "--ckpt-every",
        "10",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    pub = str(key_pair[1])
    first, second = tmp_path / "ck" / "ckpt-000010.pt", tmp_path / "ck" / "ckpt-000020.pt"
    verify = ["verify", "--key", pub, "--ledger", "rd/ledger"]
    assert tw(*verify, str(second), cwd=tmp_path).returncode == 0
    assert (
        tw(
            "provenance", "verify", "rd/provenance.intoto.json", "--key", pub, cwd=tmp_path
        ).returncode
        == 0
    )
    # A colleague edits the latest checkpoint in place...
    original = second.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    second.write_bytes(bytes(data))
    out = tw(*verify, str(second), cwd=tmp_path)
    assert out.returncode == 1
    out = tw("provenance", "verify", "rd/provenance.intoto.json", "--key", pub, cwd=tmp_path)
    assert out.returncode == 1
    assert "modified    ck/ckpt-000020.pt" in out.stdout
    # ...and deletes the earlier one.
    first.unlink()
    out = tw("provenance", "verify", "rd/provenance.intoto.json", "--key", pub, cwd=tmp_path)
    assert out.returncode == 1
    assert "missing     ck/ckpt-000010.pt" in out.stdout
    # With the second one restored, its verification still reports the deleted parent.
    second.write_bytes(original)
    out = tw(*verify, str(second), cwd=tmp_path)
    assert out.returncode == 1
    assert "lineage.deleted" in out.stdout


def test_a_resumed_run_names_the_checkpoint_the_previous_run_produced(tmp_path: Path) -> None:
    (tmp_path / "save.py").write_text(
        "import os, sys\n"
        "os.makedirs('ck', exist_ok=True)\n"
        "open('ck/.w', 'wb').write(b'weights ' * 100)\n"
        "os.replace('ck/.w', 'ck/ckpt-000100.pt')\n"
    )
    first = tw(
        "run", *FAST, "--run-dir", "rd1", "--", PY, "save.py", "--ckpt-dir", "ck", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    second = tw(
        "run",
        *FAST,
        "--run-dir",
        "rd2",
        "--",
        PY,
        "-c",
        "pass",
        "--resume",
        "ck/ckpt-000100.pt",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr

    def statement(run_dir: str) -> dict[str, Any]:
        doc = json.loads((tmp_path / run_dir / "provenance.intoto.json").read_text())
        return dict(json.loads(__import__("base64").b64decode(doc["payload"])))

    (produced,) = statement("rd1")["subject"]
    inputs = [
        d
        for d in statement("rd2")["predicate"]["buildDefinition"]["resolvedDependencies"]
        if d.get("annotations", {}).get("kind") == "input-checkpoint"
    ]
    assert [d["digest"] for d in inputs] == [produced["digest"]]
    assert inputs[0]["name"] == str(tmp_path / "ck" / "ckpt-000100.pt")


# -- torchrun ------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("rendezvous", ["static", "standalone"])
def test_torchrun_two_ranks_each_rank_bootstrapped_and_its_exit_known(
    tmp_path: Path, key_pair: tuple[Path, Path], rendezvous: str
) -> None:
    # --standalone uses torchrun's dynamic (c10d) rendezvous, whose agents pass their state
    # through the store as a pickle: protect() in the agent must load it.
    where = ["--standalone"] if rendezvous == "standalone" else ["--master-port", str(_free_port())]
    proc = tw(
        "run",
        *FAST,
        "--key",
        str(key_pair[0]),
        "--run-dir",
        "rd",
        "--",
        str(BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        *where,
        "-m",
        "trainwarden.examples.tinygpt",
        "--steps",
        "10",
        "--ckpt-dir",
        "ck",
        "--ckpt-every",
        "10",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = entries(tmp_path / "rd")
    starts = named(items, "rank.start")
    ranks = sorted(s["rank"] for s in starts if s["role"] == "rank")
    assert ranks == [0, 1]
    assert all(s["world_size"] == 2 and s["key"] for s in starts if s["role"] == "rank")
    exits = named(items, "rank.exit")
    assert sorted((e["rank"], e["status"], e["observed_by"]) for e in exits) == [
        (0, 0, "shim"),
        (1, 0, "shim"),
    ]
    assert [Path(s["path"]).name for s in named(items, "checkpoint.signed")] == ["ckpt-000010.pt"]
    record = json.loads((tmp_path / "rd" / "run.json").read_text())
    assert (record["launcher"], record["world_size"]) == ("torchrun", 2)
    # Each rank's guard closed at exit: its telemetry is complete and attested in the ledger.
    assert sorted((c["rank"], c["steps"]) for c in named(items, "guard.close")) == [
        (0, 10),
        (1, 10),
    ]
    for attested in named(items, "guard.telemetry"):
        lines = (tmp_path / "rd" / "telemetry" / f"rank-{attested['rank']}.jsonl").read_bytes()
        assert attested["lines"] == 10 == len(lines.splitlines())
        assert attested["sha256"] == hashlib.sha256(lines).hexdigest()
    assert sorted(t["rank"] for t in named(items, "guard.telemetry")) == [0, 1]


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_rank_crash_is_recorded_exactly(tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(CRASH_JOB)
    proc = tw(
        "run",
        *FAST,
        "--run-dir",
        "rd",
        "--",
        str(BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "crash.py",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # torchrun's own status
    items = entries(tmp_path / "rd")
    exits = {e["rank"]: e for e in named(items, "rank.exit")}
    assert (exits[1]["status"], exits[1]["signal"]) == (3, None)
    # torchrun then stopped rank 0; the shim names torchrun as the sender.
    assert exits[0]["signal"] in ("SIGTERM", "SIGKILL")
    if exits[0]["signal"] == "SIGTERM":
        signals = [s for s in named(items, "rank.signal") if s["rank"] == 0]
        assert signals
        assert any(
            "torch.distributed.run" in " ".join(s["sender"]["cmdline"] or [])
            or "torchrun" in " ".join(s["sender"]["cmdline"] or [])
            for s in signals
            if s["sender"]
        )
    (run_exit,) = named(items, "run.exit")
    assert run_exit["status"] == 1


@pytest.mark.torch
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("keyed", [False, True], ids=["ephemeral-keys", "platform-key"])
def test_two_nodes_share_one_ledger_and_run_id(
    tmp_path: Path, keyed: bool, key_pair: tuple[Path, Path]
) -> None:
    port = _free_port()
    ledger = tmp_path / "shared-ledger"
    key = ["--key", str(key_pair[0])] if keyed else []
    nodes = [
        start(
            "run",
            *FAST,
            *key,
            "--run-id",
            "multi-1",
            "--run-dir",
            "rd",
            "--ledger",
            str(ledger),
            "--",
            str(BIN / "torchrun"),
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "trainwarden.examples.tinygpt",
            "--steps",
            "10",
            cwd=tmp_path,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-2000:] for o in outputs]
    items = read_ledger(ledger)
    starts = [e for e in items if e.event == "rank.start" and e.data["role"] == "rank"]
    assert sorted(e.data["rank"] for e in starts) == [0, 1]
    assert {e.run for e in items if not e.event.startswith("ledger.")} == {"multi-1"}
    # Two supervisors wrote: one writer file each, each with its own run.exit.
    assert len({e.writer for e in items if e.event == "run.exit"}) == 2
    assert json.loads((tmp_path / "rd" / "run.json").read_text())["run_id"] == "multi-1"
    assert json.loads((tmp_path / "rd" / "nodes" / "1.json").read_text())["node"] == "1"
    assert (tmp_path / "rd" / "provenance.intoto.json").exists()
    # One supervisor per node, one run: the guard in every rank samples with one secret. The
    # platform key lets the supervisors derive the same one (committed to in both run.start);
    # with ephemeral keys the ranks agree on rank 0's and run.start commits to none.
    commitments = {e.data["seed_commitment"] for e in items if e.event == "run.start"}
    attached = [e.data for e in items if e.event == "guard.attach"]
    assert sorted(a["rank"] for a in attached) == [0, 1]
    assert len({a["secret_commitment"] for a in attached}) == 1
    assert {a["sampling"] for a in attached} == {"secret" if keyed else "local"}
    assert len(commitments) == 1
    assert (None in commitments) is not keyed
    assert [e for e in items if e.event == "guard.finding"] == []


# -- the guard's contract, with a fake guard --------------------------------------------

# A stand-in for trainwarden.guard that implements its documented contract (record_signals,
# configure_defaults, install_global, add_step_listener) and logs every call. It is put in
# place by the environment's own sitecustomize, which the run's sitecustomize chains to.
FAKE_GUARD = """
import json, os, sys, types
log = open(os.environ["FAKE_GUARD_LOG"], "a")
def write(**item):
    log.write(json.dumps(item, default=repr) + "\\n"); log.flush()
guard = types.ModuleType("trainwarden.guard")
def record_signals(sink, *, run=None, signals=(), trusted=None):
    write(call="record_signals", run=run, signals=sorted(int(s) for s in signals),
          trusted=callable(trusted))
    return types.SimpleNamespace(before_termination=lambda fn: None)
def configure_defaults(*, sink=None, run=None, secret=None, on_violation=None, telemetry_dir=None):
    write(call="configure_defaults", run=run, secret=secret.hex() if secret else None,
          on_violation=on_violation, telemetry_dir=telemetry_dir, sink=type(sink).__name__)
class Global:
    def __init__(self, sink, run):
        self.listeners, self.sink, self.run, self.step = [], sink, run, 0
        from torch.optim.optimizer import register_optimizer_step_post_hook
        register_optimizer_step_post_hook(self.after_step)
    def add_step_listener(self, fn):
        self.listeners.append(fn)
    def after_step(self, optimizer, args, kwargs):
        self.step += 1
        if self.step == 2:
            self.sink.append("guard.finding", run=self.run, rule_id="guard.update",
                             technique="T4", check="update", severity="high",
                             message="update flipped", evidence="residual 2.0", step=2,
                             established=True)
        for fn in self.listeners:
            fn(types.SimpleNamespace(step=self.step, rank=0, time=0.0))
def install_global(*, sink=None, run=None, secret=None, on_violation="halt", config=None):
    import torch
    write(call="install_global", run=run, secret=secret.hex() if secret else None,
          torch_ready=hasattr(torch, "distributed"))
    return Global(sink, run)
guard.record_signals, guard.configure_defaults, guard.install_global = (
    record_signals, configure_defaults, install_global)
sys.modules["trainwarden.guard"] = guard
"""

GUARDED_JOB = """
import os, torch
assert not any("SECRET" in k for k in os.environ)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
"""


@pytest.mark.torch
def test_every_rank_gets_the_guard_configured_from_the_supervisor(tmp_path: Path) -> None:
    import hashlib

    site = tmp_path / "envsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_GUARD)
    (tmp_path / "job.py").write_text(GUARDED_JOB)
    log = tmp_path / "guard.log"
    env = {**ENV, "PYTHONPATH": str(site), "FAKE_GUARD_LOG": str(log)}
    proc = tw(
        "run",
        *FAST,
        "--run-id",
        "guarded",
        "--run-dir",
        "rd",
        "--on-violation",
        "warn",
        "--",
        PY,
        "job.py",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    calls = {c["call"]: c for c in map(json.loads, log.read_text().splitlines())}
    assert set(calls) == {"record_signals", "configure_defaults", "install_global"}
    assert calls["record_signals"]["signals"] == sorted(
        int(s)
        for s in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGQUIT,
        )
    )
    configured = calls["configure_defaults"]
    assert (configured["run"], configured["on_violation"]) == ("guarded", "warn")
    assert configured["telemetry_dir"] == str(tmp_path / "rd" / "telemetry")
    assert configured["sink"] == "ChannelSink"
    # The secret reached the guard over the channel and matches the commitment in run.start.
    items = entries(tmp_path / "rd")
    secret = bytes.fromhex(configured["secret"])
    commitment = named(items, "run.start")[0]["seed_commitment"]
    assert (
        commitment
        == "sha256:" + hashlib.sha256(b"trainwarden-sampling-secret-v1\0" + secret).hexdigest()
    )
    assert calls["install_global"]["secret"] == configured["secret"]
    assert calls["install_global"]["torch_ready"] is True  # after `import torch` completed
    # The guard's finding went through the supervisor into the ledger, attributed.
    (finding,) = named(items, "guard.finding")
    assert (finding["rule_id"], finding["rank"], finding["step"]) == ("guard.update", 0, 2)
    assert named(items, "run.exit")[0]["findings"] == {"T4": 1}


@pytest.mark.torch
@pytest.mark.slow
def test_the_real_guard_attaches_in_every_rank_without_code_change(tmp_path: Path) -> None:
    proc = tw(
        "run",
        *FAST,
        "--run-dir",
        "rd",
        "--hang-timeout",
        "120",
        "--",
        str(BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "trainwarden.examples.tinygpt",
        "--steps",
        "20",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = entries(tmp_path / "rd")
    attached = named(items, "guard.attach")
    assert sorted(a["rank"] for a in attached) == [0, 1]
    assert all(a["sampling"] == "secret" for a in attached)
    assert named(items, "guard.finding") == []
    assert named(items, "run.exit")[0]["findings"] == {}


RMSPROP_JOB = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
for _ in range(12):
    x = torch.randn(32, 8)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


@pytest.mark.torch
def test_updates_the_guard_cannot_verify_are_not_a_finding(tmp_path: Path) -> None:
    """A clean job with an optimizer the guard has no reference for (RMSprop) is not counted
    as suspected T4 (it was: "findings T4: 1", a report SUSPICIOUS with a card "perturbed or
    flipped updates"); the report lists its updates among what could not be verified."""
    from trainwarden.report import read_run

    (tmp_path / "job.py").write_text(RMSPROP_JOB)
    proc = tw("run", *FAST, "--run-dir", "rd", "--", PY, "job.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended = [line for line in proc.stderr.splitlines() if "job ended with status 0" in line]
    assert len(ended) == 1, proc.stderr[-2000:]
    assert "findings" not in ended[0]
    items = entries(tmp_path / "rd")
    assert [f["rule_id"] for f in named(items, "guard.finding")] == ["guard.not-verified"]
    assert named(items, "run.exit")[0]["findings"] == {}
    report = read_run(tmp_path / "rd")
    assert not [f for f in report.findings if f.check.startswith("guard.")]
    assert [u for u in report.unverified if "RMSprop" in u and "rank 0" in u]


# -- watch: hangs, signals, crashes, the supervisor itself ---------------------------------


@pytest.mark.torch
def test_a_hung_rank_is_recorded_with_its_stacks(tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text(HANG_JOB)
    proc = tw(
        "run",
        *FAST,
        "--run-dir",
        "rd",
        "--hang-timeout",
        "1",
        "--start-timeout",
        "300",
        "--",
        PY,
        "hang.py",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    items = entries(tmp_path / "rd")
    (hang,) = named(items, "rank.hang")
    assert (hang["rank"], hang["last_step"], hang["phase"]) == (0, 3, "step")
    stacks = (tmp_path / "rd" / hang["stacks"]).read_text()
    assert "stuck_in_a_collective" in stacks
    assert "hang.py" in stacks
    (recovered,) = named(items, "rank.recovered")
    assert recovered["step"] == 4


@pytest.mark.torch
def test_the_rank_runtime_stays_idle_while_the_job_trains(tmp_path: Path) -> None:
    # What a rank runs beside the training thread (channel, heartbeats, signal recording,
    # egress flusher) must not compete with it: a few wake-ups a second at most, no CPU to
    # speak of. A thread that polls (a short timeout in a loop) wakes hundreds of times.
    (tmp_path / "idle.py").write_text(IDLE_JOB)
    proc = tw(
        "run",
        *FAST,
        "--no-guard",
        "--hang-timeout",
        "1",
        "--run-dir",
        "rd",
        "--",
        PY,
        "idle.py",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    threads = report["threads"]
    assert {"trainwarden-channel", "trainwarden-heartbeat", "trainwarden-signals"} <= set(threads)
    assert report["steps"] > 0
    seconds = report["seconds"]
    for name, (_, wakeups) in threads.items():
        assert wakeups / seconds < 10, (name, wakeups, seconds)
    cpu = sum(ticks for ticks, _ in threads.values()) / report["tick"]
    assert cpu < 0.05 * seconds, threads
    # Few wake-ups, yet the heartbeats kept up: no step went unreported for a second.
    assert named(entries(tmp_path / "rd"), "rank.hang") == []


def _run_waiting(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "wait.py").write_text(WAIT_JOB)
    sup = start("run", *FAST, "--run-dir", "rd", *extra, "--", PY, "wait.py", cwd=tmp_path)
    wait_for(tmp_path / "ready")
    return sup, int((tmp_path / "ready").read_text())


def test_sigterm_from_another_process_names_the_sender(tmp_path: Path) -> None:
    sup, rank = _run_waiting(tmp_path)
    os.kill(rank, signal.SIGTERM)
    sup.communicate(timeout=120)
    assert sup.returncode == 128 + signal.SIGTERM
    items = entries(tmp_path / "rd")
    # One record of the signal, by the rank's recorder: the guard's (guard.signal) when the
    # guard is installed, else the supervisor's own (rank.signal, source sigwaitinfo).
    (sig,) = [*named(items, "rank.signal"), *named(items, "guard.signal")]
    assert (sig["signal"], sig["pid"]) == ("SIGTERM", rank)
    assert sig.get("source", "sigwaitinfo") == "sigwaitinfo"
    assert sig.get("code", "SI_USER") == "SI_USER"
    assert sig["sender"]["pid"] == os.getpid()
    assert sig["sender"]["uid"] == os.getuid()
    (exit_,) = named(items, "rank.exit")
    assert (exit_["signal"], exit_["status"]) == ("SIGTERM", None)
    assert named(items, "run.exit")[0]["findings"] == {"T6": 1}


def test_ctrl_c_at_the_terminal_is_recorded_but_not_counted_as_an_attack(tmp_path: Path) -> None:
    # A user pressing Ctrl-C on `trainwarden run`: the kernel sends SIGINT to the whole
    # foreground group (si_code SI_KERNEL, no sending process). The run ended with
    # "findings T6: 1", as if an insider had killed the job.
    import pty

    from trainwarden.report import read_run

    (tmp_path / "wait.py").write_text(WAIT_JOB)
    argv = [PY, "-m", "trainwarden", "run", *FAST, "--run-dir", "rd", "--", PY, "wait.py"]
    pid, master = pty.fork()
    if pid == 0:  # the child: the supervisor, in the foreground of its own terminal
        os.chdir(tmp_path)
        os.execve(PY, argv, ENV)
    try:
        wait_for(tmp_path / "ready")
        os.write(master, b"\x03")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT
    items = entries(tmp_path / "rd")
    signals = [*named(items, "rank.signal"), *named(items, "guard.signal")]
    assert [s["signal"] for s in signals if s.get("code") == "SI_KERNEL"], signals
    assert named(items, "run.exit")[0]["findings"] == {}
    (own,) = named(items, "supervisor.signal")
    assert own["code"] == "SI_KERNEL"
    # Nor does the report make it a card: the user stopping their own job is no attack.
    assert not [f for f in read_run(tmp_path / "rd").findings if f.technique == "T6"]


def test_sigkill_is_recorded_as_such_with_the_audit_rule(tmp_path: Path) -> None:
    sup, rank = _run_waiting(tmp_path)
    os.kill(rank, signal.SIGKILL)
    sup.communicate(timeout=120)
    assert sup.returncode == 128 + signal.SIGKILL
    items = entries(tmp_path / "rd")
    (sig,) = named(items, "rank.signal")
    assert (sig["signal"], sig["source"], sig["sender"]) == ("SIGKILL", "exit-status", None)
    assert "does not report its sender" in sig["note"]
    assert "-S kill,tkill,tgkill" in sig["note"]
    assert "a1=9" in sig["note"]
    assert named(items, "rank.exit")[0]["signal"] == "SIGKILL"


def test_processes_left_behind_are_adopted_recorded_and_ended(tmp_path: Path) -> None:
    # The job's main process starts a helper and exits: the helper is re-parented to the
    # supervisor (a subreaper), not to init, and is ended after the grace period.
    (tmp_path / "leave.py").write_text(
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "open('helper', 'w').write(str(p.pid))\n"
    )
    proc = tw(
        "run",
        *FAST,
        "--run-dir",
        "rd",
        "--orphan-grace",
        "1",
        "--",
        PY,
        "leave.py",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    helper = int((tmp_path / "helper").read_text())
    items = entries(tmp_path / "rd")
    assert helper in [o["pid"] for o in named(items, "process.orphan")]
    (ended,) = [e for e in named(items, "process.exit") if e["pid"] == helper]
    assert ended["signal"] == "SIGTERM"
    events = [e.event for e in items]
    assert events.index("process.orphan") < events.index("run.exit")
    assert not _alive(helper)


def test_a_crashing_rank_exits_with_its_status(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise RuntimeError('diverged')\n")
    proc = tw("run", *FAST, "--run-dir", "rd", "--", PY, "boom.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "RuntimeError: diverged" in proc.stderr
    items = entries(tmp_path / "rd")
    assert (named(items, "rank.exit")[0]["status"], named(items, "run.exit")[0]["status"]) == (1, 1)


def test_terminating_the_supervisor_is_recorded_and_forwarded(tmp_path: Path) -> None:
    sup, _ = _run_waiting(tmp_path)
    sup.send_signal(signal.SIGTERM)
    sup.communicate(timeout=120)
    assert sup.returncode == 128 + signal.SIGTERM
    items = entries(tmp_path / "rd")
    (own,) = named(items, "supervisor.signal")
    assert own["signal"] == "SIGTERM"
    assert own["sender"]["pid"] == os.getpid()
    assert own["action"] == "forwarded to the job"
    assert named(items, "rank.exit")[0]["signal"] == "SIGTERM"
    # The forwarded signal came from the supervisor: not counted as sabotage.
    assert named(items, "run.exit")[0]["findings"] == {}


def test_a_third_termination_request_kills_a_job_that_will_not_stop(tmp_path: Path) -> None:
    (tmp_path / "stubborn.py").write_text(
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + WAIT_JOB
    )
    sup = start("run", *FAST, "--run-dir", "rd", "--", PY, "stubborn.py", cwd=tmp_path)
    wait_for(tmp_path / "ready")
    for count in (1, 2, 3):
        sup.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and len(named(entries(tmp_path / "rd"), "supervisor.signal")) < count
        ):
            time.sleep(0.05)
    sup.communicate(timeout=120)
    assert sup.returncode == 128 + signal.SIGKILL
    items = entries(tmp_path / "rd")
    assert len(named(items, "supervisor.signal")) == 3
    (escalated,) = named(items, "supervisor.escalated")
    assert escalated["pids"]
    assert named(items, "rank.exit")[0]["signal"] == "SIGKILL"


def test_a_killed_supervisor_leaves_a_run_without_exit_and_ranks_carry_on(tmp_path: Path) -> None:
    sup, rank = _run_waiting(tmp_path)
    sup.kill()
    sup.wait(timeout=120)  # not communicate(): the rank still holds the output pipes
    try:
        deadline = time.monotonic() + 60
        lost: list[Entry] = []
        while not lost and time.monotonic() < deadline:
            time.sleep(0.1)
            lost = [e for e in entries(tmp_path / "rd") if e.event == "rank.supervisor-lost"]
        (tmp_path / "go").touch()
        assert lost, "the rank did not record the supervisor's loss"
        items = entries(tmp_path / "rd")
        assert named(items, "run.exit") == []
        (rank_start,) = named(items, "rank.start")
        # Recorded under the rank's own ephemeral key, which the supervisor vouched for.
        assert lost[0].actor.key == rank_start["key"]
        assert lost[0].data["pid"] == rank
    finally:
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 30
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(rank):
            os.kill(rank, signal.SIGKILL)
        sup.communicate(timeout=120)


# -- egress --------------------------------------------------------------------------------


@pytest.fixture
def data_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"training data")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/shard-0"
    server.shutdown()


def test_every_endpoint_the_job_contacts_is_on_the_record(tmp_path: Path, data_server: str) -> None:
    (tmp_path / "fetch.py").write_text(EGRESS_JOB)
    proc = tw("run", *FAST, "--run-dir", "rd", "--", PY, "fetch.py", data_server, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    items = entries(tmp_path / "rd")
    port = int(data_server.split(":")[2].split("/")[0])
    endpoints = named(items, "egress.endpoint")
    assert [(e["host"], e["port"], e["via"], e["rank"]) for e in endpoints] == [
        ("127.0.0.1", port, "http", 0)
    ]
    assert "libm.so.6" in [n["library"] for n in named(items, "egress.native-load")]
    statement = json.loads(
        __import__("base64").b64decode(
            json.loads((tmp_path / "rd" / "provenance.intoto.json").read_text())["payload"]
        )
    )
    names = [b["name"] for b in statement["predicate"]["runDetails"]["byproducts"]]
    assert f"egress:127.0.0.1:{port}" in names


def test_any_other_launcher_attaches_every_python_process(tmp_path: Path, data_server: str) -> None:
    # An unknown launcher (a shell script): the Python it starts attaches through the run's
    # sitecustomize, so its egress is on the record too.
    (tmp_path / "fetch.py").write_text(EGRESS_JOB)
    (tmp_path / "launch.sh").write_text(f'#!/bin/sh\nexec {PY} fetch.py "$1"\n')
    (tmp_path / "launch.sh").chmod(0o755)
    proc = tw("run", *FAST, "--run-dir", "rd", "--", "./launch.sh", data_server, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    items = entries(tmp_path / "rd")
    assert json.loads((tmp_path / "rd" / "run.json").read_text())["launcher"] == "other"
    (started,) = named(items, "process.start")
    assert started["role"] == "process"
    (endpoint,) = named(items, "egress.endpoint")
    assert (endpoint["host"], endpoint["via"], endpoint["pid"]) == (
        "127.0.0.1",
        "http",
        started["pid"],
    )


# -- pre-flight refusals -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "config"])
def test_a_malicious_resume_checkpoint_is_refused_before_launch(
    tmp_path: Path, canary: Canary, how: str
) -> None:
    shutil.copy(EXAMPLES / "checkpoints" / "malicious_checkpoint.pt", tmp_path / "resume.pt")
    (tmp_path / "train.py").write_text(canary.python_code + "\n")
    if how == "argument":
        job = ["--resume", "resume.pt"]
    else:
        (tmp_path / "train.yaml").write_text("model:\n  init_from: resume.pt\n")
        job = ["--config", "train.yaml"]
    proc = tw("run", *FAST, "--run-dir", "rd", "--", PY, "train.py", *job, cwd=tmp_path)
    assert proc.returncode == 2
    assert "refused to launch" in proc.stderr
    assert "scan-unsafe" in proc.stderr
    canary.assert_absent()
    items = entries(tmp_path / "rd")
    scan = named(items, "preflight.scan")[0]
    assert scan["verdict"] == "unsafe"
    assert scan["paths"] == [str(tmp_path / "resume.pt")]
    assert named(items, "preflight.decision")[0]["decision"] == "refuse"
    assert named(items, "rank.start") == []
    assert named(items, "run.exit")[0]["refused"] is True


def test_a_group_writable_torch_install_is_found_by_the_access_audit(
    tmp_path: Path, canary: Canary
) -> None:
    # A throwaway environment layered on this one (never the project's own venv): its
    # site-packages holds a copy of part of torch, made group-writable for a team group.
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    import sysconfig

    (site / "base.pth").write_text(
        sysconfig.get_paths()["purelib"]
        + "\n"
        + str(Path(__file__).resolve().parents[2] / "src")
        + "\n"
    )
    real_torch = Path(sysconfig.get_paths()["purelib"]) / "torch"
    shutil.copytree(real_torch / "optim", site / "torch" / "optim")
    os.chown(site / "torch" / "optim", 0, 4242)
    (site / "torch" / "optim").chmod(0o775)
    (tmp_path / "train.py").write_text(canary.python_code + "\n")
    proc = tw(
        "run",
        "--env-check",
        "off",
        "--no-progress",
        "--on",
        "access=refuse",
        "--run-dir",
        "rd",
        "--",
        str(venv / "bin" / "python"),
        "train.py",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "gid:4242" in proc.stderr
    canary.assert_absent()
    access = [
        a
        for a in named(entries(tmp_path / "rd"), "preflight.access")
        if a["role"] == "environment" and a["writers"]
    ]
    (found,) = access
    assert found["path"] == str(site)
    assert found["verdict"] == "refuse"
    (writer,) = found["writers"]
    assert (writer["kind"], writer["name"], writer["via"]) == ("group", "gid:4242", "mode")
    assert writer["example"] == str(site / "torch" / "optim")


# -- keys ----------------------------------------------------------------------------------


def test_the_key_can_come_from_a_descriptor(tmp_path: Path, key_pair: tuple[Path, Path]) -> None:
    (tmp_path / "ok.py").write_text("print('ok')\n")
    fd = os.open(key_pair[0], os.O_RDONLY)
    try:
        proc = tw(
            "run",
            *FAST,
            "--key-fd",
            str(fd),
            "--run-dir",
            "rd",
            "--",
            PY,
            "ok.py",
            cwd=tmp_path,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "rd" / "run.json").read_text())
    assert record["supervisor"]["key"] == load_public_key(key_pair[1]).fingerprint
    assert not (tmp_path / "rd" / "supervisor.pub").exists()


# -- errors: exit 2 with a message, never a traceback --------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing command"),
        (["--"], "missing command"),
        (["--key", "/nonexistent/key", "--", PY, "-c", "pass"], "cannot"),
        (["--on", "nope=warn", "--", PY, "-c", "pass"], "unknown check"),
        (["--key-fd", "1", "--", PY, "-c", "pass"], "standard streams"),
        (["--hang-timeout", "0", "--", PY, "-c", "pass"], "positive"),
        (["--", PY, "-S", "t.py"], "-S disables"),
        (["--", "no-such-program-xyz"], "command not found"),
        (["--", str(BIN / "torchrun"), "--frobnicate", "t.py"], "unknown torchrun option"),
        (["--run-id", "../x", "--", PY, "-c", "pass"], "invalid run id"),
        (["--lock-pubkey", "k.pub", "--", PY, "-c", "pass"], "--lock-pubkey needs --lock"),
        (["--lock-key", "k.pub", "--", PY, "-c", "pass"], "--lock-pubkey needs --lock"),
        (["--settle", "nan", "--", PY, "-c", "pass"], "finite"),
        (["--orphan-grace", "-1", "--", PY, "-c", "pass"], "negative"),
        (["--key", "k", "--key-fd", "3", "--", PY, "-c", "pass"], "not both"),
        # Named inputs that do not exist or are not what they claim: refused before launch,
        # not passed over (a mistyped --scan is a checkpoint never scanned).
        (["--scan", "typo.pt", "--", PY, "-c", "pass"], "scan path typo.pt does not exist"),
        (["--lock", "missing.lock", "--", PY, "-c", "pass"], "cannot read lock"),
        (["--lock", "garbage", "--", PY, "-c", "pass"], "garbage is not a trainwarden env lock"),
        (["--lock", "lock.json", "--", PY, "-c", "pass"], "not a valid trainwarden env lock"),
        (["--profile", "nosuch", "--", PY, "-c", "pass"], "unknown protect profile 'nosuch'"),
        (["--checkpoints", "garbage", "--", PY, "-c", "pass"], "garbage is not a directory"),
    ],
)
def test_misconfigurations_exit_2_with_a_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "garbage").write_bytes(b"\xc4\x00 not a lock")
    (tmp_path / "lock.json").write_text('{"schema": "something else"}')
    proc = tw("run", *FAST, *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "trainwarden-runs").exists()  # refused before anything was made


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_summary_that_cannot_be_written_keeps_the_runs_own_lines(tmp_path: Path) -> None:
    # A full disk at the end: exit 2 with the reason, after the job's status and where its
    # provenance is (the run itself is recorded and attested).
    proc = tw("run", *FAST, "--summary", "/dev/full", "--", PY, "-c", "pass", cwd=tmp_path)
    assert proc.returncode == 2
    assert "job ended with status 0" in proc.stderr
    assert "provenance" in proc.stderr
    assert "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_public_key_is_not_a_signing_key(tmp_path: Path, key_pair: tuple[Path, Path]) -> None:
    proc = tw("run", *FAST, "--key", str(key_pair[1]), "--", PY, "-c", "pass", cwd=tmp_path)
    assert proc.returncode == 2
    assert "is a public key" in proc.stderr


def test_torchrun_not_installed(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = tw("run", *FAST, "--", "torchrun", "t.py", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "torchrun is not installed" in proc.stderr


def test_run_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    proc = tw("run", *FAST, "--run-dir", "file/rd", "--", PY, "-c", "pass", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot create the run directory" in proc.stderr


def test_a_run_id_is_used_once(tmp_path: Path) -> None:
    args = ["run", *FAST, "--run-id", "once", "--run-dir", "rd", "--", PY, "-c", "pass"]
    assert tw(*args, cwd=tmp_path).returncode == 0
    again = tw(*args, cwd=tmp_path)
    assert again.returncode == 2
    assert "already ran" in again.stderr


def test_a_ledger_on_a_read_only_filesystem(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root to mount a read-only filesystem privately")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        f"mount -t tmpfs -o ro,size=1m tmpfs {ro} || exit 77; "
        f"exec {PY} -m trainwarden run {' '.join(FAST)} --ledger {ro}/ledger -- {PY} -c pass"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode == 77:
        pytest.skip("mounting is not permitted here")
    assert proc.returncode == 2, proc.stderr
    assert "Read-only file system" in proc.stderr
    assert "ledger directory" in proc.stderr


# -- helpers -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by whoever adopted it) is not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_progress_on_a_terminal_uses_rich_and_on_a_log_plain_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from trainwarden.cli import _common
    from trainwarden.cli.run import _RunProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(_common, "LIVE_AFTER", 0.0)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv("TERM", raising=False)
    with _common.Progress("", enabled=True) as shown:
        assert shown.terminal
        progress = _RunProgress(shown)
        progress("env", "verifying the environment")  # a spinner while it lasts
        progress("preflight", "! access /opt/env can be written by group ml")
    assert "access /opt/env can be written by group ml" in terminal.getvalue()
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    clock = [0.0]
    with _common.Progress("", enabled=True, clock=lambda: clock[0]) as plain:
        assert not plain.terminal
        progress = _RunProgress(plain)
        for path in ("a.pt", "b.pt", "c.pt"):
            clock[0] += 3
            progress("scan", f"scanned {path}")
        progress("preflight", "3 input file(s) scanned: safe")
        progress("preflight", "! access /opt/env can be written by group ml")
    assert log.getvalue().splitlines() == [
        "trainwarden: scan: scanned b.pt, 6 s",  # long steps: after 5 s, then every 5 s
        "trainwarden: preflight: 3 input file(s) scanned: safe",
        "trainwarden: preflight: warning: access /opt/env can be written by group ml",
    ]
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    with _common.Progress("", enabled=False) as off:
        _RunProgress(off)("preflight", "nothing")
    assert quiet.getvalue() == ""
    # --no-progress silences progress, never a warning (it is what scripts and batch jobs use).
    with _common.Progress("", enabled=False) as off:
        _RunProgress(off)("preflight", "! environment could not be verified")
    assert (
        quiet.getvalue() == "trainwarden: preflight: warning: environment could not be verified\n"
    )
