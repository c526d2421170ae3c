"""The one exception the decoders raise, with a stable code and the HTTP status it maps to."""

from __future__ import annotations

_STATUS = {
    "unsupported_media_type": 415,
    "corrupt_media": 422,
    "media_too_large": 413,
    "too_many_scans": 422,
    "video_too_long": 422,
    "no_frames": 422,
}


class MediaError(Exception):
    """An upload we refuse to decode; `code` is stable for clients, `status` is its HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = _STATUS[code]
