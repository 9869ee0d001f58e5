"""CAR v1 files (content-addressed archives): a DAG-CBOR header, then blocks each prefixed by a varint
length and its binary CID. Blocks are located, not decoded: callers decode the few they need."""

import mmap
from typing import Any

import libipld

from protocol.cid import SHA2_256_PREFIX

# A whole CAR in memory, or a view of a mapped file (a repository export can be large).
Buffer = bytes | memoryview | mmap.mmap


class CarError(ValueError):
    """A CAR file that cannot be read; the message says why."""


class ConflictingBlockError(CarError):
    """A CID that names two blocks of different bytes: one of them does not hash to it."""


def block_spans(car: Buffer) -> dict[bytes, tuple[int, int]]:
    """Where each block of a CAR v1 file lies: binary CID -> (start, end) of the block's bytes.

    Only the blocks that ops point to are decoded afterwards: a commit's CAR also carries the commit
    object and the MST nodes on the path to each record, which the indexer does not read, and decoding
    them all was the largest single cost of a worker's parsing. ``car`` may be a memoryview or an mmap of
    a large file: nothing is copied but the CIDs."""
    try:
        _, position = _read_header(car)
        spans: dict[bytes, tuple[int, int]] = {}
        size = len(car)
        while position < size:
            length = car[position]
            if length < 0x80:  # most blocks are under 128 bytes
                start = position + 1
            else:
                length, start = read_varint(car, position)
            end = start + length
            if end > size or length < 4:
                raise CarError("a block is too short or runs past the end of the file")
            data_start = _cid_end(car, start, end)
            span = spans.setdefault(bytes(car[start:data_start]), (data_start, end))
            # A second copy of a block is only checked against its CID if it is the same bytes as the first.
            if span[0] != data_start and car[span[0]:span[1]] != car[data_start:end]:
                raise ConflictingBlockError("a block appears twice, with different bytes")
            position = end
        return spans
    except CarError:
        raise
    except ValueError as exc:  # libipld's own
        raise CarError(str(exc)) from None


def car_roots(car: Buffer) -> list[bytes]:
    """The root CIDs the CAR's header names (a repository export's is its commit)."""
    header, _ = _read_header(car)
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(root, bytes) for root in roots):
        raise CarError("its header's roots are not a list of CIDs")
    return roots


def _read_header(car: Buffer) -> tuple[dict[str, Any], int]:
    """The decoded CAR v1 header and the position of the first block."""
    header_length, position = read_varint(car, 0)
    header_end = position + header_length
    if header_length == 0 or header_end > len(car):
        raise CarError("its header length is out of bounds")
    try:
        header = libipld.decode_dag_cbor(bytes(car[position:header_end]))
    except ValueError as exc:
        raise CarError(f"its header is not DAG-CBOR: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError("its header is not a CAR v1 header")
    return header, header_end


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at ``position``: its value and the position after it."""
    value = shift = 0
    while shift < 63:
        if position >= len(data):
            raise CarError("a varint is cut off")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise CarError("a varint is longer than 9 bytes")


def _cid_end(data: bytes, start: int, end: int) -> int:
    """The position after the binary CID that opens the block ``data[start:end]``."""
    if data[start] == 1 and data[start + 1] < 0x80 and data[start + 2:start + 4] == SHA2_256_PREFIX:
        cid_end = start + 36  # CIDv1 with a one-byte codec and a sha2-256 digest: every block of the network
    elif data[start:start + 2] == SHA2_256_PREFIX:
        cid_end = start + 34
    else:
        version, position = read_varint(data, start)
        if version != 1:
            raise CarError(f"a block's CID has version {version}")
        _, position = read_varint(data, position)  # codec
        _, position = read_varint(data, position)  # multihash function
        digest_length, position = read_varint(data, position)
        cid_end = position + digest_length
    if cid_end > end:
        raise CarError("a block's CID runs past the block")
    return cid_end
