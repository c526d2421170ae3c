"""Single-use challenge nonces.

A challenge token is stateless and signed, so replay protection is the only state: the
first request that claims a nonce wins, any later one is a replay. One node keeps the
claimed nonces in memory; several replicas share them in Redis (`SET NX EXAT`, atomic on
the server, expiring with the token so Redis holds no more than the live tokens).

The stores are asynchronous (the Redis one through `redis.asyncio`, every call bounded by
a timeout), so a slow store never blocks the event loop. `release` gives a claim back: the
front door calls it only for a request it refused before judging it (overload, deadline,
client gone, backend down), so the customer's retry with the same token is answered.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

MAX_NONCE_LENGTH = 128


class NonceStoreError(RuntimeError):
    """The shared store cannot answer; callers should fail closed (503), never accept."""


@runtime_checkable
class NonceStore(Protocol):
    async def claim(self, nonce: str, expires_at: float) -> bool:
        """True the first time `nonce` is claimed before `expires_at` (epoch seconds), else False."""
        ...

    async def release(self, nonce: str) -> None:
        """Un-claim `nonce` (only its claimant calls this, so no one else holds it)."""
        ...

    async def ping(self) -> bool:
        """For readiness checks: False when the store cannot answer now."""
        ...

    async def close(self) -> None: ...


def _check(nonce: str) -> None:
    if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LENGTH:
        raise ValueError("nonce must be a non-empty string of at most 128 characters")


class MemoryNonceStore:
    """Claimed nonces of one process, forgotten when they expire.

    Bounded: at `max_entries` live nonces it evicts the one expiring soonest, which re-opens
    that one token to a replay until it expires. Live entries on one node never exceed
    ttl x issue rate (120 s x 1000 challenges/s = 120k), so size `max_entries` above that
    and eviction only happens under an attack that the rate limiter already throttles.
    """

    def __init__(self, max_entries: int = 1_000_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.evicted = 0  # live nonces dropped for room: a metric worth watching

    async def claim(self, nonce: str, expires_at: float) -> bool:
        _check(nonce)
        now = self._clock()
        if not expires_at > now:  # an expired token is never accepted, so never claimable
            return False
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                self._forget(*heapq.heappop(self._heap))
            if nonce in self._expiry:
                return False
            while len(self._expiry) >= self.max_entries:
                if self._forget(*heapq.heappop(self._heap)):
                    self.evicted += 1
            self._expiry[nonce] = expires_at
            heapq.heappush(self._heap, (expires_at, nonce))
            return True

    async def release(self, nonce: str) -> None:
        with self._lock:
            self._expiry.pop(nonce, None)  # its heap entry is skipped when it comes up

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    def _forget(self, expires_at: float, nonce: str) -> bool:
        """Drop a heap entry's nonce unless it was released (or released and claimed again)."""
        if self._expiry.get(nonce) != expires_at:
            return False
        del self._expiry[nonce]
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


class RedisNonceStore:
    """Claimed nonces shared by every replica, in Redis: `SET <prefix><nonce> 1 NX EXAT <exp>`."""

    def __init__(self, url: str, *, prefix: str = "portrait:nonce:", timeout_s: float = 0.5,
                 clock: Callable[[], float] = time.time, client: Any = None) -> None:
        if client is None:
            try:
                import redis.asyncio as redis
            except ImportError:
                raise RuntimeError("RedisNonceStore needs the `redis` package (pip install redis)") from None
            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._redis = client
        self._prefix = prefix
        self._clock = clock
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"RedisNonceStore(prefix={self._prefix!r})"  # the URL may hold a password

    async def _call(self, command: Any) -> Any:
        """One Redis call within the timeout, even when the server accepts and never answers."""
        try:
            return await asyncio.wait_for(command, self._timeout_s)
        except Exception as error:  # redis.RedisError, socket errors, the timeout
            raise NonceStoreError(f"nonce store unavailable: {type(error).__name__}") from error

    async def claim(self, nonce: str, expires_at: float) -> bool:
        _check(nonce)
        if not expires_at > self._clock():
            return False
        return bool(await self._call(self._redis.set(self._prefix + nonce, 1, nx=True, exat=math.ceil(expires_at))))

    async def release(self, nonce: str) -> None:
        _check(nonce)
        await self._call(self._redis.delete(self._prefix + nonce))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._redis.ping()))
        except NonceStoreError:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
