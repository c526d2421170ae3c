"""Live capture sessions: the challenge is revealed while the customer records.

`POST /v1/sessions` (the carrier's back end, API key) draws a session: the challenge's
actions and prompt times (`portrait.challenge`) and a screen-colour sequence
(`stages.light`). Nothing of it is disclosed: the session id *is* the plan, sealed with
AES-GCM under a key derived from `CHALLENGE_SECRET`, so any replica can open it and none
keeps state before the stream starts. The challenge is drawn as a one-shot challenge is
(`Guard.draw`: the server's draw, or client-named where the tenant may, marked so), and the
plan carries the nonce store's epoch, as a token does. The answer carries a short-lived client
token (an HMAC of the id), which the customer's app presents on the stream.

The app streams the camera over a WebSocket (`/v1/sessions/{id}/stream`: MediaRecorder's WebM
chunks of a fraction of a second). The replica that takes the stream claims the session's
nonce in the nonce store under the plan's epoch (one stream per session, across replicas, and
none for a session created before the store lost its data), keeps the media in
memory, reads the media time of each chunk (`media.webm.MediaClock`) and reveals each prompt
and each screen colour when that time reaches its due second, recording the media time and
the wall time of every reveal. The media must arrive at the pace they were recorded: a
stream that runs ahead of real time (a file pushed), falls behind it, stalls or runs long is
refused with its own code. When the last window has closed it says stop.

`POST /v1/sessions/{id}/verifications` (back end, ID photo) then judges the recording on the
engine's one path (an upload place while the ID photo arrives, a worker place once it is in),
against the prompt times as revealed, with the light check and the generated-face check
against the ID photo, and signs a receipt of what was revealed when. Media live in this
process's memory only, bounded per session and in total (a stream reserves
`SESSION_MAX_BYTES` of `SESSIONS_MAX_BYTES` when it starts), and are dropped when judged or
expired. Several replicas route a session's stream
and verification to one replica (sticky by session id: deploy/README.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from portrait.challenge import ChallengeSpec
from portrait.media.errors import MediaError
from portrait.media.webm import MediaClock
from portrait.security._b64 import b64d, b64e
from portrait.service.guard import Guard
from portrait.service.metrics import Metrics
from portrait.service.problems import Problem, problem
from portrait.settings import Settings
from portrait.stages import light

log = logging.getLogger("portrait.sessions")

VERSION = 2  # 2: the nonce store's epoch
CHUNK_MS = 250  # the MediaRecorder slice the capture module asks for
# Pace: media time against the wall time since the first chunk arrived.
AHEAD_S = 1.0  # more media than real time allows (a slice, the encoder's first burst, jitter): pushed, not recorded
BEHIND_S = 2.0  # less media than real time: a slow network for a moment, or frames made slower than real time
STALL_S = 2.0  # no chunk at all for this long
FIRST_CHUNK_S = 15.0  # from the stream opening to its first chunk (the camera starting)
END_S = 2.0  # after stop, the recorder's last chunk and "end" arrive within this
MAX_MESSAGE_BYTES = 1024 * 1024  # one chunk; a 250 ms slice at 2 Mbit/s is 64 kB
MAX_ID_LENGTH = 1024

@dataclass(frozen=True)
class Plan:
    """What a session will reveal, sealed into its id."""

    tenant: str
    challenge: ChallengeSpec  # client_named when the caller chose the actions
    light: light.Sequence
    nonce: str
    epoch: str  # the nonce store's, when the session was created
    expires_at: float

    def claims(self) -> dict:
        return {"tenant": self.tenant, "actions": list(self.challenge.actions),
                "schedule": list(self.challenge.schedule), "mirrored": self.challenge.mirrored,
                "client_named": self.challenge.client_named, "colours": list(self.light.colours),
                "due_s": list(self.light.due_s), "nonce": self.nonce, "epoch": self.epoch, "exp": self.expires_at,
                "v": VERSION}


class Sealer:
    """Seals plans into session ids and derives client tokens, with keys derived from the
    challenge secret (shared by every replica)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(hmac.new(secret, b"portrait session plan", hashlib.sha256).digest())
        self._token_key = hmac.new(secret, b"portrait session client token", hashlib.sha256).digest()

    def seal(self, plan: Plan) -> str:
        iv = secrets.token_bytes(12)
        body = json.dumps(plan.claims(), separators=(",", ":")).encode()
        return b64e(iv + self._aead.encrypt(iv, body, b"portrait-session"))

    def open(self, session_id: str) -> Plan:
        if not isinstance(session_id, str) or len(session_id) > MAX_ID_LENGTH:
            raise problem("session_not_found")
        try:
            raw = b64d(session_id)
            claims = json.loads(self._aead.decrypt(raw[:12], raw[12:], b"portrait-session"))
        except (ValueError, InvalidTag):
            raise problem("session_not_found") from None
        if not isinstance(claims, dict) or claims.get("v") != VERSION:  # sealed by an older release
            raise problem("session_not_found")
        spec = ChallengeSpec.timed(claims["actions"], claims["schedule"], claims["mirrored"], claims["client_named"])
        sequence = light.Sequence(tuple(claims["colours"]), tuple(claims["due_s"]))
        return Plan(claims["tenant"], spec, sequence, claims["nonce"], claims["epoch"], float(claims["exp"]))

    def client_token(self, session_id: str) -> str:
        return b64e(hmac.new(self._token_key, session_id.encode(), hashlib.sha256).digest())

    def token_ok(self, session_id: str, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.client_token(session_id).encode())


