"""The AT Protocol's two signature curves (https://atproto.com/specs/cryptography): secp256k1 ("k256") and
NIST P-256, keys as multikey / did:key strings, and the parts of a DID document that hold keys and services.

Signatures are ECDSA over the SHA-256 of the data, in the 64-byte compact form r || s, and must be low-S:
the spec refuses the malleable high-S twin of a valid signature, and so do we. secp256k1 goes through
libsecp256k1 (coincurve), which itself refuses high-S; P-256 through ``cryptography``, which does not, so the
S bound is checked here for both curves.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import coincurve
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from protocol import syntax

SECP256K1 = "secp256k1"
P256 = "p256"
CURVES = (SECP256K1, P256)

# The multicodec varints that open a multikey: secp256k1-pub (0xe7) and p256-pub (0x1200).
MULTICODEC_PREFIX = {SECP256K1: b"\xe7\x01", P256: b"\x80\x24"}
CURVE_ORDER = {
    SECP256K1: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
# DID document verification method types of keys published before the Multikey type; their
# publicKeyMultibase is the bare key (compressed or uncompressed), with no multicodec in front.
LEGACY_KEY_TYPES = {"EcdsaSecp256k1VerificationKey2019": SECP256K1, "EcdsaSecp256r1VerificationKey2019": P256}
MULTIKEY_TYPE = "Multikey"
PDS_SERVICE_TYPE = "AtprotoPersonalDataServer"
COMPRESSED_KEY_LENGTH = 33
UNCOMPRESSED_KEY_LENGTH = 65
SIGNATURE_LENGTH = 64
SCALAR_LENGTH = 32

_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_VALUES = {character: value for value, character in enumerate(_BASE58_ALPHABET)}
_P256_SIGNATURE = ec.ECDSA(hashes.SHA256())
# Deterministic (RFC 6979) so that the simulator's repositories are the same on every run.
_P256_DETERMINISTIC_SIGNATURE = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


class CryptoError(ValueError):
    """A key or key string that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    curve: str
    compressed: bytes
    # The library's parsed key, made on first use: parsing a point costs about a fifth of a verification.
    _parsed: Any = field(default=None, init=False, repr=False, compare=False)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (compact r || s, low-S) signs sha256(data) with this key; never raises."""
        if len(signature) != SIGNATURE_LENGTH:
            return False
        order = CURVE_ORDER.get(self.curve)
        if order is None:
            return False
        r = int.from_bytes(signature[:SCALAR_LENGTH], "big")
        s = int.from_bytes(signature[SCALAR_LENGTH:], "big")
        if not (0 < r < order and 0 < s <= order // 2):
            return False
        try:
            parsed = self._library_key()
            der = encode_dss_signature(r, s)
            if self.curve == SECP256K1:
                return parsed.verify(der, bytes(data))
            parsed.verify(der, bytes(data), _P256_SIGNATURE)
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False

    def multikey(self) -> str:
        """The key as multibase base58btc of its multicodec and compressed point (``z...``)."""
        return "z" + base58_encode(MULTICODEC_PREFIX[self.curve] + self.compressed)

    def did_key(self) -> str:
        return "did:key:" + self.multikey()

    def _library_key(self) -> Any:
        parsed = self._parsed
        if parsed is None:
            parsed = _parse_point(self.curve, self.compressed)
            object.__setattr__(self, "_parsed", parsed)  # a cache, invisible to equality and hashing
        return parsed


def _parse_point(curve: str, point: bytes) -> Any:
    """The library's key object of an encoded point (compressed or not); ValueError when it is not on the curve."""
    if curve == SECP256K1:
        return coincurve.PublicKey(point)
    if curve == P256:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    raise ValueError(f"unknown curve {curve!r}")


def public_key_from_point(curve: str, point: bytes) -> PublicKey:
    """A checked public key from its SEC1 encoding, compressed (33 bytes) or uncompressed (65 bytes)."""
    if len(point) not in (COMPRESSED_KEY_LENGTH, UNCOMPRESSED_KEY_LENGTH):
        raise CryptoError(f"a {curve} public key is 33 or 65 bytes, not {len(point)}")
    try:
        parsed = _parse_point(curve, point)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"not a point of {curve}: {exc}") from None
    if curve == SECP256K1:
        compressed = parsed.format(compressed=True)
    else:
        compressed = parsed.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    key = PublicKey(curve=curve, compressed=compressed)
    object.__setattr__(key, "_parsed", parsed)
    return key


def parse_multikey(value: str) -> PublicKey:
    """The key of a multikey string (``z`` + base58btc of multicodec and key)."""
    raw = _multibase_base58(value)
    for curve, prefix in MULTICODEC_PREFIX.items():
        if raw.startswith(prefix):
            return public_key_from_point(curve, raw[len(prefix):])
    raise CryptoError("a multikey's multicodec is neither secp256k1-pub nor p256-pub")


def parse_did_key(value: str) -> PublicKey:
    if not isinstance(value, str) or not value.startswith("did:key:"):
        raise CryptoError("a did:key starts with 'did:key:'")
    return parse_multikey(value[len("did:key:"):])


