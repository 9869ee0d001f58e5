"""protocol.crypto against the interop fixtures (signatures, did:key vectors) and real DID documents."""

import base64
import json
from typing import Any

import pytest

from protocol.crypto import (
    CURVE_ORDER,
    P256,
    SECP256K1,
    CryptoError,
    PrivateKey,
    PublicKey,
    atproto_signing_key,
    base58_decode,
    handle_of,
    parse_did_key,
    parse_multikey,
    pds_endpoint,
)
from tests.conftest import FIXTURES, fixture_files

CRYPTO = FIXTURES / "interop" / "crypto"
SIGNATURE_CASES = json.loads((CRYPTO / "signature-fixtures.json").read_text())
DID_DOCUMENTS = {path.name.removesuffix(".didDoc.json"): json.loads(path.read_text())
                 for path in fixture_files(FIXTURES / "repos", "*.didDoc.json")}

A_MULTIKEY = PrivateKey.generate(seed=b"a").public_key.multikey()


def unpadded_base64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def high_s_twin(signature: bytes, curve: str) -> bytes:
    """The other valid signature of the same (r, s): (r, n - s)."""
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (CURVE_ORDER[curve] - s).to_bytes(32, "big")


@pytest.mark.parametrize("case", SIGNATURE_CASES, ids=[case["comment"] for case in SIGNATURE_CASES])
def test_it_verifies_each_signature_fixture_as_the_fixture_expects(case: dict[str, Any]) -> None:
    key = parse_did_key(case["publicKeyDid"])
    assert key.curve == (SECP256K1 if case["algorithm"] == "ES256K" else P256)
    message = unpadded_base64(case["messageBase64"])
    signature = unpadded_base64(case["signatureBase64"])
    assert key.verify(message, signature) is case["validSignature"]
    if "high-s" in case["tags"]:
        # Refused for being high-S only: the low-S twin of the same signature verifies.
        assert key.verify(message, high_s_twin(signature, key.curve))
    if case["validSignature"]:
        assert not key.verify(message + b"!", signature)
        assert not key.verify(message, high_s_twin(signature, key.curve))


def test_it_refuses_der_encoded_signatures_the_fixtures_hold() -> None:
    der_cases = [case for case in SIGNATURE_CASES if "der-encoded" in case["tags"]]
    assert {parse_did_key(case["publicKeyDid"]).curve for case in der_cases} == {SECP256K1, P256}
    for case in der_cases:
        signature = unpadded_base64(case["signatureBase64"])
        assert signature[0] == 0x30 and len(signature) != 64  # a DER SEQUENCE
        assert not parse_did_key(case["publicKeyDid"]).verify(unpadded_base64(case["messageBase64"]), signature)


@pytest.mark.parametrize("curve, file, encoding", [
    (SECP256K1, "w3c_didkey_K256.json", "privateKeyBytesHex"),
    (P256, "w3c_didkey_P256.json", "privateKeyBytesBase58"),
])
def test_it_derives_the_did_key_vectors_from_their_private_keys(curve: str, file: str, encoding: str) -> None:
    vectors = json.loads((CRYPTO / file).read_text())
    assert vectors
    for vector in vectors:
        text = vector[encoding]
        secret = bytes.fromhex(text) if encoding.endswith("Hex") else base58_decode(text)
        public_key = PrivateKey(curve, secret).public_key
        assert public_key.did_key() == vector["publicDidKey"]
        parsed = parse_did_key(vector["publicDidKey"])
        assert parsed == public_key
        assert parsed.curve == curve and len(parsed.compressed) == 33
        assert parse_multikey(parsed.multikey()) == parsed


def test_it_reads_legacy_verification_methods_with_bare_compressed_keys() -> None:
    for case in SIGNATURE_CASES:
        document = {"id": "did:plc:legacy", "verificationMethod": [
            {"id": "#atproto", "type": case["didDocSuite"], "publicKeyMultibase": case["publicKeyMultibase"]}]}
        assert atproto_signing_key(document, "did:plc:legacy") == parse_did_key(case["publicKeyDid"])


@pytest.mark.parametrize("name, curve, endpoint, handle", [
    ("fakermaker", P256, "http://localhost:2583", "ebert9014-89.test"),
    ("greenground", SECP256K1, "https://bsky.social", "greenground.bsky.social"),
    ("paul_staging", SECP256K1, "https://pds.staging.bsky.dev", "paul.staging.bsky.dev"),
])
def test_it_reads_the_key_pds_and_handle_of_real_did_documents(name: str, curve: str, endpoint: str,
                                                             handle: str) -> None:
    document = DID_DOCUMENTS[name]
    key = atproto_signing_key(document, document["id"])
    assert key is not None and key.curve == curve
    # The documents publish uncompressed points (65 bytes); keys are kept compressed.
    published = base58_decode(document["verificationMethod"][0]["publicKeyMultibase"][1:])
    assert len(published) == 65 and published[0] == 4
    assert key.compressed == bytes((2 + (published[-1] & 1),)) + published[1:33]
    assert parse_did_key(key.did_key()) == key
    assert pds_endpoint(document) == endpoint
    assert handle_of(document) == handle


