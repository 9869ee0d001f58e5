"""Records as DAG-CBOR holds them, with CID links told apart from byte strings.

libipld decodes both a link (tag 42) and a byte string to ``bytes``, so the data model's JSON could not say
which is which (``{"$link"}`` or ``{"$bytes"}``). A block with no tag 42 in it holds no link: libipld's
result is exact. A block that may hold one (a few in a hundred: blob refs) is decoded a second time, with
cbor2, which reports tags; its links become ``Link`` values. libipld always decodes first: it is the
strict check that the block is valid DAG-CBOR.
"""

from typing import Any

import cbor2
import libipld

# The head of tag 42 (a CID link): major type 6 with a one-byte argument.
LINK_TAG_HEAD = b"\xd8\x2a"
LINK_TAG = 42


class Link(bytes):
    """A CID link, as its binary CID (without the multibase 0x00 prefix DAG-CBOR stores in front)."""


def _tag(tag: cbor2.CBORTag, immutable: bool) -> Link:
    value = tag.value
    if tag.tag != LINK_TAG or not isinstance(value, bytes) or value[:1] != b"\x00":
        raise ValueError(f"tag {tag.tag} is not a CID link")
    return Link(value[1:])


def decode_record(block: bytes) -> Any:
    """The value of a DAG-CBOR block, links as ``Link``; raises ValueError when the block is not DAG-CBOR."""
    value = libipld.decode_dag_cbor(block)
    if LINK_TAG_HEAD not in block:
        return value
    return cbor2.loads(block, tag_hook=_tag)
