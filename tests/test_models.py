"""Every converted model against its reference on real faces, batch behaviour, build rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from portrait import ort
from portrait.modelrepo import specs
from portrait.modelrepo.build import build_repository
from portrait.modelrepo.configs import render_cpu, render_gpu, render_openvino
from portrait.modelrepo.repository import ModelRepositoryError, model_path, read_manifest, verified_models
from portrait.modelrepo.sources import SourceError, fetch
from portrait.settings import Settings
from portrait.stages import detect

from conftest import ROOT

# Tolerances (absolute): the conversions are exact edits, so these only absorb float
# re-association between runtimes.
DETECTION_TOL_PX = 0.05
SCORE_TOL = 1e-4
EMBEDDING_MIN_COSINE = 0.99999
LANDMARK_TOL_PX = 0.01
LOGIT_TOL = 1e-4
BATCH_TOL = 1e-4


def _padded_input(frames_bgr):
    """Frames zero-padded at the bottom/right to multiples of 32, as OpenCV's FaceDetectorYN
    feeds YuNet (the service letterboxes instead)."""
    n, h, w, _ = frames_bgr.shape
    batch = np.zeros((n, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    batch[:, :, :h, :w] = frames_bgr.transpose(0, 3, 1, 2)
    return batch


def _source(spec, mirror):
    return fetch(spec.source, Settings().cache_dir, mirror)


def _session(repository, spec):
    return ort.session(model_path(repository, spec.name))


def _detect(session, image):
    batch = _padded_input(image[None])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"input": batch})))
    return detect.decode(outputs, batch.shape[2:])[0]


def _opencv_detector(path, image):
    detector = cv2.FaceDetectorYN.create(str(path), "", (image.shape[1], image.shape[0]), 0.7, 0.3, 5000)
    return detector.detect(image)[1]


def _box_crop(image, face, scale, size):
    """A square crop of the face box scaled around its centre, resized to size x size."""
    x, y, w, h = face[:4]
    side = max(w, h) * scale
    cx, cy = x + w / 2, y + h / 2
    k = size / side
    matrix = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]], np.float32)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def faces(model_repository, face_images, testdata):
    session = _session(model_repository, specs.DETECTOR)
    group = cv2.imread(str(testdata / "images/compreface/016_8.jpg"))
    found = []
    for image in [*face_images, group]:
        for face in _detect(session, image):
            found.append((image, face))
    assert len(found) >= len(face_images) + 8
    return found


def test_detector_matches_opencv_on_real_photos(model_repository, mirror, face_images, testdata):
    source = _source(specs.DETECTOR, mirror)
    session = _session(model_repository, specs.DETECTOR)
    group = cv2.imread(str(testdata / "images/compreface/016_8.jpg"))
    for image in [*face_images, group]:
        expected = _opencv_detector(source, image)
        got = _detect(session, image)
        assert expected is not None and len(got) == len(expected)
        order = np.lexsort((expected[:, 0], -expected[:, -1].round(3)))
        got_order = np.lexsort((got[:, 0], -got[:, -1].round(3)))
        np.testing.assert_allclose(got[got_order, :14], expected[order, :14], atol=DETECTION_TOL_PX)
        np.testing.assert_allclose(got[got_order, 14], expected[order, 14], atol=SCORE_TOL)
    assert len(_detect(session, group)) == 8


def test_detector_takes_any_size_multiple_of_32(model_repository, face_images):
    session = _session(model_repository, specs.DETECTOR)
    image = cv2.resize(face_images[0], (352, 480))
    assert len(_detect(session, image)) == 1


def test_embedder_matches_opencv_on_aligned_faces(model_repository, mirror, faces):
    recognizer = cv2.FaceRecognizerSF.create(str(_source(specs.EMBEDDER, mirror)), "")
    session = _session(model_repository, specs.EMBEDDER)
    for image, face in faces:
        crop = recognizer.alignCrop(image, face)
        expected = recognizer.feature(crop)[0]
        rgb = crop[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        got = session.run(None, {"data": rgb})[0][0]
        cosine = float(expected @ got / np.linalg.norm(expected) / np.linalg.norm(got))
        assert cosine > EMBEDDING_MIN_COSINE


def test_embedder_is_sensitive_to_channel_order(model_repository, faces):
    """BGR fed to the ONNX file gives a different embedding; the pipeline must feed RGB."""
    session = _session(model_repository, specs.EMBEDDER)
    image, face = faces[0]
    crop = _box_crop(image, face, 1.0, 112).transpose(2, 0, 1)[None].astype(np.float32)
    bgr = session.run(None, {"data": crop})[0][0]
    rgb = session.run(None, {"data": crop[:, ::-1].copy()})[0][0]
    assert bgr @ rgb / np.linalg.norm(bgr) / np.linalg.norm(rgb) < 0.99


def _eye_crop(image, face):
    """64x64 crop around the subject's right eye, as the iris model takes."""
    eye = face[4:6]
    side = 0.8 * np.linalg.norm(face[6:8] - face[4:6])
    k = 64 / side
    matrix = np.array([[k, 0, 32 - k * eye[0]], [0, k, 32 - k * eye[1]]], np.float32)
    return cv2.warpAffine(image, matrix, (64, 64), flags=cv2.INTER_LINEAR)


