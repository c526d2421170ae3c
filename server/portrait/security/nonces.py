"""Single-use challenge nonces.

A challenge token is stateless and signed, so replay protection is the only state: the
first request that claims a nonce wins, any later one is a replay. One node keeps the
claimed nonces in memory; several replicas share them in Redis, where a claim is one Lua
script (atomic on the server), expiring with the token so Redis holds no more than the
live tokens. `release` gives a claim back: the front door calls it only for a request it
refused before judging it (overload, deadline, client gone, backend down), so the
customer's retry with the same token is answered.

Single use must also hold when the store misbehaves:

- **The store loses its data** (Redis restarted without persistence, flushed; a process
  restarted). Every store has an epoch, a random id made when it finds itself empty
  (`epoch()`); tokens carry the epoch they were issued under, and a claim under any other
  epoch is refused (`StaleEpoch`): a token issued before the loss, spent or not, is never
  claimed again.
- **The store hangs** (Redis paused, a slow network). A claim that gets no answer in time is
  refused (503) although Redis may still run it later. So the claim is sent on a connection
  of its own, and on a timeout its undo (delete the key if it still holds this claim's id)
  follows on the same connection: Redis runs a connection's commands in order, so whenever
  it runs the claim, the undo follows, and the customer's retry is not a replay.
- **Clocks differ**. A claim lives as many seconds as its token has left by this process's
  clock, plus `CLOCK_MARGIN_S` for replicas whose clocks disagree, never until an absolute
  time: with this clock behind Redis's, an absolute expiry can already be past on Redis,
  which stores the claim and forgets it at once.

The stores are asynchronous (the Redis one through `redis.asyncio`, every call bounded by a
timeout), so a slow store never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

MAX_NONCE_LENGTH = 128
# Replicas' clocks may disagree by this much: a claim outlives its token's expiry by it, so
# a replica whose clock is behind still finds the claim while it accepts the token.
CLOCK_MARGIN_S = 30
# How long a connection whose answer came late is kept to read it (and its undo's) before
# it is closed; closing it then changes nothing: Redis still runs what it has received, in order.
SETTLE_S = 60.0


class NonceStoreError(RuntimeError):
    """The shared store cannot answer; callers should fail closed (503), never accept."""


class StaleEpoch(Exception):
    """The token was issued under another epoch of the store: before it last lost its data."""

    def __init__(self, current: str) -> None:
        super().__init__("the challenge was issued before the nonce store last lost its data")
        self.current = current


@runtime_checkable
class NonceStore(Protocol):
    async def epoch(self) -> str:
        """The store's current epoch (made now if the store is empty); tokens are issued under it."""
        ...

    async def claim(self, nonce: str, expires_at: float, epoch: str) -> bool:
        """True the first time `nonce` is claimed before `expires_at` (epoch seconds), else
        False; raises `StaleEpoch` when `epoch` is not the store's."""
        ...

    async def release(self, nonce: str) -> None:
        """Un-claim `nonce` (only its claimant calls this, so no one else holds it)."""
        ...

    async def close(self) -> None: ...


def new_epoch() -> str:
    return secrets.token_urlsafe(12)


def _check(nonce: str) -> None:
    if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LENGTH:
        raise ValueError("nonce must be a non-empty string of at most 128 characters")


class MemoryNonceStore:
    """Claimed nonces of one process, forgotten when they expire; its epoch is the process's.

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
        self._epoch = new_epoch()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.evicted = 0  # live nonces dropped for room: a metric worth watching

    async def epoch(self) -> str:
        return self._epoch

    async def claim(self, nonce: str, expires_at: float, epoch: str) -> bool:
        _check(nonce)
        if epoch != self._epoch:
            raise StaleEpoch(self._epoch)
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


# KEYS: epoch, nonce. ARGV: the token's epoch, this claim's id, seconds to live, a new epoch
# in case the store has none. Returns {1 claimed | 0 replayed | -1 stale epoch, the store's epoch}.
_CLAIM = """
redis.call('SET', KEYS[1], ARGV[4], 'NX')
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then return {-1, epoch} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then return {1, epoch} end
return {0, epoch}
"""
# KEYS: nonce. ARGV: the claim's id. Deletes the claim only if it is still this one.
_UNDO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: epoch. ARGV: a new epoch in case the store has none.
_EPOCH = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""


class RedisNonceStore:
    """Claimed nonces shared by every replica, in Redis: `<prefix><nonce>` holds the id of the
    claim that took it, `<prefix>~epoch` the store's epoch (no expiry: it must outlive
    every claim, so Redis needs `maxmemory-policy noeviction`)."""

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
        self._epoch_key = prefix + "~epoch"  # "~" is not in a token's nonce alphabet
        self._clock = clock
        self._timeout_s = timeout_s
        self._settling: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        return f"RedisNonceStore(prefix={self._prefix!r})"  # the URL may hold a password

    async def epoch(self) -> str:
        return (await self._command("EVAL", _EPOCH, 1, self._epoch_key, new_epoch())).decode()

    async def claim(self, nonce: str, expires_at: float, epoch: str) -> bool:
        _check(nonce)
        left = expires_at - self._clock()
        if not left > 0:
            return False
        key, claim_id = self._prefix + nonce, secrets.token_urlsafe(12)
        status, current = await self._command(
            "EVAL", _CLAIM, 2, self._epoch_key, key, epoch, claim_id, math.ceil(left) + CLOCK_MARGIN_S, new_epoch(),
            undo=("EVAL", _UNDO, 1, key, claim_id))
        if status < 0:
            raise StaleEpoch(current.decode())
        return status == 1

    async def release(self, nonce: str) -> None:
        _check(nonce)
        await self._command("DEL", self._prefix + nonce)

    async def close(self) -> None:
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        await self._redis.aclose()

    async def _command(self, *args: Any, undo: tuple | None = None) -> Any:
        """One command on a pooled connection of its own, its answer awaited for the timeout.
        Without an answer, `undo` (if any) is sent on the same connection, so that Redis runs
        it right after the command whenever it runs the command, and a background task reads
        what comes back before the connection returns to the pool."""
        pool = self._redis.connection_pool
        try:
            connection = await asyncio.wait_for(pool.get_connection(), self._timeout_s)
        except Exception as error:  # redis.RedisError, socket errors, the timeout
            raise NonceStoreError(f"nonce store unavailable: {type(error).__name__}") from error
        try:
            await connection.send_command(*args)
            reply = await connection.read_response(timeout=self._timeout_s)  # None: nothing came in time
            if reply is None and undo is not None:
                await connection.send_command(*undo)
        except BaseException as error:  # redis-py has closed the connection
            await pool.release(connection)
            if isinstance(error, Exception):
                raise NonceStoreError(f"nonce store unavailable: {type(error).__name__}") from error
            raise
        if reply is not None:
            await pool.release(connection)
            return reply
        task = asyncio.create_task(self._settle(connection, 1 if undo is None else 2))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        raise NonceStoreError(f"nonce store unavailable: no answer within {self._timeout_s} s")

    async def _settle(self, connection: Any, answers: int) -> None:
        """Read the late answers, then hand the connection back (closed if they never came)."""
        try:
            for _ in range(answers):
                if await connection.read_response(timeout=SETTLE_S) is None:
                    await connection.disconnect()
                    break
        except Exception:
            pass  # an error reply, or redis-py closed the connection
        finally:
            await self._redis.connection_pool.release(connection)
