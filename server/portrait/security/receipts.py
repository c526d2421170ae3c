"""Signed receipts: proof of what was verified, without anyone keeping faces.

A receipt is a JWS compact serialization (RFC 7515/8037) signed with Ed25519:
`b64url(header).b64url(payload).b64url(signature)`, header
`{"alg": "EdDSA", "typ": "portrait-receipt+jws", "kid": <16 hex of sha256(raw public key)>}`.
A carrier verifies it with our public key only (`verify_receipt` here, or any JOSE library
that knows OKP/Ed25519), long after the media are gone.

Claims the service puts in (this module does not impose them): `rid` (receipt / request
id), `tenant`, `iat` (epoch seconds), `inputs` (sha256 hex of each input: id image, video;
the challenge nonce), `decision`, `reasons`, `scores`, `models` (name, version, sha256),
`thresholds` (every threshold the decision used) and, for videos, `challenge` (the actions,
schedule, window, recording length and `mirrored` that were asked) and `events` (each
action seen, with its start and end in seconds); for live sessions, `session` (every prompt
and colour revealed with the media and wall second of its reveal, the stop, the pace, the
recording's digest) and `light` (the colours, the light check's score, threshold, latency and
strength). Claims must be plain JSON: NaN or infinity is refused.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from portrait.security._b64 import b64d, b64e

ALG = "EdDSA"
TYP = "portrait-receipt+jws"
MAX_RECEIPT_LENGTH = 64 * 1024


class ReceiptError(ValueError):
    """A receipt (or the key given to check it) is unusable; `code` says which part."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def receipt_key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def generate_key() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (keep it in a secret store)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def seed_from_passphrase(passphrase: str | bytes) -> bytes:
    """A stable 32-byte seed from a passphrase, for development and tests only: anyone who
    knows the passphrase can sign receipts."""
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    return hashlib.sha256(b"portrait-receipt-dev-seed\x00" + passphrase).digest()


class ReceiptSigner:
    """Signs receipt claims with one Ed25519 private key (PEM, or a raw 32-byte seed)."""

    def __init__(self, key: bytes | str | None = None) -> None:
        if key is None:
            self._key = Ed25519PrivateKey.generate()
        elif isinstance(key, bytes) and len(key) == 32:
            self._key = Ed25519PrivateKey.from_private_bytes(key)
        else:
            pem = key.encode("ascii") if isinstance(key, str) else key
            try:
                loaded = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                raise ValueError("the receipt key is neither an unencrypted PEM private key "
                                 "nor a 32-byte Ed25519 seed") from None
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError("the receipt key must be an Ed25519 key")
            self._key = loaded
        self.public_key = self._key.public_key()
        self.kid = receipt_key_id(self.public_key)
        self._header = b64e(_json({"alg": ALG, "typ": TYP, "kid": self.kid}))

    @classmethod
    def from_seed(cls, passphrase: str | bytes) -> ReceiptSigner:
        """Development key derived from a passphrase (see `seed_from_passphrase`)."""
        return cls(seed_from_passphrase(passphrase))

    @classmethod
    def random(cls) -> ReceiptSigner:
        return cls(secrets.token_bytes(32))

    def __repr__(self) -> str:
        return f"ReceiptSigner(kid={self.kid!r})"

    def sign(self, claims: dict) -> str:
        if not isinstance(claims, dict):
            raise TypeError("receipt claims must be a dict")
        signed = f"{self._header}.{b64e(_json(claims))}"
        return f"{signed}.{b64e(self._key.sign(signed.encode('ascii')))}"

    def public_key_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037), for carriers using a JOSE library."""
        return {"kty": "OKP", "crv": "Ed25519", "x": b64e(_raw_public(self.public_key)),
                "kid": self.kid, "alg": ALG, "use": "sig"}


def verify_receipt(token: str, public_key_pem: bytes | str) -> dict:
    """The claims of `token` if it was signed by the key whose public half is given."""
    try:
        pem = public_key_pem.encode("ascii") if isinstance(public_key_pem, str) else public_key_pem
        public_key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ReceiptError("bad_key", "the public key is not a PEM public key") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise ReceiptError("bad_key", "the public key is not an Ed25519 key")
    if not isinstance(token, str) or len(token) > MAX_RECEIPT_LENGTH or token.count(".") != 2:
        raise ReceiptError("malformed_receipt", "a receipt has three base64url parts separated by dots")
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        header = json.loads(b64d(header_b64))
        signature = b64d(signature_b64)
        payload_raw = b64d(payload_b64)
    except ValueError:  # bad base64, bad UTF-8 or bad JSON
        raise ReceiptError("malformed_receipt", "the receipt is not valid base64url JSON") from None
    if not isinstance(header, dict) or header.get("alg") != ALG or header.get("typ") != TYP:
        raise ReceiptError("malformed_receipt", f"the receipt header must name alg {ALG} and typ {TYP}")
    if header.get("kid") != receipt_key_id(public_key):
        raise ReceiptError("wrong_key", "the receipt was signed with another key (kid differs)")
    try:
        public_key.verify(signature, f"{header_b64}.{payload_b64}".encode("ascii"))
    except InvalidSignature:
        raise ReceiptError("bad_signature", "the receipt's signature is not valid") from None
    try:
        claims = json.loads(payload_raw)
    except ValueError:
        raise ReceiptError("malformed_receipt", "the receipt payload is not JSON") from None
    if not isinstance(claims, dict):
        raise ReceiptError("malformed_receipt", "the receipt payload is not a JSON object")
    return claims