@dataclass
class Reveal:
    kind: str  # "prompt" or "light"
    index: int
    value: str  # the action or the colour's name
    media_s: float  # the media time received when it was revealed
    wall_s: float  # seconds since the first chunk arrived

    def claims(self) -> dict:
        return {"kind": self.kind, "index": self.index, "value": self.value, "media_s": round(self.media_s, 3),
                "wall_s": round(self.wall_s, 3)}


@dataclass
class Live:
    """A session this replica streams: its plan, media in memory and what it revealed."""

    session_id: str
    plan: Plan
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    clock: MediaClock = field(default_factory=MediaClock)
    reveals: list[Reveal] = field(default_factory=list)
    state: str = "streaming"  # streaming, complete, failed, judging, judged
    failure: str | None = None
    started_wall: float | None = None  # monotonic time of the first chunk
    last_chunk: float = field(default_factory=time.monotonic)
    stop_s: float | None = None  # media second at which stop was sent
    ended_at: float = 0.0  # monotonic time the stream completed or failed (for expiry)
    reserved: bool = False  # holds SESSION_MAX_BYTES of the process's session memory
    most_ahead_s: float = 0.0
    most_behind_s: float = 0.0
    largest_gap_s: float = 0.0

    @property
    def prompts(self) -> list[Reveal]:
        return [r for r in self.reveals if r.kind == "prompt"]

    @property
    def colours(self) -> list[Reveal]:
        return [r for r in self.reveals if r.kind == "light"]

    def challenge(self) -> ChallengeSpec:
        """The challenge as the customer met it: each prompt at the second it was revealed."""
        asked = self.plan.challenge
        return ChallengeSpec.timed(asked.actions, [r.media_s for r in self.prompts], asked.mirrored, asked.client_named)

    def shown(self) -> light.Shown:
        """The colours revealed: media seconds and palette indices."""
        return light.Shown(tuple(r.media_s for r in self.colours), tuple(light.NAMES.index(r.value) for r in self.colours))

    def media(self) -> bytes:
        return b"".join(self.chunks)

    def claims(self) -> dict:
        """What was revealed when, and how the media arrived, for the answer and the receipt."""
        return {"id_sha256": hashlib.sha256(self.session_id.encode()).hexdigest(),
                "reveals": [r.claims() for r in self.reveals], "stop_media_s": self.stop_s,
                "media_s": None if self.clock.media_s is None else round(self.clock.media_s, 3),
                "bytes": self.size,
                "pace": {"most_ahead_s": round(self.most_ahead_s, 3), "most_behind_s": round(self.most_behind_s, 3),
                         "largest_gap_s": round(self.largest_gap_s, 3), "ahead_limit_s": AHEAD_S,
                         "behind_limit_s": BEHIND_S, "stall_limit_s": STALL_S}}


