"""OpenVINO beside ONNX Runtime: the same files give the same numbers on real faces, and
the runtime table picks runtimes per model as configured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from portrait.backends import MEASURED, create_backend, runtime_table
from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.backends.openvino import OpenVinoBackend
from portrait.modelrepo import int8
from portrait.modelrepo.repository import ModelRepositoryError
from portrait.modelrepo.specs import BY_NAME
from portrait.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipelines(model_repository):
    return Pipeline(OnnxRuntimeBackend(model_repository, threads=1)), Pipeline(OpenVinoBackend(model_repository, threads=1))


def test_every_model_gives_onnxruntimes_outputs_on_real_faces(pipelines, face_images):
    reference, candidate = pipelines
    found = [f.face for f in reference.image_faces(face_images)]
    assert all(f is not None for f in found)
    faces = np.stack(found)
    for (ref_face, cand_face) in zip(found, [f.face for f in candidate.image_faces(face_images)]):
        np.testing.assert_allclose(cand_face, ref_face, atol=0.05)  # boxes and points in pixels
    ref_vectors, cand_vectors = reference.embed(face_images, faces), candidate.embed(face_images, faces)
    assert np.min(np.sum(ref_vectors * cand_vectors, axis=1)) > 0.9999
    same_size = [i for i in face_images if i.shape == face_images[0].shape]
    frames, rows = np.stack(same_size), faces[[k for k, i in enumerate(face_images) if i.shape == face_images[0].shape]]
    for ref, cand in zip(reference.face_geometry(frames, rows), candidate.face_geometry(frames, rows)):
        np.testing.assert_allclose(cand, ref, atol=1e-3)  # eye openness ratios, head angles in degrees
    np.testing.assert_allclose(candidate.passive_scores(frames, rows), reference.passive_scores(frames, rows), atol=1e-4)


def test_batched_call_equals_single_calls(model_repository, face_images):
    """Requests borrow infer requests from a pool: a batch and its rows one by one agree."""
    backend = OpenVinoBackend(model_repository, models=["sface"], threads=1)
    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 255, (5, *BY_NAME["sface"].input.dims)).astype(np.float32)
    whole = backend.infer("sface", batch)["fc1"]
    single = np.concatenate([backend.infer("sface", row[None])["fc1"] for row in batch])
    np.testing.assert_allclose(whole, single, rtol=1e-4, atol=1e-4)


def test_runtime_table_choices():
    auto = runtime_table("auto")
    assert set(auto) == set(BY_NAME)  # every model has a runtime
    assert {m: r for m, r in auto.items() if m in MEASURED} == MEASURED
    assert {r for m, r in auto.items() if m not in MEASURED} <= {"onnxruntime"}  # unmeasured: ONNX Runtime
    assert set(runtime_table("onnxruntime").values()) == {"onnxruntime"}
    table = runtime_table("openvino,yunet=onnxruntime")
    assert table["yunet"] == "onnxruntime" and table["sface"] == "openvino"
    for bad in ("tensorflow", "auto,sface=tensorflow", "auto,nomodel=openvino", "auto,sface"):
        with pytest.raises(ValueError):
            runtime_table(bad)


def test_embedded_backend_routes_each_model_to_its_runtime(model_repository):
    backend = create_backend("embedded", repository=model_repository, runtime="auto,sface=onnxruntime",
                             models=["sface", "facemesh"], threads=1)
    assert backend.runtimes == {"sface": "onnxruntime", "facemesh": "openvino"}
    out = backend.infer("facemesh", np.zeros((2, *BY_NAME["facemesh"].input.dims), np.float32))
    assert out["conv2d_20"].shape == (2, 1404, 1, 1)


def test_released_memory_goes_back_and_the_next_call_answers_the_same(model_repository):
    """A compiled model keeps buffers for the largest batch it ran; released (as the service
    does when idle), most of them go back to the system, and the next call allocates again."""
    from portrait.service.idle import _TRIM, resident_mib

    if _TRIM is None or resident_mib() is None:
        pytest.skip("needs glibc's malloc_trim and /proc (Linux)")
    backend = OpenVinoBackend(model_repository, models=["facemesh"], threads=1, streams=2)
    rng = np.random.default_rng(2)
    small = rng.uniform(0, 1, (1, *BY_NAME["facemesh"].input.dims)).astype(np.float32)
    first = backend.infer("facemesh", small)
    _TRIM(0)
    before = resident_mib()
    backend.infer("facemesh", np.repeat(small, 64, axis=0))  # a burst's merged batch
    _TRIM(0)
    grown = resident_mib() - before
    assert backend.release_memory() is True
    _TRIM(0)
    kept = resident_mib() - before
    assert grown > 0 and kept < grown / 2, (grown, kept)
    again = backend.infer("facemesh", small)
    for name in first:
        np.testing.assert_allclose(again[name], first[name], rtol=1e-5, atol=1e-5)


def test_int8_dot_product_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n")
    assert int8.int8_dot_product(cpuinfo) == "avx512_vnni"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert int8.int8_dot_product(cpuinfo) is None  # AVX2 alone: int8 was slower there
    assert int8.int8_dot_product(tmp_path / "missing") is None


def _repository_with_int8_record(source: Path, target: Path, model: str) -> Path:
    """A repository sharing `source`'s manifest, with an int8 record of `model` (its file's
    contents do not matter to the choice of runtime)."""
    target.mkdir()
    shutil.copy(source / "manifest.json", target / "manifest.json")
    copy = int8.int8_path(target, model)
    copy.parent.mkdir(parents=True)
    copy.write_text("<net/>")
    copy.with_suffix(".bin").write_bytes(b"\0")
    sha = {r["name"]: r["sha256"] for r in json.loads((source / "manifest.json").read_text())["models"]}[model]
    (target / int8.RECORD).write_text(json.dumps({"format": int8.INT8_FORMAT, "models": {
        model: {"source_sha256": sha, "sha256": int8._files_sha256(copy), "fingerprint": "-"}}}))
    return target


def test_an_int8_copy_runs_only_when_asked_for_and_answers_name_it(model_repository, tmp_path):
    repository = _repository_with_int8_record(model_repository, tmp_path / "repo", "iris_landmark")
    assert runtime_table("auto")["iris_landmark"] == "openvino"  # it moves blinks (int8.py): never by default
    table = runtime_table("auto,iris_landmark=openvino_int8")
    assert table["iris_landmark"] == "openvino_int8"
    assert {m: r for m, r in table.items() if m != "iris_landmark"} == {m: r for m, r in runtime_table("auto").items()
                                                                       if m != "iris_landmark"}
    assert int8.verified_int8(repository, "iris_landmark") == int8.int8_path(repository, "iris_landmark")
    models = int8.served([{"name": "iris_landmark", "version": "v", "sha256": "fp32"}], table, repository)
    assert models[0]["version"] == "v-int8" and models[0]["sha256"] != "fp32"  # answers name the file that ran


def test_an_int8_copy_of_another_fp32_file_or_altered_is_not_loaded(model_repository, tmp_path):
    repository = _repository_with_int8_record(model_repository, tmp_path / "repo", "iris_landmark")
    int8.int8_path(repository, "iris_landmark").with_suffix(".bin").write_bytes(b"\1")
    with pytest.raises(ModelRepositoryError, match="corrupt"):
        int8.verified_int8(repository, "iris_landmark")
    record = json.loads((repository / int8.RECORD).read_text())
    record["models"]["iris_landmark"]["source_sha256"] = "0" * 64  # quantized from an earlier fp32 file
    (repository / int8.RECORD).write_text(json.dumps(record))
    assert not int8.available(repository, "iris_landmark")
    with pytest.raises(ModelRepositoryError, match="no current int8 copy"):
        int8.verified_int8(repository, "iris_landmark")
