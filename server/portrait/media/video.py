"""Selfie videos to a few evenly spaced, upright uint8 BGR frames, with PyAV (FFmpeg) on CPU.

Everything is read from memory; nothing is written to disk. The work is bounded: limits
are checked on the header first, decoding stops past max_duration_s of timestamps or past a
frame budget, and only the sampled frames are converted, by FFmpeg's scaler in one step from
YUV at the coded size to BGR at the size the models use (`VideoLimits.max_side`). Frames the
sampler will not keep are not even decoded when no other frame refers to them.
"""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import av
import av.logging
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream

from portrait.media import jpeg
from portrait.media.clip import Video
from portrait.media.errors import MediaError
from portrait.media.limits import VideoLimits

# Codecs we decode; anything else is refused rather than handed to a rarely used FFmpeg decoder.
# MPEG-4 Part 2 and H.263 are what budget phones record into MP4 and 3GP/3G2.
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mjpeg", "mpeg4", "h263"})
# Most frames per second of stream time we decode (phones' slow motion tops out at 240).
MAX_DECODE_RATE = 240
# MP4/QuickTime/3GP/3G2 top-level boxes a file may start with (bytes 4..8).
_MP4_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"})
# How much shorter than its header says a video may decode before we call it truncated
# (plus one frame): audio and video tracks rarely end together.
TRUNCATION_SLACK_S = 0.5
# Demuxer options: read the stream parameters from the header and decode nothing to find
# them. MP4/3GP, Matroska/WebM and AVI all state them there; FFmpeg's default probe decodes
# the first frames again (70 ms of the 700 ms decode of a 3.7 s 720p clip) and the decode
# that follows finds the same frames, times and rates on every clip of the test data.
HEADER_ONLY = {"probesize": "32", "analyzeduration": "0"}
# Slack when comparing a frame time with a sample time (float rounding of rational timestamps).
_EPS = 1e-6
# FFmpeg threads of a decode with the cores to itself (a lone request is decoded 0.15 s sooner
# than on one thread). Each frame thread holds a frame of the coded size, and left to itself
# FFmpeg starts one per core plus one (17 on a 16-core node) for every concurrent decode; with
# other requests running, a decode takes its share of the cores instead (`decoder_threads`).
DECODER_THREADS = 4
# Frames FFmpeg may hold at the coded size during a decode: the largest reference picture
# buffer of H.264 and HEVC (16), one per frame thread, and the one being converted.
DECODER_FRAMES = 16 + DECODER_THREADS + 1
# Bytes a pixel of a decoded frame takes at most in the formats phones record: 10-bit 4:2:0
# (HDR HEVC) or 8-bit 4:4:4.
DECODED_PIXEL_BYTES = 3
# FFmpeg's scaler kernel for the kept frames: area averaging, as cv2.INTER_AREA, so scaling
# down does not alias fine detail (eyelids, skin texture) the models look at.
SCALER = "AREA"
# Threads of that scaler. PyAV's default (0) has FFmpeg start a pool of one thread per core for
# every frame it converts; a frame at the kept size converts in less CPU time on the calling
# thread, to the same pixels.
SCALER_THREADS = 1

T = TypeVar("T")
# Called before each packet is decoded; it raises to stop the decode (the request's deadline
# passed, its client left).
Checkpoint = Callable[[], None]


def no_checkpoint() -> None:
    pass


class EvenSampler(Generic[T]):
    """Keeps items at evenly spaced times, at most `limit` of them, spanning the whole stream.

    A time is wanted once it reaches the next point of a grid of `period` seconds from 0.
    When more than `limit` are kept, every other one is dropped and the period doubles, so
    memory stays bounded even when the stream is longer than its header said.
    """

    def __init__(self, period: float, limit: int) -> None:
        self.period = period
        self.limit = limit
        self.kept: list[tuple[float, T]] = []
        self._next = -math.inf

    def wants(self, time: float) -> bool:
        return time >= self._next - _EPS

    def same_period(self, earlier: float, time: float) -> bool:
        """Whether a frame at `time` is sure to be dropped once one at `earlier` (< time) is
        seen: both fall in one period of the grid, and periods only ever merge in pairs."""
        return math.floor((earlier + _EPS) / self.period) == math.floor((time + _EPS) / self.period)

    def add(self, time: float, item: T) -> None:
        self.kept.append((time, item))
        if len(self.kept) > self.limit:
            self.kept = self.kept[::2]
            self.period *= 2
        self._next = (math.floor((time + _EPS) / self.period) + 1) * self.period


