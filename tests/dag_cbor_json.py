"""A minimal DAG-CBOR decoder of its own, written for the tests, that returns the AT Protocol data model's JSON
form directly: a CID link (tag 42) as ``{"$link": "b..."}``, a byte string as ``{"$bytes": base64}``.

libipld decodes links and byte strings both as Python ``bytes``, so the indexer has to tell them apart
afterwards; this decoder sees the tag and so is a reference for what the read API must answer. It reads
every CBOR major type (strict enough for tests: definite lengths only, string map keys).
"""

import base64
import math
import struct
from typing import Any


class DagCborError(ValueError):
    """Bytes that are not DAG-CBOR this decoder accepts; the message says why."""


def cid_text(binary: bytes) -> str:
    """A binary CID as text: CIDv1 as multibase base32 (``b`` + lowercase, no padding); CIDv0 (a bare
    sha2-256 multihash) as base58btc, its only text form."""
    if len(binary) == 34 and binary[:2] == b"\x12\x20":
        return _base58btc(binary)
    return "b" + base64.b32encode(binary).decode("ascii").lower().rstrip("=")


def _base58btc(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = alphabet[rest] + digits
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + digits


def bytes_json(value: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}


class _Reader:
    __slots__ = ("data", "position")

    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data = data
        self.position = position

    def take(self, count: int) -> bytes:
        end = self.position + count
        if end > len(self.data):
            raise DagCborError(f"{count} bytes wanted at {self.position}, past the end ({len(self.data)})")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info in (24, 25, 26, 27):
            return int.from_bytes(self.take(1 << (info - 24)), "big")
        raise DagCborError(f"additional information {info} is not allowed (indefinite length or reserved)")

    def item(self, depth: int = 0) -> Any:
        if depth > 256:
            raise DagCborError("nested too deeply")
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self.simple(info)
        argument = self.argument(info)
        if major == 0:
            return argument
        if major == 1:
            return -1 - argument
        if major == 2:
            return bytes_json(self.take(argument))
        if major == 3:
            try:
                return self.take(argument).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DagCborError(f"a text string is not UTF-8: {exc}") from None
        if major == 4:
            return [self.item(depth + 1) for _ in range(argument)]
        if major == 5:
            result: dict[str, Any] = {}
            for _ in range(argument):
                key = self.item(depth + 1)
                if not isinstance(key, str):
                    raise DagCborError(f"a map key is not a string: {key!r}")
                if key in result:
                    raise DagCborError(f"a map has the key {key!r} twice")
                result[key] = self.item(depth + 1)
            return result
        # major == 6: a tag; DAG-CBOR has only tag 42, a CID link.
        if argument != 42:
            raise DagCborError(f"tag {argument} is not allowed in DAG-CBOR")
        start = self.position
        initial = self.take(1)[0]
        if initial >> 5 != 2:
            raise DagCborError(f"tag 42 at {start} does not wrap a byte string")
        binary = self.take(self.argument(initial & 0x1F))
        if not binary or binary[0] != 0:
            raise DagCborError(f"the CID link at {start} lacks its leading 0x00 (multibase identity) byte")
        return {"$link": cid_text(binary[1:])}

    def simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info in (22, 23):  # null, undefined
            return None
        if info == 25:
            value = struct.unpack(">e", self.take(2))[0]
        elif info == 26:
            value = struct.unpack(">f", self.take(4))[0]
        elif info == 27:
            value = struct.unpack(">d", self.take(8))[0]
        else:
            raise DagCborError(f"simple value {info} is not part of the data model")
        if not math.isfinite(value):
            raise DagCborError("NaN and infinities are not part of the data model")
        return value


def decode(data: bytes) -> Any:
    """The one DAG-CBOR object of ``data``, in the data model's JSON form."""
    value, end = decode_prefix(data)
    if end != len(data):
        raise DagCborError(f"{len(data) - end} bytes after the object")
    return value


def decode_prefix(data: bytes, position: int = 0) -> tuple[Any, int]:
    """The DAG-CBOR object that starts at ``position``, and the position after it (frames are two objects
    one after the other)."""
    reader = _Reader(data, position)
    return reader.item(), reader.position


def decode_frame(frame: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """A subscribeRepos frame's header and body."""
    header, end = decode_prefix(frame)
    body, end = decode_prefix(frame, end)
    if end != len(frame):
        raise DagCborError(f"{len(frame) - end} bytes after the frame's body")
    return header, body


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise DagCborError("a varint is cut off or too long")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def car_blocks(car: bytes) -> dict[str, bytes]:
    """The blocks of a CAR v1 file by CID text (the header is a varint length and a DAG-CBOR map; each block is
    a varint length, then its binary CID, then its bytes)."""
    length, position = _varint(car, 0)
    header = decode(car[position:position + length])
    if not isinstance(header, dict) or header.get("version") != 1:
        raise DagCborError(f"not a CAR v1 header: {header!r}")
    position += length
    blocks: dict[str, bytes] = {}
    while position < len(car):
        length, start = _varint(car, position)
        end = start + length
        if end > len(car):
            raise DagCborError("a block runs past the end of the CAR")
        if car[start:start + 2] == b"\x12\x20":  # CIDv0
            cid_end = start + 34
        else:
            cid_end = start
            for _ in range(3):  # version, codec, multihash function
                _, cid_end = _varint(car, cid_end)
            digest_length, cid_end = _varint(car, cid_end)
            cid_end += digest_length
        if cid_end > end:
            raise DagCborError("a block's CID runs past the block")
        blocks[cid_text(car[start:cid_end])] = car[cid_end:end]
        position = end
    return blocks
