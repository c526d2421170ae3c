"""Structured JSON logs with the request id on every line.

Log records carry only what an SRE needs to follow a request: ids, tenant, route, status,
decision, reason codes, durations. Never media, crops, embeddings, tokens or API keys.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
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


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):  # replaced by our own access line with the request id
        logging.getLogger(noisy).disabled = True