def test_it_finds_the_atproto_key_under_a_full_id_and_ignores_other_methods() -> None:
    key = PrivateKey.generate(seed=b"document").public_key
    other = PrivateKey.generate(seed=b"other").public_key
    document = {"id": "did:plc:abc", "verificationMethod": [
        {"id": "did:plc:abc#other", "type": "Multikey", "publicKeyMultibase": other.multikey()},
        {"id": "did:plc:abc#atproto", "type": "Multikey", "publicKeyMultibase": key.multikey()},
    ]}
    assert atproto_signing_key(document, "did:plc:abc") == key
    assert atproto_signing_key(document, "did:plc:xyz") is None  # the method names another DID


@pytest.mark.parametrize("method", [
    {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "not-multibase"},
    {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "z" + "1" * 40},
    {"id": "#atproto", "type": "Multikey"},
    {"id": "#atproto", "type": "JsonWebKey2020", "publicKeyMultibase": A_MULTIKEY},
    {"id": "#atproto", "type": "EcdsaSecp256k1VerificationKey2019", "publicKeyMultibase": "z0OIl"},
    "not a map",
])
def test_it_gives_no_key_for_a_malformed_verification_method(method: Any) -> None:
    assert atproto_signing_key({"id": "did:plc:abc", "verificationMethod": [method]}, "did:plc:abc") is None


@pytest.mark.parametrize("value", [
    "did:web:example.com",
    "did:key:zQ3sh",  # too short
    "did:key:" + "z" + "2" * 48,  # no known multicodec
    # secp256k1 multicodec on 33 bytes that are not a point of the curve
    "did:key:" + PublicKey(SECP256K1, b"\x02" + b"\xff" * 32).multikey(),
    "did:key:" + PublicKey(P256, b"\x05" + b"\x01" * 32).multikey(),
])
def test_it_refuses_did_keys_that_are_not_keys(value: str) -> None:
    with pytest.raises(CryptoError):
        parse_did_key(value)


def test_it_takes_only_http_pds_endpoints_and_valid_handles() -> None:
    def document(endpoint: Any, alias: Any) -> dict[str, Any]:
        return {"id": "did:plc:abc", "alsoKnownAs": [alias],
                "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}]}

    assert pds_endpoint(document("https://pds.example.com", "at://Alice.Example.com")) == "https://pds.example.com"
    assert handle_of(document("https://pds.example.com", "at://Alice.Example.com")) == "alice.example.com"
    for endpoint in ("ftp://pds.example.com", "https://", "pds.example.com", 42):
        assert pds_endpoint(document(endpoint, "at://a.example")) is None
    for alias in ("at://not_a_handle", "https://alice.example.com", None):
        assert handle_of(document("https://pds.example.com", alias)) is None
    assert pds_endpoint({"id": "did:plc:abc", "service": [{"id": "did:plc:other#atproto_pds",
                                                           "type": "AtprotoPersonalDataServer",
                                                           "serviceEndpoint": "https://pds.example.com"}]}) is None


@pytest.mark.parametrize("curve", [SECP256K1, P256])
def test_it_signs_low_s_and_derives_the_same_key_from_the_same_seed(curve: str) -> None:
    key = PrivateKey.generate(curve, seed=b"alice")
    assert PrivateKey.generate(curve, seed=b"alice").public_key == key.public_key
    assert PrivateKey.generate(curve, seed=b"bob").public_key != key.public_key
    assert PrivateKey.generate(curve).public_key != PrivateKey.generate(curve).public_key
    for index in range(40):  # raw P-256 ECDSA gives a high S half the time: each must have been lowered
        data = f"message {index}".encode()
        signature = key.sign(data)
        assert len(signature) == 64
        assert int.from_bytes(signature[32:], "big") <= CURVE_ORDER[curve] // 2
        assert key.public_key.verify(data, signature)
        assert not key.public_key.verify(data + b".", signature)


@pytest.mark.parametrize("signature", [b"", b"\x01" * 63, b"\x01" * 65, bytes(64), b"\xff" * 64,
                                       b"\x01" * 32 + bytes(32)])
def test_it_answers_false_for_malformed_signatures(signature: bytes) -> None:
    assert PrivateKey.generate(seed=b"k").public_key.verify(b"data", signature) is False
    assert PrivateKey.generate(P256, seed=b"k").public_key.verify(b"data", signature) is False


def test_it_answers_false_for_a_key_that_is_not_a_point() -> None:
    signer = PrivateKey.generate(seed=b"k")
    signature = signer.sign(b"data")
    assert PublicKey(SECP256K1, b"\x02" + b"\xff" * 32).verify(b"data", signature) is False
    assert PublicKey("ed25519", signer.public_key.compressed).verify(b"data", signature) is False


def test_it_parses_a_key_once_and_keeps_the_parse_out_of_equality() -> None:
    signer = PrivateKey.generate(seed=b"cache")
    fresh = PublicKey(SECP256K1, signer.public_key.compressed)
    assert fresh._parsed is None
    signature = signer.sign(b"data")
    assert fresh.verify(b"data", signature)
    parsed = fresh._parsed
    assert parsed is not None
    assert fresh.verify(b"data", signature) and fresh._parsed is parsed
    assert fresh == PublicKey(SECP256K1, signer.public_key.compressed)
    assert hash(fresh) == hash(PublicKey(SECP256K1, signer.public_key.compressed))
