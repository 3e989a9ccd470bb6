"""Signals recorded with their sender (another process), then honoured as the job would.

Each case runs a real child Python process that calls record_signals() first, then waits; a
third process (``kill``) sends the signal. The child's event file says who sent what.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import json, signal, sys, time
    from trainwarden.guard import record_signals

    class FileSink:
        def append(self, event, /, run=None, **data):
            with open(sys.argv[1], "a") as fh:
                fh.write(json.dumps({"event": event, "run": run, **data}) + "\\n")

    mode = sys.argv[2]
    recorder = record_signals(FileSink(), run="run-7")
    if mode == "handler":
        def handler(signo, frame):
            with open(sys.argv[1], "a") as fh:
                fh.write(json.dumps({"event": "job.handler", "signo": signo}) + "\\n")
            sys.exit(3)
        signal.signal(signal.SIGTERM, handler)
    elif mode == "ignore":
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print("ready", flush=True)
    for _ in range(600):
        time.sleep(0.05)
    print("survived", flush=True)
    """
)


def _spawn(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    events = tmp_path / "events.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(events), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RANK": "3"},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child, events


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sigterm_from_another_process_is_recorded_then_kills(tmp_path: Path) -> None:
    child, events = _spawn(tmp_path, "default")
    sender = subprocess.run(["kill", "-TERM", str(child.pid)], check=True)
    assert sender.returncode == 0
    assert child.wait(timeout=30) == -signal.SIGTERM  # the default action, as without us
    (record,) = _events(events)
    assert record["event"] == "guard.signal"
    assert record["signal"] == "SIGTERM"
    assert record["rank"] == 3
    assert record["run"] == "run-7"
    assert record["action"] == "default"
    who = record["sender"]
    assert isinstance(who, dict)
    assert who["uid"] == os.getuid()
    assert who["pid"] not in (child.pid, os.getpid())  # the `kill` process
    assert record["code"] == "SI_USER"


def test_handler_installed_by_the_job_still_runs(tmp_path: Path) -> None:
    child, events = _spawn(tmp_path, "handler")
    os.kill(child.pid, signal.SIGTERM)  # this test process is the sender here
    assert child.wait(timeout=30) == 3
    recorded, handled = _events(events)
    assert recorded["event"] == "guard.signal"
    assert recorded["action"] == "handler"
    who = recorded["sender"]
    assert isinstance(who, dict)
    assert who["pid"] == os.getpid()
    assert "pytest" in str(who["cmdline"]) or sys.executable in str(who["cmdline"])
    assert handled == {"event": "job.handler", "signo": int(signal.SIGTERM)}


def test_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    child, events = _spawn(tmp_path, "ignore")
    os.kill(child.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while not events.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.terminate()
    child.wait(timeout=30)
    first = _events(events)[0]
    assert first["signal"] == "SIGUSR1"
    assert first["action"] == "ignored"


def test_uncatchable_signals_are_refused() -> None:
    from trainwarden.errors import ConfigError
    from trainwarden.guard import record_signals

    with pytest.raises(ConfigError):
        record_signals(None, signals=(signal.SIGKILL,))
