"""Ledger entries as frozen data, and the strict parser of one entry line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from trainwarden.ledger._format import (
    ACTOR_KEYS,
    ENTRY_KEYS,
    EVENT_RE,
    FORMAT_VERSION,
    MAX_RUN,
    TIME_RE,
    WRITER_ID_RE,
    b64decode,
    canonical_json,
    hash_body,
    is_hash,
)

__all__ = ["Actor", "Entry", "MalformedEntry", "parse_line"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who wrote an entry: OS account, machine, process and signing key.

    All of it is claimed by the writer and covered by its signature: it proves what the
    key holder said, and the key (``key``, a ``SHA256:`` fingerprint) is what is trusted.
    """

    uid: int
    user: str
    host: str
    pid: int
    key: str
    identity: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the ``actor`` object of an entry)."""
        return {
            "host": self.host,
            "identity": self.identity,
            "key": self.key,
            "pid": self.pid,
            "uid": self.uid,
            "user": self.user,
        }

    def describe(self) -> str:
        """Short human form: ``user(uid)@host pid N key identity``."""
        return f"{self.user}({self.uid})@{self.host} pid {self.pid} [{self.identity}]"


@dataclass(frozen=True, slots=True)
class Entry:
    """One signed, hash-chained ledger entry.

    Attributes:
        writer: Id of the writer file the entry belongs to.
        seq: Position in the writer's chain, from 0.
        time: Writer's UTC clock, RFC 3339 with microseconds (``2026-01-02T03:04:05.000006Z``).
        actor: Who wrote it.
        run: Training run the event is about, or ``None``.
        event: Event type (``checkpoint.signed``, ``guard.finding``...).
        data: Event payload (JSON object).
        prev: Hash of the previous entry of the same writer, ``None`` for ``seq`` 0.
        hash: This entry's hash (``sha256:`` over its canonical body).
        sig: Base64 Ed25519 signature by the writer's key.
        file: Path of the file it was read from (``""`` for entries just appended).
        line: 1-based line number in that file (0 when not read from a file).
    """

    writer: str
    seq: int
    time: str
    actor: Actor
    run: str | None
    event: str
    data: Mapping[str, Any]
    prev: str | None
    hash: str
    sig: str
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def timestamp(self) -> datetime:
        """``time`` as an aware UTC datetime."""
        return datetime.strptime(self.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)

    def body(self) -> dict[str, Any]:
        """The signed body: every field of the line except ``sig``."""
        return {
            "actor": self.actor.to_dict(),
            "data": dict(self.data),
            "event": self.event,
            "prev": self.prev,
            "run": self.run,
            "seq": self.seq,
            "time": self.time,
            "v": FORMAT_VERSION,
            "writer": self.writer,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON form for reports: the line's fields plus ``hash``, ``file`` and ``line``."""
        out = self.body()
        out.update(sig=self.sig, hash=self.hash, file=self.file, line=self.line)
        return out


class MalformedEntry(ValueError):
    """A line is not a well-formed, canonical entry (internal to the ledger reader)."""

    def __init__(self, message: str, *, noncanonical: bool = False) -> None:
        super().__init__(message)
        self.noncanonical = noncanonical


def parse_line(line: bytes, *, file: str = "", lineno: int = 0) -> Entry:
    """Parse one entry line (without its newline), strictly; see :func:`_parse_line`.

    Raises:
        MalformedEntry: The line is not a well-formed, canonical entry.
    """
    try:
        return _parse_line(line, file=file, lineno=lineno)
    except RecursionError:
        # Hostile nesting ("[[[[..." within the line limit) must not crash the verifier.
        raise MalformedEntry("JSON nested too deeply") from None


def _parse_line(line: bytes, *, file: str, lineno: int) -> Entry:
    """Parse one entry line (without its newline), strictly.

    The line must be exactly the canonical encoding of its own content, so any byte
    changed, added or re-encoded shows up even where it would not change the meaning.

    Raises:
        MalformedEntry: The line is not valid JSON, misses or adds fields, has a field of
            the wrong type, or is not in canonical form.
    """
    try:
        text = line.decode("utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedEntry(f"not a JSON entry ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != ENTRY_KEYS:
        raise MalformedEntry("not a ledger entry (wrong set of fields)")
    actor = obj["actor"]
    if not isinstance(actor, dict) or set(actor) != ACTOR_KEYS:
        raise MalformedEntry("actor has the wrong set of fields")
    if obj["v"] != FORMAT_VERSION or type(obj["v"]) is not int:
        raise MalformedEntry(f"unsupported entry format version {obj['v']!r}")
    _check(isinstance(obj["writer"], str) and WRITER_ID_RE.fullmatch(obj["writer"]), "writer")
    _check(type(obj["seq"]) is int and obj["seq"] >= 0, "seq")
    _check(isinstance(obj["time"], str) and TIME_RE.fullmatch(obj["time"]), "time")
    _check(isinstance(obj["event"], str) and EVENT_RE.fullmatch(obj["event"]), "event")
    run = obj["run"]
    _check(run is None or (isinstance(run, str) and 0 < len(run) <= MAX_RUN), "run")
    _check(isinstance(obj["data"], dict), "data")
    prev = obj["prev"]
    _check(prev is None or is_hash(prev), "prev")
    _check(isinstance(obj["sig"], str), "sig")
    try:
        if len(b64decode(obj["sig"])) != 64:
            raise ValueError("length")
    except ValueError:
        raise MalformedEntry("sig is not a base64 Ed25519 signature") from None
    for name in ("uid", "pid"):
        _check(type(actor[name]) is int, f"actor.{name}")
    for name in ("user", "host", "key", "identity"):
        _check(isinstance(actor[name], str), f"actor.{name}")
    # Canonical form check: the writer wrote canonical_json(entry); anything else was edited.
    if canonical_json(obj) != text:
        raise MalformedEntry("line is not in canonical form (bytes edited)", noncanonical=True)
    sig = obj.pop("sig")
    # The body is the canonical line without its "sig" member. Keys are sorted, and only
    # "time", "v" and "writer" (which cannot contain this text) follow "sig", so the last
    # occurrence is the top-level member.
    member = f',"sig":"{sig}"'
    cut = text.rfind(member)
    body = (text[:cut] + text[cut + len(member) :]).encode("utf-8")
    return Entry(
        writer=obj["writer"],
        seq=obj["seq"],
        time=obj["time"],
        actor=Actor(
            uid=actor["uid"],
            user=actor["user"],
            host=actor["host"],
            pid=actor["pid"],
            key=actor["key"],
            identity=actor["identity"],
        ),
        run=run,
        event=obj["event"],
        data=obj["data"],
        prev=prev,
        hash=hash_body(body),
        sig=sig,
        file=file,
        line=lineno,
    )


def _check(ok: object, name: str) -> None:
    if not ok:
        raise MalformedEntry(f"field {name} is missing or has the wrong type")
