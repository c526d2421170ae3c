"""Request bodies read in memory under a size cap: multipart uploads and small JSON bodies.

Starlette spools file parts over 1 MB to a temporary file; biometric media must never
touch the disk, so the body is read here, counting bytes as they arrive (a declared
Content-Length is checked before reading, and not trusted after), and parsed into memory
with python-multipart. A field sent twice is refused rather than one copy silently kept.
A JSON body is read the same way, under its own small cap, only once the caller is known,
and only as `application/json` (a form a web page could send is not read as JSON).
The chunks come from the caller (`intake.receive_body`, which paces them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from portrait.service.problems import Problem, problem

MAX_PARTS = 8
MAX_FIELD_BYTES = 8192  # text fields (the challenge token, flags)
MAX_JSON_BYTES = 4096  # a challenge request is under 200 bytes

M = TypeVar("M", bound=BaseModel)


@dataclass
class Upload:
    files: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> bytes:
        data = self.files.get(name)
        if not data:
            raise problem("missing_field", f"the multipart field {name!r} (a file) is required")
        return data

    def field(self, name: str, required: bool = True) -> str | None:
        value = self.fields.get(name)
        if value is None and required:
            raise problem("missing_field", f"the multipart field {name!r} is required")
        return value


def check_headers(request: Request, max_bytes: int) -> None:
    """What can be refused before the body is read: its type and declared size."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise problem("unsupported_content_type", "send multipart/form-data")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise problem("upload_too_large", f"uploads are limited to {max_bytes} bytes")


async def read_multipart(request: Request, max_bytes: int, chunks: AsyncIterator[bytes]) -> Upload:
    check_headers(request, max_bytes)
    _, options = parse_options_header(request.headers.get("content-type", ""))
    upload = Upload()
    state: dict = {"name": None, "filename": None, "type": None, "chunks": [], "header": b"", "headers": {}}
    sizes = {"total": 0}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["headers"][state["header"].lower()] = state["headers"].get(state["header"].lower(), b"") + data[start:end]

    def on_header_end() -> None:
        state["header"] = b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["filename"] = disposition.get(b"filename")
        state["type"] = state["headers"].get(b"content-type", b"").decode("latin-1")
        state["chunks"] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["chunks"].append(data[start:end])
        if state["filename"] is None and sum(map(len, state["chunks"])) > MAX_FIELD_BYTES:
            raise problem("field_too_large", f"field {state['name']!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if len(upload.files) + len(upload.fields) >= MAX_PARTS:
            raise problem("too_many_parts", f"at most {MAX_PARTS} multipart fields")
        if state["name"] in upload.files or state["name"] in upload.fields:
            raise problem("duplicate_field", f"the multipart field {state['name']!r} is sent more than once")
        value = b"".join(state["chunks"])
        if state["filename"] is not None:
            upload.files[state["name"]] = value
            upload.content_types[state["name"]] = state["type"]
        else:
            upload.fields[state["name"]] = value.decode("utf-8", "replace")
        state["headers"], state["chunks"] = {}, []

    parser = MultipartParser(options[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in chunks:
            sizes["total"] += len(chunk)
            if sizes["total"] > max_bytes:
                raise problem("upload_too_large", f"uploads are limited to {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except Problem:
        raise
    except Exception as error:  # python-multipart raises several error types for bad bodies
        raise problem("malformed_multipart", f"the multipart body could not be parsed: {error}") from None
    return upload


async def read_json(request: Request, model: type[M], max_bytes: int = MAX_JSON_BYTES) -> M:
    """The body as `model`: no body is the model's defaults; anything else must be
    `application/json` within max_bytes (413 before it is read when declared larger)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise problem("upload_too_large", f"the JSON body is limited to {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise problem("upload_too_large", f"the JSON body is limited to {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return model()
    if parse_options_header(request.headers.get("content-type", ""))[0] != b"application/json":
        raise problem("unsupported_content_type", "send the body as application/json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise problem("malformed_body", "the body is not JSON") from None
        where = ".".join(map(str, first.get("loc", ()))) or "body"
        raise problem("invalid_request", f"{where}: {first['msg']}") from None
