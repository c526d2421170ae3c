"""The one path of every judged request, from admission to answer.

Routes hand the engine an `Operation` (which parts it reads, which pipeline work it runs),
the tenant and the request; the engine does the rest in one order:

1. headers: content type and declared size, before anything is read (415, 413);
2. an upload place: the tenant's in-flight cap (429), then the service's upload places (503),
   so the bodies in memory are bounded;
3. the body, under a deadline and a minimum rate (408), its fields and the challenge's
   signature, tenant and expiry (4xx);
4. a worker or waiting place (503), only now that the body is in: a slow upload holds none;
5. the claim: the challenge's nonce is spent atomically in the nonce store (409 on replay),
   or, for a live session's verification, the session streamed here is taken (409 when it
   was already judged);
6. the work: a fair turn at a worker thread, which decodes, hashes and runs the pipeline;
7. the answer with its signed receipt.

A request refused after the claim but before it is judged (overload in the batcher, the
deadline, the client gone, the backend down) gives its claim back, so the customer retries
with the same token (a session, likewise, may be asked again), but only once its work has
stopped: the decoders and the batcher check the request's deadline and cancellation between
packets and model calls, and the refusal waits for the worker, so a token never carries
abandoned work. Its worker and tenant places are held until its worker is done, not until
its client leaves.

Security (`Guard`) and inference (`Inference`) are separate objects; the engine joins them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from portrait.backends.base import BackendError
from portrait.batching import Cancelled, DeadlineExceeded, QueueFull
from portrait.backends import InferenceBackend, cpu_int8, model_runtimes
from portrait.media import MediaError
from portrait.modelrepo import int8
from portrait.modelrepo.repository import served_models
from portrait.pipeline import Pipeline, Timings
from portrait.security.tokens import Challenge
from portrait.service.guard import Guard
from portrait.service.inference import Inference
from portrait.service.intake import Pace, receive_body
from portrait.service.logs import request_id
from portrait.service.metrics import Metrics
from portrait.service.problems import Problem, problem
from portrait.service.sessions import Live, Sessions
from portrait.service.uploads import Upload, check_headers, read_multipart
from portrait.settings import Settings

log = logging.getLogger("portrait.service")

# Refusals that say nothing about the media: the challenge is given back.
NOT_JUDGED = frozenset({"overloaded", "deadline_exceeded", "client_closed_request", "backend_unavailable"})


@dataclass(frozen=True)
class Parts:
    """A judged request's validated multipart fields."""

    files: dict[str, bytes]
    flags: dict[str, bool]
    token: str | None
    session: Live | None = None  # a live session's verification: its media and what it revealed


class Run:
    """What an operation's work sees on its worker thread: decoders and the pipeline, and the
    request's deadline and cancellation, which stop a decode between packets."""

    def __init__(self, engine: Engine, pipeline: Pipeline, timings: Timings, deadline: float,
                 cancelled: threading.Event) -> None:
        self._engine, self.pipeline, self.timings = engine, pipeline, timings
        self._deadline, self._cancelled = deadline, cancelled

    def checkpoint(self) -> None:
        """Raise if the work must stop: the client left, or the deadline passed."""
        if self._cancelled.is_set():
            raise Cancelled("decode")
        if time.monotonic() > self._deadline:
            raise DeadlineExceeded("decode")

    def image(self, data: bytes) -> Any:
        settings = self._engine.settings
        self.checkpoint()  # an image decode is bounded (media/jpeg.py) and runs whole
        return self._decode("image", lambda: self._engine.inference.decode.image(data, max_pixels=settings.max_image_pixels))

    def video(self, data: bytes) -> Any:
        settings = self._engine.settings
        inference = self._engine.inference
        return self._decode("video", lambda: inference.decode.video(data, settings.video_limits, self.checkpoint,
                                                                     inference.decode_threads()))

    def _decode(self, kind: str, decode: Callable[[], Any]) -> Any:
        with self.timings.stage("decode"):
            try:
                return decode()
            except MediaError as error:
                self._engine.metrics.decode_failures.labels(kind, error.code).inc()
                raise


@dataclass(frozen=True)
class Operation:
    """One judged endpoint: the files it reads, its boolean flags, whether it answers a
    challenge, and its pipeline work."""

    endpoint: str
    files: tuple[str, ...]
    flags: tuple[str, ...]
    challenge: bool
    work: Callable[[Run, Parts, Challenge | None], dict]
    session: bool = False  # judges a live session's recording (its id is in the path)

    def parts(self, upload: Upload) -> Parts:
        if self.challenge and upload.field("mirrored", required=False) is not None:
            # Signed into the challenge: were it said here, a client could swap left and
            # right after seeing the actions. Refused whatever its value.
            raise problem("mirrored_not_accepted", "mirrored is fixed when the challenge is issued "
                          "(POST /v1/challenges) and cannot be set on this request")
        files = {name: upload.file(name) for name in self.files}
        token = upload.field("challenge") if self.challenge else None
        return Parts(files, {name: _flag(upload, name) for name in self.flags}, token)


