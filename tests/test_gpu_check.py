"""The GPU scripts on CPU: every built model, converted to PyTorch, gives what ONNX Runtime
gives on the same input (so GPU figures are for the real models); the whole-verification
benchmark's GPU path gives the default path's answer; both scripts refuse to run without a
GPU unless asked for the CPU smoke test."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (the GPU check needs it)")

from portrait import ort  # noqa: E402
from portrait.modelrepo import specs  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("spec", specs.MODELS, ids=lambda s: s.name)
def test_converted_model_matches_onnxruntime(gpu_check, model_repository, spec):
    path = model_repository / spec.name / "1" / "model.onnx"
    module = gpu_check.OnnxModule(path).eval()
    x = gpu_check.model_input(spec, 3, 160, seed=1)  # batch 3; the detector at 160x160
    with torch.inference_mode():
        outputs = module(torch.from_numpy(x))
    reference = ort.session(path).run(None, {spec.input.name: x})
    assert [tuple(o.shape) for o in outputs] == [r.shape for r in reference]
    absolute, relative = gpu_check.max_differences(outputs, reference)
    # fp32 summation order alone gives up to ~1e-4 of an output's range (YuNet's small
    # score maps); a wrong op (padding side, resize rule, layout) gives errors of order 1.
    assert relative < 1e-3, (spec.name, absolute, relative)


def test_refuses_to_run_without_a_gpu(model_repository):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run([sys.executable, str(SCRIPT), "--models", str(model_repository)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no CUDA device" in result.stderr and "--cpu" in result.stderr


VERIFY = SCRIPT.with_name("gpu_verify.py")


def test_gpu_verification_runs_the_whole_path(model_repository, testdata):
    """The GPU benchmark's own path (kernels' PyTorch references, converted models, model
    inputs kept as tensors through the batcher) run on the CPU gives the default path's
    answer on the standard workload, and the script prints its table."""
    command = [sys.executable, str(VERIFY), "--cpu", "--models", str(model_repository), "--levels", "1",
               "--requests", "1", "--id-image", str(testdata / "images/compreface/004_A.jpg"),
               "--video", str(testdata / "videos/replay_pair/real.mp4")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| gpu | 1 | 1/1 |" in result.stdout and "| in_process | 1 | 1/1 |" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    gpu, cpu = report["answers"]["gpu"], report["answers"]["cpu"]
    assert gpu["frames_with_face"] == cpu["frames_with_face"] > 0
    assert (gpu["decision"], gpu["reasons"]) == (cpu["decision"], cpu["reasons"])
    # The pixel work is OpenCV's bit for bit; only the converted models' summation order
    # differs, which can move a box by a hair and, through a shrunk crop, a score a little.
    for score in ("match", "passive", "continuity"):
        assert abs(gpu[score] - cpu[score]) < 0.01, (score, gpu[score], cpu[score])


def test_gpu_verification_refuses_to_run_without_a_gpu(model_repository, testdata):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run([sys.executable, str(VERIFY), "--models", str(model_repository)],
                            capture_output=True, text=True, timeout=120, env={**os.environ,
                                                                              "PORTRAIT_TESTDATA": str(testdata)})
    assert result.returncode != 0
    assert "no CUDA device" in result.stderr and "--cpu" in result.stderr
