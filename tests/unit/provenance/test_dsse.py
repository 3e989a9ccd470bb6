"""DSSE envelopes: the spec's encoding, signatures over type and payload, strict parsing."""

from __future__ import annotations

import base64
import json

import pytest

from trainwarden.errors import InputError, VerificationError
from trainwarden.keys import PrivateKey
from trainwarden.provenance import pae, parse_envelope
from trainwarden.provenance._dsse import envelope_json, sign_envelope


def test_pae_matches_the_specification_vector() -> None:
    # DSSE protocol.md, "Test Vectors".
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t/é", "ü".encode()) == b"DSSEv1 4 t/\xc3\xa9 2 \xc3\xbc"


def test_signed_envelope_round_trips_and_verifies() -> None:
    key = PrivateKey.generate("supervisor@test")
    envelope = sign_envelope("application/vnd.in-toto+json", b'{"a":1}', [key])
    parsed = parse_envelope(envelope_json(envelope))
    assert parsed == envelope
    assert parsed.verify([key.public]) == key.public
    assert parsed.signatures[0].keyid == key.public.fingerprint


def test_another_key_does_not_verify() -> None:
    key, other = PrivateKey.generate("a"), PrivateKey.generate("b")
    envelope = sign_envelope("application/vnd.in-toto+json", b"{}", [key])
    with pytest.raises(VerificationError, match="no signature"):
        envelope.verify([other.public])


@pytest.mark.parametrize("field", ["payload", "payloadType"])
def test_changing_payload_or_its_type_breaks_the_signature(field: str) -> None:
    key = PrivateKey.generate("a")
    doc = sign_envelope("application/vnd.in-toto+json", b'{"step":1}', [key]).to_dict()
    if field == "payload":
        doc["payload"] = base64.b64encode(b'{"step":2}').decode()
    else:
        doc["payloadType"] = "application/vnd.other+json"
    with pytest.raises(VerificationError):
        parse_envelope(json.dumps(doc).encode()).verify([key.public])


def test_a_forged_keyid_neither_helps_nor_hurts() -> None:
    key = PrivateKey.generate("a")
    doc = sign_envelope("t", b"x", [key]).to_dict()
    doc["signatures"][0]["keyid"] = "SHA256:somebody-else"
    assert parse_envelope(json.dumps(doc).encode()).verify([key.public]) == key.public


def test_url_safe_base64_is_accepted() -> None:
    key = PrivateKey.generate("a")
    envelope = sign_envelope("t", b"\xfb\xff" * 10, [key])
    doc = envelope.to_dict()
    doc["payload"] = base64.urlsafe_b64encode(envelope.payload).decode().rstrip("=")
    assert parse_envelope(json.dumps(doc).encode()).payload == envelope.payload


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"payloadType": "t", "payload": "eA==", "signatures": []}', "no signatures"),
        (b'{"payload": "eA==", "signatures": [{"sig": "eA=="}]}', "no payloadType"),
        (b'{"payloadType": "t", "payload": "!!", "signatures": [{"sig": "eA=="}]}', "base64"),
        (
            b'{"payloadType": "t", "payloadType": "u", "payload": "eA==", '
            b'"signatures": [{"sig": "eA=="}]}',
            "duplicate key",
        ),
        (b'{"payloadType": "t", "payload": "eA==", "signatures": [{"sig": 1}]}', "malformed"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"a": NaN}', "not valid JSON"),
    ],
)
def test_malformed_envelopes_are_input_errors(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_envelope(data)