def _tflite_crops(spec, faces):
    if spec is specs.EYES:
        crops = [_eye_crop(i, f) for i, f in faces]
    else:
        crops = [_box_crop(i, f, 1.5, 192) for i, f in faces]
    return np.stack(crops)[..., ::-1].astype(np.float32) / 255.0  # NHWC RGB 0..1


@pytest.mark.parametrize("spec", [specs.LANDMARKS, specs.EYES], ids=lambda s: s.name)
def test_landmark_models_match_tflite_interpreter(model_repository, mirror, faces, spec):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(_source(spec, mirror)))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    outs = {o["name"]: o["index"] for o in interpreter.get_output_details()}
    session = _session(model_repository, spec)
    names = [o.name for o in session.get_outputs()]
    for crop in _tflite_crops(spec, faces):
        interpreter.set_tensor(inp["index"], crop[None])
        interpreter.invoke()
        got = dict(zip(names, session.run(None, {spec.input.name: crop.transpose(2, 0, 1)[None]})))
        for name, value in got.items():
            expected = interpreter.get_tensor(outs[name])
            np.testing.assert_allclose(value.reshape(-1), expected.reshape(-1), atol=LANDMARK_TOL_PX)
        if spec is specs.LANDMARKS:
            assert got["conv2d_30"].item() > 0  # a face is present in every crop


@pytest.mark.parametrize("spec,scale", [(specs.PAD_V2, 2.7), (specs.PAD_V1SE, 4.0)])
def test_pad_models_match_published_files(model_repository, mirror, faces, spec, scale):
    published = ort.session(_source(spec, mirror))
    session = _session(model_repository, spec)
    crops = np.stack([_box_crop(i, f, scale, 80) for i, f in faces]).transpose(0, 3, 1, 2).astype(np.float32)
    for crop in crops:
        expected = published.run(None, {"input": crop[None]})[0]
        np.testing.assert_allclose(session.run(None, {"input": crop[None]})[0], expected, atol=LOGIT_TOL)


def _real_batch(spec, faces):
    if spec is specs.DETECTOR:
        frames = np.stack([cv2.resize(i, (480, 640)) for i, _ in faces[:8]])
        return _padded_input(frames)
    if spec in (specs.LANDMARKS, specs.EYES):
        return np.ascontiguousarray(_tflite_crops(spec, faces[:8]).transpose(0, 3, 1, 2))
    size, scale = {specs.EMBEDDER: (112, 1.0), specs.SECOND_EMBEDDER: (150, 1.2)}.get(spec, (80, 2.7))
    crops = np.stack([_box_crop(i, f, scale, size) for i, f in faces[:8]]).astype(np.float32)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("spec", specs.MODELS, ids=lambda s: s.name)
def test_batch_of_n_equals_n_batches_of_one(model_repository, faces, spec):
    session = _session(model_repository, spec)
    batch = _real_batch(spec, faces)
    assert len(batch) == 8
    together = session.run(None, {spec.input.name: batch})
    for i in range(len(batch)):
        alone = session.run(None, {spec.input.name: batch[i : i + 1]})
        for a, t in zip(alone, together):
            np.testing.assert_allclose(t[i : i + 1], a, atol=BATCH_TOL * max(1.0, float(np.abs(a).max())))


def test_build_is_idempotent_and_reports_every_model(model_repository, mirror):
    summary = build_repository(model_repository, Settings().cache_dir, mirror)
    assert summary["built"] == []
    assert sorted(summary["cached"]) == sorted(s.name for s in specs.MODELS)
    manifest = read_manifest(model_repository)
    for spec in specs.MODELS:
        record = manifest[spec.name]
        assert record.licence == spec.licence and record.version == spec.version
        assert len(record.sha256) == 64 and len(record.source_sha256) == 64


