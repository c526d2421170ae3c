"""The media decode layer on the real test videos and images, plus crafted hostile inputs.

Re-encodings and crafted files are made in memory only; nothing derived from the test data
is written anywhere.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from portrait.media import MediaError, Video, VideoLimits, decode_image, decode_video, decoder
from portrait.media import image as image_module
from portrait.media import video as video_module
from portrait.media.limits import MIN_IMAGE_SIDE
from portrait.media.video import EvenSampler

# The shipped limits (what Settings builds by default); tests change one field at a time.
LIMITS = VideoLimits()

# DALI and PyAV convert YUV to RGB slightly differently (chroma upsampling, rounding):
# mean absolute difference allowed between their frames, in 0..255 units.
DALI_TOLERANCE = 2.0


# ---------------------------------------------------------------- helpers (in memory only)


def encode(
    frames: list[np.ndarray],
    codec: str,
    container: str,
    rate: int = 25,
    rotation: int | None = None,
) -> bytes:
    """Encode BGR frames to a video in memory."""
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def remux(data: bytes, container: str, keep=lambda packet: True, **options: str) -> bytes:
    """Copy the video packets that `keep` accepts into a new container, in memory."""
    buffer = io.BytesIO()
    with av.open(io.BytesIO(data)) as source:
        with av.open(buffer, "w", format=container, options=options) as out:
            stream = out.add_stream_from_template(source.streams.video[0])
            for packet in source.demux(source.streams.video[0]):
                if packet.dts is not None and keep(packet):
                    packet.stream = stream
                    out.mux(packet)
    return buffer.getvalue()


def source_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first frames of a clip, each with a top band whose grey level encodes its index,
    so that a decoder returning the wrong frame cannot pass for small noise."""
    frames = []
    with av.open(str(path)) as clip:
        for index, frame in enumerate(clip.decode(video=0)):
            if index == count:
                break
            image = frame.to_ndarray(format="bgr24")
            image[:32] = band_level(index)
            frames.append(image)
    return frames


def band_level(index: int) -> int:
    return (index * 53) % 200 + 28


