"""One verification through the whole pipeline with its pixel work on the GPU (TorchFrames)
beside the host path (HostFrames), the models in ONNX Runtime on the CPU for both, in the
same run on the same machine.

    python benchmarks/gpu_pipeline.py --video clip.mp4 --models model_repository [--repeats 5]

Frames are read with OpenCV (15 per second, up to 96); the ID photo is the clip's first
frame; the challenge is turn_left + turn_right. Prints decisions, scores and per-stage
medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from portrait.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from portrait.challenge import ChallengeSpec  # noqa: E402
from portrait.frames import HostFrames, TorchFrames  # noqa: E402
from portrait.media.clip import Video  # noqa: E402
from portrait.pipeline import Pipeline, Timings  # noqa: E402

FPS, MAX_FRAMES = 15.0, 96
# The whole pipeline runs whatever the answer; this is d12's first two moves (untimed).
TURNS = ChallengeSpec(("turn_left", "turn_right"))


def read_video(path: Path) -> Video:
    capture = cv2.VideoCapture(str(path))
    source_fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    frames, times, index, next_time = [], [], 0, 0.0
    while len(frames) < MAX_FRAMES:
        ok, frame = capture.read()
        if not ok:
            break
        t = index / source_fps
        if t + 1e-6 >= next_time:
            frames.append(frame)
            times.append(t)
            next_time += 1 / FPS
        index += 1
    return Video(np.stack(frames), np.array(times), source_fps, "h264", index / source_fps, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("model_repository"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark compares the GPU frame path with the host path")
    video = read_video(args.video)
    id_image = video.frames[0].copy()
    backend = OnnxRuntimeBackend(args.models)
    paths = {"host (OpenCV)": HostFrames(), "gpu (kernels)": TorchFrames("cuda")}
    report = {}
    for name, ops in paths.items():
        pipeline = Pipeline(backend, frames=ops)
        pipeline.verify(id_image, video, TURNS)  # warm-up
        runs = []
        for _ in range(args.repeats):
            timings = Timings()
            start = time.perf_counter()
            answer = pipeline.verify(id_image, video, TURNS, timings=timings)
            torch.cuda.synchronize()
            runs.append((time.perf_counter() - start, timings.ms, answer))
        report[name] = runs
    print(f"{torch.cuda.get_device_name()} | {len(video.frames)} frames of {video.frames.shape[2]}x"
          f"{video.frames.shape[1]} | models: ONNX Runtime on the CPU")
    for name, runs in report.items():
        answer = runs[-1][2]
        actions = sorted({e["action"] for e in answer["liveness"]["active"]["observed"]})
        print(f"{name}: decision {answer['decision']} {answer['reasons']}, match {answer['match']['score']}, "
              f"passive {answer['liveness']['passive']['score']}, actions {actions}")
    stages = list(report["host (OpenCV)"][0][1])
    print(f"{'stage (median ms)':<20}" + "".join(f"{n:>16}" for n in report))
    for stage in stages:
        print(f"{stage:<20}" + "".join(f"{statistics.median(r[1].get(stage, 0.0) for r in runs):>16.1f}"
                                       for runs in report.values()))
    print(f"{'end to end':<20}" + "".join(f"{statistics.median(r[0] for r in runs) * 1000:>16.1f}"
                                         for runs in report.values()))


if __name__ == "__main__":
    main()
