"""The FastAPI application: thin routes over the engine, errors, access logs, and the
OpenAPI document as the contract (every status each route answers, with its codes)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

import swagger_ui_bundle
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from portrait.security.tokens import MAX_TOKEN_LENGTH
from portrait.service import capture, schemas
from portrait.service.engine import Engine
from portrait.service.logs import request_id
from portrait.service.operations import COMPARE, LIVENESS, SESSION_VERIFY, VERIFY
from portrait.service.problems import Problem, problem, problem_response, problem_responses
from portrait.service.uploads import MAX_JSON_BYTES, read_json
from portrait.settings import Settings

log = logging.getLogger("portrait.access")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
COUNTED = frozenset({"rate_limited", "too_many_in_flight", "overloaded", "upload_too_slow"})
# A request id a client may choose (UUIDs, hex, base64, trace ids); anything else gets a fresh one.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# Swagger UI's own files, from the swagger-ui-bundle-v2 wheel: /docs works without any CDN.
DOCS_ASSETS = "/docs/assets"

# What each route can answer besides 200: the contract clients are generated from.
_CALLER = ("invalid_api_key", "rate_limited", "internal_error")
_BODY = ("malformed_multipart", "upload_too_large", "upload_too_slow", "field_too_large", "unsupported_content_type",
         "missing_field", "invalid_field", "duplicate_field", "too_many_parts", "too_many_in_flight", "overloaded",
         "client_closed_request", "deadline_exceeded", "backend_unavailable")
_MEDIA = ("unsupported_media_type", "corrupt_media", "media_too_large")
_VIDEO = ("video_too_long", "no_frames")
_CHALLENGE = ("malformed_challenge", "forged_challenge", "wrong_tenant", "replayed_challenge", "expired_challenge",
              "nonce_store_unavailable")
# A session's verification; a stream that was refused once it had started answers its code here.
_SESSION = ("session_not_found", "wrong_tenant", "session_expired", "session_not_streamed", "session_already_judged",
            "session_ahead_of_real_time", "session_behind_real_time", "session_stalled", "session_too_long",
            "session_too_large", "invalid_stream_message")
ERRORS = {
    "/v1/challenges": (*_CALLER, "malformed_body", "upload_too_large", "unsupported_content_type",
                       "client_actions_disabled", "invalid_actions", "invalid_schedule", "invalid_request",
                       "nonce_store_unavailable", "session_required"),
    "/v1/verifications": (*_CALLER, *_BODY, *_MEDIA, *_VIDEO, *_CHALLENGE, "mirrored_not_accepted", "session_required"),
    "/v1/liveness": (*_CALLER, *_BODY, *_MEDIA, *_VIDEO, *_CHALLENGE, "mirrored_not_accepted", "session_required"),
    "/v1/sessions": (*_CALLER, "malformed_body", "upload_too_large", "unsupported_content_type",
                     "client_actions_disabled", "invalid_actions", "invalid_schedule", "invalid_request",
                     "nonce_store_unavailable"),
    # A stream's refusal (it closed with its code) is the verification's answer.
    "/v1/sessions/{session_id}/verifications": (*_CALLER, *_BODY, *_MEDIA, *_VIDEO, *_SESSION),
    "/v1/compare": (*_CALLER, *_BODY, *_MEDIA),
}


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = engine or Engine(settings)
        sweeper = asyncio.create_task(app.state.engine.sessions.sweep())
        yield
        sweeper.cancel()
        await app.state.engine.close()

    app = FastAPI(title="Portrait", version="1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Face verification: a live selfie video against an identity document photo. "
                              "Errors are `application/problem+json` with a stable `code`.")
    app.add_middleware(AccessMiddleware)
    app.include_router(capture.router(settings))
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

    @app.exception_handler(Problem)
    async def on_problem(request: Request, refused: Problem):
        if refused.code in COUNTED:
            request.app.state.engine.metrics.rejected.labels(refused.code).inc()
        return problem_response(refused, request_id.get())

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        detail = f"{'.'.join(map(str, first.get('loc', [])))}: {first.get('msg', 'invalid request')}"
        return problem_response(problem("invalid_request", detail), request_id.get())

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException):
        code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        if code is None:
            return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
        response = problem_response(problem(code), request_id.get())
        response.headers.update(error.headers or {})
        return response

    def engine_of(request: Request) -> Engine:
        return request.app.state.engine

    async def tenant_of(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        guard = engine_of(request).guard
        tenant = guard.tenant(credentials.credentials if credentials else None)
        request.state.tenant = tenant
        await guard.throttle(tenant)
        return tenant

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"])
    async def healthz() -> schemas.Health:
        """The process is up. Touches nothing else, so it answers whatever Redis or Triton do."""
        return schemas.Health(status="ok")

    @app.get("/readyz", response_model=schemas.Health, tags=["operations"],
             responses={503: {"model": schemas.Health, "description": "draining, or a dependency is down"}})
    async def readyz(request: Request):
        """Models loaded, backend reachable, nonce store reachable (when shared); 503 while draining."""
        ready, why = await engine_of(request).ready()
        if not ready:
            return JSONResponse({"status": "unavailable", "detail": why}, status_code=503)
        return schemas.Health(status="ready")

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        engine = engine_of(request)
        await engine.ready()  # refreshes backend_up
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI from this process's own files (an air-gapped carrier sees it too)."""
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="Portrait API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    @app.get("/v1/receipt-key", response_model=schemas.ReceiptKey, tags=["verification"])
    async def receipt_key(request: Request) -> schemas.ReceiptKey:
        """The public key that checks this service's receipts (PEM and JWK). Pin it out of band
        too: a key fetched over the channel it is meant to check proves nothing by itself."""
        receipts = engine_of(request).guard.receipts
        return schemas.ReceiptKey(kid=receipts.kid, alg="EdDSA", pem=receipts.public_key_pem().decode(),
                                  jwk=receipts.public_jwk())

    @app.post("/v1/sessions", response_model=schemas.SessionResponse, tags=["verification"],
              responses=problem_responses(ERRORS["/v1/sessions"]), openapi_extra=_json_doc(schemas.SessionRequest))
    async def sessions(request: Request, tenant: str = Depends(tenant_of)) -> schemas.SessionResponse:
        """A live capture session (recommended): nothing of its challenge or screen colours is
        in the answer; they are revealed on the stream as the customer records."""
        body = await read_json(request, schemas.SessionRequest)  # after the key and the rate limit
        created = await engine_of(request).sessions.create(tenant, body.mirrored, body.actions, body.schedule)
        return schemas.SessionResponse.of(*created)

    @app.websocket("/v1/sessions/{session_id}/stream")
    async def session_stream(websocket: WebSocket, session_id: str) -> None:
        await websocket.app.state.engine.sessions.stream(websocket, session_id)

    @app.post("/v1/sessions/{session_id}/verifications", response_model=schemas.SessionVerificationResponse,
              tags=["verification"], responses=problem_responses(ERRORS["/v1/sessions/{session_id}/verifications"]),
              openapi_extra=_multipart_doc(SESSION_VERIFY.files, SESSION_VERIFY.flags, challenge=False))
    async def session_verifications(request: Request, session_id: str, tenant: str = Depends(tenant_of)):
        """The verdict of a streamed session, judged against what it revealed when."""
        return await engine_of(request).judge(SESSION_VERIFY, tenant, request, session_id=session_id)

    @app.post("/v1/challenges", response_model=schemas.ChallengeResponse, tags=["verification"],
              responses=problem_responses(ERRORS["/v1/challenges"]), openapi_extra=_json_doc(schemas.ChallengeRequest))
    async def challenges(request: Request, tenant: str = Depends(tenant_of)) -> schemas.ChallengeResponse:
        """The one-shot mode's challenge (weaker: its whole schedule is known before recording)."""
        # The body is read here, after the key and the rate limit, under its own small cap.
        body = await read_json(request, schemas.ChallengeRequest)
        guard = engine_of(request).guard
        return schemas.ChallengeResponse.of(await guard.issue(tenant, body.mirrored, body.actions, body.schedule))

    @app.post("/v1/verifications", response_model=schemas.VerificationResponse, tags=["verification"],
              responses=problem_responses(ERRORS["/v1/verifications"]),
              openapi_extra=_multipart_doc(VERIFY.files, VERIFY.flags, challenge=True))
    async def verifications(request: Request, tenant: str = Depends(tenant_of)):
        """One-shot verification, for integrations that cannot stream (weaker than a session)."""
        return await engine_of(request).judge(VERIFY, tenant, request)

    @app.post("/v1/liveness", response_model=schemas.LivenessResponse, tags=["building blocks"],
              responses=problem_responses(ERRORS["/v1/liveness"]),
              openapi_extra=_multipart_doc(LIVENESS.files, LIVENESS.flags, challenge=True))
    async def liveness(request: Request, tenant: str = Depends(tenant_of)):
        return await engine_of(request).judge(LIVENESS, tenant, request)

    @app.post("/v1/compare", response_model=schemas.CompareResponse, tags=["building blocks"],
              responses=problem_responses(ERRORS["/v1/compare"]),
              openapi_extra=_multipart_doc(COMPARE.files, COMPARE.flags, challenge=False))
    async def compare(request: Request, tenant: str = Depends(tenant_of)):
        return await engine_of(request).judge(COMPARE, tenant, request)

    return app


