"""Security building blocks for the HTTP service: API keys, challenge tokens, single-use
nonces, rate and concurrency limits, signed receipts. Pure logic, no web framework."""

from portrait.security.keys import ApiKeys, KeyConfigError, key_id
from portrait.security.limits import InFlightLimiter, RateLimiter
from portrait.security.nonces import MemoryNonceStore, NonceStore, NonceStoreError, RedisNonceStore
from portrait.security.receipts import (
    ReceiptError,
    ReceiptSigner,
    generate_key,
    receipt_key_id,
    seed_from_passphrase,
    verify_receipt,
)
from portrait.security.tokens import Challenge, ChallengeSigner, TokenError, parse_actions, parse_schedule

__all__ = [
    "ApiKeys", "Challenge", "ChallengeSigner", "InFlightLimiter", "KeyConfigError",
    "MemoryNonceStore", "NonceStore", "NonceStoreError", "RateLimiter", "ReceiptError", "ReceiptSigner",
    "RedisNonceStore", "TokenError", "generate_key", "key_id", "parse_actions", "parse_schedule",
    "receipt_key_id", "seed_from_passphrase", "verify_receipt",
]
