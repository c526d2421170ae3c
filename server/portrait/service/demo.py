"""The demo page (`PORTRAIT_DEMO=1`): a browser records a challenge and sees the decision.

The page never holds an API key. Its relay presents the key of `PORTRAIT_DEMO_TENANT` to the
public API of this same process, in process through the ASGI interface, so every check a
carrier's call meets (key, rate and in-flight limits, challenge signature and reuse, upload
limits) applies to the demo's calls too, and the answer is relayed unchanged. Anyone who can
reach /demo spends that tenant's quota: enable it only on a demo deployment.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from portrait.security.keys import configured_keys
from portrait.service.capture import STATIC
from portrait.service.problems import problem
from portrait.settings import Settings

MAX_CHALLENGE_BODY = 4096
# Room for the multipart framing around the files the API itself caps at max_upload_bytes.
MULTIPART_SLACK = 64 * 1024
# The page's own script only; the camera preview is a MediaStream, the ID preview a blob: URL.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
_RELAYED_HEADERS = ("content-type", "retry-after", "x-request-id")


def demo_key(settings: Settings) -> str:
    """The demo tenant's first configured key; refuses to start without one."""
    for tenant, key in configured_keys(settings.api_keys, settings.api_keys_file):
        if tenant == settings.demo_tenant:
            return key
    raise ValueError(f"PORTRAIT_DEMO_TENANT={settings.demo_tenant!r} is not a tenant of the configured API keys")


def router(settings: Settings) -> APIRouter:
    key = demo_key(settings)
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
    async def relay_challenge(request: Request) -> Response:
        body = await _body(request, MAX_CHALLENGE_BODY)
        return await _relay(request, "/v1/challenges", key, body, "application/json")

    @routes.post("/api/session")
    async def relay_session(request: Request) -> Response:
        body = await _body(request, MAX_CHALLENGE_BODY)
        return await _relay(request, "/v1/sessions", key, body, "application/json")

    @routes.post("/api/session/{session_id}/verify")
    async def relay_session_verification(request: Request, session_id: str) -> Response:
        body = await _body(request, settings.max_upload_bytes + MULTIPART_SLACK)
        return await _relay(request, f"/v1/sessions/{quote(session_id, safe='')}/verifications", key, body,
                            request.headers.get("content-type", ""))

    @routes.post("/api/verify")
    async def relay_verification(request: Request) -> Response:
        body = await _body(request, settings.max_upload_bytes + MULTIPART_SLACK)
        return await _relay(request, "/v1/verifications", key, body, request.headers.get("content-type", ""))

    return routes


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes without reading further."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise problem("upload_too_large", f"the request is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise problem("upload_too_large", f"the request is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _relay(request: Request, path: str, key: str, body: bytes, content_type: str) -> Response:
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://portrait.internal") as client:
        answer = await client.post(path, content=body, headers={
            "authorization": f"Bearer {key}", "content-type": content_type or "application/octet-stream"})
    headers = {name: answer.headers[name] for name in _RELAYED_HEADERS if name in answer.headers}
    return Response(answer.content, status_code=answer.status_code, headers=headers)
