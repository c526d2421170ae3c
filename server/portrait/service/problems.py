"""Errors as RFC 9457 `application/problem+json` with a stable machine-readable `code`."""

from __future__ import annotations

from fastapi.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error the caller can act on: a status, a stable code, a human sentence."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.retry_after_s = status, code, detail, retry_after_s


TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
    413: "Payload too large", 415: "Unsupported media type", 422: "Unprocessable content",
    429: "Too many requests", 499: "Client closed request", 500: "Internal error",
    503: "Service unavailable", 504: "Gateway timeout",
}


def problem_response(problem: Problem, request_id: str | None = None) -> JSONResponse:
    body = {
        "type": f"https://portrait.dev/problems/{problem.code}",
        "title": TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "code": problem.code,
        "detail": problem.detail,
    }
    if request_id:
        body["request_id"] = request_id
    headers = {}
    if problem.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, int(problem.retry_after_s + 0.999)))
    if problem.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="portrait"'
    return JSONResponse(body, status_code=problem.status, headers=headers, media_type=PROBLEM_JSON)