class Sessions:
    """Session plans (sealed, stateless) and the streams this replica holds (in memory)."""

    def __init__(self, settings: Settings, guard: Guard, metrics: Metrics) -> None:
        self.settings = settings
        self.guard = guard
        self.sealer = Sealer(guard.secret)
        self.metrics = metrics
        self.live: dict[str, Live] = {}
        self.reserved = 0  # bytes reserved by the streams held (SESSION_MAX_BYTES each)

    # ---- creation (any replica) -----------------------------------------------------------
    async def create(self, tenant: str, mirrored: bool | None, actions: list[str] | None = None,
                     schedule: list[float] | None = None) -> tuple[str, str, Plan]:
        """A new session: (id, client token, plan). Actions and schedule are the server's
        draw unless named (kiosks and tests, where the tenant may); the colours always are."""
        spec, epoch = await self.guard.draw(tenant, mirrored, actions, schedule)
        rng = np.random.default_rng(secrets.randbits(128))
        plan = Plan(tenant, spec, light.random_sequence(float(spec.record_s) + light.DURATIONS_S[-1], rng),
                    b64e(secrets.token_bytes(16)), epoch, time.time() + self.settings.session_ttl_s)
        session_id = self.sealer.seal(plan)
        self.metrics.sessions.labels("created").inc()
        return session_id, self.sealer.client_token(session_id), plan

    # ---- the stream (the replica the session is routed to) ----------------------------------
    async def stream(self, websocket: WebSocket, session_id: str) -> None:
        """Run one session's stream to its end; every refusal closes with its code."""
        await websocket.accept()
        live = None
        try:
            hello = await asyncio.wait_for(websocket.receive_text(), timeout=FIRST_CHUNK_S)
            plan = self._plan(session_id)
            if not self.sealer.token_ok(session_id, _message(hello).get("token")):
                raise problem("invalid_client_token")
            if time.time() >= plan.expires_at:
                raise problem("session_expired")
            live = await self._start(session_id, plan)
            await websocket.send_json({"type": "ready", "chunk_ms": CHUNK_MS})
            await self._receive(websocket, live)
            await websocket.send_json({"type": "complete", "media_s": round(live.clock.media_s or 0.0, 3)})
            await websocket.close(1000)
        except (WebSocketDisconnect, asyncio.CancelledError):
            if live is not None and live.state == "streaming":
                self._fail(live, "session_stalled")
        except asyncio.TimeoutError:
            await self._refuse(websocket, live, problem("session_stalled", "no media arrived in time"))
        except MediaError as error:
            await self._refuse(websocket, live, Problem(error.status, error.code, str(error)))
        except Problem as refused:
            await self._refuse(websocket, live, refused)

    def _plan(self, session_id: str) -> Plan:
        plan = self.sealer.open(session_id)
        if session_id in self.live:
            raise problem("session_already_streamed")
        return plan

    async def _start(self, session_id: str, plan: Plan) -> Live:
        """Claim the session (one stream, across replicas) and reserve its memory."""
        if self.reserved + self.settings.session_max_bytes > self.settings.sessions_max_bytes:
            raise problem("sessions_full", retry_after_s=5)
        claimed = await self.guard.claim_session(plan.nonce, plan.expires_at + self.settings.session_ttl_s, plan.epoch)
        if not claimed or session_id in self.live:
            raise problem("session_already_streamed")
        live = Live(session_id, plan, reserved=True)
        self.live[session_id] = live
        self.reserved += self.settings.session_max_bytes
        self.metrics.session_streams.set(len(self.live))
        return live

    async def _receive(self, websocket: WebSocket, live: Live) -> None:
        """Chunks until the recorder's end after stop; reveals on the way; pace checked on
        every chunk and whenever none arrives."""
        deadline = FIRST_CHUNK_S
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), timeout=deadline)
            except asyncio.TimeoutError:
                raise problem("session_stalled" if live.stop_s is None else "session_too_long") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            now = time.monotonic()
            if message.get("bytes") is not None:
                await self._chunk(websocket, live, message["bytes"], now)
            elif _message(message.get("text") or "").get("type") == "end":
                if live.stop_s is None:
                    raise problem("invalid_stream_message", "the stream ended before the session said stop")
                self._complete(live)
                return
            else:
                raise problem("invalid_stream_message", 'send media chunks as binary messages, then {"type": "end"}')
            deadline = STALL_S if live.stop_s is None else END_S
            self._check_pace(live, time.monotonic())

    async def _chunk(self, websocket: WebSocket, live: Live, chunk: bytes, now: float) -> None:
        if len(chunk) > MAX_MESSAGE_BYTES or live.size + len(chunk) > self.settings.session_max_bytes:
            raise problem("session_too_large")
        if live.started_wall is None:
            live.started_wall = now
        live.largest_gap_s = max(live.largest_gap_s, now - live.last_chunk) if live.size else 0.0
        live.last_chunk = now
        live.chunks.append(chunk)
        live.size += len(chunk)
        self.metrics.session_bytes.inc(len(chunk))
        media = live.clock.feed(chunk)
        if media is None:
            return
        wall = now - live.started_wall
        live.most_ahead_s = max(live.most_ahead_s, media - wall)
        live.most_behind_s = max(live.most_behind_s, wall - media)
        self._check_pace(live, now)
        for reveal in self._due(live, media, wall):
            await websocket.send_json({"type": reveal.kind, "index": reveal.index, reveal_key(reveal.kind): reveal.value,
                                       **({"rgb": "#%02x%02x%02x" % light.PALETTE[light.NAMES.index(reveal.value)][1]}
                                          if reveal.kind == "light" else {}),
                                       "media_s": round(media, 3)})
        if live.stop_s is None and live.prompts and len(live.prompts) == len(live.plan.challenge.actions):
            if media >= float(live.challenge().record_s):
                live.stop_s = round(media, 3)
                await websocket.send_json({"type": "stop", "media_s": live.stop_s})
        elif live.stop_s is not None and media > live.stop_s + END_S:
            raise problem("session_too_long", "media went on well past stop")

    def _due(self, live: Live, media: float, wall: float) -> list[Reveal]:
        """Prompts and colours whose second the media have reached and that were not yet
        revealed; colours stop with the recording."""
        out = []
        plan = live.plan
        schedule = plan.challenge.schedule
        while len(live.prompts) < len(schedule) and media >= schedule[len(live.prompts)]:
            index = len(live.prompts)
            live.reveals.append(Reveal("prompt", index, plan.challenge.actions[index], media, wall))
            out.append(live.reveals[-1])
        colours = live.colours
        if live.stop_s is None:
            while len(colours) < len(plan.light.due_s) and media >= plan.light.due_s[len(colours)]:
                index = len(colours)
                live.reveals.append(Reveal("light", index, light.NAMES[plan.light.colours[index]], media, wall))
                colours.append(live.reveals[-1])
                out.append(live.reveals[-1])
        return out

    def _check_pace(self, live: Live, now: float) -> None:
        if live.started_wall is None:
            return
        wall = now - live.started_wall
        media = live.clock.media_s or 0.0
        if media - wall > AHEAD_S:
            raise problem("session_ahead_of_real_time", f"{media:.2f} s of media after {wall:.2f} s: the media "
                          "must arrive as they are recorded")
        if wall - media > BEHIND_S + (END_S if live.stop_s is not None else 0.0):
            raise problem("session_behind_real_time", f"{media:.2f} s of media after {wall:.2f} s")
        if wall > float(live.plan.challenge.record_s) + len(live.plan.challenge.actions) * CHUNK_MS / 1000 + BEHIND_S + END_S + 2:
            raise problem("session_too_long")

    def _complete(self, live: Live) -> None:
        live.state, live.ended_at = "complete", time.monotonic()
        self.metrics.sessions.labels("streamed").inc()

    def _fail(self, live: Live, code: str) -> None:
        """Keep the refusal (for the verification to report), drop the media."""
        if live.state in ("streaming", "complete"):
            live.state, live.failure, live.ended_at = "failed", code, time.monotonic()
            self._drop_media(live)
            self.metrics.sessions.labels(code).inc()

    async def _refuse(self, websocket: WebSocket, live: Live | None, refused: Problem) -> None:
        """An error message with the code, then a close code of 4000 + the code's HTTP status
        with the code as its reason (a client that was sending may miss the message); a
        refusal after the stream started is also what its verification answers."""
        if live is not None:
            self._fail(live, refused.code)
        log.info("session refused", extra={"code": refused.code})
        if websocket.client_state == WebSocketState.CONNECTED:
            try:
                await websocket.send_json({"type": "error", "code": refused.code, "detail": refused.detail})
                await websocket.close(4000 + refused.status, reason=refused.code)
            except (WebSocketDisconnect, RuntimeError):
                pass

    def _drop_media(self, live: Live) -> None:
        """The media go; the record of what was revealed stays until the session expires."""
        self.metrics.session_bytes.dec(live.size)
        live.chunks, live.size = [], 0
        if live.reserved:
            live.reserved = False
            self.reserved -= self.settings.session_max_bytes

    def _forget(self, live: Live) -> None:
        self._drop_media(live)
        self.live.pop(live.session_id, None)
        self.metrics.session_streams.set(len(self.live))

    # ---- the verdict (the back end, on the replica holding the stream) ---------------------
    def claim(self, session_id: str, tenant: str) -> Live:
        """The session for its verification: this tenant's, streamed to its end, judged once."""
        plan = self.sealer.open(session_id)
        if not hmac.compare_digest(plan.tenant.encode(), tenant.encode()):
            raise problem("wrong_tenant", "the session was created by another tenant")
        self.expire()
        live = self.live.get(session_id)
        if live is None:
            raise problem("session_expired" if time.time() >= plan.expires_at else "session_not_streamed")
        if live.state == "failed":
            raise problem(live.failure or "session_stalled")
        if live.state == "streaming":
            raise problem("session_not_streamed", "the stream has not ended yet")
        if live.state in ("judging", "judged"):
            raise problem("session_already_judged")
        live.state = "judging"
        return live

    def release(self, live: Live) -> None:
        """A verification refused before it was judged: the session may be asked again."""
        if live.state == "judging":
            live.state = "complete"

    def judged(self, live: Live) -> None:
        live.state = "judged"
        self._drop_media(live)
        self.metrics.sessions.labels("judged").inc()

    def expire(self) -> None:
        """Forget streams past their time: held media first, then the record of the outcome."""
        now = time.monotonic()
        ttl = self.settings.session_ttl_s
        for live in list(self.live.values()):
            if live.state == "streaming":
                continue
            if live.state == "judging":
                continue
            if now - live.ended_at > ttl:
                self._forget(live)

    async def sweep(self) -> None:
        """Expire finished sessions every few seconds (a background task of the app)."""
        while True:
            await asyncio.sleep(5)
            self.expire()


def reveal_key(kind: str) -> str:
    return "action" if kind == "prompt" else "colour"


def _message(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise problem("invalid_stream_message", "the stream's text messages are JSON objects") from None
    if not isinstance(value, dict):
        raise problem("invalid_stream_message", "the stream's text messages are JSON objects")
    return value
