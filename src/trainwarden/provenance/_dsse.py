"""DSSE envelopes (Dead Simple Signing Envelope, v1.0) signed and checked with Ed25519.

The signature covers the pre-authentication encoding of the payload type *and* the payload,
so a signature made for one kind of document can never be replayed as another (the type is
inside the signed bytes, not beside them).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trainwarden.errors import InputError, VerificationError
from trainwarden.keys import PrivateKey, PublicKey

__all__ = [
    "Envelope",
    "EnvelopeSignature",
    "envelope_json",
    "load_json_strict",
    "pae",
    "parse_envelope",
    "sign_envelope",
]

# An envelope is small (a statement of a few hundred subjects); refuse absurd input early.
MAX_ENVELOPE_BYTES = 32 << 20


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``.

    ``LEN`` is the ASCII decimal byte length without leading zeros; the type is UTF-8.
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True, slots=True)
class EnvelopeSignature:
    """One signature of an envelope: ``sig`` bytes and the unauthenticated ``keyid`` hint."""

    sig: bytes
    keyid: str | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed DSSE envelope; nothing in it is trusted until :meth:`verify` succeeds."""

    payload_type: str
    payload: bytes
    signatures: tuple[EnvelopeSignature, ...]

    def verify(self, keys: Iterable[PublicKey]) -> PublicKey:
        """Return the first trusted key that signed this envelope.

        The ``keyid`` of each signature is a hint only: every signature is tried against
        every trusted key, so a wrong or forged hint can neither help nor hurt.

        Raises:
            VerificationError: No signature verifies under any of ``keys``.
        """
        trusted = list(keys)
        message = pae(self.payload_type, self.payload)
        for signature in self.signatures:
            for key in trusted:
                try:
                    key.verify(signature.sig, message)
                except VerificationError:
                    continue
                return key
        names = ", ".join(f"{k.fingerprint} ({k.identity})" for k in trusted) or "none"
        raise VerificationError(
            f"no signature of the envelope verifies under a trusted key (trusted: {names}); "
            "the statement was altered or signed by another key"
        )

    def to_dict(self) -> dict[str, Any]:
        """The envelope's JSON form (standard base64 for payload and signatures)."""
        sigs: list[dict[str, str]] = []
        for s in self.signatures:
            entry = {"sig": base64.b64encode(s.sig).decode("ascii")}
            if s.keyid is not None:
                entry["keyid"] = s.keyid
            sigs.append(entry)
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": sigs,
        }


def sign_envelope(payload_type: str, payload: bytes, keys: Sequence[PrivateKey]) -> Envelope:
    """Sign ``payload`` with each of ``keys``; the key id is the key's ``SHA256:`` fingerprint."""
    message = pae(payload_type, payload)
    signatures = tuple(EnvelopeSignature(k.sign(message), k.public.fingerprint) for k in keys)
    return Envelope(payload_type, payload, signatures)


def parse_envelope(data: bytes, *, what: str = "envelope") -> Envelope:
    """Parse the JSON form of a DSSE envelope (unverified).

    Raises:
        InputError: Not JSON, duplicate keys, missing or mistyped fields, bad base64, or no
            signature.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InputError(f"{what} is larger than {MAX_ENVELOPE_BYTES} bytes")
    doc = load_json_strict(data, what=what)
    if not isinstance(doc, dict):
        raise InputError(f"{what} is not a DSSE envelope (not a JSON object)")
    payload_type = doc.get("payloadType")
    payload = doc.get("payload")
    signatures = doc.get("signatures")
    if not isinstance(payload_type, str) or not payload_type:
        raise InputError(f"{what} is not a DSSE envelope: no payloadType")
    if not isinstance(payload, str):
        raise InputError(f"{what} is not a DSSE envelope: no payload")
    if not isinstance(signatures, list) or not signatures:
        raise InputError(f"{what} has no signatures")
    parsed = []
    for item in signatures:
        if not isinstance(item, dict) or not isinstance(item.get("sig"), str):
            raise InputError(f"{what} has a malformed signature entry")
        keyid = item.get("keyid")
        if keyid is not None and not isinstance(keyid, str):
            raise InputError(f"{what} has a malformed keyid")
        parsed.append(EnvelopeSignature(_b64decode(item["sig"], what), keyid or None))
    return Envelope(payload_type, _b64decode(payload, what), tuple(parsed))


def load_json_strict(data: bytes, *, what: str) -> Any:
    """Parse UTF-8 JSON, refusing duplicate object keys, NaN and infinities.

    Two parsers that disagree on ``{"a": 1, "a": 2}`` are a classic way to show a verifier
    one document and a consumer another; we refuse such input outright.

    Raises:
        InputError: The bytes are not strict JSON.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ValueError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"{what} is nested too deeply") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _b64decode(text: str, what: str) -> bytes:
    # DSSE allows standard or URL-safe base64; padding is required by neither alphabet's
    # decoder here, so normalise it.
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(padded.encode("ascii"))
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InputError(f"{what} holds invalid base64") from exc


def envelope_json(envelope: Envelope) -> bytes:
    """The envelope as pretty, sorted JSON text (what is written to disk)."""
    return (json.dumps(envelope.to_dict(), indent=2, sort_keys=True) + "\n").encode("ascii")
