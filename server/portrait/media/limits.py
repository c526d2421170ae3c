"""The limits every video decoder applies, defined once.

`Settings` builds one `VideoLimits` from its `PORTRAIT_VIDEO_*` variables, whose defaults are
the ones below; the PyAV, DALI CPU and DALI GPU decoders, the service and the command line
all take it from there. Kept apart from the decoders so that importing it loads no FFmpeg.
"""

from __future__ import annotations

from dataclasses import dataclass

# The smallest long side frames may be scaled to: the video detector's input (320 on the longer side).
MIN_FRAME_SIDE = 320
# Larger images (ID photos, photos to compare) are refused; `Settings.max_image_pixels`.
MAX_IMAGE_PIXELS = 40_000_000
# JPEG photos are decoded at 1/2, 1/4 or 1/8 of their size (in the DCT, before any pixel
# exists), as small as keeps this longer side: a face an eighth of that side keeps 200
# pixels, above the largest crop taken of it (dlib's 150).
MIN_IMAGE_SIDE = 1600


@dataclass(frozen=True)
class VideoLimits:
    """What a decoder may read and keep of one video.

    target_fps: frames sampled per second of video (fewer when max_frames would not span it);
    max_frames: frames kept at most; max_duration_s: longer videos are refused;
    max_pixels: larger coded frames are refused (width x height, before scaling);
    max_side: kept frames are scaled down while decoding so their longer side is at most this
    (0 keeps the coded size). The face crops need no more: the detector sees 320, FaceMesh
    192, the embedder 112, MiniFASNet 80 (see the README's "Media and memory" for the
    measurement behind the default and the memory it bounds).
    """

    target_fps: float = 15.0
    # Every clip the service accepts keeps target_fps throughout: a whole challenge recording
    # (up to 11.4 s, plus its overrun) is sampled as densely as blinks and move onsets need.
    max_frames: int = 180
    max_duration_s: float = 12.0
    max_pixels: int = 1920 * 1088
    max_side: int = 640

    def __post_init__(self) -> None:
        if not (self.target_fps > 0 and self.max_frames >= 2 and self.max_duration_s > 0
                and self.max_pixels > 0):
            raise ValueError(f"video limits must be positive (and max_frames >= 2): {self}")
        if self.max_side and self.max_side < MIN_FRAME_SIDE:
            raise ValueError(f"max_side {self.max_side} is below the detector's {MIN_FRAME_SIDE} "
                             "(0 keeps frames at their coded size)")

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) a coded frame is kept at: scaled down, aspect kept, never up."""
        longer = max(width, height)
        if not self.max_side or longer <= self.max_side:
            return width, height
        scale = self.max_side / longer
        return max(1, round(width * scale)), max(1, round(height * scale))

    def frame_bytes(self) -> int:
        """The most bytes one kept BGR frame can take (a square frame at max_side, or
        max_pixels when frames are not scaled)."""
        pixels = self.max_side * self.max_side if self.max_side else self.max_pixels
        return min(pixels, self.max_pixels) * 3
