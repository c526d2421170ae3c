"""What an attacker must do to an animated ID photo before the generated-face check misses it.

    python benchmarks/synthetic_evasion.py --list benchmarks/data/generated_dev.csv --root ../shared/testdata

For every generated clip of the list that names the still it was made from, the check's score
(the still as the ID photo) with the clip's frames as they are, and after each edit a fraudster
can make on the way to the virtual camera: sensor-like noise, a colour grade (gamma), a hard
JPEG re-encode, a blur, a side light (a left-to-right brightness ramp of +-30 %), and all of
them at once. Prints one row per clip and the threshold of the calibration record in force.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from portrait.media.clip import Video
from portrait.offline import VIDEO_SUFFIXES, Offline
from portrait.pipeline import Timings
from portrait.settings import Settings


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def _side_light(frame: np.ndarray, strength: float = 0.3) -> np.ndarray:
    ramp = np.linspace(1 - strength, 1 + strength, frame.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(frame * ramp, 0, 255).astype(np.uint8)


def edits(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    noise = lambda f: np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8)  # noqa: E731
    grade = lambda f: (255 * (f / 255.0) ** 0.7).astype(np.uint8)  # noqa: E731
    return {"as made": lambda f: f, "noise 8": noise, "gamma 0.7": grade, "JPEG 40": lambda f: _jpeg(f, 40),
            "blur 1.5": lambda f: cv2.GaussianBlur(f, (0, 0), 1.5), "side light 30 %": _side_light,
            "all of them": lambda f: _jpeg(_side_light(noise(grade(f))), 40)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    offline = Offline(Settings())
    pipeline, rng = offline.pipeline, np.random.default_rng(0)
    rows = [r for r in csv.DictReader(args.list.open()) if r.get("source_image") and r["label"].strip() == "spoof"
            and Path(r["path"]).suffix.lower() in VIDEO_SUFFIXES]
    names = list(edits(rng))
    print(f"threshold {pipeline.config.synthetic_threshold} (flagged at or above)\n")
    print("clip | " + " | ".join(names))
    for row in rows:
        video = offline.labelled_clip(args.root / row["path"])
        image, face = offline.photo_face(args.root / row["source_image"])
        scores = []
        for edit in edits(rng).values():
            frames = np.stack([edit(frame) for frame in video.frames])
            edited = Video(frames, video.timestamps, video.fps, video.codec, video.duration_s, video.rotation)
            analysis = pipeline.analyse_video(edited, Timings())
            score = None if analysis.track.reason or face is None else pipeline.derived_score(image, face, analysis)
            scores.append("-" if score is None else f"{score:.3f}")
        print(f"{row['path']} | " + " | ".join(scores), flush=True)


if __name__ == "__main__":
    main()