def test_corrupt_or_missing_model_file_is_a_clear_error(model_repository, tmp_path, mirror):
    copy = tmp_path / "repo"
    shutil.copytree(model_repository, copy)
    names = [s.name for s in specs.MODELS]
    assert set(verified_models(copy, names)) == set(names)

    path = model_path(copy, "sface")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelRepositoryError, match="sface: .* is corrupt"):
        verified_models(copy, names)
    model_path(copy, "yunet").unlink()
    with pytest.raises(ModelRepositoryError, match="yunet: .* is missing"):
        verified_models(copy, names)

    summary = build_repository(copy, Settings().cache_dir, mirror)
    assert sorted(summary["built"]) == ["sface", "yunet"]
    assert set(verified_models(copy, names)) == set(names)


def test_wrong_digest_in_mirror_is_refused(tmp_path, mirror):
    fake = tmp_path / "mirror"
    fake.mkdir()
    (fake / "MiniFASNetV2.onnx").write_bytes(b"not the published weights")
    with pytest.raises(SourceError, match="MiniFASNetV2.onnx: sha256 .* does not match"):
        fetch(specs.PAD_V2.source, tmp_path / "cache", fake)


def test_unreachable_canonical_url_names_the_source(tmp_path):
    closed = specs.MirroredFile("MiniFASNetV2.onnx", "0" * 64, "http://127.0.0.1:9/MiniFASNetV2.onnx", "0" * 64)
    with pytest.raises(SourceError, match=r"cannot download http://127\.0\.0\.1:9/MiniFASNetV2\.onnx"):
        fetch(closed, tmp_path / "cache", None)


def test_missing_mirror_file_gives_one_clear_line(tmp_path):
    """The CLI names the source in one line and shows no traceback."""
    env = {
        **dict(__import__("os").environ),
        "PORTRAIT_MODEL_REPOSITORY": str(tmp_path / "repo"),
        "PORTRAIT_MODEL_MIRROR": str(tmp_path / "empty-mirror"),
    }
    (tmp_path / "empty-mirror").mkdir()
    result = subprocess.run([sys.executable, "-m", "portrait.cli", "models", "build"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 2
    ours = [line for line in result.stderr.splitlines() if line.startswith("portrait")]
    assert len(ours) == 1 and "MiniFASNetV2.onnx is missing" in ours[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("spec", specs.MODELS, ids=lambda s: s.name)
def test_committed_configs_are_the_generated_ones(spec):
    folder = ROOT / "model_repository" / spec.name
    assert (folder / "config.pbtxt").read_text() == render_cpu(spec)
    assert (folder / "configs" / "gpu.pbtxt").read_text() == render_gpu(spec)
    assert (folder / "configs" / "openvino.pbtxt").read_text() == render_openvino(spec)


def test_cli_build_prints_json(model_repository, mirror):
    env = {**dict(__import__("os").environ), "PORTRAIT_MODEL_REPOSITORY": str(model_repository),
           "PORTRAIT_MODEL_MIRROR": str(mirror)}
    result = subprocess.run([sys.executable, "-m", "portrait.cli", "models", "build", "--json"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["built"] == []


def test_dlib_chips_from_yunet_points_behave_as_dlib_says(model_repository, testdata):
    """dlib's embedder on chips aligned from YuNet's points: the same face moved, scaled and
    rotated in the frame keeps its embedding (far under dlib's 0.6), and dlib's own threshold
    separates the same person from another person."""
    from portrait.backends.onnxruntime import OnnxRuntimeBackend
    from portrait.media import decode_image
    from portrait.pipeline import Pipeline

    pipeline = Pipeline(OnnxRuntimeBackend(model_repository, ["yunet", "sface", "dlib_resnet"]))
    names = ["obama.jpg", "obama2.jpg", "biden.jpg"]
    images = [decode_image((testdata / "images/face_recognition/examples" / n).read_bytes()) for n in names]
    h, w = images[0].shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 12, 0.7)
    matrix[:, 2] += (0.1 * w, -0.05 * h)
    images.append(cv2.warpAffine(images[0], matrix, (w, h), borderMode=cv2.BORDER_REPLICATE))
    faces = pipeline.image_faces(images)
    vectors = pipeline.embed_second(images, np.stack([f.face for f in faces]))
    distance = lambda a, b: float(np.linalg.norm(vectors[a] - vectors[b]))  # noqa: E731
    assert distance(0, 3) < 0.2  # the same photo moved, scaled down and turned
    assert distance(0, 1) < 0.6 < distance(0, 2)