def sample_period(target_fps: float, max_frames: int, duration_s: float | None) -> float:
    """Seconds between samples: 1/target_fps, widened so max_frames cover a known duration."""
    period = 1.0 / target_fps
    return max(period, duration_s / max_frames) if duration_s else period


def decoder_threads(running: int, cores: int) -> int:
    """FFmpeg threads for a decode while `running` requests (this one included) share `cores`.

    Alone, a decode takes DECODER_THREADS frame threads and finishes sooner. Beside other
    requests it takes its share of the cores: each request's own thread already keeps a core
    busy, and frame threads past that share only add hand-offs between threads (on 2 cores at
    concurrency 4, one thread a decode instead of four: p95 0.13-0.27 s lower, README: lever 6).
    Frames come out the same on any number of threads."""
    if running <= 1:
        return DECODER_THREADS
    return max(1, min(DECODER_THREADS, cores // running))


def decode_video(data: bytes, limits: VideoLimits, checkpoint: Checkpoint = no_checkpoint,
                 threads: int = DECODER_THREADS) -> Video:
    """Decode an upload to at most limits.max_frames upright BGR frames, evenly spaced in time.

    Frames are taken at ~limits.target_fps; when the whole video at that rate would exceed
    max_frames, the rate drops so the frames still span the whole video (the challenge
    actions can happen at any time in it). `checkpoint` runs before every packet; FFmpeg
    decodes on `threads` threads.
    """
    with open_video(data) as (container, stream):
        duration = header_duration(container, stream)
        check_header(stream, duration, limits.max_duration_s, limits.max_pixels)
        fps = source_fps(stream)
        sampler: EvenSampler[int] = EvenSampler(
            sample_period(limits.target_fps, limits.max_frames, duration), limits.max_frames
        )
        store = FrameStore(limits.max_frames + 1)
        last, rotation = _sample(container, stream, sampler, store, fps or limits.target_fps, limits, threads,
                                 checkpoint)
        codec = stream.codec_context.name
    check_complete(duration, last, fps)
    return Video(
        frames=store.first(len(sampler.kept)),
        timestamps=np.array([time for time, _ in sampler.kept], dtype=np.float64),
        fps=fps,
        codec=codec,
        duration_s=float(duration or last),
        rotation=rotation,
    )


class FrameStore:
    """The kept frames, in sampling order, in one array allocated at the first kept frame.

    The clip is handed on without a second copy (stacking a list of frames would double the
    peak), and the pages of slots never written are never touched.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.array: np.ndarray | None = None

    def put(self, slot: int, image: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((self.slots, *image.shape), np.uint8)
        elif image.shape != self.array.shape[1:]:
            message = f"frame size changes within the video: {self.array.shape[1:]} then {image.shape}"
            raise MediaError("corrupt_media", message)
        self.array[slot] = image

    def pack(self, slots: list[int]) -> None:
        """Move the frames at these ascending slots to the front, keeping their order."""
        assert self.array is not None
        for index, slot in enumerate(slots):
            if index != slot:
                self.array[index] = self.array[slot]

    def first(self, count: int) -> np.ndarray:
        assert self.array is not None
        return self.array[:count]


def decode_peak_bytes(limits: VideoLimits) -> int:
    """The most memory one decode takes at these limits: the kept frames (max_frames + 1
    slots of the largest kept frame: the sampler holds one more before it thins out) and
    FFmpeg's frames at the largest coded size."""
    kept = (limits.max_frames + 1) * limits.frame_bytes()
    return kept + DECODER_FRAMES * limits.max_pixels * DECODED_PIXEL_BYTES


def _sample(
    container: InputContainer,
    stream: VideoStream,
    sampler: EvenSampler[int],
    store: FrameStore,
    fps: float,
    limits: VideoLimits,
    threads: int,
    checkpoint: Checkpoint = no_checkpoint,
) -> tuple[float, int]:
    """Decode the frames the sampler may want on `threads` FFmpeg threads, and convert only
    those it keeps, at the kept size, into `store` (the sampler holds their slots); returns
    (last frame time, rotation)."""
    stream.thread_type = thread_type()
    stream.codec_context.thread_count = threads
    refuse_large_frames(stream, limits.max_pixels)
    start = last = None
    rotation = 0
    demuxed: list[float] = []  # the times of the packets read so far, sorted

    def unwanted(packet: av.Packet) -> bool:
        """The sampler is certain to drop this packet's frame: an earlier frame of the same
        period has been read (packets come in decode order, frames in presentation order)."""
        if packet.pts is None:
            return False
        time = float(packet.pts * stream.time_base)
        earlier = bisect.bisect_left(demuxed, time - _EPS)
        bisect.insort(demuxed, time)
        if start is None or earlier == 0 or demuxed[earlier - 1] < start - _EPS:
            return False
        return sampler.same_period(demuxed[earlier - 1] - start, time - start)

    inspect = packet_check(stream, limits.max_pixels, checkpoint)
    for index, frame in enumerate(_frames(container, stream, limits.max_duration_s, unwanted, inspect)):
        time = frame.time if frame.time is not None else index / fps
        if start is None:
            start, rotation = time, upright_rotation(frame.rotation)
        last = time - start
        check_pixels(frame.width, frame.height, limits.max_pixels)
        check_time(last, limits.max_duration_s)
        if sampler.wants(last):
            width, height = limits.frame_size(frame.width, frame.height)
            image = frame.to_ndarray(width=width, height=height, format="bgr24", interpolation=SCALER,
                                    threads=SCALER_THREADS)
            slot = len(sampler.kept)
            store.put(slot, np.rot90(image, rotation // 90))
            sampler.add(last, slot)
            if len(sampler.kept) <= slot:  # the sampler dropped every other frame
                store.pack([kept for _, kept in sampler.kept])
                sampler.kept = [(kept_time, slot) for slot, (kept_time, _) in enumerate(sampler.kept)]
    if last is None:
        raise MediaError("no_frames", "the video has no decodable frame")
    return last, rotation


@contextmanager
def open_video(data: bytes) -> Iterator[tuple[InputContainer, VideoStream]]:
    """Open data with the demuxer its magic bytes name, and yield its first video stream.

    Naming the demuxer means FFmpeg never probes, so it can never pick one that opens
    other files or URLs (HLS playlists, concat lists).
    """
    demuxer = sniff_container(data)
    try:
        container = av.open(io.BytesIO(data), format=demuxer, options=HEADER_ONLY)
    except av.FFmpegError as error:  # FFmpeg's own words stay in the chained exception, not the answer
        raise MediaError("corrupt_media", f"cannot read the {demuxer} container") from error
    with container:
        if not container.streams.video:
            raise MediaError("unsupported_media_type", "the file has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context.name not in CODECS:
            raise MediaError("unsupported_media_type", f"video codec {stream.codec_context.name}")
        yield container, stream


def sniff_container(data: bytes) -> str:
    """The FFmpeg demuxer for MP4/MOV/3GP/3G2, Matroska/WebM or AVI data; anything else is
    refused. FFmpeg's "mov" demuxer reads all four ISO base media flavours."""
    if data[4:8] in _MP4_BOXES:
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    raise MediaError("unsupported_media_type", "not an MP4, MOV, 3GP, WebM, MKV or AVI video")


def header_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """The video's duration in seconds as the header states it, if it does."""
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def source_fps(stream: VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def check_header(
    stream: VideoStream, duration: float | None, max_duration_s: float, max_pixels: int
) -> None:
    """Refuse from the header alone, before decoding anything."""
    check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
    if duration is not None and duration > max_duration_s:
        raise MediaError("video_too_long", f"video is {duration:.1f} s, over {max_duration_s} s")


def refuse_large_frames(stream: VideoStream, max_pixels: int) -> None:
    """FFmpeg's own pixel limit: a decoder refuses a frame larger than this when it reads the
    frame's header, before allocating it (a stream may change size after its header)."""
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(max_pixels)}


def packet_check(stream: VideoStream, max_pixels: int, checkpoint: Checkpoint) -> Callable[[av.Packet], None]:
    """What runs before each packet is decoded: the checkpoint and, for MJPEG, the JPEG
    cost check of its frame (scans, size), which FFmpeg's decoder has no option for."""
    if stream.codec_context.name != "mjpeg":
        return lambda packet: checkpoint()

    def check(packet: av.Packet) -> None:
        checkpoint()
        jpeg.check_frames(bytes(packet), max_pixels)

    return check


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        message = f"frames are {width}x{height}, over {max_pixels} pixels"
        raise MediaError("media_too_large", message)


def check_time(time: float, max_duration_s: float) -> None:
    """Refuse a frame later than max_duration_s: the header's duration may lie or be missing."""
    if time > max_duration_s:
        raise MediaError("video_too_long", f"video runs past {max_duration_s} s")


def check_complete(duration: float | None, last: float, fps: float) -> None:
    """Refuse a video whose frames stop well before its header's duration: a truncated upload
    (an MP4 with its index first plays its first part without any decoding error)."""
    if duration is not None and duration - last > TRUNCATION_SLACK_S + (1.0 / fps if fps else 0.0):
        message = f"frames stop at {last:.2f} s of {duration:.2f} s: the file is truncated"
        raise MediaError("corrupt_media", message)


def thread_type() -> str:
    """FFmpeg's own threads (frame and slice), unless PyAV's Python logging is on: then its
    frame threads can log while the GIL is held to free the decoder, and deadlock (PyAV #751)."""
    return "AUTO" if av.logging.get_level() is None else "NONE"


def upright_rotation(display_rotation: float) -> int:
    """The counter-clockwise turn, in 0/90/180/270, that shows a frame upright.

    FFmpeg's display matrix angle is counter-clockwise (a phone's portrait video says -90).
    """
    return round(display_rotation / 90) % 4 * 90


def frame_budget(max_duration_s: float) -> int:
    """The most packets or frames we decode: MAX_DECODE_RATE per second of allowed video."""
    return math.ceil(max_duration_s * MAX_DECODE_RATE)


def _frames(
    container: InputContainer,
    stream: VideoStream,
    max_duration_s: float,
    unwanted: Callable[[av.Packet], bool] = lambda packet: False,
    inspect: Callable[[av.Packet], None] = lambda packet: None,
) -> Iterator[av.VideoFrame]:
    """Decoded frames; refuses a stream that passes the frame budget, maps FFmpeg errors.

    A packet whose frame is `unwanted` is decoded only if other frames refer to it: FFmpeg
    skips non-reference frames (B-frames, mostly), so every frame that is returned is
    decoded exactly as without skipping. `inspect` sees each packet before it is decoded
    and raises to refuse it.
    """
    budget = frame_budget(max_duration_s)
    context = stream.codec_context
    packets = frames = 0
    try:
        for packet in container.demux(stream):
            packets += 1
            if packet.size:
                inspect(packet)
            context.skip_frame = "NONREF" if unwanted(packet) else "DEFAULT"
            for frame in packet.decode():
                frames += 1
                yield frame
            if max(packets, frames) > budget:
                raise MediaError("video_too_long", f"more than {budget} frames")
    except av.FFmpegError as error:  # FFmpeg's own words stay in the chained exception, not the answer
        raise MediaError("corrupt_media", "video does not decode") from error


def assemble(
    kept: list[tuple[float, np.ndarray]], fps: float, codec: str, duration_s: float, rotation: int
) -> Video:
    """Stack the kept frames; a stream whose frame size changes midway is refused."""
    shapes = {image.shape for _, image in kept}
    if len(shapes) != 1:
        raise MediaError("corrupt_media", f"frame size changes within the video: {sorted(shapes)}")
    return Video(
        frames=np.ascontiguousarray(np.stack([image for _, image in kept])),
        timestamps=np.array([time for time, _ in kept], dtype=np.float64),
        fps=fps,
        codec=codec,
        duration_s=float(duration_s),
        rotation=rotation,
    )
