"""The control channel accepts the job's own processes only (kernel peer credentials)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trainwarden.supervise._channel import ChannelServer, Peer

CLIENT = """
import json, os, sys, time
from trainwarden.supervise._wire import Channel, ChannelLost
try:
    ch = Channel(sys.argv[1], {"role": "rank", "rank": 3, "pid": os.getpid()})
except ChannelLost as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
ch.start()
ch.send({"op": "event", "event": "guard.finding", "data": {"rule_id": "guard.update"}})
ch.send({"op": "heartbeat", "step": 7})
ch.close()
print(json.dumps({"welcome": ch.welcome}))
"""

# Starts the client as a grandchild whose parent exits first: it is then re-parented away
# from the test process (an insider's process of the same user, not part of the job).
ORPHAN = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                         start_new_session=True, stdout=open(sys.argv[3], "w"))
print(child.pid, flush=True)
"""


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[int, dict[str, Any]]] = []
        self.refused: list[tuple[int, int, str]] = []
        self.closed: list[int] = []
        self.lock = threading.Lock()

    def on_message(self, peer: Peer, message: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            self.messages.append((peer.pid, message))
        if message["op"] == "hello":
            return {"op": "welcome", "run": "run-1", "secret": "00" * 32}
        return None

    def on_close(self, peer: Peer) -> None:
        self.closed.append(peer.pid)

    def on_refused(self, pid: int, uid: int, reason: str) -> None:
        self.refused.append((pid, uid, reason))


@pytest.fixture
def server(tmp_path: Path) -> Any:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    recorder = Recorder()
    srv = ChannelServer(
        private / "ctl.sock",
        ancestor=os.getpid(),
        uids={os.geteuid()},
        on_message=recorder.on_message,
        on_close=recorder.on_close,
        on_refused=recorder.on_refused,
    )
    srv.start()
    yield srv, recorder
    srv.stop()


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[3] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate()


def test_a_descendant_is_welcomed_and_heard(server: Any) -> None:
    srv, recorder = server
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(srv.path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=True,
    )
    reply = json.loads(proc.stdout)
    assert reply["welcome"]["run"] == "run-1"
    _wait(lambda: len(recorder.messages) >= 3)
    ops = [m["op"] for _, m in recorder.messages]
    assert ops == ["hello", "event", "heartbeat"]
    # The pid is the kernel's (SO_PEERCRED), the same for every message of the connection.
    assert {pid for pid, _ in recorder.messages} == {recorder.messages[0][0]}
    assert recorder.refused == []


def test_a_same_user_process_outside_the_job_is_refused(server: Any, tmp_path: Path) -> None:
    srv, recorder = server
    out = tmp_path / "orphan.out"
    launcher = subprocess.run(
        [sys.executable, "-c", ORPHAN, CLIENT, str(srv.path), str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=True,
    )
    orphan = int(launcher.stdout.split()[0])
    _wait(lambda: out.exists() and out.read_text().strip() != "")
    assert "refused" in json.loads(out.read_text())
    assert [pid for pid, _, _ in recorder.refused] == [orphan]
    assert "not part of the supervised job" in recorder.refused[0][2]
    assert recorder.messages == []


def test_a_process_of_another_user_is_refused(tmp_path: Path) -> None:
    # The job runs as one uid; a connection from any other uid (here: this test's own uid,
    # allowed neither) is refused on the kernel's word, whatever it claims.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    recorder = Recorder()
    srv = ChannelServer(
        private / "ctl.sock",
        ancestor=os.getpid(),
        uids={os.geteuid() + 1},
        on_message=recorder.on_message,
        on_close=recorder.on_close,
        on_refused=recorder.on_refused,
    )
    srv.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, str(srv.path)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
            check=True,
        )
    finally:
        srv.stop()
    assert "refused" in json.loads(proc.stdout)
    assert recorder.refused[0][1] == os.geteuid()
    assert "not the job's user" in recorder.refused[0][2]
    assert recorder.messages == []


def test_lines_before_hello_and_garbage_are_ignored(server: Any) -> None:
    import socket

    srv, recorder = server
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(srv.path))
    sock.sendall(b'{"op": "event", "event": "run.exit"}\nnot json\n[1]\n')
    sock.sendall(b'{"op": "hello", "role": "rank"}\n')
    reply = b""
    while not reply.endswith(b"\n"):
        reply += sock.recv(4096)
    sock.close()
    assert json.loads(reply)["op"] == "welcome"
    assert [m["op"] for _, m in recorder.messages] == ["hello"]
