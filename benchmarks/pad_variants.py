"""Passive PAD on photos, model by model and crop scale by crop scale: what a better crop, a
second scale or another weighting of the two MiniFASNets could change for masks and prints.

    python benchmarks/pad_variants.py --root ../shared/testdata \
        --list benchmarks/data/liveness_dev.csv --list benchmarks/data/generated_dev.csv

Prints, for every photo of the lists, each model's live probability at its own scale (2.7 and
4.0, as shipped) and at a tighter and a wider one, and the shipped mean; then, per variant
(one model alone, the mean, the lower of the two), how many attack photos score under every
live photo, and what the shipped threshold rejects on each side.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from portrait.offline import Offline
from portrait.settings import Settings
from portrait.stages import pad

SCALES = {"minifasnet_v2": (2.7, 2.0, 3.4), "minifasnet_v1se": (4.0, 3.2, 5.0)}  # shipped scale first


def live_probabilities(offline: Offline, image: np.ndarray, face: np.ndarray) -> dict[str, float]:
    """Each model's class-1 probability at each scale, on crops from the shipped box map."""
    pipeline = offline.pipeline
    boxes = pipeline.config.pad_box_map.apply(face[None])
    found = {}
    for model, scales in SCALES.items():
        matrices = np.concatenate([pad.crop_transforms(boxes, tuple(image.shape[:2]), s) for s in scales])
        crops = pipeline.ops.crops([image] * len(scales), range(len(scales)), matrices, pad.SIZE)
        logits = pipeline.run(model, pipeline.ops.model_input(crops, pad.INPUT))["logits"]
        for scale, p in zip(scales, pad.softmax(logits)[:, 1]):
            found[f"{model}@{scale}"] = float(p)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--list", type=Path, action="append", required=True)
    args = parser.parse_args()
    offline = Offline(Settings())
    rows = [r for path in args.list for r in csv.DictReader(path.open()) if not r["path"].endswith((".mp4", ".mov"))]
    names, labels, table = [], [], []
    for row in rows:
        image, face = offline.photo_face(args.root / row["path"])
        if face is None:
            print(f"{row['path']}: no clear subject")
            continue
        found = live_probabilities(offline, image, face)
        names.append(row["path"])
        labels.append(row["label"].strip())
        table.append(found)
    columns = list(table[0])
    print("path | label | " + " | ".join(columns))
    for name, label, found in zip(names, labels, table):
        print(f"{name} | {label} | " + " | ".join(f"{found[c]:.3f}" for c in columns))
    attack = np.array([label == "spoof" for label in labels])
    v2, v1se = (np.array([f[f"{m}@{SCALES[m][0]}"] for f in table]) for m in SCALES)
    variants = {"minifasnet_v2 alone": v2, "minifasnet_v1se alone": v1se, "mean (shipped)": (v2 + v1se) / 2,
                "lower of the two": np.minimum(v2, v1se)}
    threshold = offline.pipeline.config.pad_threshold
    print(f"\nvariant | attack photos under every live photo | at the shipped threshold {threshold}: "
          "attacks rejected, live rejected")
    for name, score in variants.items():
        print(f"{name} | {int((score[attack] < score[~attack].min()).sum())} of {int(attack.sum())} | "
              f"{int((score[attack] < threshold).sum())} of {int(attack.sum())}, "
              f"{int((score[~attack] < threshold).sum())} of {int((~attack).sum())}")

if __name__ == "__main__":
    main()
