"""Hostile media at the decoders: files whose decode would cost far more than their size
(made at test time by `hostile.py`) are refused from their headers and markers, before a
decoder allocates or spends anything; what is allowed stays within the documented bounds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import hostile
from portrait.media import MediaError, VideoLimits, decode_image, decode_video
from portrait.media import image as image_module
from portrait.media import jpeg
from portrait.media.video import decode_peak_bytes

LIMITS = VideoLimits()


def refuse(code: str, function, *args, **kwargs) -> MediaError:
    with pytest.raises(MediaError) as caught:
        function(*args, **kwargs)
    assert caught.value.code == code, caught.value
    return caught.value


@pytest.fixture
def no_imdecode(monkeypatch):
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *_: pytest.fail("the decoder was reached"))


# ---------------------------------------------------------------- JPEG scans and coefficients


def test_the_issues_repeated_scan_jpeg_is_refused_before_decoding(no_imdecode):
    """6000x6000, its last scan repeated 2,800 times (about 70 CPU s in libjpeg): refused."""
    data = hostile.many_scans_jpeg()
    started = time.process_time()
    refuse("too_many_scans", decode_image, data)
    assert time.process_time() - started < 0.5
    # with its scans cut to the limit, its coefficients alone (103 MiB) are over the budget
    start, end = hostile.last_scan(data)
    layout = jpeg.read_layout(data[:start - 2799 * (end - start)] + data[end:])[0]
    assert layout.scans == 10 and layout.coefficient_bytes() > jpeg.MAX_COEFFICIENT_BYTES


def test_a_jpeg_with_more_scans_than_allowed_is_refused_before_decoding(no_imdecode):
    base = hostile.flat_progressive_jpeg(1600, 1200)
    assert jpeg.read_layout(base)[0].scans == 10  # libjpeg's own progressive script
    data = hostile.repeated_last_scan(base, jpeg.MAX_SCANS - 10 + 1)
    error = refuse("too_many_scans", decode_image, data)
    assert error.status == 422 and str(jpeg.MAX_SCANS) in str(error)


def test_a_jpeg_at_the_scan_limit_decodes():
    base = hostile.flat_progressive_jpeg(320, 240)
    data = hostile.repeated_last_scan(base, jpeg.MAX_SCANS - 10)
    assert jpeg.read_layout(data)[0].scans == jpeg.MAX_SCANS
    assert decode_image(data).shape == (240, 320, 3)


@pytest.mark.parametrize("sampling, pixels", [
    (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, (1, 1.5)), (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, (1, 3)),
])
def test_the_coefficient_buffer_is_computed_as_libjpeg_allocates_it(sampling, pixels):
    image = hostile.picture(333, 250)
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                               sampling])[1].tobytes()
    baseline = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])[1].tobytes()
    layout = jpeg.read_layout(progressive)[0]
    assert layout.multi_scan and jpeg.read_layout(baseline)[0].coefficient_bytes() == 0
    mcu = 16 if sampling == cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 else 8
    blocks = -(-333 // mcu) * -(-250 // mcu) * (mcu // 8) ** 2 * pixels[1] / pixels[0]
    assert layout.coefficient_bytes() == blocks * 128


def test_a_progressive_jpeg_over_the_coefficient_budget_is_refused_and_its_baseline_twin_decodes(monkeypatch):
    grey = np.full((4000, 6000, 3), 128, np.uint8)  # 4:2:0: 69 MiB of coefficients
    progressive = hostile.progressive_jpeg(grey, quality=75)
    baseline = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()
    assert jpeg.read_layout(progressive)[0].coefficient_bytes() > jpeg.MAX_COEFFICIENT_BYTES
    assert decode_image(baseline).shape == (2000, 3000, 3)
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *_: pytest.fail("the decoder was reached"))
    refuse("media_too_large", decode_image, progressive)


PEAK_CHILD = """
import json, sys
from portrait.media import decode_image, decode_video, VideoLimits
from portrait.media import video as video_module

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

kind, data = sys.argv[1], sys.stdin.buffer.read()
if kind == "ffmpeg_only":  # FFmpeg's own limit alone, without the JPEG check of each packet
    video_module.packet_check = lambda stream, max_pixels, checkpoint: lambda packet: None
warm = open(sys.argv[2], "rb").read()
decode_video(warm, VideoLimits()) if kind != "image" else decode_image(warm)  # libraries loaded
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
base = status("VmRSS")
try:
    (decode_image if kind == "image" else lambda d: decode_video(d, VideoLimits()))(data)
    outcome = "decoded"