def _multibase_base58(value: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("z") or len(value) > 200:
        raise CryptoError("a key must be multibase base58btc ('z...')")
    return base58_decode(value[1:])


def base58_encode(data: bytes) -> str:
    """Base58 (Bitcoin alphabet); leading zero bytes become leading '1's."""
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, rest = divmod(number, 58)
        digits.append(_BASE58_ALPHABET[rest])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(digits))


def base58_decode(text: str) -> bytes:
    number = 0
    try:
        for character in text:
            number = number * 58 + _BASE58_VALUES[character]
    except KeyError as exc:
        raise CryptoError(f"{exc.args[0]!r} is not a base58 character") from None
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


def _is_own_fragment(value: Any, did: str, fragment: str) -> bool:
    return value == fragment or value == did + fragment


def atproto_signing_key(did_document: dict[str, Any], did: str) -> PublicKey | None:
    """The repository signing key of a DID document (verification method ``#atproto``), or None when the
    document has none usable."""
    if not isinstance(did_document, dict):
        return None
    methods = did_document.get("verificationMethod")
    if not isinstance(methods, list):
        return None
    for method in methods:
        if not isinstance(method, dict) or not _is_own_fragment(method.get("id"), did, "#atproto"):
            continue
        kind = method.get("type")
        try:
            if kind == MULTIKEY_TYPE:
                return parse_multikey(method.get("publicKeyMultibase"))
            if kind in LEGACY_KEY_TYPES:
                point = _multibase_base58(method.get("publicKeyMultibase"))
                return public_key_from_point(LEGACY_KEY_TYPES[kind], point)
        except CryptoError:
            return None
        return None
    return None


def pds_endpoint(did_document: dict[str, Any]) -> str | None:
    """The http(s) URL of the account's PDS (service ``#atproto_pds``), or None."""
    if not isinstance(did_document, dict):
        return None
    services = did_document.get("service")
    did = did_document.get("id")
    if not isinstance(services, list) or not isinstance(did, str):
        return None
    for service in services:
        if (isinstance(service, dict) and _is_own_fragment(service.get("id"), did, "#atproto_pds")
                and service.get("type") == PDS_SERVICE_TYPE):
            endpoint = service.get("serviceEndpoint")
            return endpoint if _is_http_url(endpoint) else None
    return None


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > syntax.URI_MAX:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def handle_of(did_document: dict[str, Any]) -> str | None:
    """The handle the document claims (its first ``at://`` alias), lowercased; None when it claims none or
    an invalid one. The claim still has to be confirmed by the handle's domain."""
    if not isinstance(did_document, dict):
        return None
    aliases = did_document.get("alsoKnownAs")
    if not isinstance(aliases, list):
        return None
    for alias in aliases:
        if isinstance(alias, str) and alias.startswith("at://"):
            handle = alias[len("at://"):]
            return handle.lower() if syntax.is_handle(handle) else None
    return None


class PrivateKey:
    """A signing key, for the relay simulator and the tests (the indexer only verifies)."""

    __slots__ = ("_library_key", "curve", "public_key", "secret")

    def __init__(self, curve: str, secret: bytes) -> None:
        if curve not in CURVES:
            raise CryptoError(f"unknown curve {curve!r}")
        scalar = int.from_bytes(secret, "big")
        if len(secret) != SCALAR_LENGTH or not 0 < scalar < CURVE_ORDER[curve]:
            raise CryptoError("a private key is a 32-byte scalar between 1 and the curve order")
        self.curve = curve
        self.secret = bytes(secret)
        if curve == SECP256K1:
            self._library_key: Any = coincurve.PrivateKey(self.secret)
            point = self._library_key.public_key.format(compressed=True)
        else:
            self._library_key = ec.derive_private_key(scalar, ec.SECP256R1())
            point = self._library_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        self.public_key = public_key_from_point(curve, point)

    @classmethod
    def generate(cls, curve: str = SECP256K1, *, seed: bytes | None = None) -> "PrivateKey":
        """A new key: random, or derived from ``seed`` (the same seed always gives the same key)."""
        if curve not in CURVES:
            raise CryptoError(f"unknown curve {curve!r}")
        if seed is None:
            return cls(curve, coincurve.utils.get_valid_secret() if curve == SECP256K1 else _random_p256_secret())
        candidate = hashlib.sha256(seed).digest()
        # A digest outside 1..order-1 is astronomically rare; hashing again keeps the derivation total.
        while not 0 < int.from_bytes(candidate, "big") < CURVE_ORDER[curve]:
            candidate = hashlib.sha256(candidate).digest()
        return cls(curve, candidate)

    def sign(self, data: bytes) -> bytes:
        """The compact low-S signature of sha256(data)."""
        if self.curve == SECP256K1:
            der = self._library_key.sign(bytes(data))
        else:
            der = self._library_key.sign(bytes(data), _P256_DETERMINISTIC_SIGNATURE)
        r, s = decode_dss_signature(der)
        order = CURVE_ORDER[self.curve]
        if s > order // 2:
            s = order - s
        return r.to_bytes(SCALAR_LENGTH, "big") + s.to_bytes(SCALAR_LENGTH, "big")


def _random_p256_secret() -> bytes:
    secret = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    return secret.to_bytes(SCALAR_LENGTH, "big")