class AccessMiddleware:
    """Request id, in-flight gauge, latency histogram, one access log line per request, and
    the log line of a 500 (request id and traceback, never the request's content).

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which hides the client's
    disconnect from the route (and the route must see it to stop the work). Metric labels
    come from route templates and a fixed set of methods, so no client can add series."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = request_id_of(headers.get(b"x-request-id", b""))
        token = request_id.set(rid)
        metrics = scope["app"].state.engine.metrics
        seen = {"status": 500, "outcome": "error", "started": False}
        started = time.perf_counter()

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"], seen["started"] = message["status"], True
                response_headers = list(message.get("headers", []))
                outcome = dict(response_headers).get(b"x-portrait-outcome")
                seen["outcome"] = outcome.decode() if outcome else ("ok" if message["status"] < 400 else "error")
                message = {**message, "headers": [*response_headers, (b"x-request-id", rid.encode())]}
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            log.error("unhandled error", exc_info=error, extra={"error": type(error).__name__})
            seen["status"], seen["outcome"] = 500, "error"
            if not seen["started"]:
                response = problem_response(problem("internal_error", "the request failed; see the server logs"), rid)
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            metrics.requests.labels(endpoint, method, str(seen["status"]), seen["outcome"]).observe(elapsed)
            if endpoint not in ("/metrics", "/healthz", "/readyz"):
                state = scope.get("state") or {}
                log.info("request", extra={"method": method, "path": endpoint, "status": seen["status"],
                                           "outcome": seen["outcome"], "ms": round(elapsed * 1000, 1),
                                           "tenant": state.get("tenant")})
            request_id.reset(token)


def request_id_of(given: bytes) -> str:
    """The client's X-Request-ID when it is a plain id, else a fresh one: nothing a client
    sends reaches a response header or a log line unchecked."""
    return given.decode("ascii") if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _json_doc(model: type) -> dict:
    """An optional JSON request body the route reads itself (after the key check)."""
    return {"requestBody": {"required": False, "description": f"JSON, at most {MAX_JSON_BYTES} bytes",
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _multipart_doc(files: tuple[str, ...], flags: tuple[str, ...], challenge: bool) -> dict:
    """The multipart request body an operation reads (the routes parse it themselves, in memory)."""
    properties: dict[str, dict] = {name: {"type": "string", "format": "binary", "minLength": 1} for name in files}
    if challenge:
        properties["challenge"] = {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_LENGTH,
                                   "description": "the token from POST /v1/challenges"}
    properties.update({name: {"type": "boolean", "default": False} for name in flags})
    required = [*files, *(["challenge"] if challenge else [])]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": required}}}}}

