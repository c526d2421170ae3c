"""Older phone formats: MPEG-4 Part 2 and H.263 video in MP4, 3GP and 3G2 containers.

Budget phones still record these. The clips are re-encodings of a test video made here, in
memory, and dropped with the test; nothing derived from the test data is written anywhere.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.challenge import ChallengeSpec
from portrait.media import MediaError, VideoLimits, decode_video
from portrait.pipeline import Pipeline

LIMITS = VideoLimits()
# H.263 takes only its standard picture sizes: QCIF and CIF are what phones wrote.
QCIF, CIF = (176, 144), (352, 288)
# (codec, muxer, frame size, B-frames): FFmpeg's mp4 muxer does not take H.263.
FORMATS = [
    ("mpeg4", "mp4", (512, 512), 0),
    ("mpeg4", "3gp", CIF, 0),
    ("mpeg4", "3g2", QCIF, 2),  # advanced simple profile with B-frames
    ("h263", "3gp", QCIF, 0),
    ("h263", "3g2", CIF, 0),
]


def fitted(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image scaled to fit size (width, height), centred on black: no distortion."""
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    inner = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA)
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - inner.shape[0]) // 2, (width - inner.shape[1]) // 2
    out[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
    return out


def reencode(path: Path, codec: str, muxer: str, size: tuple[int, int], b_frames: int = 0,
             count: int | None = None, band: bool = False) -> bytes:
    """The clip's first `count` frames (all by default) fitted to size, encoded in memory at
    the source rate. With band, the top rows' grey level encodes each frame's index."""
    buffer = io.BytesIO()
    with av.open(str(path)) as source, av.open(buffer, "w", format=muxer) as output:
        rate = source.streams.video[0].average_rate
        stream = output.add_stream(codec, rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt, stream.bit_rate = "yuv420p", 2_000_000
        stream.codec_context.max_b_frames = b_frames
        for index, frame in enumerate(source.decode(video=0)):
            if index == count:
                break
            image = fitted(frame.to_ndarray(format="bgr24"), size)
            if band:
                image[:24] = band_level(index)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def band_level(index: int) -> int:
    return (index * 53) % 200 + 28


@pytest.fixture(scope="module")
def d0(testdata) -> Path:
    return testdata / "videos/liveportrait/d0.mp4"


@pytest.mark.parametrize(("codec", "muxer", "size", "b_frames"), FORMATS,
                         ids=[f"{c}-{m}-{s[0]}x{s[1]}" for c, m, s, _ in FORMATS])
def test_old_phone_formats_decode_the_right_frames(d0, codec, muxer, size, b_frames):
    data = reencode(d0, codec, muxer, size, b_frames, count=40, band=True)  # 1.6 s at 25 fps
    video = decode_video(data, LIMITS)
    assert video.codec == codec and video.fps == 25 and video.rotation == 0
    assert video.frames.shape == (len(video.timestamps), *LIMITS.frame_size(*size)[::-1], 3)
    assert len(video.frames) == pytest.approx(1.6 * LIMITS.target_fps, abs=1)
    for frame, time in zip(video.frames, video.timestamps):  # the frame at that time, not a neighbour
        assert abs(frame[:20].mean() - band_level(round(time * 25))) < 12


@pytest.mark.parametrize(("codec", "muxer"), [("mpeg4", "3gp"), ("h263", "3g2")])
def test_old_phone_formats_keep_the_limits(d0, codec, muxer):
    data = reencode(d0, codec, muxer, CIF, count=40)
    for limits, code in ((replace(LIMITS, max_duration_s=1.0), "video_too_long"),
                         (replace(LIMITS, max_pixels=CIF[0] * CIF[1] - 1), "media_too_large")):
        with pytest.raises(MediaError) as caught:
            decode_video(data, limits)
        assert caught.value.code == code
    with pytest.raises(MediaError) as caught:
        decode_video(data[: len(data) // 2], LIMITS)
    assert caught.value.code == "corrupt_media"


def test_a_verification_on_old_formats_decides_as_on_the_original(model_repository, d0):
    """The whole clip as MPEG-4 Part 2 in 3GP (its own size) and as H.263 CIF in 3G2: the
    same decision, reasons and observed actions as the H.264 original."""
    pipeline = Pipeline(OnnxRuntimeBackend(model_repository))
    with av.open(str(d0)) as source:
        frames = source.decode(video=0)
        next(frames)
        id_photo = next(frames).to_ndarray(format="bgr24")  # not one of the sampled frames
    clips = {
        "h264 mp4 (original)": d0.read_bytes(),
        "mpeg4 3gp": reencode(d0, "mpeg4", "3gp", (512, 512)),
        "h263 3g2 CIF": reencode(d0, "h263", "3g2", CIF),
    }
    blink = ChallengeSpec.timed(["blink"], [2.0])  # d0 blinks at 2.6 s
    answers = {name: pipeline.verify(id_photo, decode_video(data, LIMITS), blink)
               for name, data in clips.items()}
    for name, answer in answers.items():
        print(name, answer["decision"], answer["match"]["score"], answer["liveness"]["passive"]["score"],
              answer["liveness"]["continuity"]["score"])
    original = answers.pop("h264 mp4 (original)")
    for name, answer in answers.items():
        assert answer["video"]["codec"] == name.split()[0]
        assert (answer["decision"], answer["reasons"]) == (original["decision"], original["reasons"]), name
        observed = {e["action"] for e in answer["liveness"]["active"]["observed"]}
        assert observed == {e["action"] for e in original["liveness"]["active"]["observed"]}, name
