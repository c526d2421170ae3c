"""Media decoding: uploads (bytes) to uint8 BGR arrays, refusing what we do not read.

`decoder(name)` picks the implementation: "pyav" (FFmpeg on CPU, the default), "dali"
(NVIDIA DALI on CPU: VP8/VP9/MJPEG) or "gpu" (DALI on NVDEC through a pool of live
pipelines, frames left on the GPU, overflow to PyAV when the pool is busy). DALI is
imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from portrait.media.clip import Video
from portrait.media.errors import MediaError
from portrait.media.image import decode_image
from portrait.media.limits import VideoLimits

__all__ = ["Decoder", "MediaError", "Video", "VideoLimits", "decode_image", "decode_video", "decoder"]

DECODERS = ("pyav", "dali", "gpu")


def __getattr__(name: str):
    """PyAV (FFmpeg) is imported when video decoding is first asked for, not with the package."""
    if name == "decode_video":
        from portrait.media.video import decode_video

        return decode_video
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Decoder(NamedTuple):
    """`video(data, limits, checkpoint, threads)`: the checkpoint runs between packets and
    raises to stop the decode; `threads` is how many CPU threads FFmpeg may decode on (DALI
    keeps its own pool)."""

    name: str
    image: Callable[..., np.ndarray]
    video: Callable[..., Video]


def decoder(name: str = "pyav") -> Decoder:
    """The image and video decoders called `name`; "dali" needs the nvidia-dali wheel."""
    if name == "pyav":
        from portrait.media.video import decode_video

        return Decoder(name, decode_image, decode_video)
    if name == "dali":
        try:
            from portrait.media.dali import decode_image_dali, decode_video_dali
        except ImportError as error:
            message = f"the dali decoder needs NVIDIA DALI (nvidia-dali-cuda120): {error}"
            raise ImportError(message) from error

        def dali_video(data: bytes, limits: VideoLimits, checkpoint: Callable[[], None] = lambda: None,
                       threads: int = 1) -> Video:
            """DALI decodes on its own pool: `threads` does not apply."""
            return decode_video_dali(data, limits, checkpoint)

        return Decoder(name, decode_image_dali, dali_video)
    if name == "gpu":
        from portrait.media.dali_gpu import GpuVideoDecoder, decode_with_overflow
        from portrait.media.video import DECODER_THREADS

        pool = GpuVideoDecoder()  # raises a clear RuntimeError without CUDA, DALI or NVDEC

        def video(data: bytes, limits: VideoLimits, checkpoint: Callable[[], None] = lambda: None,
                  threads: int = DECODER_THREADS) -> Video:
            return decode_with_overflow(data, pool, limits, checkpoint, threads).video

        return Decoder(name, decode_image, video)
    raise ValueError(f"unknown media decoder {name!r}; choose one of {', '.join(DECODERS)}")
