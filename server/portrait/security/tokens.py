"""Challenge tokens: the server's word that it asked this tenant for these actions.

A token is `base64url(json payload).base64url(HMAC-SHA256(secret, first part))`, payload
`{v, tenant, actions, nonce, iat, exp}`. The front door keeps no state: any replica holding
the secret can check a token; only the single-use check of the nonce needs a shared store
(see `nonces.py`). The signature is checked before the payload is parsed, so JSON from an
unauthenticated client is never parsed; a well-formed token with a wrong signature is
`forged_challenge`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random

from portrait.security._b64 import b64d, b64e

ACTIONS: tuple[str, ...] = ("blink", "turn_left", "turn_right", "look_up", "look_down")
HEAD_AXES: tuple[tuple[str, str], ...] = (("turn_left", "turn_right"), ("look_up", "look_down"))
MAX_ACTIONS = 5
MAX_TOKEN_LENGTH = 2048
MIN_SECRET_BYTES = 32
VERSION = 1
_FIELDS = frozenset({"v", "tenant", "actions", "nonce", "iat", "exp"})

_MESSAGES = {
    "malformed_challenge": "the challenge token is not a well-formed Portrait challenge",
    "forged_challenge": "the challenge token's signature is not valid",
    "expired_challenge": "the challenge has expired; request a new one",
    "wrong_tenant": "the challenge was issued to another tenant",
    "invalid_actions": f"actions must be 1-{MAX_ACTIONS} distinct names from {', '.join(ACTIONS)}",
    "replayed_challenge": "this challenge was already used; request a new one",
}


class TokenError(ValueError):
    """A challenge (or a list of actions) was refused; `code` is stable, the message is for people."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or _MESSAGES.get(code, code))
        self.code = code


@dataclass(frozen=True)
class Challenge:
    token: str
    tenant: str
    actions: list[str]
    nonce: str
    issued_at: float
    expires_at: float


def random_actions(rng: Random | None = None) -> list[str]:
    """A blink plus one or two head moves on different axes, in random order (so a recorded
    answer to one challenge rarely fits the next)."""
    rng = rng or secrets.SystemRandom()
    axes = rng.sample(HEAD_AXES, rng.choice((1, 2)))
    actions = ["blink", *(rng.choice(axis) for axis in axes)]
    rng.shuffle(actions)
    return actions


def parse_actions(actions: object) -> list[str]:
    """Validate client-named actions: a non-empty list of at most 5 distinct known names."""
    if not isinstance(actions, (list, tuple)) or not 1 <= len(actions) <= MAX_ACTIONS:
        raise TokenError("invalid_actions")
    if not all(isinstance(a, str) and a in ACTIONS for a in actions) or len(set(actions)) != len(actions):
        raise TokenError("invalid_actions")
    return list(actions)


class ChallengeSigner:
    """Issues and checks challenge tokens with one HMAC secret (shared by all replicas)."""

    def __init__(self, secret: bytes | str, ttl_s: float = 120, clock: Callable[[], float] = time.time) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the challenge secret must be at least {MIN_SECRET_BYTES} bytes")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError("ttl_s must be a positive number of seconds")
        self._secret = secret
        self.ttl_s = float(ttl_s)
        self._clock = clock

    def __repr__(self) -> str:
        return f"ChallengeSigner(ttl_s={self.ttl_s})"

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._secret, signed.encode("ascii"), hashlib.sha256).digest()

    def issue(self, tenant: str, actions: Sequence[str]) -> Challenge:
        if not isinstance(tenant, str) or not tenant:
            raise ValueError("tenant must be a non-empty string")
        actions = parse_actions(list(actions))
        nonce = b64e(secrets.token_bytes(16))
        iat = self._clock()
        exp = iat + self.ttl_s
        payload = {"v": VERSION, "tenant": tenant, "actions": actions, "nonce": nonce, "iat": iat, "exp": exp}
        body = b64e(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8"))
        token = f"{body}.{b64e(self._mac(body))}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("tenant name too long for a challenge token")
        return Challenge(token, tenant, actions, nonce, iat, exp)

    def verify(self, token: str, tenant: str) -> Challenge:
        """The challenge `token` stands for, if it is genuine, current and `tenant`'s.
        Does not spend it: the front door claims `challenge.nonce` in a `NonceStore` (`service/guard.py`)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise TokenError("malformed_challenge")
        body, signature = token.split(".")
        try:
            b64d(body)  # structure first: a garbled token is malformed, not forged
            mac = b64d(signature)
        except ValueError:
            raise TokenError("malformed_challenge") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise TokenError("forged_challenge")
        payload = _payload(b64d(body))
        if not hmac.compare_digest(payload["tenant"].encode("utf-8"), tenant.encode("utf-8")):
            raise TokenError("wrong_tenant")
        if self._clock() >= payload["exp"]:
            raise TokenError("expired_challenge")
        return Challenge(token, payload["tenant"], payload["actions"], payload["nonce"],
                         float(payload["iat"]), float(payload["exp"]))


def _payload(raw: bytes) -> dict:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TokenError("malformed_challenge") from None
    number = (int, float)
    ok = (
        isinstance(payload, dict) and payload.keys() == _FIELDS
        and type(payload["v"]) is int and payload["v"] == VERSION
        and isinstance(payload["tenant"], str) and payload["tenant"]
        and isinstance(payload["nonce"], str) and 16 <= len(payload["nonce"]) <= 64
        and all(isinstance(payload[k], number) and not isinstance(payload[k], bool)
                and math.isfinite(payload[k]) for k in ("iat", "exp"))
    )
    if not ok or not payload["exp"] > payload["iat"]:
        raise TokenError("malformed_challenge")
    try:
        payload["actions"] = parse_actions(payload["actions"])
    except TokenError:
        raise TokenError("malformed_challenge") from None
    return payload
