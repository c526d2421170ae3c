"""The generated-face check on real material: an animation of the ID photo is refused as
`synthetic_face`, a different capture of the same person is not, and the threshold is the
calibration record's."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.media import decode_image, decode_video
from portrait.media.clip import Video
from portrait.pipeline import CALIBRATION, Pipeline, PipelineConfig, config_from_record
from portrait.settings import Settings
from portrait.stages import synthetic

LIMITS = Settings().video_limits
# A First Order Motion animation of a still, and the still it was made from (attacks/README.md).
ANIMATION = "attacks/reenactment/fomm_forks/streetlightninja_putin_generated.mp4"
STILL = "attacks/reenactment/fomm_forks/streetlightninja_src_tempImg.jpg"


@pytest.fixture(scope="module")
def pipeline(model_repository):
    return Pipeline(OnnxRuntimeBackend(model_repository))


def _video(testdata, name):
    return decode_video((testdata / name).read_bytes(), LIMITS)


def _first_frame(video: Video) -> np.ndarray:
    return video.frames[0].copy()


def test_the_threshold_is_the_calibration_records(pipeline, tmp_path):
    record = json.loads(CALIBRATION.read_text())
    assert PipelineConfig().synthetic_threshold == record["synthetic"]["derived_from_id"]["threshold"]
    record["synthetic"]["derived_from_id"]["threshold"] = 0.123
    other = tmp_path / "record.json"
    other.write_text(json.dumps(record))
    assert config_from_record(other).synthetic_threshold == 0.123


def test_an_animated_still_is_refused_as_synthetic_face(pipeline, testdata):
    still = decode_image((testdata / STILL).read_bytes())
    answer = pipeline.verify(still, _video(testdata, ANIMATION))
    assert answer["decision"] == "reject_spoof" and "synthetic_face" in answer["reasons"], answer["reasons"]
    assert answer["liveness"]["synthetic"]["score"] >= answer["liveness"]["synthetic"]["threshold"]
    # Mirroring the animation left to right (free for an attacker) changes nothing.
    video = _video(testdata, ANIMATION)
    flipped = Video(np.ascontiguousarray(video.frames[:, :, ::-1]), video.timestamps, video.fps, video.codec,
                    video.duration_s, video.rotation)
    assert "synthetic_face" in pipeline.verify(still, flipped)["reasons"]
    # Noise, a colour grade and a hard JPEG re-encode on the way to the virtual camera change little.
    rng = np.random.default_rng(0)
    edited = np.stack([cv2.imdecode(cv2.imencode(".jpg", np.clip(255 * (f / 255.0) ** 0.7 + rng.normal(0, 8, f.shape),
                                                                   0, 255).astype(np.uint8),
                                                 [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_COLOR)
                       for f in video.frames])
    regraded = Video(edited, video.timestamps, video.fps, video.codec, video.duration_s, video.rotation)
    assert "synthetic_face" in pipeline.verify(still, regraded)["reasons"]
    # The same clip and still with the threshold above the score: the check's is the only reason.
    relaxed = Pipeline(pipeline.backend, replace(pipeline.config, synthetic_threshold=2.0))
    assert "synthetic_face" not in relaxed.verify(still, video)["reasons"]


def test_a_frame_of_the_selfie_as_the_id_photo_is_refused(pipeline, testdata):
    video = _video(testdata, "videos/liveportrait/d18.mp4")
    answer = pipeline.verify(_first_frame(video), video)
    assert answer["decision"] == "reject_spoof" and answer["reasons"] == ["synthetic_face"]


def test_a_different_capture_of_the_same_person_is_not_synthetic(pipeline, testdata):
    """The replay pair shows one man twice: live at a webcam, and in another recording shown
    on a phone. A frame of the phone's recording stands in for his ID photo (a photograph
    of a picture, as a photographed document is): he matches, and the clip is not it."""
    id_photo = _first_frame(_video(testdata, "videos/replay_pair/fake.mp4"))
    answer = pipeline.verify(id_photo, _video(testdata, "videos/replay_pair/real.mp4"))
    assert answer["decision"] == "accept", answer["reasons"]
    assert answer["liveness"]["synthetic"]["score"] < answer["liveness"]["synthetic"]["threshold"]


def test_registration_recovers_a_moved_copy_and_not_another_face(pipeline, face_images):
    faces = [pipeline.image_faces([image])[0].face for image in face_images[:2]]
    crops = pipeline.context_crops(face_images[:2], np.stack(faces))
    reference, other = crops
    assert synthetic.similarity(reference, np.roll(reference, (2, -1), (0, 1))[None])[0] > 0.9  # two pixels off
    assert synthetic.similarity(reference, other[None])[0] < 0.5
    assert synthetic.derived_score(reference, crops[:0]) is None


def test_a_light_tilted_across_the_face_keeps_the_layout(pipeline, face_images):
    side = synthetic.SIZE - 2 * synthetic.MARGIN
    layout = np.random.default_rng(0).normal(size=(side, side)).astype(np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    assert np.allclose(synthetic.without_plane(layout + 0.5 * x - 0.2 * y + 9), synthetic.without_plane(layout),
                       atol=1e-3)
    face = pipeline.image_faces(face_images[:1])[0].face
    reference = pipeline.context_crops(face_images[:1], face[None])[0]
    ramp = np.linspace(0.5, 1.5, synthetic.SIZE, dtype=np.float32)[None, :]  # a lamp to one side
    assert synthetic.similarity(reference, np.clip(reference * ramp, 0, 255)[None])[0] > 0.92  # 0.896 with the plane in


def test_eval_liveness_by_family_leaves_each_family_out(model_repository, testdata, tmp_path):
    from portrait.offline import Offline

    listing = tmp_path / "generated.csv"
    listing.write_text("path,label,attack,family,source_image\n"
                       f"{ANIMATION},spoof,reenactment,first_order_motion,{STILL}\n"
                       "videos/replay_pair/real.mp4,live,,replay_pair,\n")
    report = Offline(Settings(model_repository=model_repository)).eval_liveness(listing, testdata, [], by="family")
    assert report["apcer_generated"] == 0.0 and report["bpcer"] == 0.0
    groups = report["by"]["groups"]
    assert set(groups) == {"first_order_motion", "replay_pair"}
    # Left out, the family's own clip no longer places the threshold; the genuine pairs
    # still bound it from below.
    record = json.loads(CALIBRATION.read_text())["synthetic"]["derived_from_id"]
    left_out = groups["first_order_motion"]["left_out"]["synthetic_threshold"]
    assert left_out > record["genuine"]["highest"]["score"]
    assert report["by"]["left_out_pooled"]["bpcer"] == 0.0
