"""Challenge tokens: the server's word that it asked this tenant for these actions.

A token is `base64url(json payload).base64url(HMAC-SHA256(secret, first part))`, payload
`{v, tenant, actions, schedule, window_s, record_s, mirrored, client_named, nonce, epoch, iat,
exp}`: everything the verification is judged against comes from here, never from the request.
The front door keeps no state: any replica holding the secret can check a token; only the
single-use check of the nonce needs a shared store (see `nonces.py`), whose epoch at issue
the token carries. The signature is checked before the
payload is parsed, so JSON from an unauthenticated client is never parsed; a well-formed
token with a wrong signature is `forged_challenge`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from portrait.challenge import ACTIONS, MAX_ACTIONS, MAX_RECORD_S, ChallengeSpec, valid_actions, valid_schedule
from portrait.security._b64 import b64d, b64e

MAX_TOKEN_LENGTH = 2048
MIN_SECRET_BYTES = 32
VERSION = 4  # 3: client_named; 4: the nonce store's epoch
_FIELDS = frozenset({"v", "tenant", "actions", "schedule", "window_s", "record_s", "mirrored", "client_named", "nonce",
                     "epoch", "iat", "exp"})
MAX_EPOCH_LENGTH = 64

_MESSAGES = {
    "malformed_challenge": "the challenge token is not a well-formed Portrait challenge",
    "forged_challenge": "the challenge token's signature is not valid",
    "expired_challenge": "the challenge has expired; request a new one",
    "wrong_tenant": "the challenge was issued to another tenant",
    "invalid_actions": f"actions must be 1-{MAX_ACTIONS} names from {', '.join(ACTIONS)}, "
                       "no action twice in a row",
    "invalid_schedule": "schedule must give one prompt time per action, in seconds from the start of "
                        f"recording, increasing, with the recording ending by {MAX_RECORD_S} s",
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
    spec: ChallengeSpec
    nonce: str
    epoch: str
    issued_at: float
    expires_at: float

    @property
    def actions(self) -> list[str]:
        return list(self.spec.actions)


def parse_actions(actions: object) -> list[str]:
    """Validate client-named actions: 1 to MAX_ACTIONS known names, none twice in a row."""
    if not valid_actions(actions):
        raise TokenError("invalid_actions")
    return list(actions)  # type: ignore[arg-type]


def parse_schedule(schedule: object, count: int) -> list[float]:
    """Validate a client-named schedule for `count` actions (see `challenge.valid_schedule`)."""
    if not valid_schedule(schedule, count):
        raise TokenError("invalid_schedule")
    return [float(s) for s in schedule]  # type: ignore[union-attr]


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

    def issue(self, tenant: str, spec: ChallengeSpec, *, epoch: str) -> Challenge:
        """A token for `spec`, issued under the nonce store's `epoch`."""
        if not isinstance(tenant, str) or not tenant:
            raise ValueError("tenant must be a non-empty string")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
            raise ValueError(f"epoch must be a string of 1 to {MAX_EPOCH_LENGTH} characters")
        parse_actions(list(spec.actions))
        if spec.schedule is None:
            raise ValueError("a challenge token needs a schedule")
        parse_schedule(list(spec.schedule), len(spec.actions))
        nonce = b64e(secrets.token_bytes(16))
        iat = self._clock()
        exp = iat + self.ttl_s
        payload = {"v": VERSION, "tenant": tenant, **spec.claims(), "nonce": nonce, "epoch": epoch, "iat": iat,
                   "exp": exp}
        body = b64e(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8"))
        token = f"{body}.{b64e(self._mac(body))}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("tenant name too long for a challenge token")
        return Challenge(token, tenant, spec, nonce, epoch, iat, exp)

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
        spec = ChallengeSpec(tuple(payload["actions"]), tuple(payload["schedule"]), tuple(payload["window_s"]),
                             float(payload["record_s"]), payload["mirrored"], payload["client_named"])
        return Challenge(token, payload["tenant"], spec, payload["nonce"], payload["epoch"], float(payload["iat"]),
                         float(payload["exp"]))


def _payload(raw: bytes) -> dict:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TokenError("malformed_challenge") from None
    number = (int, float)

    def finite(value: object) -> bool:
        return isinstance(value, number) and not isinstance(value, bool) and math.isfinite(value)

    ok = (
        isinstance(payload, dict) and payload.keys() == _FIELDS
        and type(payload["v"]) is int and payload["v"] == VERSION
        and isinstance(payload["tenant"], str) and payload["tenant"]
        and isinstance(payload["nonce"], str) and 16 <= len(payload["nonce"]) <= 64
        and isinstance(payload["epoch"], str) and 0 < len(payload["epoch"]) <= MAX_EPOCH_LENGTH
        and all(finite(payload[k]) for k in ("iat", "exp", "record_s"))
        and isinstance(payload["mirrored"], bool)
        and isinstance(payload["client_named"], bool)
        and isinstance(payload["window_s"], list) and len(payload["window_s"]) == 2
        and all(finite(w) for w in payload["window_s"]) and 0 <= payload["window_s"][0] < payload["window_s"][1]
        and valid_actions(payload["actions"])
        and valid_schedule(payload["schedule"], len(payload["actions"]))
    )
    if not ok or not payload["exp"] > payload["iat"]:
        raise TokenError("malformed_challenge")
    return payload
