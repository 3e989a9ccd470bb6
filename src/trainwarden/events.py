"""Where runtime components send what they observe: the :class:`EventSink` protocol.

The guard, the supervisor and the drill report events (findings, checkpoints, exits) to a sink.
:class:`trainwarden.ledger.Ledger` is the real one (signed, hash-chained, on shared storage);
:class:`MemorySink` keeps events in memory for tests and for callers that only want the list.
Event names and their fields are specified in ``docs/events.md``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

__all__ = ["CONTEXT_RULES", "EventSink", "MemorySink", "RecordedEvent"]

#: ``guard.finding`` rules that are context, never evidence of tampering: loss and gradient
#: anomalies, and updates the guard cannot verify (an optimizer without a reference). The
#: ledger and the timeline keep them; verdicts and finding counts leave them out (a report
#: lists unverified updates among what could not be verified).
CONTEXT_RULES: frozenset[str] = frozenset({"guard.anomaly", "guard.not-verified"})


@runtime_checkable
class EventSink(Protocol):
    """Anything that records events: ``append(event, /, run=None, **data)``.

    ``event`` is a dotted name (``guard.finding``); ``run`` the training run it belongs to;
    ``data`` JSON values only (str, int, float, bool, None, lists and str-keyed dicts;
    paths are written as strings).
    Implementations may raise :class:`trainwarden.errors.InputError` when the event cannot
    be recorded; callers on a training hot path catch it and carry on (a sink that fails
    must not kill a run, but the failure itself is logged).
    """

    def append(self, event: str, /, run: str | None = None, **data: Any) -> object:
        """Record one event; the return value is implementation-defined."""
        ...


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One event as :class:`MemorySink` kept it."""

    event: str
    run: str | None
    data: Mapping[str, Any]
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class MemorySink:
    """An :class:`EventSink` that keeps every event in a list (thread-safe).

    A fake of the real interface, not a mock: it checks what the ledger checks (a non-empty
    event name, a run of at most 256 characters, JSON-only data), so code tested against it
    does not fail later against a :class:`~trainwarden.ledger.Ledger`.
    """

    def __init__(self) -> None:
        self._events: list[RecordedEvent] = []
        self._lock = threading.Lock()

    def append(self, event: str, /, run: str | None = None, **data: Any) -> RecordedEvent:
        """Record one event and return it.

        Raises:
            InputError: The event name, run or data would be refused by a ledger.
        """
        from trainwarden.errors import InputError

        if not isinstance(event, str) or not event or event.startswith("ledger."):
            raise InputError(f"invalid event name {event!r}")
        if run is not None and (not isinstance(run, str) or not 0 < len(run) <= 256):
            raise InputError("run must be a non-empty string of at most 256 characters")
        _check_json(data)
        recorded = RecordedEvent(event, run, dict(data))
        with self._lock:
            self._events.append(recorded)
        return recorded

    @property
    def events(self) -> tuple[RecordedEvent, ...]:
        """Every event recorded so far, in order."""
        with self._lock:
            return tuple(self._events)

    def named(self, prefix: str) -> list[RecordedEvent]:
        """The events whose name is ``prefix`` or starts with ``prefix + "."``."""
        return [e for e in self.events if e.event == prefix or e.event.startswith(prefix + ".")]

    def clear(self) -> None:
        """Forget every event."""
        with self._lock:
            self._events.clear()

    def __iter__(self) -> Iterator[RecordedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


def _check_json(value: object, depth: int = 0) -> None:
    from trainwarden.errors import InputError

    if depth > 64:
        raise InputError("event data is nested more than 64 levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"event data keys must be strings, not {type(key).__name__}")
            _check_json(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError("event data holds NaN or an infinity, which JSON cannot carry")
    elif not isinstance(value, (str, int, type(None), os.PathLike)):
        raise InputError(f"event data is not JSON: {type(value).__name__}")
