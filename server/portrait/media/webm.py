"""How much video a live WebM stream has delivered: the media time of its last complete
block, read incrementally from MediaRecorder's chunks as they arrive.

A session reveals prompts and screen colours against this clock, so it is read without
decoding: the EBML structure (RFC 9559) is walked as bytes come in, keeping only the
segment's time scale, the video track's number and the latest complete block's time. Live
recorders write the segment and its clusters with an unknown size; those are entered like
any other master element. Anything that is not WebM structure is refused.
"""

from __future__ import annotations

from portrait.media.errors import MediaError

EBML, SEGMENT, CLUSTER, TIMECODE = 0x1A45DFA3, 0x18538067, 0x1F43B675, 0xE7
INFO, TIMECODE_SCALE = 0x1549A966, 0x2AD7B1
TRACKS, TRACK_ENTRY, TRACK_NUMBER, TRACK_TYPE = 0x1654AE6B, 0xAE, 0xD7, 0x83
SIMPLE_BLOCK, BLOCK_GROUP, BLOCK = 0xA3, 0xA0, 0xA1
# Master elements walked into (their children are read); every other element is skipped whole.
_ENTERED = frozenset({SEGMENT, CLUSTER, INFO, TRACKS, TRACK_ENTRY, BLOCK_GROUP})
_UNKNOWN = -1
MAX_ELEMENT = 16 * 1024 * 1024  # a single element (a block, the header) larger than this is refused


def _vint(data: bytes | bytearray, at: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `at`: (value, length), or None if incomplete."""
    if at >= len(data):
        return None
    first = data[at]
    if first == 0:
        raise MediaError("corrupt_media", "not a WebM stream (invalid element header)")
    length = 8 - first.bit_length() + 1
    if at + length > len(data):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for byte in data[at + 1 : at + length]:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return _UNKNOWN, length
    return value, length


class MediaClock:
    """Feed chunks in order; `media_s` is the time of the latest complete video block,
    seconds after the first one (None before any)."""

    def __init__(self) -> None:
        self._buffer = bytearray()  # bytes not yet consumed: at most one element's header or body
        self._scale_ns = 1_000_000
        self._cluster_ms = 0
        self._video_track: int | None = None
        self._track_number: int | None = None
        self._track_type: int | None = None
        self._started = False
        self._first: float | None = None
        self.media_s: float | None = None
        self.blocks = 0

    def feed(self, chunk: bytes) -> float | None:
        self._buffer += chunk
        at = 0
        data = self._buffer
        if not self._started and data and data[0] != EBML >> 24:
            raise MediaError("unsupported_media_type", "a session streams WebM (MediaRecorder's video/webm)")
        while True:
            element = _vint(data, at, keep_marker=True)
            if element is None:
                break
            ident, id_length = element
            size = _vint(data, at + id_length, keep_marker=False)
            if size is None:
                break
            length, size_length = size
            if not self._started:
                if ident != EBML:
                    raise MediaError("unsupported_media_type", "a session streams WebM (MediaRecorder's video/webm)")
                self._started = True
            body = at + id_length + size_length
            if ident in _ENTERED:
                self._enter(ident)
                at = body
                continue
            if length == _UNKNOWN or length > MAX_ELEMENT:
                raise MediaError("corrupt_media", "a WebM element of unknown or excessive size")
            if body + length > len(data):
                break
            self._read(ident, data, body, length)
            at = body + length
        del self._buffer[:at]
        if len(self._buffer) > MAX_ELEMENT + 16:
            raise MediaError("corrupt_media", "a WebM element larger than allowed")
        return self.media_s

    def _enter(self, ident: int) -> None:
        if ident == TRACK_ENTRY:
            self._track_number = self._track_type = None

    def _read(self, ident: int, data: bytearray, at: int, length: int) -> None:
        if ident == EBML:
            if b"webm" not in data[at : at + length] and b"matroska" not in data[at : at + length]:
                raise MediaError("unsupported_media_type", "the stream's EBML document is not WebM")
        elif ident == TIMECODE_SCALE:
            self._scale_ns = max(1, int.from_bytes(data[at : at + length], "big"))
        elif ident in (TRACK_NUMBER, TRACK_TYPE):
            value = int.from_bytes(data[at : at + length], "big")
            if ident == TRACK_NUMBER:
                self._track_number = value
            else:
                self._track_type = value
            if self._track_type == 1 and self._track_number is not None and self._video_track is None:
                self._video_track = self._track_number
        elif ident == TIMECODE:
            self._cluster_ms = int.from_bytes(data[at : at + length], "big")
        elif ident in (SIMPLE_BLOCK, BLOCK):
            track = _vint(data, at, keep_marker=False)
            if track is None or track[1] + 2 > length:
                raise MediaError("corrupt_media", "a WebM block too short for its header")
            number, size = track
            if self._video_track is not None and number != self._video_track:
                return
            relative = int.from_bytes(data[at + size : at + size + 2], "big", signed=True)
            seconds = (self._cluster_ms + relative) * self._scale_ns / 1e9
            if self._first is None:
                self._first = seconds
            elapsed = seconds - self._first
            self.media_s = elapsed if self.media_s is None else max(self.media_s, elapsed)
            self.blocks += 1
