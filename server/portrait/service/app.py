"""The FastAPI application: routes, authentication, limits, errors, access logs."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from portrait.backends.base import BackendError
from portrait.batching import Cancelled, DeadlineExceeded, QueueFull
from portrait.media import MediaError
from portrait.pipeline import Pipeline, Timings
from portrait.security.nonces import NonceStoreError
from portrait.challenge import ChallengeSpec, random_challenge, random_schedule
from portrait.security.tokens import Challenge, TokenError, parse_actions, parse_schedule
from portrait.service import schemas
from portrait.service.engine import Engine, digest
from portrait.service.logs import request_id
from portrait.service.problems import Problem, problem_response
from portrait.service.uploads import Upload, read_multipart
from portrait.settings import Settings

log = logging.getLogger("portrait.access")

TOKEN_STATUS = {"malformed_challenge": 400, "invalid_actions": 422, "invalid_schedule": 422, "forged_challenge": 403,
                "wrong_tenant": 403, "expired_challenge": 410}


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = engine or Engine(settings)
        yield
        await asyncio.get_running_loop().run_in_executor(None, app.state.engine.close)

    app = FastAPI(title="Portrait", version="1.0", lifespan=lifespan,
                  description="Face verification: a live selfie video against an identity document photo.")

    app.add_middleware(AccessMiddleware)

    @app.exception_handler(Problem)
    async def on_problem(request: Request, problem: Problem):
        if problem.code in ("rate_limited", "too_many_in_flight", "overloaded"):
            request.app.state.engine.metrics.rejected.labels(problem.code).inc()
        return problem_response(problem, request_id.get())

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        detail = f"{'.'.join(map(str, first.get('loc', [])))}: {first.get('msg', 'invalid request')}"
        return problem_response(Problem(422, "invalid_request", detail), request_id.get())

    @app.exception_handler(Exception)
    async def on_error(request: Request, error: Exception):
        log.error("unhandled error", extra={"error": type(error).__name__})
        return problem_response(Problem(500, "internal_error", "the request failed; see the server logs"),
                                request_id.get())

    def engine_of(request: Request) -> Engine:
        return request.app.state.engine

    def tenant_of(request: Request) -> str:
        engine = engine_of(request)
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        tenant = engine.keys.tenant_for(key.strip()) if scheme.lower() == "bearer" and key else None
        if tenant is None:
            raise Problem(401, "invalid_api_key", "send a valid API key as `Authorization: Bearer <key>`")
        request.state.tenant = tenant
        wait = engine.rate.try_acquire(tenant)
        if wait > 0:
            raise Problem(429, "rate_limited", "this tenant's request rate is over its limit", retry_after_s=wait)
        return tenant

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"])
    async def healthz() -> schemas.Health:
        return schemas.Health(status="ok")

    @app.get("/readyz", response_model=schemas.Health, tags=["operations"],
             responses={503: {"model": schemas.Health}})
    async def readyz(request: Request):
        ready, why = await asyncio.get_running_loop().run_in_executor(None, engine_of(request).ready)
        if not ready:
            return JSONResponse({"status": "unavailable", "detail": why}, status_code=503)
        return schemas.Health(status="ready")

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request) -> Response:
        engine = engine_of(request)
        await asyncio.get_running_loop().run_in_executor(None, engine.ready)  # refreshes backend_up
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/challenges", response_model=schemas.ChallengeResponse, tags=["verification"])
    async def challenges(request: Request, body: schemas.ChallengeRequest | None = None,
                         tenant: str = Depends(tenant_of)) -> schemas.ChallengeResponse:
        engine = engine_of(request)
        body = body or schemas.ChallengeRequest()
        mirrored = engine.settings.mirrored_for(tenant) if body.mirrored is None else body.mirrored
        if body.actions is not None or body.schedule is not None:
            if not engine.settings.allow_client_actions:
                raise Problem(403, "client_actions_disabled", "this server chooses the challenge actions and schedule")
            actions = _token_call(parse_actions, body.actions)
            if body.schedule is None:
                spec = random_schedule(actions, mirrored)
            else:
                spec = ChallengeSpec.timed(actions, _token_call(parse_schedule, body.schedule, len(actions)), mirrored)
        else:
            spec = random_challenge(mirrored)
        challenge = engine.challenges.issue(tenant, spec)
        return schemas.ChallengeResponse(**spec.claims(), token=challenge.token, expires_at=_iso(challenge.expires_at))

    @app.post("/v1/verifications", response_model=schemas.VerificationResponse, tags=["verification"],
              openapi_extra=_multipart_doc({"id_image": "binary", "video": "binary", "challenge": "string"}))
    async def verifications(request: Request, tenant: str = Depends(tenant_of)):
        engine = engine_of(request)
        with _in_flight(engine, tenant):
            upload = await read_multipart(request, engine.settings.max_upload_bytes)
            _refuse_mirrored(upload)
            challenge = _claim(engine, upload.field("challenge"), tenant)
            id_bytes, video_bytes = upload.file("id_image"), upload.file("video")

            def work(pipeline: Pipeline, timings: Timings) -> dict:
                image = _decode(engine, "image", lambda: engine.decode.image(
                    id_bytes, max_pixels=engine.settings.max_image_pixels), timings)
                video = _decode(engine, "video", lambda: _video(engine, video_bytes), timings)
                return pipeline.verify(image, video, challenge.spec, timings=timings)

            answer = await _process(request, engine, work)
            inputs = {"id_image_sha256": digest(id_bytes), "video_sha256": digest(video_bytes),
                      "challenge_nonce": challenge.nonce}
            return _respond(engine, "/v1/verifications", tenant, answer, inputs)

    @app.post("/v1/liveness", response_model=schemas.LivenessResponse, tags=["building blocks"],
              openapi_extra=_multipart_doc({"video": "binary", "challenge": "string"}))
    async def liveness(request: Request, tenant: str = Depends(tenant_of)):
        engine = engine_of(request)
        with _in_flight(engine, tenant):
            upload = await read_multipart(request, engine.settings.max_upload_bytes)
            _refuse_mirrored(upload)
            challenge = _claim(engine, upload.field("challenge"), tenant)
            video_bytes = upload.file("video")

            def work(pipeline: Pipeline, timings: Timings) -> dict:
                video = _decode(engine, "video", lambda: _video(engine, video_bytes), timings)
                return pipeline.liveness(video, challenge.spec, timings=timings)

            answer = await _process(request, engine, work)
            inputs = {"video_sha256": digest(video_bytes), "challenge_nonce": challenge.nonce}
            return _respond(engine, "/v1/liveness", tenant, answer, inputs)

    @app.post("/v1/compare", response_model=schemas.CompareResponse, tags=["building blocks"],
              openapi_extra=_multipart_doc({"image_a": "binary", "image_b": "binary"}))
    async def compare(request: Request, tenant: str = Depends(tenant_of)):
        engine = engine_of(request)
        with _in_flight(engine, tenant):
            upload = await read_multipart(request, engine.settings.max_upload_bytes)
            first, second = upload.file("image_a"), upload.file("image_b")

            def work(pipeline: Pipeline, timings: Timings) -> dict:
                decode = lambda data: engine.decode.image(data, max_pixels=engine.settings.max_image_pixels)  # noqa: E731
                a = _decode(engine, "image", lambda: decode(first), timings)
                b = _decode(engine, "image", lambda: decode(second), timings)
                return pipeline.compare(a, b)

            answer = await _process(request, engine, work)
            inputs = {"image_a_sha256": digest(first), "image_b_sha256": digest(second)}
            return _respond(engine, "/v1/compare", tenant, answer, inputs)

    return app


class AccessMiddleware:
    """Request id, in-flight gauge, latency histogram and one access log line per request.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which hides the client's
    disconnect from the route (and the route must see it to stop the work)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id.set(rid)
        metrics = scope["app"].state.engine.metrics
        seen = {"status": 500, "outcome": "error"}
        started = time.perf_counter()

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                response_headers = list(message.get("headers", []))
                outcome = dict(response_headers).get(b"x-portrait-outcome")
                seen["outcome"] = outcome.decode() if outcome else ("ok" if message["status"] < 400 else "error")
                message = {**message, "headers": [*response_headers, (b"x-request-id", rid.encode())]}
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            metrics.requests.labels(endpoint, scope["method"], str(seen["status"]), seen["outcome"]).observe(elapsed)
            if endpoint not in ("/metrics", "/healthz", "/readyz"):
                state = scope.get("state") or {}
                log.info("request", extra={"method": scope["method"], "path": endpoint, "status": seen["status"],
                                           "outcome": seen["outcome"], "ms": round(elapsed * 1000, 1),
                                           "tenant": state.get("tenant")})
            request_id.reset(token)


