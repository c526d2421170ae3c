"""Per-tenant request rate and concurrency limits, so one carrier cannot starve the others.

The rate limit is the `limits` library's moving window: `burst` requests in any window of
`burst / rate` seconds (at least one second). With a Redis URL the windows live in Redis,
so replicas share one limit instead of each granting it; when Redis cannot answer in time
the limiter falls back to this process's own windows for a few seconds (availability over
precision; single use of challenges still fails closed), so an outage costs each request
one timeout at most once per pause, not every time. The concurrency cap is per process: it protects this
process's workers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Mapping

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

log = logging.getLogger("portrait.limits")
FALLBACK_S = 5.0  # after a failed Redis call, count locally this long before trying Redis again


class RateLimiter:
    """Moving-window request rate per tenant, in memory or shared through Redis."""

    def __init__(self, rate: float, burst: int, redis_url: str = "", timeout_s: float = 0.5,
                 prefix: str = "portrait:rate") -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        window_s = max(1, round(burst / rate))
        self.item = RateLimitItemPerSecond(max(1, round(rate * window_s)), window_s)
        self._timeout_s = timeout_s
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        self._shared_down_until = 0.0
        if redis_url:
            storage = RedisStorage("async+" + redis_url, implementation="redispy", key_prefix=prefix,
                                   socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            self._shared = MovingWindowRateLimiter(storage)

    def __repr__(self) -> str:
        return f"RateLimiter({self.item}, shared={self._shared is not None})"  # the URL may hold a password

    async def try_acquire(self, tenant: str) -> float:
        """0.0 and one request counted if allowed; else the seconds until one is (for
        Retry-After), counting nothing."""
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                return await asyncio.wait_for(self._hit(self._shared, tenant), self._timeout_s)
            except Exception as error:  # redis errors and the timeout: count here instead, for a while
                self._shared_down_until = time.monotonic() + FALLBACK_S
                log.warning("shared rate limit unavailable; using this process's", extra={"error": type(error).__name__})
        return await self._hit(self._local, tenant)

    async def _hit(self, limiter: MovingWindowRateLimiter, tenant: str) -> float:
        if await limiter.hit(self.item, tenant):
            return 0.0
        stats = await limiter.get_window_stats(self.item, tenant)
        return max(0.001, stats.reset_time - time.time())


class InFlightLimiter:
    """At most `cap` requests in progress per tenant (`caps` names tenants with their own)."""

    def __init__(self, cap: int, caps: Mapping[str, int] | None = None) -> None:
        if cap < 1 or any(value < 1 for value in (caps or {}).values()):
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.caps = dict(caps or {})
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str) -> bool:
        """Take a slot; False (nothing taken) when the tenant is at its cap."""
        with self._lock:
            count = self._counts.get(tenant, 0)
            if count >= self.caps.get(tenant, self.cap):
                return False
            self._counts[tenant] = count + 1
            return True

    def release(self, tenant: str) -> None:
        with self._lock:
            count = self._counts.get(tenant, 0)
            if count <= 0:
                raise RuntimeError(f"release without acquire for tenant {tenant!r}")
            if count == 1:
                del self._counts[tenant]
            else:
                self._counts[tenant] = count - 1

    def in_flight(self, tenant: str) -> int:
        with self._lock:
            return self._counts.get(tenant, 0)
