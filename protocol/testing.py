"""Encoders of the wire format, for the relay simulator and the tests (production code only reads)."""

from collections.abc import Iterable
from typing import Any

import libipld

from protocol.cid import cid_for_block


def encode_frame(header: dict[str, Any], body: dict[str, Any]) -> bytes:
    return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)


def varint(value: int) -> bytes:
    """An unsigned LEB128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def car_of_cids(roots: list[bytes], blocks: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A CAR v1 file of (binary CID, encoded block) pairs whose CIDs are already known."""
    header = libipld.encode_dag_cbor({"version": 1, "roots": roots})
    parts = [varint(len(header)), header]
    for cid, block in blocks:
        parts += (varint(len(cid) + len(block)), cid, block)
    return b"".join(parts)


def encode_car(roots: list[bytes], blocks: list[bytes]) -> bytes:
    """A CAR v1 file holding the given encoded blocks, each under the CID of its bytes."""
    return car_of_cids(roots, ((cid_for_block(block), block) for block in blocks))
