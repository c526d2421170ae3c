"""Structured JSON logs with the request id on every line.

Log records carry only what an SRE needs to follow a request: ids, tenant, route, status,
decision, reason codes, durations. Never media, crops, embeddings, tokens or API keys.

Native libraries write to file descriptor 2 on their own (libjpeg's "Corrupt JPEG data"
warnings, libpng's, FFmpeg's): in the server, that descriptor is a pipe whose lines become
JSON log lines of the logger `portrait.native`, so nothing breaks a log reader's parse.
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import logging
import os
import sys
import threading
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        entry.update({k: v for k, v in vars(record).items()
                      if k not in _STANDARD and k != "color_message" and not k.startswith("_")})
        if record.exc_info:  # code lines and the exception's message; never locals or request content
            entry["traceback"] = self.formatException(record.exc_info).splitlines()
        return json.dumps(entry, default=str)


# A native line longer than this is cut (a log line is not a place for a dump).
MAX_NATIVE_LINE = 2000
# Room in the pipe for native writers while the reader waits for the interpreter.
PIPE_BYTES = 1 << 20


def capture_native_stderr() -> int:
    """Point file descriptor 2 at a pipe read by a thread that logs each line; returns a
    descriptor of the original stderr, where the JSON lines go."""
    original = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # the default pipe size: native writers may wait a little longer
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_forward_native, args=(read_end,), name="native-stderr", daemon=True).start()
    return original


def _forward_native(read_end: int) -> None:
    logger = logging.getLogger("portrait.native")
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    logger.warning(line[:MAX_NATIVE_LINE].decode("utf-8", "replace").rstrip())
            pending = pending[-MAX_NATIVE_LINE:]


def configure(level: str = "INFO", native: bool = False) -> None:
    """JSON lines on stderr; with `native`, native libraries' own stderr lines become log
    lines too (the server), and Python's own stderr keeps the original descriptor."""
    if native:
        sys.stderr = os.fdopen(capture_native_stderr(), "w", buffering=1, encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):  # replaced by our own access line with the request id
        logging.getLogger(noisy).disabled = True