except Exception as error:
    outcome = getattr(error, "code", type(error).__name__)
print(json.dumps({"gained": status("VmHWM") - base, "outcome": outcome}))
"""


def peak(kind: str, data: bytes, warm: bytes, tmp_path) -> dict:
    warm_path = tmp_path / "warm"
    warm_path.write_bytes(warm)  # synthetic, made by hostile.py
    result = subprocess.run([sys.executable, "-c", PEAK_CHILD, kind, str(warm_path)], input=data,
                            capture_output=True, check=True, timeout=120)
    return json.loads(result.stdout)


def test_the_largest_allowed_progressive_jpeg_decodes_within_the_image_bound(tmp_path):
    """3199x3199 4:4:4 progressive: decoded whole (no reduction) through 59 MiB of coefficients."""
    image = hostile.picture(3199, 3199, noise=3)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1].tobytes()
    assert jpeg.read_layout(data)[0].coefficient_bytes() <= jpeg.MAX_COEFFICIENT_BYTES
    figures = peak("image", data, hostile.progressive_jpeg(hostile.picture(64, 64)), tmp_path)
    print(f"+{figures['gained'] / 2**20:.0f} MiB, bound {image_module.decode_peak_bytes() / 2**20:.0f} MiB")
    assert figures["outcome"] == "decoded"
    assert figures["gained"] < image_module.decode_peak_bytes()


# ---------------------------------------------------------------- video


def test_the_issues_tiny_scans_mov_is_refused_before_decoding():
    data = hostile.tiny_scans_mov()
    started = time.process_time()
    error = refuse("too_many_scans", decode_video, data, LIMITS)
    assert time.process_time() - started < 0.5
    assert "video frame" in str(error) or "JPEG" in str(error)


@pytest.mark.parametrize("kind", ["jpeg_check", "ffmpeg_only"])
def test_a_giant_frame_behind_a_small_header_is_refused_before_it_is_allocated(kind, tmp_path):
    """Header 320x240, second frame 16000x16000 (FFmpeg would allocate 366 MiB for it): the
    packet's JPEG header is read first (413); without that check FFmpeg's own pixel limit
    refuses the frame as it reads its header (422). Either way memory stays in the bound."""
    data = hostile.giant_second_frame_mov()
    figures = peak(kind, data, hostile.mjpeg_mov([cv2.imencode(".jpg", hostile.picture(320, 240))[1].tobytes()] * 2,
                                                  320, 240), tmp_path)
    print(f"{kind}: {figures}")
    assert figures["outcome"] == ("media_too_large" if kind == "jpeg_check" else "corrupt_media")
    assert figures["gained"] < decode_peak_bytes(LIMITS) / 4


def test_the_checkpoint_stops_a_decode_between_packets(testdata):
    data = (testdata / "videos/liveportrait/d0.mp4").read_bytes()
    calls = []

    class Stop(Exception):
        pass

    def checkpoint() -> None:
        calls.append(1)
        if len(calls) == 5:
            raise Stop

    with pytest.raises(Stop):
        decode_video(data, LIMITS, checkpoint)
    assert len(calls) == 5  # not one packet more
    counted = []
    decode_video(data, LIMITS, lambda: counted.append(1))
    assert len(counted) > 20


def test_ffmpeg_and_opencv_words_stay_out_of_error_details(testdata):
    video = (testdata / "videos/liveportrait/d0.mp4").read_bytes()
    broken = video[:64] + bytes(4096) + video[4160:]
    details = []
    for data in (broken, b"\x00\x00\x00\x18ftypmp42" + bytes(256), video[: len(video) // 3]):
        with pytest.raises(MediaError) as caught:
            decode_video(data, LIMITS)
        details.append(str(caught.value))
    jpeg_data = cv2.imencode(".jpg", hostile.picture(64, 64))[1].tobytes()
    sos = jpeg_data.index(b"\xff\xda")
    with pytest.raises(MediaError) as caught:
        decode_image(jpeg_data[:sos] + b"\xff\xc4\x00\x03\x00" + jpeg_data[sos:])  # a broken table
    details.append(str(caught.value))
    print(details)
    for detail in details:
        assert not any(word in detail for word in ("Errno", "avcodec", "avformat", "()", "cv::", "error:")), detail
