"""Protobuf wire encoding for hand-built ONNX and TensorFlow messages in the scan tests."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """``n`` as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def v(num: int, value: int) -> bytes:
    """Field ``num`` as a varint."""
    return varint(num << 3) + varint(value)


def s(num: int, text: str | bytes) -> bytes:
    """Field ``num`` as length-delimited bytes (text encoded as UTF-8)."""
    raw = text.encode() if isinstance(text, str) else text
    return varint(num << 3 | 2) + varint(len(raw)) + raw


def m(num: int, *parts: bytes) -> bytes:
    """Field ``num`` as an embedded message made of ``parts``."""
    return s(num, b"".join(parts))
