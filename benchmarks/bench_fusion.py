"""What fusing dlib's embedder with SFace costs one verification: the same verification and
the same photo comparison with fusion on and off, interleaved in one run so load hits both.

    python benchmarks/bench_fusion.py [--repeats 7] [--video PATH] [--id-image PATH]

Defaults use ../shared/testdata. Prints p50/p95 per setting, the difference, and JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from portrait.backends import backend_from_settings
from portrait.media import decode_image, decode_video
from portrait.pipeline import Pipeline, PipelineConfig, Timings
from portrait.settings import Settings

TESTDATA = Path(os.environ.get("PORTRAIT_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--video", type=Path, default=TESTDATA / "videos/liveportrait/d12.mp4")
    parser.add_argument("--id-image", type=Path, default=TESTDATA / "images/face_recognition/examples/obama.jpg")
    parser.add_argument("--other-image", type=Path, default=TESTDATA / "images/face_recognition/examples/obama2.jpg")
    args = parser.parse_args()
    settings = Settings()
    backend = backend_from_settings(settings)  # the runtimes the service would use
    fused_config = PipelineConfig()
    if fused_config.fusion is None:
        raise SystemExit("the calibration record ships SFace alone: nothing to compare")
    pipelines = {"sface": Pipeline(backend, dataclasses.replace(fused_config, fusion=None)),
                 "fused": Pipeline(backend, fused_config)}
    video = decode_video(args.video.read_bytes(), settings.video_limits)
    id_image, other = decode_image(args.id_image.read_bytes()), decode_image(args.other_image.read_bytes())
    for pipeline in pipelines.values():  # warm up sessions and caches
        pipeline.verify(id_image, video)
    verify = {name: [] for name in pipelines}
    embed = {name: [] for name in pipelines}
    compare = {name: [] for name in pipelines}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():
            timings = Timings()
            start = time.perf_counter()
            pipeline.verify(id_image, video, timings=timings)
            verify[name].append((time.perf_counter() - start) * 1000)
            embed[name].append(timings.ms["embed"])
            start = time.perf_counter()
            pipeline.compare(id_image, other)
            compare[name].append((time.perf_counter() - start) * 1000)

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1)}

    report = {
        "video": args.video.name, "frames": int(len(video.frames)), "repeats": args.repeats,
        "verify_ms": {n: summary(v) for n, v in verify.items()},
        "embed_stage_ms": {n: summary(v) for n, v in embed.items()},
        "compare_ms": {n: summary(v) for n, v in compare.items()},
        "added_by_fusion_ms": {
            "verify_p50": round(float(np.percentile(verify["fused"], 50) - np.percentile(verify["sface"], 50)), 1),
            "embed_stage_p50": round(float(np.percentile(embed["fused"], 50) - np.percentile(embed["sface"], 50)), 1),
            "compare_p50": round(float(np.percentile(compare["fused"], 50) - np.percentile(compare["sface"], 50)), 1),
        },
    }
    print(f"{'':8} {'verify p50':>11} {'embed p50':>10} {'compare p50':>12}")
    for name in pipelines:
        print(f"{name:8} {report['verify_ms'][name]['p50']:>11} {report['embed_stage_ms'][name]['p50']:>10}"
              f" {report['compare_ms'][name]['p50']:>12}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
