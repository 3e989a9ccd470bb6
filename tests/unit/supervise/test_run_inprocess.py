"""What runs inside a rank: the egress record and signal recording (in child processes, since
audit hooks cannot be removed and signal masks are process-wide)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[3] / "src")

EGRESS = """
import ctypes, json, socket, sys, urllib.request
from trainwarden.supervise._egress import EgressRecorder
events = []
rec = EgressRecorder(lambda event, data: events.append([event, data]))
rec.install()
for _ in range(3):  # the same endpoint three times: recorded once
    urllib.request.urlopen(sys.argv[1], timeout=30).read()
socket.getaddrinfo("localhost", 9, proto=socket.IPPROTO_TCP)  # a lookup with no connect
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # local IPC is not egress
try:
    s.connect("/nonexistent/socket")
except OSError:
    pass
ctypes.CDLL(None)
ctypes.CDLL("libm.so.6")
ctypes.CDLL("libm.so.6")
rec.flush()
print(json.dumps(events))
"""

SIGNALS = """
import json, os, signal, sys, time
from trainwarden.supervise._signals import SignalRecorder
reports = []
def report(data):
    reports.append(data)
    sys.stdout.write(json.dumps(data) + "\\n")
    sys.stdout.flush()
SignalRecorder(report).start()
mode = sys.argv[1]
if mode == "handler":
    def on_term(signo, frame):
        print(json.dumps({"handled": signo}), flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_term)
elif mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
if mode == "ignore":
    time.sleep(3)
    print(json.dumps({"survived": True}), flush=True)
    sys.exit(0)
time.sleep(120)  # a long blocking call: the handler must not wait for it to end
"""


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data"
    server.shutdown()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "NO_PROXY": "127.0.0.1,localhost",  # the local server, whatever proxy CI sets
        "no_proxy": "127.0.0.1,localhost",
    }


def test_egress_records_each_endpoint_once_with_name_and_address(http_server: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EGRESS, http_server],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=True,
    )
    events = json.loads(proc.stdout)
    endpoints = [d for e, d in events if e == "egress.endpoint"]
    port = int(http_server.rsplit(":", 1)[1].split("/")[0])
    assert {"host": "127.0.0.1", "port": port, "address": "127.0.0.1", "via": "http"} in endpoints
    assert sum(1 for d in endpoints if d["port"] == port) == 1
    assert {"host": "localhost", "port": 9, "address": None, "via": "getaddrinfo"} in endpoints
    assert not any(str(d["host"]).startswith("/") for d in endpoints)
    natives = [d["library"] for e, d in events if e == "egress.native-load"]
    assert natives.count("libm.so.6") == 1


def _start(mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNALS, mode], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_signal_with_the_default_action_is_recorded_then_kills() -> None:
    proc = _start("default")
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # died of it, as it would have
    report = json.loads(out.splitlines()[0])
    assert report["signal"] == "SIGTERM"
    assert report["sender"]["pid"] == os.getpid()
    assert report["sender"]["uid"] == os.getuid()
    # The sender's command line is this test run's (read from /proc before it could exit).
    assert any("pytest" in part for part in report["sender"]["cmdline"])
    assert (report["source"], report["action"]) == ("sigwaitinfo", "default")


def test_the_jobs_own_handler_still_runs_and_is_not_delayed() -> None:
    proc = _start("handler")
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)  # well before the 120 s sleep ends
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["action"] == "handler"
    assert lines[1] == {"handled": signal.SIGTERM}
    assert proc.returncode == 7


def test_an_ignored_signal_stays_ignored() -> None:
    proc = _start("ignore")
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["action"] == "ignored"
    assert lines[-1] == {"survived": True}
    assert proc.returncode == 0