class _in_flight:
    """The tenant's concurrent-request cap, held for the whole request."""

    def __init__(self, engine: Engine, tenant: str) -> None:
        self.engine, self.tenant = engine, tenant

    def __enter__(self) -> None:
        if not self.engine.in_flight.acquire(self.tenant):
            raise Problem(429, "too_many_in_flight", "this tenant has too many requests in progress",
                          retry_after_s=1)

    def __exit__(self, *exc: object) -> None:
        self.engine.in_flight.release(self.tenant)


def _token_call(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except TokenError as error:
        raise Problem(TOKEN_STATUS.get(error.code, 400), error.code, str(error)) from None


def _claim(engine: Engine, token: str, tenant: str) -> Challenge:
    """Check the challenge and spend it: a token is good for one request, even a failed one."""
    challenge = _token_call(engine.challenges.verify, token, tenant)
    try:
        claimed = engine.nonces.claim(challenge.nonce, challenge.expires_at)
    except NonceStoreError:
        log.error("nonce store unreachable")
        raise Problem(503, "nonce_store_unavailable", "cannot check challenge reuse now", retry_after_s=2) from None
    if not claimed:
        raise Problem(409, "replayed_challenge", "this challenge was already used; request a new one")
    return challenge


def _refuse_mirrored(upload: Upload) -> None:
    """Mirroring is signed into the challenge: a request that tries to say it is refused,
    whatever the value, so a client cannot swap left and right after seeing the actions."""
    if upload.field("mirrored", required=False) is not None:
        raise Problem(422, "mirrored_not_accepted", "mirrored is fixed when the challenge is issued "
                      "(POST /v1/challenges) and cannot be set on this request")


def _video(engine: Engine, data: bytes):
    return engine.decode.video(data, **engine.settings.video_limits)


def _decode(engine: Engine, kind: str, decode: Callable[[], Any], timings: Timings) -> Any:
    with timings.stage("decode"):
        try:
            return decode()
        except MediaError as error:
            engine.metrics.decode_failures.labels(kind, error.code).inc()
            raise


async def _process(request: Request, engine: Engine, work: Callable[[Pipeline, Timings], dict]) -> dict:
    """Run pipeline work on a worker thread under the request deadline, stopping it when
    the client goes away."""
    if not engine.has_room():
        raise Problem(503, "overloaded", "the service is at capacity; try again shortly", retry_after_s=2)
    deadline = time.monotonic() + engine.settings.request_timeout_s
    cancelled = threading.Event()
    timings = Timings()
    engine.admitted += 1
    task = asyncio.ensure_future(engine.run(lambda: work(engine.pipeline(deadline, cancelled), timings)))
    task.add_done_callback(lambda done: _release(engine, done))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                break
            if time.monotonic() > deadline:
                cancelled.set()
                raise Problem(504, "deadline_exceeded", "the verification took too long; try again")
            if await request.is_disconnected():
                cancelled.set()
                raise Problem(499, "client_closed_request", "the client went away")
        answer = task.result()
    except MediaError as error:
        raise Problem(error.status, error.code, str(error)) from None
    except QueueFull as error:
        raise Problem(503, "overloaded", "the service is at capacity; try again shortly",
                      retry_after_s=error.retry_after_s) from None
    except DeadlineExceeded:
        raise Problem(504, "deadline_exceeded", "the verification took too long; try again") from None
    except Cancelled:
        raise Problem(499, "client_closed_request", "the client went away") from None
    except BackendError as error:
        engine.metrics.backend_errors.labels(engine.inner.name).inc()
        log.error("backend error", extra={"error": str(error)})
        raise Problem(503, "backend_unavailable", "the inference backend is unavailable", retry_after_s=5) from None
    for stage, ms in timings.ms.items():
        engine.metrics.stages.labels(stage).observe(ms / 1000)
    return answer


def _release(engine: Engine, task: asyncio.Future) -> None:
    """The worker is done: free its admission slot. A request that was abandoned (client
    gone, deadline passed) never awaits its task, so its outcome is read here."""
    engine.admitted -= 1
    if not task.cancelled():
        task.exception()


def _respond(engine: Engine, endpoint: str, tenant: str, answer: dict, inputs: dict) -> JSONResponse:
    rid = request_id.get()
    for reason in answer["reasons"] or ["none"]:
        engine.metrics.decisions.labels(endpoint, answer["decision"], reason).inc()
    claims = {
        "rid": rid, "tenant": tenant, "endpoint": endpoint, "iat": int(time.time()),
        "inputs": inputs, "decision": answer["decision"], "reasons": answer["reasons"],
        "scores": _scores(answer), "models": engine.models, "thresholds": answer["thresholds"],
    }
    if "liveness" in answer:  # what was asked, and what was seen
        active = answer["liveness"]["active"]
        claims["challenge"] = active["challenge"]
        claims["events"] = [{k: e[k] for k in ("action", "start_s", "end_s")} for e in active["observed"]]
    body = {**answer, "models": engine.models, "request_id": rid, "receipt": engine.receipts.sign(claims)}
    log.info("decision", extra={"endpoint": endpoint, "decision": answer["decision"], "reasons": answer["reasons"]})
    return JSONResponse(body, headers={"x-portrait-outcome": answer["decision"]})


def _scores(answer: dict) -> dict:
    scores = {}
    if "match" in answer:
        scores["match"] = answer["match"]["score"]
    if "liveness" in answer:
        scores["passive"] = answer["liveness"]["passive"]["score"]
        scores["continuity"] = answer["liveness"]["continuity"]["score"]
    return scores


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _multipart_doc(fields: dict[str, str]) -> dict:
    properties = {
        name: {"type": "string", "format": "binary"} if kind == "binary" else {"type": kind}
        for name, kind in fields.items()
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": list(fields)}}}}}
