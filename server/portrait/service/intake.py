"""Request bodies received under a deadline and a minimum rate.

A body arrives while its request holds an upload place, never a worker's: the engine hands
worker and waiting places only to requests whose body is in, so a client that uploads
slowly, or stops halfway, costs an upload place and the bytes it has sent, for a bounded
time. A body must be complete within `timeout_s`, and every `window_s` it must have grown by
`min_bytes_per_s x window_s` (or be complete); otherwise 408 `upload_too_slow`. A client
that closes its connection mid-body is 499 `client_closed_request`, not a malformed body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from portrait.service.problems import problem

# The span over which the minimum rate is measured: long enough for a mobile link's pauses,
# short enough that a stalled upload is let go within two of them.
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Pace:
    """How fast a body must arrive."""

    timeout_s: float
    min_bytes_per_s: int
    window_s: float = RATE_WINDOW_S


async def receive_body(receive: Callable[[], Awaitable[dict]], pace: Pace,
                       clock: Callable[[], float] = time.monotonic) -> AsyncIterator[bytes]:
    """The body's chunks from the ASGI `receive`, as they arrive, under `pace`. Waiting for
    a chunk is cancelled at the window's end or the deadline; the server keeps what
    arrives meanwhile for the next call."""
    started = clock()
    deadline = started + pace.timeout_s
    window_end, owed, grown = started + pace.window_s, pace.min_bytes_per_s * pace.window_s, 0
    while True:
        now = clock()
        if now >= deadline:
            raise _too_slow(pace)
        if now >= window_end:
            if grown < owed:
                raise _too_slow(pace)
            window_end, grown = now + pace.window_s, 0
        try:
            message = await asyncio.wait_for(receive(), min(deadline, window_end) - now)
        except asyncio.TimeoutError:
            continue
        if message["type"] == "http.disconnect":
            raise problem("client_closed_request", "the client went away during the upload")
        chunk = message.get("body", b"")
        if chunk:
            grown += len(chunk)
            yield chunk
        if not message.get("more_body", False):
            return


def _too_slow(pace: Pace):
    return problem("upload_too_slow", f"the body must arrive within {pace.timeout_s:g} s and at least "
                                      f"{pace.min_bytes_per_s} bytes per second over every {pace.window_s:g} s")
