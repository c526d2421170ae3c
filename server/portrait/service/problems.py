"""Errors as RFC 9457 `application/problem+json` with a stable machine-readable `code`.

`CODES` is the one list of codes, their statuses and meanings: the OpenAPI document, the
README's table and the tests read it.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.responses import JSONResponse

from portrait.challenge import MAX_ACTIONS, MAX_RECORD_S
from portrait.media.errors import _STATUS as MEDIA_STATUS

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error the caller can act on: a status, a stable code, a human sentence."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.retry_after_s = status, code, detail, retry_after_s


TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    408: "Request timeout", 409: "Conflict", 410: "Gone", 413: "Payload too large", 415: "Unsupported media type",
    422: "Unprocessable content", 429: "Too many requests", 499: "Client closed request", 500: "Internal error",
    503: "Service unavailable", 504: "Gateway timeout",
}

_MEDIA_MEANING = {
    "unsupported_media_type": "an upload is not an image or video format the service reads",
    "corrupt_media": "an upload does not decode",
    "media_too_large": "an image or video frame has more pixels than allowed, or a progressive JPEG needs more than "
                       "64 MiB to decode",
    "too_many_scans": "a JPEG image has more than 32 scans, or an MJPEG video frame more than 6",
    "video_too_long": "the video runs longer, or has more frames, than allowed",
    "no_frames": "the video has no decodable frame",
}

CODES: dict[str, tuple[int, str]] = {
    "malformed_challenge": (400, "the challenge token is not a well-formed Portrait challenge"),
    "malformed_multipart": (400, "the multipart body cannot be parsed"),
    "malformed_body": (400, "the JSON body cannot be parsed"),
    "invalid_api_key": (401, "no API key, or not a configured one (`Authorization: Bearer <key>`)"),
    "forged_challenge": (403, "the challenge token's signature is not this service's"),
    "wrong_tenant": (403, "the challenge or the session was issued to another tenant"),
    "client_actions_disabled": (403, "this server chooses the challenge actions for this tenant"),
    "cross_site_request": (403, "the demo page's calls come from its own page only"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route does not take this method (see `Allow`)"),
    "upload_too_slow": (408, "the body did not arrive within `PORTRAIT_UPLOAD_TIMEOUT_S`, or came slower than "
                             "`PORTRAIT_UPLOAD_MIN_BYTES_PER_S` over 5 s (the connection is closed); the challenge is "
                             "not spent"),
    "replayed_challenge": (409, "the challenge was already used for a verification; request a new one"),
    "expired_challenge": (410, "the challenge has expired, or was issued before the store of used challenges lost "
                               "its data; request a new one"),
    "upload_too_large": (413, "the body is over its limit, `PORTRAIT_MAX_UPLOAD_BYTES` for uploads and 4 KiB for "
                              "JSON (checked on Content-Length first)"),
    "field_too_large": (413, "a text field of the multipart body is over 8 KiB"),
    "unsupported_content_type": (415, "the body is not of the route's type: `multipart/form-data` with a boundary, "
                                      "or `application/json`"),
    "invalid_request": (422, "the JSON body does not match its schema"),
    "invalid_actions": (422, f"actions must be 1-{MAX_ACTIONS} known action names, none twice in a row"),
    "invalid_schedule": (422, "schedule must give one increasing prompt time per action, the recording ending "
                              f"by {MAX_RECORD_S} s"),
    "mirrored_not_accepted": (422, "a verification or liveness request carries `mirrored`: it is fixed when the "
                                   "challenge is issued; the challenge is not spent"),
    "missing_field": (422, "a required multipart field is missing or empty"),
    "invalid_field": (422, "a multipart field has a value outside its schema"),
    "duplicate_field": (422, "a multipart field is sent more than once"),
    "too_many_parts": (422, "the multipart body has more than 8 parts"),
    **{code: (MEDIA_STATUS[code], meaning) for code, meaning in _MEDIA_MEANING.items()},
    "rate_limited": (429, "the tenant's request rate is over its limit (with `Retry-After`)"),
    "too_many_in_flight": (429, "the tenant has `PORTRAIT_MAX_IN_FLIGHT_PER_TENANT` requests in progress "
                                "(with `Retry-After`)"),
    "client_closed_request": (499, "the client went away before the answer (logged; nobody reads it); "
                                   "the challenge is not spent"),
    "internal_error": (500, "a bug: the log line carries the request id and the traceback"),
    "overloaded": (503, "every upload place, or every worker and waiting place, is taken (with `Retry-After`); the "
                        "challenge is not spent"),
    "backend_unavailable": (503, "the inference backend cannot answer (with `Retry-After`); the challenge is "
                                 "not spent"),
    "nonce_store_unavailable": (503, "the shared store of used challenges (Redis) cannot answer (with "
                                     "`Retry-After`); the challenge is not spent"),
    "session_not_found": (404, "no such session (the id is not one this service issued)"),
    "session_required": (403, "this tenant verifies through live sessions only (`POST /v1/sessions`)"),
    "invalid_client_token": (401, "the session stream's client token is missing or not this session's"),
    "session_expired": (410, "the session's stream did not start, or its verdict was not asked, in time, or it was "
                             "created before the store of used challenges lost its data; create a new one"),
    "session_not_streamed": (409, "the session's stream has not ended (or never started); verify after it says stop"),
    "session_already_streamed": (409, "the session's stream was already started once"),
    "session_already_judged": (409, "the session already has its verdict; create a new one"),
    "session_too_large": (413, "the session's media went over `PORTRAIT_SESSION_MAX_BYTES`"),
    "invalid_stream_message": (400, "the stream sent a message the protocol does not have"),
    "session_ahead_of_real_time": (422, "the media arrived faster than they could have been recorded"),
    "session_behind_real_time": (422, "the media arrived slower than they were recorded"),
    "session_stalled": (422, "the stream stopped sending media"),
    "session_too_long": (422, "the stream went on past the end of the recording"),
    "sessions_full": (503, "every place for a session's media is taken (with `Retry-After`)"),
    "deadline_exceeded": (504, "the request ran past `PORTRAIT_REQUEST_TIMEOUT_S`; the challenge is not spent"),
}

RETRY_AFTER = frozenset({"sessions_full", "rate_limited", "too_many_in_flight", "overloaded", "backend_unavailable",
                         "nonce_store_unavailable"})
# Refused with part of the body unread: the connection cannot carry another request.
CLOSES_CONNECTION = frozenset({"upload_too_slow"})


def problem(code: str, detail: str | None = None, retry_after_s: float | None = None) -> Problem:
    """The Problem for a catalogued code, its meaning as the detail unless one is given."""
    status, meaning = CODES[code]
    return Problem(status, code, detail or meaning, retry_after_s)


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
    if problem.code in CLOSES_CONNECTION:
        headers["Connection"] = "close"
    return JSONResponse(body, status_code=problem.status, headers=headers, media_type=PROBLEM_JSON)


def problem_responses(codes: Iterable[str]) -> dict[int | str, dict]:
    """OpenAPI `responses` for these codes: per status, the problem+json schema with its codes."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(CODES[code][0], []).append(code)
    responses: dict[int | str, dict] = {}
    for status, listed in sorted(by_status.items()):
        schema = {
            "type": "object",
            "required": ["type", "title", "status", "code", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer", "enum": [status]},
                "code": {"type": "string", "enum": listed},
                "detail": {"type": "string"},
                "request_id": {"type": "string"},
            },
        }
        response: dict = {"description": f"{TITLES[status]}: " + ", ".join(f"`{c}`" for c in listed),
                          "content": {PROBLEM_JSON: {"schema": schema}}}
        if any(code in RETRY_AFTER for code in listed):
            response["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                                   "schema": {"type": "string"}}}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[status] = response
    return responses
