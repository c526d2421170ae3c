"""Which face is the subject: one clear subject is chosen, a group photo is refused."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.media import decode_image
from portrait.pipeline import Pipeline
from portrait.stages import detect

# Group photos of the test data: two or more people equally in view.
GROUP_PHOTOS = [
    "images/face_recognition/examples/two_people.jpg",
    "images/face_recognition/examples/knn_examples/test/obama_and_biden.jpg",
    "images/face_recognition/examples/knn_examples/test/kit_with_rose.jpg",
    "images/deepface/couple.jpg",
    "images/deepface/selfie-many-people.jpg",
    *(f"images/compreface/{name}.jpg" for name in
      ("000_5", "010_2", "011_3", "012_4", "013_4", "014_5", "015_6", "016_8")),
]


@pytest.fixture(scope="module")
def pipeline(model_repository):
    return Pipeline(OnnxRuntimeBackend(model_repository))


def _reasons(pipeline, testdata, names):
    images = [decode_image((testdata / name).read_bytes()) for name in names]
    return {name: face.reason for name, face in zip(names, pipeline.image_faces(images))}


def test_no_photo_of_the_pairs_is_refused(pipeline, testdata):
    """Every photo of pairs.csv shows one subject (some with blurred or smaller people behind)."""
    with (testdata / "pairs.csv").open(newline="") as handle:
        names = sorted({row[key] for row in csv.DictReader(handle) for key in ("img_a", "img_b")})
    refused = {}
    for start in range(0, len(names), 16):
        found = _reasons(pipeline, testdata, names[start : start + 16])
        refused.update({name: reason for name, reason in found.items() if reason})
    assert refused == {}


def test_group_photos_are_refused(pipeline, testdata):
    assert _reasons(pipeline, testdata, GROUP_PHOTOS) == {name: "multiple_faces" for name in GROUP_PHOTOS}


def test_a_blurred_background_face_does_not_compete():
    """Two faces as large and nearly as central: refused when both are sharp, the sharp one
    chosen when the other is out of focus."""
    faces = np.zeros((2, 15), np.float32)
    faces[0, :4] = [250, 200, 300, 380]  # centred subject
    faces[1, :4] = [650, 150, 300, 360]  # beside it, as large
    assert detect.primary_face(faces, (800, 1000)) is None
    assert detect.primary_face(faces, (800, 1000), sharpness=np.array([900.0, 500.0])) is None
    assert detect.primary_face(faces, (800, 1000), sharpness=np.array([900.0, 40.0])) == 0
    assert detect.primary_face(faces, (800, 1000), sharpness=np.array([40.0, 900.0])) == 1


def _side_by_side(testdata, blur_sigma):
    """A clip made at test time: d0's subject on the left, d18's face as large on the right,
    sharp or out of focus."""
    import cv2

    from portrait.media import decode_video
    from portrait.media.video import Video
    from portrait.settings import Settings

    limits = Settings().video_limits
    left = decode_video((testdata / "videos/liveportrait/d0.mp4").read_bytes(), limits).frames[:30]
    right = decode_video((testdata / "videos/liveportrait/d18.mp4").read_bytes(), limits).frames[:30]
    frames = []
    for a, b in zip(left, right):
        b = cv2.resize(b, (320, 320))
        frames.append(np.concatenate([cv2.resize(a, (320, 320)), cv2.GaussianBlur(b, (0, 0), blur_sigma) if blur_sigma else b], 1))
    count = len(frames)
    return Video(np.stack(frames), np.arange(count) / 15.0, 15.0, "synthetic", count / 15.0, 0)


def test_video_seeding_follows_the_same_rule(pipeline, testdata):
    """Two people side by side: no subject; the same with the second one out of focus: the
    sharp one is followed."""
    from portrait.pipeline import Timings

    both = pipeline.analyse_video(_side_by_side(testdata, 0), Timings(), need_embeddings=False)
    assert both.track.reason == "multiple_faces"
    blurred = pipeline.analyse_video(_side_by_side(testdata, 5), Timings(), need_embeddings=False)
    assert blurred.track.reason is None
    assert (blurred.track.faces[blurred.track.present, 0] < 320).all()  # the left, sharp face
