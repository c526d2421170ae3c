"""The browser side: the capture module every carrier may load, and the demo page when enabled."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from portrait.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
MODULE_PATH = "/v1/capture/portrait-capture.js"


def router(settings: Settings) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    module = (STATIC / "portrait-capture.js").read_bytes()

    @routes.get(MODULE_PATH)
    async def capture_module() -> Response:
        # A module script loaded from another origin needs CORS; the file holds no secret.
        return Response(module, media_type="text/javascript", headers={
            "Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300",
            "X-Content-Type-Options": "nosniff"})

    if settings.demo:
        from portrait.service.demo import router as demo_router

        routes.include_router(demo_router(settings))
    return routes