def marker_frames(count: int, height: int = 32, width: int = 64) -> list[np.ndarray]:
    """Black frames with a white top-left quadrant: shows where a rotation moved the top-left."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = 255
    return [image] * count


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG with a hand-written EXIF APP1 segment holding one Orientation tag."""
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def white_quadrant(image: np.ndarray) -> str:
    """Which quadrant of a marker frame is white: 'tl', 'tr', 'bl' or 'br'."""
    height, width = image.shape[:2]
    means = {
        "tl": image[: height // 2, : width // 2].mean(),
        "tr": image[: height // 2, width // 2 :].mean(),
        "bl": image[height // 2 :, : width // 2].mean(),
        "br": image[height // 2 :, width // 2 :].mean(),
    }
    return max(means, key=means.get)


def limits(**changes) -> VideoLimits:
    return replace(LIMITS, **changes)


def refuse(code: str, function, *args, **kwargs) -> MediaError:
    with pytest.raises(MediaError) as caught:
        function(*args, **kwargs)
    assert caught.value.code == code, caught.value
    return caught.value


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def video_paths(testdata) -> list[Path]:
    paths = sorted((testdata / "videos").rglob("*.mp4"))
    assert paths, "no test videos"
    return paths


@pytest.fixture(scope="module")
def decoded(video_paths) -> dict[str, Video]:
    """Every test video decoded with the default sampling (d9 is 19.6 s: a longer limit)."""
    return {path.stem: decode_video(path.read_bytes(), limits(max_duration_s=30.0)) for path in video_paths}


@pytest.fixture(scope="module")
def d0(testdata) -> bytes:
    return (testdata / "videos/liveportrait/d0.mp4").read_bytes()


@pytest.fixture(scope="module")
def reencoded(testdata) -> dict[str, bytes]:
    """d0's first 40 frames (1.6 s), index-banded, as VP9 WebM, VP8 WebM and MJPEG AVI/MKV."""
    frames = source_frames(testdata / "videos/liveportrait/d0.mp4", 40)
    return {
        "vp9.webm": encode(frames, "libvpx-vp9", "webm"),
        "vp8.webm": encode(frames, "libvpx", "webm"),
        "mjpeg.avi": encode(frames, "mjpeg", "avi"),
        "mjpeg.mkv": encode(frames, "mjpeg", "matroska"),
    }


# ---------------------------------------------------------------- videos


def test_every_test_video_decodes(decoded, video_paths):
    for path in video_paths:
        video = decoded[path.stem]
        with av.open(str(path)) as clip:
            stream = clip.streams.video[0]
            width, height = LIMITS.frame_size(stream.width, stream.height)
        count = len(video.frames)
        assert video.frames.dtype == np.uint8 and video.frames.shape == (count, height, width, 3)
        assert video.frames.flags.c_contiguous and max(width, height) <= LIMITS.max_side
        assert 2 <= count <= LIMITS.max_frames and video.timestamps.shape == (count,)
        assert video.timestamps[0] == 0.0 and np.all(np.diff(video.timestamps) > 0)
        assert video.codec == "h264" and video.rotation == 0 and video.fps > 20
        expected_rate = min(LIMITS.target_fps, LIMITS.max_frames / video.duration_s)
        rate = (count - 1) / video.timestamps[-1]
        assert rate == pytest.approx(expected_rate, rel=0.15), path.name
        assert video.timestamps[-1] > video.duration_s - 2 / expected_rate, "frames span the video"


def test_portrait_clip_stays_portrait_and_is_scaled_to_max_side(decoded):
    assert decoded["d13"].frames.shape[1:] == (640, 360, 3)  # coded 720x1280


def test_short_clip_is_sampled_at_target_rate(decoded):
    timestamps = decoded["d0"].timestamps  # 3.1 s at 25 fps: 15 fps fits in 96 frames
    assert len(timestamps) == pytest.approx(3.12 * 15, abs=2)
    assert np.all(np.abs(np.diff(timestamps) - 1 / 15) <= 1 / 25 + 1e-6)


def test_max_frames_caps_and_still_spans_the_video(d0):
    video = decode_video(d0, limits(max_frames=5))
    assert 3 <= len(video.frames) <= 5
    assert video.timestamps[-1] > 0.6 * video.duration_s


def test_header_duration_over_the_limit_is_refused(d0, testdata):
    error = refuse("video_too_long", decode_video, d0, limits(max_duration_s=2.0))
    assert error.status == 422
    refuse("video_too_long", decode_video, (testdata / "videos/liveportrait/d9.mp4").read_bytes(), LIMITS)


def test_duration_is_enforced_without_a_header_duration():
    live = remux(encode(marker_frames(30), "libvpx-vp9", "webm", rate=10), "webm", live="1")  # 3 s
    with av.open(io.BytesIO(live)) as check:
        assert check.duration is None and check.streams.video[0].duration is None
    refuse("video_too_long", decode_video, live, limits(max_duration_s=2.0))
    # no duration to plan with: the sampler halves its rate to keep max_frames over the whole video
    video = decode_video(live, limits(max_frames=8))
    assert 4 <= len(video.frames) <= 8 and video.timestamps[-1] >= 2.0


def test_frame_budget_stops_a_flood_of_tiny_frames():
    data = encode(marker_frames(300, 16, 16), "mjpeg", "avi", rate=1000)  # 0.3 s, 1000 fps
    error = refuse("video_too_long", decode_video, data, limits(max_duration_s=1.0))
    assert "frames" in str(error)


def test_frames_over_max_pixels_are_refused(d0):
    error = refuse("media_too_large", decode_video, d0, limits(max_pixels=512 * 511))
    assert error.status == 413


def test_skipping_unused_non_reference_frames_changes_nothing(testdata, monkeypatch):
    """The B-frames the sampler will not keep are not decoded, and the result is the same."""
    data = (testdata / "videos/replay_pair/real.mp4").read_bytes()  # H.264 High, with B-frames
    frames_seen = []
    original = video_module._frames

    def counted(*args, skipping: bool):
        frames = original(*args) if skipping else original(*args[:3])
        for count, frame in enumerate(frames, 1):
            yield frame
        frames_seen.append(count)

    monkeypatch.setattr(video_module, "_frames", lambda *args: counted(*args, skipping=True))
    skipped = decode_video(data, LIMITS)
    monkeypatch.setattr(video_module, "_frames", lambda *args: counted(*args, skipping=False))
    full = decode_video(data, LIMITS)
    np.testing.assert_array_equal(skipped.frames, full.frames)
    np.testing.assert_array_equal(skipped.timestamps, full.timestamps)
    assert (skipped.duration_s, skipped.fps) == (full.duration_s, full.fps)
    assert frames_seen[0] < frames_seen[1] == 112, frames_seen


def test_frames_depend_on_neither_the_decoders_nor_the_scalers_threads(testdata, monkeypatch):
    """The decode's threads reach FFmpeg, and the frames depend neither on them nor on the
    scaler's (one thread against PyAV's default of one per core)."""
    data = (testdata / "videos/replay_pair/real.mp4").read_bytes()
    threads_seen = []
    original = video_module._frames

    def spied(container, stream, *rest):
        threads_seen.append(stream.codec_context.thread_count)
        return original(container, stream, *rest)

    monkeypatch.setattr(video_module, "_frames", spied)
    one = decode_video(data, LIMITS, threads=1)
    monkeypatch.setattr(video_module, "SCALER_THREADS", 0)
    four = decode_video(data, LIMITS, threads=4)
    assert threads_seen == [1, 4]
    np.testing.assert_array_equal(one.frames, four.frames)
    np.testing.assert_array_equal(one.timestamps, four.timestamps)


def test_a_decode_alone_takes_its_threads_and_decodes_side_by_side_share_the_cores():
    threads = video_module.decoder_threads
    assert threads(1, 2) == threads(0, 2) == video_module.DECODER_THREADS
    assert [threads(running, 2) for running in (2, 3, 8)] == [1, 1, 1]
    assert [threads(running, 16) for running in (2, 4, 8, 32)] == [4, 4, 2, 1]


def test_frames_are_scaled_while_decoding_to_max_side(testdata):
    data = (testdata / "videos/replay_pair/real.mp4").read_bytes()  # 1080x720
    coded = decode_video(data, limits(max_side=0))
    scaled = decode_video(data, limits(max_side=480))
    assert coded.frames.shape[1:] == (720, 1080, 3) and scaled.frames.shape[1:] == (320, 480, 3)
    np.testing.assert_array_equal(scaled.timestamps, coded.timestamps)
    # the same pictures: OpenCV's area scaling of the full frames is within a level or two
    reference = np.stack([cv2.resize(f, (480, 320), interpolation=cv2.INTER_AREA) for f in coded.frames])
    assert np.abs(reference.astype(np.int16) - scaled.frames).mean() < 2.0
    with pytest.raises(ValueError, match="below the detector"):
        limits(max_side=200)


def test_truncated_videos_are_corrupt(video_paths):
    for path in video_paths:  # index at the end (open fails) and at the start (frames stop early)
        data = path.read_bytes()
        refuse("corrupt_media", decode_video, data[: len(data) // 2], LIMITS)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", os.urandom(4096), b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nfile:///etc/passwd\n"],
    ids=["empty", "one-byte", "random", "hls-playlist"],
)
def test_non_videos_are_unsupported(data):
    assert refuse("unsupported_media_type", decode_video, data, LIMITS).status == 415


def test_garbage_behind_a_video_signature_is_corrupt():
    refuse("corrupt_media", decode_video, b"\x00\x00\x00\x20ftypisom" + os.urandom(4096), LIMITS)
    refuse("corrupt_media", decode_video, b"\x1a\x45\xdf\xa3" + os.urandom(4096), LIMITS)


def test_an_image_or_unlisted_codec_is_unsupported():
    jpeg = cv2.imencode(".jpg", marker_frames(1)[0])[1].tobytes()
    refuse("unsupported_media_type", decode_video, jpeg, LIMITS)
    refuse("unsupported_media_type", decode_video, encode(marker_frames(5), "ffv1", "matroska"), LIMITS)


def test_a_stream_without_decodable_frames_gives_no_frames():
    data = encode(marker_frames(10), "libx264", "matroska")
    broken = remux(data, "matroska", keep=lambda packet: not packet.is_keyframe)
    assert refuse("no_frames", decode_video, broken, LIMITS).status == 422


@pytest.mark.parametrize("name", ["vp9.webm", "vp8.webm", "mjpeg.avi", "mjpeg.mkv"])
def test_reencoded_clips_decode(reencoded, name):
    video = decode_video(reencoded[name], LIMITS)
    assert video.codec == {"vp9": "vp9", "vp8": "vp8", "mjpeg": "mjpeg"}[name.split(".")[0]]
    assert video.frames.shape == (len(video.timestamps), 512, 512, 3)
    assert len(video.frames) == pytest.approx(1.6 * LIMITS.target_fps, abs=1) and video.fps == 25
    for frame, time in zip(video.frames, video.timestamps):
        assert abs(frame[:32].mean() - band_level(round(time * 25))) < 12  # neighbours: >= 47


def test_frames_kept_through_the_samplers_halving_are_the_right_ones(reencoded):
    video = decode_video(reencoded["mjpeg.avi"], limits(max_frames=5))  # halves twice
    assert 3 <= len(video.frames) <= 5 and np.all(np.diff(video.timestamps) > 0)
    for frame, time in zip(video.frames, video.timestamps):
        assert abs(frame[:32].mean() - band_level(round(time * 25))) < 12


def test_a_frame_size_change_midway_is_corrupt():
    small, large = encode(marker_frames(4, 32, 32), "mjpeg", "avi"), encode(marker_frames(4), "mjpeg", "avi")
    buffer = io.BytesIO()
    with av.open(io.BytesIO(small)) as first, av.open(io.BytesIO(large)) as second:
        with av.open(buffer, "w", format="avi") as out:
            stream = out.add_stream_from_template(first.streams.video[0])
            for index, packet in enumerate([*first.demux(video=0), *second.demux(video=0)]):
                if packet.dts is not None:
                    packet.stream, packet.pts, packet.dts = stream, index, index
                    out.mux(packet)
    error = refuse("corrupt_media", decode_video, buffer.getvalue(), LIMITS)
    assert "size changes" in str(error)


@pytest.mark.parametrize(
    ("display_rotation", "applied", "white"),
    [(-90, 270, "tr"), (90, 90, "bl"), (180, 180, "br")],
)
def test_display_rotation_is_applied(display_rotation, applied, white):
    # -90 is what a phone writes for portrait video: shown turned 90 degrees clockwise
    data = encode(marker_frames(4), "libx264", "mp4", rotation=display_rotation)
    video = decode_video(data, LIMITS)
    assert video.rotation == applied
    expected_shape = (32, 64, 3) if applied == 180 else (64, 32, 3)
    assert video.frames.shape[1:] == expected_shape
    assert white_quadrant(video.frames[0]) == white


def test_even_sampler_keeps_a_bounded_evenly_spaced_sample():
    sampler: EvenSampler[int] = EvenSampler(period=0.1, limit=10)
    times = np.arange(0, 20, 1 / 30)
    for index, time in enumerate(times):
        if sampler.wants(time):
            sampler.add(time, index)
    kept = np.array([time for time, _ in sampler.kept])
    assert 5 <= len(kept) <= 10 and kept[0] == 0 and kept[-1] > 15
    assert np.ptp(np.diff(kept)) <= 1 / 30 + 1e-9


def test_frame_threads_only_while_pyav_logging_is_off(monkeypatch):
    assert video_module.thread_type() == "AUTO"
    monkeypatch.setattr(av.logging, "get_level", lambda: av.logging.INFO)
    assert video_module.thread_type() == "NONE"  # PyAV's log callback can deadlock frame threads
    refuse("corrupt_media", decode_video, b"\x1a\x45\xdf\xa3" + os.urandom(4096), LIMITS)


def test_decoders_write_nothing_to_disk(tmp_path, d0, testdata):
    """Decode in a child whose temp and working folders are empty; they must stay empty."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    script = (
        "import sys; from portrait.media import VideoLimits, decode_image, decode_video\n"
        "decode_video(open(sys.argv[1], 'rb').read(), VideoLimits())\n"
        "decode_image(open(sys.argv[2], 'rb').read())\n"
    )
    image = testdata / "images/deepface/img1.jpg"
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    subprocess.run(
        [sys.executable, "-c", script, str(testdata / "videos/liveportrait/d0.mp4"), str(image)],
        cwd=tmp_path / "cwd", env=env, check=True, timeout=60,
    )
    assert not any((tmp_path / "tmp").iterdir()) and not any((tmp_path / "cwd").iterdir())


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(
    "name", ["images/deepface/img1.jpg", "images/silent_face/image_T1.jpg", "images/astronaut.png"]
)
def test_test_images_decode_to_bgr(testdata, name):
    path = testdata / name
    image = decode_image(path.read_bytes())
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    np.testing.assert_array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_real_exif_orientation_is_applied(testdata):
    data = (testdata / "images/silent_face/image_T1.jpg").read_bytes()  # 640x480, orientation 6
    assert image_module.image_size(data) == (640, 480)
    assert decode_image(data).shape == (640, 480, 3)


def test_large_jpegs_are_decoded_reduced_in_the_dct(testdata):
    """A 36-megapixel phone photo comes out at a quarter of its sides, close to the
    full decode scaled down by area; a PNG of the same size comes out whole."""
    data = (testdata / "images/compreface/001_A.jpg").read_bytes()  # 4912x7360
    assert image_module.image_size(data) == (4912, 7360)
    assert image_module.reduction_for(data, 4912, 7360) == 4
    image = decode_image(data)
    assert image.shape == (1840, 1228, 3)
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    scaled = cv2.resize(full, (1228, 1840), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(np.int16) - scaled).mean() < 2
    for side, expected in ((MIN_IMAGE_SIDE * 2 - 1, 1), (MIN_IMAGE_SIDE * 2, 2), (MIN_IMAGE_SIDE * 8, 8), (MIN_IMAGE_SIDE * 99, 8)):
        assert image_module.reduction_for(data, side, 10) == expected
    assert image_module.reduction_for(cv2.imencode(".png", full[:8, :8])[1].tobytes(), 7360, 4912) == 1


def test_png_channels_are_bgr():
    rgb_red = np.zeros((4, 4, 3), np.uint8)
    rgb_red[..., 2] = 255  # red, in OpenCV's BGR order
    assert decode_image(cv2.imencode(".png", rgb_red)[1].tobytes())[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(("orientation", "white"), [(1, "tl"), (3, "br"), (6, "tr"), (8, "bl")])
def test_exif_orientation_is_applied(orientation, white):
    # 6: the camera was turned; the picture is shown rotated 90 degrees clockwise
    image = decode_image(jpeg_with_orientation(marker_frames(1, 32, 64)[0], orientation))
    assert image.shape == ((32, 64, 3) if orientation in (1, 3) else (64, 32, 3))
    assert white_quadrant(image) == white


def test_16_bit_alpha_and_grey_pngs_become_8_bit_bgr():
    deep = np.zeros((8, 8, 4), np.uint16)
    deep[..., 0] = 40000  # blue
    deep[..., 3] = 65535
    image = decode_image(cv2.imencode(".png", deep)[1].tobytes())
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    assert image[0, 0].tolist() == [40000 >> 8, 0, 0]
    grey = decode_image(cv2.imencode(".png", np.full((8, 8), 77, np.uint8))[1].tobytes())
    assert grey.shape == (8, 8, 3) and np.all(grey == 77)


def test_webp_decodes():
    source = marker_frames(1, 32, 64)[0]
    for params in ([cv2.IMWRITE_WEBP_QUALITY, 90], [cv2.IMWRITE_WEBP_QUALITY, 101]):
        image = decode_image(cv2.imencode(".webp", source, params)[1].tobytes())
        assert image.shape == (32, 64, 3) and np.abs(image.astype(int) - source).mean() < 8


def test_png_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *_: pytest.fail("decoded a bomb"))
    error = refuse("media_too_large", decode_image, png_bomb(40000, 40000))
    assert error.status == 413


def test_jpeg_bomb_is_refused_before_decoding(monkeypatch):
    jpeg = bytearray(cv2.imencode(".jpg", marker_frames(1)[0])[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *_: pytest.fail("decoded a bomb"))
    refuse("media_too_large", decode_image, bytes(jpeg))


def test_max_pixels_applies_to_images(testdata):
    data = (testdata / "images/astronaut.png").read_bytes()  # 512x512
    refuse("media_too_large", decode_image, data, max_pixels=512 * 511)


@pytest.mark.parametrize(
    "data", [b"", os.urandom(2048), b"GIF89a" + bytes(64)], ids=["empty", "random", "gif"]
)
def test_non_images_are_unsupported(data):
    assert refuse("unsupported_media_type", decode_image, data).status == 415


def test_broken_images_are_corrupt(testdata):
    jpeg = (testdata / "images/deepface/img1.jpg").read_bytes()
    png = (testdata / "images/astronaut.png").read_bytes()
    for data in (jpeg[: len(jpeg) // 2], png[: len(png) // 2], png[:8] + os.urandom(512), jpeg[:3]):
        assert refuse("corrupt_media", decode_image, data).status == 422


# ---------------------------------------------------------------- the chooser and DALI


def test_decoder_chooser():
    assert decoder().video is decode_video and decoder("pyav").image is decode_image
    with pytest.raises(ValueError, match="pyav, dali"):
        decoder("ffmpeg")


@pytest.fixture(scope="module")
def dali():
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    return decoder("dali")


@pytest.mark.parametrize("name", ["vp9.webm", "mjpeg.avi"])
def test_dali_video_matches_pyav(dali, reencoded, name):
    ours, theirs = decode_video(reencoded[name], LIMITS), dali.video(reencoded[name], LIMITS)
    np.testing.assert_allclose(theirs.timestamps, ours.timestamps)
    assert (theirs.fps, theirs.codec, theirs.duration_s) == (ours.fps, ours.codec, ours.duration_s)
    assert theirs.frames.shape == ours.frames.shape and theirs.frames.dtype == np.uint8
    difference = np.abs(theirs.frames.astype(np.int16) - ours.frames)
    assert difference.mean() < DALI_TOLERANCE
    assert difference[:, :32].mean() < DALI_TOLERANCE, "the same frames, not neighbours"


def test_dali_video_applies_rotation_and_limits(dali, d0):
    data = encode(marker_frames(4), "mjpeg", "mov", rotation=-90)
    video = dali.video(data, LIMITS)
    assert video.rotation == 270 and video.frames.shape[1:] == (64, 32, 3)
    assert white_quadrant(video.frames[0]) == "tr"
    refuse("unsupported_media_type", dali.video, d0, LIMITS)  # H.264 needs DALI's GPU backend
    refuse("media_too_large", dali.video, data, limits(max_pixels=100))
    refuse("unsupported_media_type", dali.video, b"", LIMITS)


def test_dali_refuses_broken_video(dali, reencoded):
    data = reencoded["vp9.webm"]
    with pytest.raises(MediaError) as caught:
        dali.video(data[: len(data) // 2], LIMITS)
    assert caught.value.code == "corrupt_media"


def test_dali_image_matches_opencv(dali, testdata):
    data = (testdata / "images/deepface/img1.jpg").read_bytes()
    ours, theirs = decode_image(data), dali.image(data)
    assert theirs.shape == ours.shape and theirs.dtype == np.uint8
    assert np.abs(theirs.astype(np.int16) - ours).mean() < DALI_TOLERANCE
    phone = (testdata / "images/compreface/004_A.jpg").read_bytes()  # 4032x3024: reduced to half
    ours, theirs = decode_image(phone), dali.image(phone)
    assert theirs.shape == ours.shape == (2016, 1512, 3)
    assert np.abs(theirs.astype(np.int16) - ours).mean() < DALI_TOLERANCE
    rotated = dali.image(jpeg_with_orientation(marker_frames(1, 32, 64)[0], 6))
    assert rotated.shape == (64, 32, 3) and white_quadrant(rotated) == "tr"
    deep = np.zeros((8, 8, 4), np.uint16)
    deep[..., 0] = 40000
    assert dali.image(cv2.imencode(".png", deep)[1].tobytes())[0, 0].tolist() == [156, 0, 0]
    refuse("media_too_large", dali.image, png_bomb(40000, 40000))
    refuse("corrupt_media", dali.image, data[: len(data) // 2])


def test_settings_build_the_one_video_limits(monkeypatch):
    from pydantic import ValidationError

    from portrait.settings import Settings

    for name in ("VIDEO_FPS", "VIDEO_MAX_FRAMES", "VIDEO_MAX_SECONDS", "VIDEO_MAX_SIDE", "MAX_VIDEO_PIXELS"):
        monkeypatch.delenv(f"PORTRAIT_{name}", raising=False)
    assert Settings().video_limits == LIMITS
    monkeypatch.setenv("PORTRAIT_VIDEO_MAX_SIDE", "0")
    assert Settings().video_limits == limits(max_side=0)
    monkeypatch.setenv("PORTRAIT_VIDEO_MAX_SIDE", "200")
    with pytest.raises(ValidationError, match="at least 320"):
        Settings()
