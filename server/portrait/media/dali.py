"""The same decoders with NVIDIA DALI (dynamic mode), here on CPU: VP8, VP9 and MJPEG video.

PyAV still reads the container (the header limits, the frame timestamps from the packets,
the display rotation from the first frame); DALI decodes only the sampled frames. DALI
returns RGB at the coded size and ignores the display rotation, so the channel order, the
scaling to `VideoLimits.max_side` (area averaging, as PyAV's scaler) and the rotation are
applied here.
"""

from __future__ import annotations

from collections.abc import Callable

import av
import cv2
import numpy as np
import nvidia.dali.experimental.dynamic as ndd
from av.container import InputContainer
from av.video.stream import VideoStream
from nvidia.dali.types import DALIImageType

from portrait.media.errors import MediaError
from portrait.media.image import check_image_size, reduction_for
from portrait.media.limits import MAX_IMAGE_PIXELS, VideoLimits
from portrait.media.video import (
    Checkpoint,
    EvenSampler,
    Video,
    no_checkpoint,
    assemble,
    check_pixels,
    check_time,
    check_complete,
    check_header,
    frame_budget,
    header_duration,
    open_video,
    packet_check,
    refuse_large_frames,
    sample_period,
    source_fps,
    upright_rotation,
)

# What DALI's CPU video decoder reads (H.264, HEVC and AV1 need its GPU backend).
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})


def decode_image_dali(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Like decode_image (uint8 BGR, EXIF orientation applied, size checked first, a large JPEG
    reduced to the same size, here by area averaging after the decode), with DALI."""
    reduction = reduction_for(data, *check_image_size(data, max_pixels))
    try:
        image = np.asarray(ndd.decoders.image(_tensor(data), device="cpu", output_type=DALIImageType.BGR))
    except RuntimeError as error:
        raise MediaError("corrupt_media", "image does not decode") from error
    if reduction == 1:
        return image
    height, width = image.shape[:2]
    return cv2.resize(image, (-(-width // reduction), -(-height // reduction)), interpolation=cv2.INTER_AREA)


def decode_video_dali(data: bytes, limits: VideoLimits, checkpoint: Checkpoint = no_checkpoint) -> Video:
    """Like decode_video (same sampling, limits, errors and output), decoding with DALI on CPU.
    The packets are checked as PyAV's are (`packet_check`) before DALI sees them."""
    with open_video(data) as (container, stream):
        codec = stream.codec_context.name
        if codec not in DALI_CPU_CODECS:
            raise MediaError("unsupported_media_type", f"DALI on CPU does not decode {codec}")
        duration = header_duration(container, stream)
        check_header(stream, duration, limits.max_duration_s, limits.max_pixels)
        refuse_large_frames(stream, limits.max_pixels)
        inspect = packet_check(stream, limits.max_pixels, checkpoint)
        times, rotation = _frame_times(container, stream, limits.max_duration_s, inspect)
        fps = source_fps(stream)
    check_complete(duration, times[-1], fps)
    period = sample_period(limits.target_fps, limits.max_frames, duration)
    sampler: EvenSampler[int] = EvenSampler(period, limits.max_frames)
    for index, time in enumerate(times):
        if sampler.wants(time):
            sampler.add(time, index)
    frames = _decode_frames(data, [index for _, index in sampler.kept])
    check_pixels(frames.shape[2], frames.shape[1], limits.max_pixels)
    size = limits.frame_size(frames.shape[2], frames.shape[1])
    images = (np.rot90(_scaled(frame, size)[..., ::-1], rotation // 90) for frame in frames)
    kept = [(time, image) for (time, _), image in zip(sampler.kept, images)]
    return assemble(kept, fps, codec, duration or times[-1], rotation)


def _frame_times(
    container: InputContainer, stream: VideoStream, max_duration_s: float,
    inspect: Callable[[av.Packet], None],
) -> tuple[list[float], int]:
    """Frame times in presentation order, from the packets (seconds from the first), and the
    rotation from the first decoded frame; refuses streams past the duration or frame budget."""
    budget = frame_budget(max_duration_s)
    pts: list[int] = []
    rotation = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            inspect(packet)
            if rotation is None:
                rotations = (upright_rotation(frame.rotation) for frame in packet.decode())
                rotation = next(rotations, None)
            pts.append(packet.pts)
            check_time(float((packet.pts - pts[0]) * stream.time_base), max_duration_s)
            if len(pts) > budget:
                raise MediaError("video_too_long", f"more than {budget} frames")
    except av.FFmpegError as error:
        raise MediaError("corrupt_media", "video does not decode") from error
    if not pts:
        raise MediaError("no_frames", "the video has no frame")
    start = min(pts)
    return [float((value - start) * stream.time_base) for value in sorted(pts)], rotation or 0


def _decode_frames(data: bytes, indices: list[int]) -> np.ndarray:
    """The frames at these presentation-order indices, RGB [N, H, W, 3]."""
    try:
        decoded = ndd.decoders.video(_tensor(data), device="cpu", frames=indices, pad_mode="none")
        frames = np.asarray(decoded)
    except RuntimeError as error:  # DALI's text is an internal assertion: keep it in the cause
        raise MediaError("corrupt_media", "video does not decode") from error
    if len(frames) != len(indices):
        raise MediaError("corrupt_media", f"DALI decoded {len(frames)} of {len(indices)} frames")
    return frames


def _scaled(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frame at (width, height), area-averaged when smaller."""
    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _tensor(data: bytes) -> ndd.Tensor:
    return ndd.as_tensor(np.frombuffer(data, np.uint8))
