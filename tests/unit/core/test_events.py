"""The event sink protocol: the in-memory fake behaves like the ledger it stands in for."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.errors import InputError
from trainwarden.events import EventSink, MemorySink
from trainwarden.keys import PrivateKey
from trainwarden.ledger import Ledger, read_ledger


def test_memory_sink_records_in_order() -> None:
    sink = MemorySink()
    sink.append("guard.finding", run="r1", rule_id="guard.lr", step=3)
    sink.append("run.exit", status=0, path=Path("/x"))
    assert [e.event for e in sink] == ["guard.finding", "run.exit"]
    assert sink.events[0].data == {"rule_id": "guard.lr", "step": 3}
    assert sink.events[0].run == "r1"
    assert [e.event for e in sink.named("guard")] == ["guard.finding"]
    assert len(sink) == 2


@pytest.mark.parametrize(
    ("event", "run", "data"),
    [
        ("", None, {}),
        ("ledger.open", None, {}),
        ("x", "", {}),
        ("x", "r" * 257, {}),
        ("x", None, {"v": object()}),
        ("x", None, {"v": float("nan")}),
        ("x", None, {"v": {1: 2}}),
    ],
)
def test_memory_sink_refuses_what_a_ledger_refuses(
    event: str, run: str | None, data: dict[str, object], tmp_path: Path
) -> None:
    with pytest.raises(InputError):
        MemorySink().append(event, run=run, **data)
    key = PrivateKey.generate("t")
    with Ledger(tmp_path / "L", key=key) as ledger, pytest.raises(InputError):
        ledger.append(event, run=run, **data)


def test_ledger_and_memory_sink_are_event_sinks(tmp_path: Path) -> None:
    key = PrivateKey.generate("t")
    with Ledger(tmp_path / "L", key=key) as ledger:
        sinks: list[EventSink] = [ledger, MemorySink()]
        for sink in sinks:
            assert isinstance(sink, EventSink)
            sink.append("guard.finding", run="r", step=1)
    assert [e.event for e in read_ledger(tmp_path / "L") if e.event == "guard.finding"] == [
        "guard.finding"
    ]
