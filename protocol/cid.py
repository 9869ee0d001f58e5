"""Content identifiers (CIDs) of DAG-CBOR blocks, in their binary form as CAR files and links carry them."""

import hashlib

import libipld

DAG_CBOR_CODEC = 0x71
SHA2_256 = 0x12
SHA2_256_PREFIX = bytes((SHA2_256, 32))  # a sha2-256 multihash's head; alone, a CIDv0's
DAG_CBOR_CID_PREFIX = bytes((1, DAG_CBOR_CODEC)) + SHA2_256_PREFIX


def cid_for_block(block: bytes) -> bytes:
    """The binary CIDv1 (dag-cbor, sha2-256) of an encoded block."""
    return DAG_CBOR_CID_PREFIX + hashlib.sha256(block).digest()


def cid_from_text(cid: str) -> bytes:
    """The binary form of a CID given as text (multibase); raises ValueError when it is not a CID."""
    parsed = libipld.decode_cid(cid)
    digest = parsed["hash"]["digest"]
    return bytes((parsed["version"], parsed["codec"], parsed["hash"]["code"], len(digest))) + digest
