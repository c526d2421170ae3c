"""What an attacker must do to an animated ID photo before the generated-face check misses it.

    python benchmarks/synthetic_evasion.py --list benchmarks/data/generated_dev.csv --root ../shared/testdata
    python benchmarks/synthetic_evasion.py --list ... --root ... --on id --pairs ../shared/testdata/pairs.csv \
        --same-capture benchmarks/data/same_capture.csv

For every generated clip of the list that names the still it was made from, the check's score
(the still as the ID photo) with the clip's frames as they are, and after each edit a fraudster
can make on the way to the virtual camera: sensor-like noise, a colour grade (gamma), a hard
JPEG re-encode, a blur, a side light (a left-to-right brightness ramp of +-30 %), a spot light
(a radial falloff from one corner, which no plane fits), and all of them at once. With `--on id` the clip stays as made and the ID photo is edited instead, as when
the fraudster animates a digital copy of the photo and the carrier receives a picture of the
printed card: the face at card-photo size (80 px wide), the blur and glare-free colour cast of
a phone photo of a card, a JPEG, and all of them; with `--pairs`, the calibration's genuine pairs
(two photographs of one person, either as the ID, that one edited) under the same edits, since
what moves the derived scores moves the genuine ones too. Prints one row per clip and the
threshold of the calibration record in force.
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
from portrait.stages import synthetic


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def _side_light(frame: np.ndarray, strength: float = 0.3) -> np.ndarray:
    ramp = np.linspace(1 - strength, 1 + strength, frame.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(frame * ramp, 0, 255).astype(np.uint8)


def _spot_light(frame: np.ndarray, strength: float = 0.4) -> np.ndarray:
    """A lamp off to one side: brightness falling off radially from the upper left corner."""
    height, width = frame.shape[:2]
    y, x = np.ogrid[:height, :width]
    gain = 1 + strength * np.exp(-((x / width) ** 2 + (y / height) ** 2) / 0.5) - strength / 2
    return np.clip(frame * gain[..., None].astype(np.float32), 0, 255).astype(np.uint8)


def edits(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    noise = lambda f: np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8)  # noqa: E731
    grade = lambda f: (255 * (f / 255.0) ** 0.7).astype(np.uint8)  # noqa: E731
    return {"as made": lambda f: f, "noise 8": noise, "gamma 0.7": grade, "JPEG 40": lambda f: _jpeg(f, 40),
            "blur 1.5": lambda f: cv2.GaussianBlur(f, (0, 0), 1.5), "side light 30 %": _side_light,
            "spot light 40 %": _spot_light,
            "all of them": lambda f: _jpeg(_spot_light(_side_light(noise(grade(f)))), 40)}


def _face_width(image: np.ndarray, offline: Offline) -> float | None:
    face = offline.pipeline.image_faces([image])[0].face
    return None if face is None else float(face[2])


def id_edits(offline: Offline) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Edits of the ID photo: what printing the card and photographing it do to the still."""

    def card_size(image: np.ndarray) -> np.ndarray:
        width = _face_width(image, offline)
        scale = min(1.0, 80.0 / width) if width else 1.0
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def cast(image: np.ndarray) -> np.ndarray:  # a warm cast and lifted blacks: paper under room light
        return np.clip(image.astype(np.float32) * np.array([0.85, 0.95, 1.05]) + 20, 0, 255).astype(np.uint8)

    blur = lambda f: cv2.GaussianBlur(f, (0, 0), 1.0)  # noqa: E731
    return {"as made": lambda f: f, "card size": card_size, "blur 1.0": blur, "colour cast": cast,
            "JPEG 60": lambda f: _jpeg(f, 60), "all of them": lambda f: _jpeg(blur(cast(card_size(f))), 60)}


def genuine_under_id_edits(offline: Offline, pairs: Path, same_capture: Path | None, root: Path) -> None:
    """The genuine pairs' highest score, and how many reach the threshold, under each ID edit."""
    one_photo = set() if same_capture is None else {frozenset((r["img_a"], r["img_b"]))
                                                    for r in csv.DictReader(same_capture.open())}
    edits_ = id_edits(offline)
    scores: dict[str, list[float]] = {name: [] for name in edits_}
    for row in csv.DictReader(pairs.open()):
        if row["same_person"].strip() not in ("1", "true", "True") or frozenset((row["img_a"], row["img_b"])) in one_photo:
            continue
        photos = [offline.image(root / row["img_a"]), offline.image(root / row["img_b"])]
        selfies = [offline.photo_crop(photo) for photo in photos]
        for name, edit in edits_.items():
            found = [synthetic.derived_score(id_crop, selfie[None])
                     for id_crop, selfie in ((offline.photo_crop(edit(photos[0])), selfies[1]),
                                             (offline.photo_crop(edit(photos[1])), selfies[0]))
                     if id_crop is not None and selfie is not None]
            if found:
                scores[name].append(max(found))
    threshold = offline.pipeline.config.synthetic_threshold
    print("\ngenuine pairs, the ID photo edited | " + " | ".join(scores))
    print("pairs | " + " | ".join(str(len(v)) for v in scores.values()))
    print("highest | " + " | ".join(f"{max(v):.3f}" for v in scores.values()))
    print(f"at or above {threshold} | " + " | ".join(str(sum(x >= threshold for x in v)) for v in scores.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--on", choices=("clip", "id"), default="clip", help="edit the clip (default) or the ID photo")
    parser.add_argument("--pairs", type=Path, help="with --on id: the genuine pairs under the same edits")
    parser.add_argument("--same-capture", type=Path, help="pairs of --pairs that are one photograph (left out)")
    args = parser.parse_args()
    offline = Offline(Settings())
    pipeline, rng = offline.pipeline, np.random.default_rng(0)
    rows = [r for r in csv.DictReader(args.list.open()) if r.get("source_image") and r["label"].strip() == "spoof"
            and Path(r["path"]).suffix.lower() in VIDEO_SUFFIXES]
    edits_ = edits(rng) if args.on == "clip" else id_edits(offline)
    names = list(edits_)
    print(f"threshold {pipeline.config.synthetic_threshold} (flagged at or above)\n")
    print("clip | " + " | ".join(names))
    for row in rows:
        video = offline.labelled_clip(args.root / row["path"])
        image, face = offline.photo_face(args.root / row["source_image"])
        scores = []
        if args.on == "id":
            analysis = pipeline.analyse_video(video, Timings())
            for edit in edits_.values():
                edited = edit(image)
                found = pipeline.image_faces([edited])[0].face
                score = None if analysis.track.reason or found is None else pipeline.derived_score(edited, found, analysis)
                scores.append("-" if score is None else f"{score:.3f}")
            print(f"{row['path']} | " + " | ".join(scores), flush=True)
            continue
        for edit in edits_.values():
            frames = np.stack([edit(frame) for frame in video.frames])
            edited = Video(frames, video.timestamps, video.fps, video.codec, video.duration_s, video.rotation)
            analysis = pipeline.analyse_video(edited, Timings())
            score = None if analysis.track.reason or face is None else pipeline.derived_score(image, face, analysis)
            scores.append("-" if score is None else f"{score:.3f}")
        print(f"{row['path']} | " + " | ".join(scores), flush=True)
    if args.on == "id" and args.pairs is not None:
        genuine_under_id_edits(offline, args.pairs, args.same_capture, args.root)


if __name__ == "__main__":
    main()
