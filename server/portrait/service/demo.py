"""The demo page (`PORTRAIT_DEMO=1`): a browser records a challenge, or streams a live
session (`?mode=session`), and sees the decision.

The page never holds an API key, and spends nothing of a carrier's: its calls run in this
process as a tenant of their own (`PORTRAIT_DEMO_TENANT`, which no API key may name), with
their own small rate limit and in-flight cap, through the same engine as the API (headers,
admission and upload limits before the body is read, the challenge's signature and single
use, a session's single stream and verdict). They take JSON only as `application/json`, and
only from the page's own origin (the browser's `Sec-Fetch-Site`, else `Origin`), so another
web page cannot make its visitors' browsers call them. A session's stream is the API's own
WebSocket, opened with the client token the page was given. The page is told the decision and its reasons, never a score,
a threshold or the receipt (whose payload is readable): those would let anyone tune a fake.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from portrait.service.capture import STATIC
from portrait.service.operations import SESSION_VERIFY, VERIFY
from portrait.service.problems import problem
from portrait.service.schemas import ChallengeRequest, ChallengeResponse, SessionRequest, SessionResponse
from portrait.service.uploads import read_json
from portrait.settings import Settings

log = logging.getLogger("portrait.service")

# The page's own script only; the camera preview is a MediaStream, the ID preview a blob: URL.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
# What the page is told of a verification.
SHOWN = ("decision", "reasons", "request_id")


def router(settings: Settings) -> APIRouter:
    tenant = settings.demo_tenant
    log.warning("DEMO PAGE ON at /demo: anyone who can reach this server can run verifications on it (as "
                "tenant %r, at most %s requests a second and %d at once); never enable it in production",
                tenant, settings.demo_rate_limit_per_s, settings.demo_max_in_flight,
                extra={"demo_tenant": tenant})
    routes = APIRouter(prefix="/demo", include_in_schema=False)
    page = (STATIC / "demo.html").read_bytes()
    script = (STATIC / "demo.js").read_bytes()

    @routes.get("")
    async def demo_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    @routes.get("/demo.js")
    async def demo_script() -> Response:
        return Response(script, media_type="text/javascript", headers={"X-Content-Type-Options": "nosniff"})

    @routes.post("/api/challenge")
    async def demo_challenge(request: Request) -> Response:
        guard = request.app.state.engine.guard
        same_origin(request)
        await guard.throttle(tenant)
        body = await read_json(request, ChallengeRequest)
        challenge = await guard.issue(tenant, body.mirrored, body.actions, body.schedule)
        return JSONResponse(ChallengeResponse.of(challenge).model_dump())

    @routes.post("/api/verify")
    async def demo_verify(request: Request) -> Response:
        engine = request.app.state.engine
        same_origin(request)
        await engine.guard.throttle(tenant)
        return _shown(await engine.judge(VERIFY, tenant, request))

    @routes.post("/api/session")
    async def demo_session(request: Request) -> Response:
        engine = request.app.state.engine
        same_origin(request)
        await engine.guard.throttle(tenant)
        body = await read_json(request, SessionRequest)
        created = await engine.sessions.create(tenant, body.mirrored, body.actions, body.schedule)
        return JSONResponse(SessionResponse.of(*created).model_dump())

    @routes.post("/api/session/{session_id}/verify")
    async def demo_session_verify(request: Request, session_id: str) -> Response:
        engine = request.app.state.engine
        same_origin(request)
        await engine.guard.throttle(tenant)
        return _shown(await engine.judge(SESSION_VERIFY, tenant, request, session_id=session_id))

    return routes


def _shown(answer: JSONResponse) -> JSONResponse:
    """What the page is told of a verdict: the decision, its reasons and the request id."""
    shown = {key: value for key, value in json.loads(answer.body).items() if key in SHOWN}
    return JSONResponse(shown, headers={"x-portrait-outcome": shown["decision"]})


def same_origin(request: Request) -> None:
    """Refuse a call that a page of another origin made the browser send."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        allowed = site == "same-origin"
    else:
        origin = request.headers.get("origin")
        allowed = origin is not None and urlsplit(origin).netloc == request.headers.get("host")
    if not allowed:
        raise problem("cross_site_request", "the demo's calls are taken from the demo page only")
