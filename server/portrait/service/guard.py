"""The front door's security, apart from inference: API keys to tenants, rate and
concurrency limits, challenge tokens and their single use, signed receipts.

Every method that may wait (Redis) is asynchronous and bounded by `PORTRAIT_REDIS_TIMEOUT_S`;
the rest is cheap arithmetic on a few hundred bytes and runs on the event loop.
"""

from __future__ import annotations

import logging
import secrets

from portrait.challenge import ChallengeSpec, random_challenge, random_schedule
from portrait.security.keys import ApiKeys
from portrait.security.limits import InFlightLimiter, RateLimiter
from portrait.security.nonces import MemoryNonceStore, NonceStore, NonceStoreError, RedisNonceStore, StaleEpoch
from portrait.security.receipts import ReceiptSigner, generate_key
from portrait.security.tokens import Challenge, ChallengeSigner, TokenError, parse_actions, parse_schedule
from portrait.service.problems import Problem, problem
from portrait.settings import Settings

log = logging.getLogger("portrait.service")


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)
        secret = settings.challenge_secret.encode() or secrets.token_bytes(32)
        if not settings.challenge_secret:
            log.warning("PORTRAIT_CHALLENGE_SECRET is not set: challenges are valid on this process only")
        self.secret = secret  # challenge tokens, and the keys sealing live sessions (service/sessions.py)
        self.challenges = ChallengeSigner(secret, ttl_s=settings.challenge_ttl_s)
        self.nonces: NonceStore = (RedisNonceStore(settings.redis_url, timeout_s=settings.redis_timeout_s)
                                   if settings.redis_url else MemoryNonceStore())
        if settings.receipt_key_file:
            key_pem = settings.receipt_key_file.read_bytes()
        else:
            log.warning("PORTRAIT_RECEIPT_KEY_FILE is not set: receipts are signed with a key made for this process")
            key_pem = generate_key()
        self.receipts = ReceiptSigner(key_pem)
        self.settings = settings
        self.rate = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, settings.redis_url,
                                settings.redis_timeout_s)
        # The demo is a tenant of its own with its own small limits (no API key names it).
        self.demo_tenant = settings.demo_tenant if settings.demo else None
        self.demo_rate = RateLimiter(settings.demo_rate_limit_per_s, settings.demo_rate_limit_burst,
                                     settings.redis_url, settings.redis_timeout_s, prefix="portrait:demo-rate")
        demo_cap = {settings.demo_tenant: settings.demo_max_in_flight} if settings.demo else {}
        self.in_flight = InFlightLimiter(settings.max_in_flight_per_tenant, demo_cap)
        self.shared_store = bool(settings.redis_url)
        self._epoch: str | None = None  # the nonce store's, as last seen (readiness probes refresh it)
        if self.demo_tenant in self.keys.tenants:
            raise ValueError(f"PORTRAIT_DEMO_TENANT={self.demo_tenant!r} is a tenant of the API keys: the demo "
                             "needs a name of its own, so that it never spends a carrier's quota")

    def tenant(self, key: str | None) -> str:
        tenant = self.keys.tenant_for(key) if key else None
        if tenant is None:
            raise problem("invalid_api_key", "send a valid API key as `Authorization: Bearer <key>`")
        return tenant

    async def throttle(self, tenant: str) -> None:
        limiter = self.demo_rate if tenant == self.demo_tenant else self.rate
        wait = await limiter.try_acquire(tenant)
        if wait > 0:
            raise problem("rate_limited", "this tenant's request rate is over its limit", retry_after_s=wait)

    async def issue(self, tenant: str, mirrored: bool | None, actions: list[str] | None,
                    schedule: list[float] | None) -> Challenge:
        """A one-shot challenge token for this tenant (`draw`), under the nonce store's epoch."""
        self.one_shot(tenant)
        spec, epoch = await self.draw(tenant, mirrored, actions, schedule)
        return self.challenges.issue(tenant, spec, epoch=epoch)

    async def draw(self, tenant: str, mirrored: bool | None, actions: list[str] | None,
                   schedule: list[float] | None) -> tuple[ChallengeSpec, str]:
        """A challenge for this tenant (a token's or a live session's): drawn by the server, or
        named by the caller where the tenant may (`CLIENT_ACTIONS_TENANTS`), which the token,
        the session and the receipt then say; with the nonce store's epoch (as last seen;
        fetched if never), which the token or session carries."""
        mirrored = self.settings.mirrored_for(tenant) if mirrored is None else mirrored
        if actions is None and schedule is None:
            spec = random_challenge(mirrored)
        elif not self.settings.client_actions_for(tenant):
            raise problem("client_actions_disabled", "this server chooses the challenge actions and schedule")
        else:
            named = self.actions(actions)
            spec = (random_schedule(named, mirrored) if schedule is None
                    else ChallengeSpec.timed(named, self.schedule(schedule, len(named)), mirrored, client_named=True))
        if self._epoch is None:
            try:
                self._epoch = await self.nonces.epoch()
            except NonceStoreError:
                log.error("nonce store unreachable")
                raise problem("nonce_store_unavailable", "cannot issue challenges now", retry_after_s=2) from None
        return spec, self._epoch

    def one_shot(self, tenant: str) -> None:
        """Refuse the one-shot mode to a tenant that must verify through live sessions."""
        if self.settings.session_required_for(tenant):
            raise problem("session_required", "this tenant verifies through live sessions: POST /v1/sessions")

    def actions(self, names: list[str] | None) -> list[str]:
        """Client-named actions, where the server allows them."""
        try:
            return parse_actions(names)
        except TokenError as error:
            raise problem(error.code, str(error)) from None

    def schedule(self, seconds: list[float], count: int) -> list[float]:
        """A client-named schedule for `count` actions, where the server allows it."""
        try:
            return parse_schedule(seconds, count)
        except TokenError as error:
            raise problem(error.code, str(error)) from None

    def challenge(self, token: str, tenant: str) -> Challenge:
        """The challenge a token stands for, checked (signature, tenant, expiry) but not spent."""
        try:
            return self.challenges.verify(token, tenant)
        except TokenError as error:
            raise problem(error.code, str(error)) from None

    async def claim(self, challenge: Challenge) -> None:
        """Spend the challenge: atomic in the store, so of concurrent requests one wins."""
        if not await self._spend(challenge.nonce, challenge.expires_at, challenge.epoch, problem(
                "expired_challenge", "the challenge was issued before the store of used challenges last lost its "
                "data; request a new one")):
            raise problem("replayed_challenge", "this challenge was already used; request a new one")

    async def claim_session(self, nonce: str, expires_at: float, epoch: str) -> bool:
        """Take a live session's one stream (across replicas): False when it was taken before."""
        return await self._spend(f"session:{nonce}", expires_at, epoch, problem(
            "session_expired", "the session was created before the store of used challenges last lost its data; "
            "create a new one"))

    async def _spend(self, nonce: str, expires_at: float, epoch: str, stale: Problem) -> bool:
        try:
            claimed = await self.nonces.claim(nonce, expires_at, epoch)
        except StaleEpoch as error:
            self._epoch = error.current
            raise stale from None
        except NonceStoreError:
            log.error("nonce store unreachable")
            raise problem("nonce_store_unavailable", "cannot check challenge reuse now", retry_after_s=2) from None
        self._epoch = epoch
        return claimed

    async def release(self, challenge: Challenge) -> None:
        """Give back a claim whose request was refused before it was judged. If the store
        does not answer, the token stays spent unless the store runs the release later:
        the safe side either way."""
        try:
            await self.nonces.release(challenge.nonce)
        except NonceStoreError:
            log.error("nonce store unreachable: a refused request's challenge may stay spent")

    async def ready(self) -> tuple[bool, str | None]:
        """The nonce store answers; its epoch is refreshed on the way (after a restart of
        Redis, the first probe to reach it makes the new one)."""
        try:
            self._epoch = await self.nonces.epoch()
        except NonceStoreError:
            return False, "nonce store not reachable"
        return True, None

    async def close(self) -> None:
        await self.nonces.close()
