"""The tar sniffer accepts exactly the header checksums tarfile accepts.

torch's legacy loader tries tarfile before anything else: a first block whose checksum
tarfile accepts and we do not would be "data" to the scanner and an archive to the loader.
The sniffer computes the checksums its own (faster) way, so it is checked against tarfile's
own functions on many blocks: random ones, and ones whose checksum field is spelled every way
tarfile reads it (octal of the unsigned or the signed sum, empty, base-256).
"""

from __future__ import annotations

import random
import tarfile

from trainwarden.scan._formats._sniff import is_tar_header


def _tarfile_accepts(block: bytes) -> bool:
    if block.count(0) == 512:
        return False  # tarfile: end-of-archive block, not a header
    try:
        stored = tarfile.nti(block[148:156])  # type: ignore[attr-defined]
    except tarfile.InvalidHeaderError:
        return False
    return stored in tarfile.calc_chksums(block)  # type: ignore[attr-defined]


def _with_checksum(rng: random.Random, block: bytearray) -> bytearray:
    unsigned, signed = tarfile.calc_chksums(bytes(block))  # type: ignore[attr-defined]
    spelling = rng.randrange(5)
    if spelling == 0:
        block[148:156] = b"%06o\0 " % (unsigned & 0o777777)
    elif spelling == 1 and signed >= 0:
        block[148:156] = b"%07o\0" % (signed & 0o7777777)
    elif spelling == 2:
        block[148:156] = b"\x80" + unsigned.to_bytes(7, "big")
    elif spelling == 3:
        block[148:156] = b"\xff" + (signed % (1 << 56)).to_bytes(7, "big")
    else:
        block[148:156] = b"\0" * 8  # empty: tarfile reads 0
    return block


def _blocks(rng: random.Random) -> list[bytes]:
    out = []
    for i in range(4000):
        if i % 4 == 0:  # high bytes only where they change the signed sum the most
            block = bytearray(rng.choice(b"\x00\x7f\x80\xff ") for _ in range(512))
        else:
            block = bytearray(rng.randbytes(512))
        if i % 2:
            block = _with_checksum(rng, block)
        out.append(bytes(block))
    return out


def test_tar_checksum_parity_with_tarfile() -> None:
    rng = random.Random(20261203)
    blocks = _blocks(rng)
    accepted = 0
    for block in blocks:
        expected = _tarfile_accepts(block)
        accepted += expected
        # What follows the first block never matters.
        assert is_tar_header(block + b"tail") is expected, block[140:160]
    # The generator really produced headers tarfile takes, not only rejects.
    assert accepted > len(blocks) // 5


def test_short_and_all_zero_blocks_are_not_tar_headers() -> None:
    assert not is_tar_header(b"\0" * 512)
    assert not is_tar_header(b"x" * 511)