class Ticket:
    """A request's places, each released once: its tenant's for its whole life, an upload
    place while its body arrives, then a worker or waiting place."""

    def __init__(self, engine: Engine, tenant: str) -> None:
        self.engine, self.tenant = engine, tenant
        self.uploading = self.admitted = self.handed_to_worker = False
        self._released = False

    def body_received(self) -> None:
        if self.uploading:
            self.uploading = False
            self.engine.uploading -= 1
            self.engine.metrics.uploads.set(self.engine.uploading)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.body_received()
            if self.admitted:
                self.engine.admitted -= 1
            self.engine.guard.in_flight.release(self.tenant)


class Engine:
    def __init__(self, settings: Settings, backend: InferenceBackend | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.guard = Guard(settings)
        self.sessions = Sessions(settings, self.guard, self.metrics)
        self.inference = Inference(settings, self.metrics, backend)
        runtimes = model_runtimes(self.inference.inner)
        self.models = int8.served(served_models(settings.model_repository), runtimes, settings.model_repository)
        log.info("model runtimes", extra={"backend": settings.backend, "runtimes": runtimes, "cpu_int8": cpu_int8()})
        for model in self.models:
            self.metrics.models.labels(model["name"]).info({"version": model["version"], "sha256": model["sha256"],
                                                            "runtime": runtimes.get(model["name"], "-")})
        self.pace = Pace(settings.upload_timeout_s, settings.upload_min_bytes_per_s)
        self.draining = False
        # Requests holding an upload place, and a worker or waiting place; touched only on the event loop.
        self.uploading = self.admitted = 0

    async def judge(self, op: Operation, tenant: str, request: Request, session_id: str | None = None) -> JSONResponse:
        if op.challenge:
            self.guard.one_shot(tenant)
        limit = self.settings.max_upload_bytes
        check_headers(request, limit)
        ticket = self._admit(tenant)
        live = None
        try:
            upload = await read_multipart(request, limit, receive_body(request.receive, self.pace))
            ticket.body_received()
            parts = op.parts(upload)
            challenge = self.guard.challenge(parts.token, tenant) if op.challenge else None
            self._admit_to_work(ticket)
            if challenge is not None:
                await self.guard.claim(challenge)
            if op.session:
                live = self.sessions.claim(session_id, tenant)
                parts = replace(parts, session=live)
            judged = True  # anything but a refusal before judging spends the session
            try:
                answer, inputs = await self._execute(op, ticket, request, parts, challenge)
            except Problem as refused:
                judged = refused.code not in NOT_JUDGED
                if challenge is not None and not judged:
                    await self.guard.release(challenge)
                raise
            finally:
                if live is not None and judged:
                    self.sessions.judged(live)
                elif live is not None:
                    self.sessions.release(live)
        finally:
            if not ticket.handed_to_worker:
                ticket.release()
        if challenge is not None:
            inputs["challenge_nonce"] = challenge.nonce
        return self._respond(op.endpoint, tenant, answer, inputs)

    def _admit(self, tenant: str) -> Ticket:
        """The tenant's place and an upload place, before the body is read."""
        if not self.guard.in_flight.acquire(tenant):
            raise problem("too_many_in_flight", "this tenant has too many requests in progress", retry_after_s=1)
        if self.uploading >= self.settings.max_uploads:
            self.guard.in_flight.release(tenant)
            raise problem("overloaded", "every upload place is taken; try again shortly", retry_after_s=2)
        ticket = Ticket(self, tenant)
        ticket.uploading = True
        self.uploading += 1
        self.metrics.uploads.set(self.uploading)
        return ticket

    def _admit_to_work(self, ticket: Ticket) -> None:
        """A worker or waiting place, once the body is in."""
        if self.admitted >= self.settings.workers + self.settings.max_waiting:
            raise problem("overloaded", "the service is at capacity; try again shortly", retry_after_s=2)
        self.admitted += 1
        ticket.admitted = True

    async def _execute(self, op: Operation, ticket: Ticket, request: Request, parts: Parts,
                       challenge: Challenge | None) -> tuple[dict, dict]:
        """The work on a worker under the request deadline, stopped when the client goes away."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        cancelled = threading.Event()
        timings = Timings()
        started = []

        def work() -> tuple[dict, dict]:
            run = Run(self, self.inference.pipeline(deadline, cancelled), timings, deadline, cancelled)
            answer = op.work(run, parts, challenge)
            digests = {f"{name}_sha256": hashlib.sha256(data).hexdigest() for name, data in parts.files.items()}
            return answer, digests

        task = asyncio.ensure_future(self.inference.run(ticket.tenant, work, lambda: started.append(True)))
        ticket.handed_to_worker = True
        task.add_done_callback(lambda done: _finished(ticket, done))

        async def stop() -> None:
            """Stop the work and wait until it has: the claim is given back only then."""
            cancelled.set()
            if not started:
                task.cancel()  # still waiting for a worker: leave the line
            await asyncio.wait({task})

        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    break
                if time.monotonic() > deadline:
                    await stop()
                    raise problem("deadline_exceeded", "the verification took too long; try again")
                if await request.is_disconnected():
                    await stop()
                    raise problem("client_closed_request", "the client went away")
            result = task.result()
        except MediaError as error:
            raise Problem(error.status, error.code, str(error)) from None
        except QueueFull as error:
            raise problem("overloaded", "the service is at capacity; try again shortly",
                          retry_after_s=error.retry_after_s) from None
        except DeadlineExceeded:
            raise problem("deadline_exceeded", "the verification took too long; try again") from None
        except Cancelled:
            raise problem("client_closed_request", "the client went away") from None
        except BackendError as error:
            self.metrics.backend_errors.labels(self.inference.inner.name).inc()
            log.error("backend error", extra={"error": str(error)})
            raise problem("backend_unavailable", "the inference backend is unavailable", retry_after_s=5) from None
        for stage, ms in timings.ms.items():
            self.metrics.stages.labels(stage).observe(ms / 1000)
        return result

    def _respond(self, endpoint: str, tenant: str, answer: dict, inputs: dict) -> JSONResponse:
        """The answer, in full or as the decision and reasons (the tenant's setting), and the
        receipt, which carries what an audit needs either way."""
        rid = request_id.get()
        for reason in answer["reasons"] or ["none"]:
            self.metrics.decisions.labels(endpoint, answer["decision"], reason).inc()
        receipt_id = uuid.uuid4().hex  # unique per receipt, whatever request id the client chose
        claims = {
            "rid": receipt_id, "request_id": rid, "tenant": tenant, "endpoint": endpoint, "iat": int(time.time()),
            "inputs": inputs, "decision": answer["decision"], "reasons": answer["reasons"],
            "scores": _scores(answer), "models": self.models, "thresholds": answer["thresholds"],
        }
        if "liveness" in answer:  # what was asked, and what was seen
            active = answer["liveness"]["active"]
            claims["challenge"] = active["challenge"]
            claims["events"] = [{k: e[k] for k in ("action", "start_s", "end_s")} for e in active["observed"]]
            if answer["liveness"].get("light") is not None:  # the screen's colours and the skin's answer
                claims["light"] = answer["liveness"]["light"]
                self._observe_light(answer["liveness"]["light"])
        if "session" in answer:  # what the live session revealed when, and how its media arrived
            claims["session"] = answer["session"]
        shown = {**answer, "models": self.models} if self.settings.full_answer_for(tenant) else {
            "decision": answer["decision"], "reasons": answer["reasons"]}
        body = {**shown, "request_id": rid, "receipt": self.guard.receipts.sign(claims)}
        log.info("decision", extra={"endpoint": endpoint, "decision": answer["decision"], "reasons": answer["reasons"],
                                    "receipt_id": receipt_id})
        return JSONResponse(body, headers={"x-portrait-outcome": answer["decision"]})

    def _observe_light(self, reading: dict) -> None:
        if reading.get("score") is not None:
            self.metrics.light_score.observe(reading["score"])
            self.metrics.light_latency.observe(reading["latency_s"])

    async def ready(self) -> tuple[bool, str | None]:
        """Readiness: not draining, the nonce store (when shared) and the backend answer.
        The backend probe runs off the loop (it has its own time limit)."""
        if self.draining:
            return False, "shutting down"
        ready, why = await self.guard.ready()
        if not ready:
            return ready, why
        ready, why = await asyncio.get_running_loop().run_in_executor(None, self.inference.ready)
        self.metrics.backend_up.set(1 if ready else 0)
        return ready, why

    async def close(self) -> None:
        self.draining = True
        await asyncio.get_running_loop().run_in_executor(None, self.inference.close)
        await self.guard.close()


def _finished(ticket: Ticket, task: asyncio.Future) -> None:
    """The worker is done (or the request left the line): free its places. A request that
    was abandoned never awaits its task, so its outcome is read here."""
    ticket.release()
    if not task.cancelled():
        task.exception()


def _flag(upload: Upload, name: str) -> bool:
    value = (upload.field(name, required=False) or "false").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise problem("invalid_field", f"{name} must be true or false")
    return value in ("true", "1")


def _scores(answer: dict) -> dict:
    scores = {}
    if "match" in answer:
        scores["match"] = answer["match"]["score"]
    if "liveness" in answer:
        scores["passive"] = answer["liveness"]["passive"]["score"]
        scores["continuity"] = answer["liveness"]["continuity"]["score"]
        scores["synthetic"] = answer["liveness"]["synthetic"]["score"]
    return scores
