"""DAG-CBOR encoding of the protocol's fixed-shape objects (MST nodes, commits), written out by hand.

libipld's encoder writes any byte string that happens to parse as a CID as a link, so a signature or a key
suffix could silently change type; these objects know which of their fields are links, and writing them
directly is also faster than building dicts for a generic encoder. Callers list map keys in DAG-CBOR order
(shorter first, then bytewise).
"""

NULL = b"\xf6"
# Tag 42 (a CID link) wrapping a byte string of a 36-byte CIDv1 with its 0x00 multibase prefix: every link
# the network writes; other lengths get their head computed.
_LINK_36_HEAD = b"\xd8\x2a\x58\x25\x00"
_LINK_TAG = b"\xd8\x2a"


def head(major: int, length: int) -> bytes:
    """The initial byte(s) of a CBOR item: major type and its argument, shortest form."""
    if length < 24:
        return bytes((major << 5 | length,))
    if length < 0x100:
        return bytes((major << 5 | 24, length))
    if length < 0x10000:
        return bytes((major << 5 | 25,)) + length.to_bytes(2, "big")
    if length < 0x100000000:
        return bytes((major << 5 | 26,)) + length.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + length.to_bytes(8, "big")


def unsigned(value: int) -> bytes:
    return head(0, value)


def byte_string(value: bytes) -> bytes:
    return head(2, len(value)) + value


def text(value: str) -> bytes:
    encoded = value.encode()
    return head(3, len(encoded)) + encoded


def link(cid: bytes | None) -> bytes:
    """A CID link (binary CID), or null."""
    if cid is None:
        return NULL
    if len(cid) == 36:
        return _LINK_36_HEAD + cid
    return _LINK_TAG + head(2, len(cid) + 1) + b"\x00" + cid
