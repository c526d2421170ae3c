"""One verification of a 3-second 720p video: per-stage and end-to-end time, beside a
plain baseline that calls the same models frame by frame (batch 1) in the same run.

    python benchmarks/bench_pipeline.py [--repeats 5] [--video PATH] [--id-image PATH]

Defaults use ../shared/testdata (replay_pair/real.mp4 is 1080x720). Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.challenge import ChallengeSpec
from portrait.media import decode_image, decode_video
from portrait.media.video import Video
from portrait.pipeline import Pipeline, Timings
from portrait.settings import Settings

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


class FrameByFrame:
    """The baseline: every model call split into calls of one item each."""

    name = "frame_by_frame"

    def __init__(self, inner: OnnxRuntimeBackend) -> None:
        self.inner = inner
        self.calls = 0

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for row in batch:
            self.calls += 1
            parts.append(self.inner.infer(model, row[None]))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _three_seconds(video: Video) -> Video:
    keep = video.timestamps < 3.0
    return Video(video.frames[keep], video.timestamps[keep], video.fps, video.codec, 3.0, video.rotation)


def _run(pipeline: Pipeline, id_bytes: bytes, video_bytes: bytes, settings: Settings, repeats: int) -> dict:
    totals, stages = [], []
    for _ in range(repeats):
        timings = Timings()
        start = time.perf_counter()
        with timings.stage("decode"):
            image = decode_image(id_bytes)
            video = _three_seconds(decode_video(video_bytes, settings.video_limits))
        pipeline.verify(image, video, ChallengeSpec(("blink",)), timings=timings)
        totals.append(time.perf_counter() - start)
        stages.append(timings.ms)
    names = stages[0].keys()
    return {
        "frames": int(len(video.frames)),
        "frame_size": list(video.frames.shape[1:3]),
        "end_to_end_ms": {"p50": round(float(np.median(totals)) * 1000, 1),
                          "min": round(float(np.min(totals)) * 1000, 1)},
        "stages_ms_median": {n: round(float(np.median([s.get(n, 0.0) for s in stages])), 1) for n in names},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--video", type=Path, default=TESTDATA / "videos/replay_pair/real.mp4")
    parser.add_argument("--id-image", type=Path, default=TESTDATA / "images/face_recognition/examples/obama.jpg")
    args = parser.parse_args()
    settings = Settings()
    inner = OnnxRuntimeBackend(settings.model_repository, threads=settings.inference_threads)
    baseline_backend = FrameByFrame(inner)
    id_bytes, video_bytes = args.id_image.read_bytes(), args.video.read_bytes()
    report = {}
    for name, pipeline in (("batched", Pipeline(inner)), ("frame_by_frame", Pipeline(baseline_backend))):
        pipeline.verify(decode_image(id_bytes), _three_seconds(decode_video(video_bytes, settings.video_limits)), ChallengeSpec(("blink",)))  # warm-up
        report[name] = _run(pipeline, id_bytes, video_bytes, settings, args.repeats)
    report["frame_by_frame"]["model_calls_per_verification"] = baseline_backend.calls // (args.repeats + 1)
    stages = list(report["batched"]["stages_ms_median"])
    print(f"video: {report['batched']['frames']} frames of {report['batched']['frame_size']} (3 s)")
    print(f"{'stage':<18}{'batched ms':>12}{'frame-by-frame ms':>20}")
    for stage in stages:
        print(f"{stage:<18}{report['batched']['stages_ms_median'][stage]:>12}"
              f"{report['frame_by_frame']['stages_ms_median'].get(stage, 0):>20}")
    print(f"{'end to end p50':<18}{report['batched']['end_to_end_ms']['p50']:>12}"
          f"{report['frame_by_frame']['end_to_end_ms']['p50']:>20}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
