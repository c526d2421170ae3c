"""Per-tenant request rate and concurrency limits, so one carrier cannot starve the others.

Limits are per process: with N replicas a tenant gets up to N times the configured rate,
which is the usual trade for keeping the front door stateless.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class RateLimiter:
    """Token bucket per tenant: `rate` tokens per second, holding at most `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate, self.burst = float(rate), float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    def try_acquire(self, tenant: str) -> float:
        """0.0 and one token spent if allowed; else the seconds until a token is available
        (for Retry-After), spending nothing."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(tenant, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[tenant] = (tokens - 1.0, now)
                return 0.0
            self._buckets[tenant] = (tokens, now)
            return (1.0 - tokens) / self.rate


class InFlightLimiter:
    """At most `cap` requests in progress per tenant."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str) -> bool:
        """Take a slot; False (nothing taken) when the tenant is at its cap."""
        with self._lock:
            count = self._counts.get(tenant, 0)
            if count >= self.cap:
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

    @contextmanager
    def slot(self, tenant: str) -> Iterator[bool]:
        """`with limiter.slot(t) as ok:` - ok is False at the cap; a taken slot is released on exit."""
        ok = self.acquire(tenant)
        try:
            yield ok
        finally:
            if ok:
                self.release(tenant)
