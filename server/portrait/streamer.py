"""A capture client for live sessions in Python, as the browser's is in JavaScript: frames are
encoded to WebM (VP8) as they are made, stamped with the wall time of their capture, sent in
slices of `chunk_ms` over the session's WebSocket, and the prompts and colours the session
reveals are handed to the frame source as they arrive.

The tests, `benchmarks/bench_sessions.py` and `benchmarks/forge_session.py` drive sessions
with it; a frame source decides what the "camera" sees (a dev clip lit by the colours shown,
the same clip unlit, a forged recording re-timed to the prompts).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import av
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


@dataclass
class Revealed:
    """What the app has been told so far, with the recording second it arrived at."""

    prompts: list[tuple[float, str]] = field(default_factory=list)
    colours: list[tuple[float, str]] = field(default_factory=list)
    stopped_at: float | None = None
    messages: list[dict] = field(default_factory=list)

    def colour_at(self, t: float) -> str | None:
        """The colour the screen showed at recording second `t`."""
        shown = [name for at, name in self.colours if at <= t]
        return shown[-1] if shown else None


FrameSource = Callable[[float, Revealed], np.ndarray]  # (recording second, revealed) -> BGR frame


class _Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.sent: list[bytes] = []  # everything taken, in order: the recording as the session got it

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        self.sent.append(data)
        return data


@dataclass
class Pace:
    """How the client sends: `speed` > 1 pushes media faster than it is recorded (a file
    pushed), < 1 slower; `stall_at_s` stops sending for `stall_s` there; `overrun_s` goes on
    recording that long after the session said stop."""

    speed: float = 1.0
    stall_at_s: float | None = None
    stall_s: float = 0.0
    overrun_s: float = 0.0


def stream(ws_url: str, token: str, source: FrameSource, size: tuple[int, int], fps: float = 15.0,
           chunk_ms: int = 250, pace: Pace = Pace(), max_s: float = 20.0, bitrate: int = 1_500_000) -> dict:
    """Run one session's stream from this client; returns the revealed record and the
    session's last message ("complete" or "error")."""
    width, height = size
    revealed = Revealed()
    sink = _Sink()
    container = av.open(sink, "w", format="webm", options={"live": "1", "cluster_time_limit": str(chunk_ms)})
    video = container.add_stream("libvpx", rate=int(round(fps)))
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.time_base = Fraction(1, 1000)
    video.bit_rate = bitrate
    video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    try:
        _run(ws_url, token, source, fps, chunk_ms, pace, max_s, revealed, sink, container, video)
    except ConnectionClosed as closed:
        _closed(revealed, closed)
    last = next((m for m in reversed(revealed.messages) if m["type"] in ("complete", "error")), {"type": "closed"})
    return {"revealed": revealed, "last": last, "media": b"".join(sink.sent), "chunks": sink.sent}


def _run(ws_url: str, token: str, source: FrameSource, fps: float, chunk_ms: int, pace: Pace, max_s: float,
         revealed: Revealed, sink: _Sink, container, video) -> None:
    with connect(ws_url, max_size=2 ** 20, open_timeout=10) as ws:
        ws.send(json.dumps({"token": token}))
        ready = json.loads(ws.recv(timeout=10))
        revealed.messages.append(ready)
        if ready.get("type") != "ready":
            return
        start = time.monotonic()
        next_send, index, stalled = chunk_ms / 1000, 0, False
        try:
            while True:
                wall = (time.monotonic() - start)
                t = wall * pace.speed  # the recording second this frame is stamped with
                if pace.stall_at_s is not None and not stalled and t >= pace.stall_at_s:
                    time.sleep(pace.stall_s)
                    stalled = True
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(source(t, revealed)), format="bgr24")
                frame.pts = int(t * 1000)
                frame.time_base = Fraction(1, 1000)
                for packet in video.encode(frame):
                    container.mux(packet)
                index += 1
                done = (revealed.stopped_at is not None and t >= revealed.stopped_at + pace.overrun_s) or t > max_s
                if t >= next_send or done:
                    if done:
                        for packet in video.encode():
                            container.mux(packet)
                        container.close()
                    data = sink.take()
                    if data:
                        ws.send(data)
                    next_send = t + chunk_ms / 1000
                if done:
                    ws.send(json.dumps({"type": "end"}))
                    break
                _drain(ws, revealed, t)
                if any(m["type"] == "error" for m in revealed.messages):
                    break
                target = index / fps / pace.speed
                time.sleep(max(0.0, target - (time.monotonic() - start)))
            while True:
                message = json.loads(ws.recv(timeout=30))
                revealed.messages.append(message)
                if message["type"] in ("complete", "error"):
                    break
        except TimeoutError:
            pass
        except ConnectionClosed as closed:  # refused while sending: the close frame has the code
            _closed(revealed, closed)


def _closed(revealed: Revealed, closed: ConnectionClosed) -> None:
    """A refusal the client missed while sending: its code is the close frame's reason."""
    frame = closed.rcvd
    if frame is not None and frame.code >= 4000 and not any(m["type"] == "error" for m in revealed.messages):
        revealed.messages.append({"type": "error", "code": frame.reason, "close_code": frame.code})


def _drain(ws, revealed: Revealed, t: float) -> None:
    """Read every message waiting, without blocking: prompts and colours take effect now."""
    while True:
        try:
            text = ws.recv(timeout=0)
        except TimeoutError:
            return
        message = json.loads(text)
        revealed.messages.append(message)
        if message["type"] == "prompt":
            revealed.prompts.append((t, message["action"]))
        elif message["type"] == "light":
            revealed.colours.append((t, message["colour"]))
        elif message["type"] == "stop":
            revealed.stopped_at = t
