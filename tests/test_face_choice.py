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


def _face_box(pipeline, image):
    found = pipeline.image_faces([image])[0]
    return found.face, found.reason


def test_a_smaller_face_in_the_background_does_not_stop_the_subject_being_judged(pipeline, testdata):
    """A dev photo with someone else's face, a third of the subject's size, pasted into its
    background (built here, in memory): the subject is judged, the pasted face ignored."""
    import cv2

    photo = decode_image((testdata / "images/face_recognition/examples/obama.jpg").read_bytes())
    other = decode_image((testdata / "images/face_recognition/examples/biden.jpg").read_bytes())
    subject, reason = _face_box(pipeline, photo)
    assert reason is None
    (x, y, w, h), (ox, oy, ow, oh) = subject[:4].astype(int), _face_box(pipeline, other)[0][:4].astype(int)
    side = int(max(w, h) / 3)
    patch = cv2.resize(other[max(oy - oh // 4, 0): oy + oh + oh // 4, max(ox - ow // 4, 0): ox + ow + ow // 4],
                       (side, int(side * 1.5)))
    crowded = photo.copy()
    crowded[10: 10 + patch.shape[0], 10: 10 + patch.shape[1]] = patch  # top left, behind the subject
    assert len(pipeline.detect(crowded[None], 640)[0]) >= 2  # the pasted face is seen
    chosen, reason = _face_box(pipeline, crowded)
    assert reason is None and abs(chosen[0] - x) < 0.1 * w and abs(chosen[1] - y) < 0.1 * h


def _id_card(portrait, face):
    """An ID-card-like image: the portrait on the left and a half-size, faded "ghost" copy of
    it on the right, on a pale card, as identity documents print them."""
    import cv2

    x, y, w, h = face[:4].astype(int)
    crop = portrait[max(y - h // 2, 0): y + h + h // 2, max(x - w // 3, 0): x + w + w // 3]
    crop = cv2.resize(crop, (int(360 * crop.shape[1] / crop.shape[0]), 360))
    card = np.full((480, 760, 3), 225, np.uint8)
    card[60: 60 + crop.shape[0], 40: 40 + crop.shape[1]] = crop
    ghost = cv2.resize(crop, (crop.shape[1] // 2, crop.shape[0] // 2))
    ghost = (0.55 * ghost + 0.45 * 225).astype(np.uint8)
    top, left = 230, 760 - 40 - ghost.shape[1]
    card[top: top + ghost.shape[0], left: left + ghost.shape[1]] = ghost
    return card, (40, 60, crop.shape[1], crop.shape[0])


def test_an_id_card_with_a_ghost_portrait_is_judged_and_matches(pipeline, testdata):
    """The card's main portrait is the subject; the half-size ghost copy of the same face is
    not a second person. The card matches another photo of the same man."""
    photo = decode_image((testdata / "images/face_recognition/examples/obama.jpg").read_bytes())
    card, (left, top, width, height) = _id_card(photo, _face_box(pipeline, photo)[0])
    assert len(pipeline.detect(card[None], 640)[0]) == 2  # both portraits are faces to the detector
    chosen, reason = _face_box(pipeline, card)
    assert reason is None and left <= chosen[0] < left + width and top <= chosen[1] < top + height
    other = decode_image((testdata / "images/face_recognition/examples/obama2.jpg").read_bytes())
    assert pipeline.compare(card, other)["decision"] == "match"
