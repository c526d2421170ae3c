"""The offline commands behind the CLI: verify and compare files, evaluate on labelled
sets, calibrate the match threshold. Each returns a JSON-ready dict."""

from __future__ import annotations

import csv
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from portrait import challenge, evaluation
from portrait.backends import InferenceBackend, backend_from_settings
from portrait.media import MediaError, decoder
from portrait.modelrepo.repository import read_manifest
from portrait.pipeline import CALIBRATION, Pipeline, PipelineConfig, Timings
from portrait.settings import Settings
from portrait.stages import liveness

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
IMAGE_BATCH = 16  # images decoded and detected together; bounds memory on big sets


class Offline:
    def __init__(self, settings: Settings, backend: InferenceBackend | None = None,
                 config: PipelineConfig | None = None) -> None:
        self.settings = settings
        self.backend = backend or backend_from_settings(settings)
        self.pipeline = Pipeline(self.backend, config)
        self.decode = decoder(settings.decoder)
        self.models = [
            {"name": r.name, "version": r.version, "sha256": r.sha256}
            for r in read_manifest(settings.model_repository).values()
        ]

    def image(self, path: Path) -> np.ndarray:
        return self.decode.image(path.read_bytes(), max_pixels=self.settings.max_image_pixels)

    def video(self, path: Path):
        return self.decode.video(path.read_bytes(), **self.settings.video_limits)

    def verify(self, id_image: Path, video: Path, asked: challenge.ChallengeSpec | None = None) -> dict:
        timings = Timings()
        with timings.stage("decode"):
            image, clip = self.image(id_image), self.video(video)
        result = self.pipeline.verify(image, clip, asked, timings)
        return {**result, "models": self.models}

    def compare(self, first: Path, second: Path) -> dict:
        return {**self.pipeline.compare(self.image(first), self.image(second)), "models": self.models}

    def pair_scores(self, pairs: list[tuple[str, str]], root: Path) -> tuple[np.ndarray, dict[str, str]]:
        """Cosine score per pair (NaN where a face was not found), and the failures."""
        names = sorted({n for pair in pairs for n in pair})
        vectors: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        for start in range(0, len(names), IMAGE_BATCH):
            chunk = names[start : start + IMAGE_BATCH]
            images = []
            for name in chunk:
                try:
                    images.append((name, self.image(root / name)))
                except (MediaError, OSError) as error:
                    failures[name] = getattr(error, "code", "unreadable")
            found = self.pipeline.image_faces([i for _, i in images])
            usable = [(n, i, f.face) for (n, i), f in zip(images, found) if f.face is not None]
            failures.update({n: f.reason for (n, _), f in zip(images, found) if f.face is None})
            if usable:
                embedded = self.pipeline.embed([i for _, i, _ in usable], np.stack([f for *_, f in usable]))
                vectors.update({n: v for (n, _, _), v in zip(usable, embedded)})
        scores = np.array([float(vectors[a] @ vectors[b]) if a in vectors and b in vectors else np.nan
                           for a, b in pairs])
        return scores, failures

    def eval_pairs(self, pairs_csv: Path, root: Path) -> dict:
        rows = _read_csv(pairs_csv, ["img_a", "img_b", "same_person"])
        started = time.perf_counter()
        scores, failures = self.pair_scores([(r["img_a"], r["img_b"]) for r in rows], root)
        elapsed = time.perf_counter() - started
        same = np.array([r["same_person"].strip() in ("1", "true", "True") for r in rows])
        detected = ~np.isnan(scores)
        # A pair without a face counts as "not the same person": what the service would answer.
        filled = np.where(detected, scores, -1.0)
        threshold = self.pipeline.config.match_threshold
        report = {
            "pairs": len(rows),
            "genuine": int(same.sum()),
            "impostor": int((~same).sum()),
            "failures_to_detect": {"pairs": int((~detected).sum()), "images": failures},
            "threshold": threshold,
            "accuracy_at_threshold": round(evaluation.accuracy_at(filled, same, threshold), 4),
            "tar_at_far": [evaluation.tar_at_far(filled[same], filled[~same], far) for far in (1e-3, 1e-4)],
            "pairs_per_s": round(len(rows) / elapsed, 1),
            "models": self.models,
        }
        if rows and "fold" in rows[0]:
            folds = np.array([r["fold"] for r in rows])
            report["accuracy_10fold"] = evaluation.kfold_accuracy(filled, same, folds)
        return report

    def calibrate(self, pairs_csv: Path, root: Path, far: float, output: Path | None = None) -> dict:
        rows = _read_csv(pairs_csv, ["img_a", "img_b", "same_person"])
        scores, _ = self.pair_scores([(r["img_a"], r["img_b"]) for r in rows], root)
        same = np.array([r["same_person"].strip() in ("1", "true", "True") for r in rows])
        detected = ~np.isnan(scores)
        impostor = scores[detected & ~same]
        threshold = evaluation.threshold_at_far(impostor, far)
        record = {
            "match_threshold": round(threshold, 4),
            "target_far": far,
            "tar_on_detected_pairs": round(float(np.mean(scores[detected & same] >= threshold)), 4),
            "impostor_pairs": int(len(impostor)),
            "genuine_pairs": int((detected & same).sum()),
            "data": f"{pairs_csv.name} ({len(rows)} pairs)",
            "embedder": next((m for m in self.models if m["name"] == "sface"), None),
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (output or CALIBRATION).write_text(json.dumps(record, indent=2) + "\n")
        return record

    def eval_liveness(self, list_csv: Path, root: Path, required: Sequence[str]) -> dict:
        rows = _read_csv(list_csv, ["path", "label"])
        cfg = self.pipeline.config
        accepted, outcomes = [], []
        for row in rows:
            path = root / row["path"]
            outcome = {"path": row["path"], "label": row["label"]}
            try:
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    outcome.update(self._video_liveness(path, required))
                else:
                    outcome.update(self._image_liveness(path))
            except (MediaError, OSError) as error:
                outcome.update(live=None, reasons=[getattr(error, "code", "unreadable")])
            accepted.append(outcome["live"])
            outcomes.append(outcome)
        # Samples that could not be judged (unreadable, no face) are failures to acquire,
        # reported apart from the error rates as ISO/IEC 30107-3 does.
        acquired = np.array([a is not None for a in accepted])
        is_attack = np.array([r["label"].strip() == "spoof" for r in rows])[acquired]
        kinds = np.array([(r.get("attack") or "unspecified").strip() for r in rows])[acquired]
        live = np.array([bool(a) for a in accepted])[acquired]
        return {
            **evaluation.pad_error_rates(is_attack, live, kinds),
            "failures_to_acquire": int((~acquired).sum()),
            "passive_threshold": cfg.pad_threshold,
            "required_actions": list(required),
            "samples": outcomes,
            "models": self.models,
        }

    def _image_liveness(self, path: Path) -> dict:
        image = self.image(path)
        face = self.pipeline.image_faces([image])[0]
        if face.face is None:
            return {"live": None, "reasons": [f"image_{face.reason}"]}
        score = float(self.pipeline.passive_scores(image[None], face.face[None])[0])
        live = score >= self.pipeline.config.pad_threshold
        return {"live": live, "passive_score": round(score, 4), "reasons": [] if live else ["passive_spoof"]}

    def _video_liveness(self, path: Path, required: Sequence[str]) -> dict:
        cfg = self.pipeline.config
        video = self.video(path)
        analysis = self.pipeline.analyse_video(video, Timings())
        if analysis.track.reason:
            return {"live": None, "reasons": [f"video_{analysis.track.reason}"]}
        reasons = []
        if analysis.passive_score < cfg.pad_threshold:
            reasons.append("passive_spoof")
        if analysis.continuity is not None and analysis.continuity < cfg.continuity_threshold:
            reasons.append("identity_changed")
        if required:  # exactly these actions in this order; untimed, as files carry no schedule
            verdict = liveness.judge(challenge.ChallengeSpec(tuple(required)), analysis.events, video.duration_s)
            reasons += [verdict.reason] if verdict.reason else []
        return {"live": not reasons, "reasons": reasons, "passive_score": round(analysis.passive_score, 4),
                "continuity": None if analysis.continuity is None else round(analysis.continuity, 4),
                "actions": sorted({e.action for e in analysis.events})}

    def eval_challenge(self, root: Path, draws: int, seed: int | None) -> dict:
        """What a replayed recording answers: every video under `root`, its actions as the
        pipeline sees them, against `draws` random server challenges. Clips longer than the
        service accepts (up to 2 minutes) are still analysed; the challenge's own length rule
        then applies."""
        rng = np.random.default_rng(seed)
        index, schedules = challenge.draw(rng, draws)
        limits = {**self.settings.video_limits, "max_duration_s": 120.0}  # longer dev clips too
        clips = {}
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            video = self.decode.video(path.read_bytes(), **limits)
            analysis = self.pipeline.analyse_video(video, Timings(), need_embeddings=False)
            answered = liveness.count_answered(analysis.events, video.duration_s, index, schedules)
            clips[str(path.relative_to(root))] = {
                "answered": answered, "rate": answered / draws, "duration_s": round(video.duration_s, 2),
                "actions": [e.action for e in analysis.events]}
        return {
            "draws": draws, "sequences": len(challenge.sequences()),
            "distinct_challenges": challenge.distinct_challenges(),
            "window_s": list(challenge.WINDOW_S), "max_record_s": challenge.MAX_RECORD_S,
            "worst_clip_rate": max((c["rate"] for c in clips.values()), default=None),
            "clips": clips,
            "crafted_recording": liveness.best_crafted_rate(index, schedules),
        }


def _read_csv(path: Path, required: list[str]) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: expected columns {', '.join(required)}" + (f"; missing {missing}" if missing else ""))
    return rows
