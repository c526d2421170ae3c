"""The offline commands behind the CLI: verify and compare files, evaluate on labelled
sets, calibrate the match threshold. Each returns a JSON-ready dict."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from portrait import action_calibration, action_scoring, challenge, evaluation, genuine
from portrait.backends import InferenceBackend, backend_from_settings, model_runtimes
from portrait.media import MediaError, decoder
from portrait.media.trim import leading
from portrait.modelrepo import int8
from portrait.modelrepo.repository import served_models
from portrait.modelrepo.sources import sha256_of
from portrait.pipeline import CALIBRATION, Pipeline, PipelineConfig, Timings, config_from_record, shipped_match
from portrait.settings import Settings
from portrait.stages import continuity, embed, liveness, pad, quality, synthetic
from portrait.stages.fusion import Fusion, learn

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".3gp", ".3g2"}
IMAGE_BATCH = 16  # images decoded and detected together; bounds memory on big sets


REFUSALS = ("no_face", "multiple_faces")  # the service answers these with `retry`
# The detector MiniFASNet's crops are defined by (Silent-Face's RetinaFace, Caffe), from the
# model mirror. Only `calibrate --liveness` runs it, to fit the YuNet -> PAD box map.
PAD_DETECTOR = {"RetinaFace_PAD.prototxt": "9fe2f141b4baee039ed9442da2833e216af40a6ff3e639e7b39258812bcda808",
                "RetinaFace_PAD.caffemodel": "d08338a2c207df16a9c566f767fea67fb43ba6fff76ce11e938fe3fabefb9402"}
CALIBRATION_MAX_SECONDS = 30.0  # annotated clips up to this long count in action calibration (frames stay capped)


@dataclass(frozen=True)
class PairScores:
    sface: np.ndarray  # cosine, NaN where a pair has no score
    dlib: np.ndarray  # minus Euclidean distance
    problems: dict[str, str]  # image -> "no_face", "multiple_faces" or a media error code

    @property
    def detected(self) -> np.ndarray:
        return ~np.isnan(self.sface)


class Offline:
    def __init__(self, settings: Settings, backend: InferenceBackend | None = None,
                 config: PipelineConfig | None = None) -> None:
        self.settings = settings
        self.record = settings.calibration or CALIBRATION  # the calibration record decisions are read from
        self.backend = backend or backend_from_settings(settings)
        self.pipeline = Pipeline(self.backend, config or config_from_record(self.record, detect_every=settings.video_detect_every))
        self.decode = decoder(settings.decoder)
        self.models = int8.served(served_models(settings.model_repository), model_runtimes(self.backend),
                                  settings.model_repository)

    def image(self, path: Path) -> np.ndarray:
        return self.decode.image(path.read_bytes(), max_pixels=self.settings.max_image_pixels)

    def video(self, path: Path):
        return self.decode.video(path.read_bytes(), self.settings.video_limits)

    def labelled_clip(self, path: Path):
        """A labelled clip as the service would judge it: one longer than the service takes
        is cut to its first VIDEO_MAX_SECONDS, the clip an attacker would submit."""
        data, limits = path.read_bytes(), self.settings.video_limits
        try:
            return self.decode.video(data, limits)
        except MediaError as error:
            if error.code != "video_too_long":
                raise
            return self.decode.video(leading(data, limits.max_duration_s), limits)

    def photo_face(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """A photo and its subject's face row (None where it has no clear subject)."""
        image = self.image(path)
        return image, self.pipeline.image_faces([image])[0].face

    def photo_crop(self, image: np.ndarray) -> np.ndarray | None:
        """The generated-face check's context crop of a photo's subject (None where it has no
        clear subject)."""
        face = self.pipeline.image_faces([image])[0].face
        return None if face is None else self.pipeline.context_crops([image], face[None])[0]

    def photo_similarity(self, first: Path, second: Path) -> float | None:
        """The generated-face check's score of two photos' subjects as the service would
        give it with either photo as the ID and the other as the selfie's one frame (its
        mirror image included): the higher of the two, since a customer's pair comes in
        either order."""
        a, b = self.photo_crop(self.image(first)), self.photo_crop(self.image(second))
        if a is None or b is None:
            return None
        return max(synthetic.derived_score(a, b[None]), synthetic.derived_score(b, a[None]))

    def clip_derived_score(self, clip: Path, still: Path) -> float | None:
        """How closely a clip reproduces a still's face (the check's score with the still as
        the ID photo); None where either has no usable face."""
        analysis = self.pipeline.analyse_video(self.labelled_clip(clip), Timings())
        image, face = self.photo_face(still)
        if analysis.track.reason or face is None:
            return None
        return self.pipeline.derived_score(image, face, analysis)

    def verify(self, id_image: Path, video: Path, asked: challenge.ChallengeSpec | None = None) -> dict:
        timings = Timings()
        with timings.stage("decode"):
            image, clip = self.image(id_image), self.video(video)
        result = self.pipeline.verify(image, clip, asked, timings)
        return {**result, "models": self.models}

    def compare(self, first: Path, second: Path) -> dict:
        return {**self.pipeline.compare(self.image(first), self.image(second)), "models": self.models}

    def pair_scores(self, pairs: list[tuple[str, str]], root: Path) -> PairScores:
        """Each embedder's score per pair (NaN where an image was refused or unreadable)."""
        names = sorted({n for pair in pairs for n in pair})
        vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        problems: dict[str, str] = {}
        for start in range(0, len(names), IMAGE_BATCH):
            chunk = names[start : start + IMAGE_BATCH]
            images = []
            for name in chunk:
                try:
                    images.append((name, self.image(root / name)))
                except (MediaError, OSError) as error:
                    problems[name] = getattr(error, "code", "unreadable")
            found = self.pipeline.image_faces([i for _, i in images])
            usable = [(n, i, f.face) for (n, i), f in zip(images, found) if f.face is not None]
            problems.update({n: f.reason for (n, _), f in zip(images, found) if f.face is None})
            if usable:
                pictures, faces = [i for _, i, _ in usable], np.stack([f for *_, f in usable])
                first, second = self.pipeline.embed(pictures, faces), self.pipeline.embed_second(pictures, faces)
                vectors.update({n: (a, b) for (n, _, _), a, b in zip(usable, first, second)})
        sface = np.array([float(vectors[a][0] @ vectors[b][0]) if a in vectors and b in vectors else np.nan
                          for a, b in pairs])
        dlib = np.array([float(embed.distance_similarity(vectors[a][1], vectors[b][1])[0])
                         if a in vectors and b in vectors else np.nan for a, b in pairs])
        return PairScores(sface, dlib, problems)

    def _labelled_scores(self, pairs_csv: Path, root: Path) -> tuple[list[dict[str, str]], np.ndarray, PairScores]:
        rows = _read_csv(pairs_csv, ["img_a", "img_b", "same_person"])
        same = np.array([r["same_person"].strip() in ("1", "true", "True") for r in rows])
        return rows, same, self.pair_scores([(r["img_a"], r["img_b"]) for r in rows], root)

    def eval_pairs(self, pairs_csv: Path, root: Path, plot: Path | None = None, scores_csv: Path | None = None,
                   by: str | None = None) -> dict:
        started = time.perf_counter()
        rows, same, scores = self._labelled_scores(pairs_csv, root)
        elapsed = time.perf_counter() - started
        if by is not None and by not in rows[0]:
            raise ValueError(f"{pairs_csv}: --by {by}: the file has no {by!r} column")
        shipped = shipped_match(self.record)
        fusion = self.pipeline.config.fusion or _fusion_from(shipped)
        learned_here = fusion is None
        if fusion is None:  # a record without fusion parameters: learn them on this file, and say so
            fusion = _learn_fusion(scores, same)
        columns = _score_columns(scores, fusion)
        thresholds = _thresholds(shipped, columns, same)
        shipped_name = shipped["score"] if shipped["score"] in columns else "sface"
        folds, fold_source = _folds(rows)
        report = {
            "pairs": len(rows),
            "genuine": int(same.sum()),
            "impostor": int((~same).sum()),
            "refusals": _refusals(rows, scores),
            "errors": _errors(rows, scores),
            "shipped": {"score": shipped_name, "threshold": thresholds[shipped_name]},
            "far_resolution": round(1.0 / max(int((~same).sum()), 1), 6),
            "scores": {
                name: {
                    "threshold": thresholds[name],
                    "accuracy_at_threshold": round(evaluation.accuracy_at(values, same, thresholds[name]), 4),
                    "far_at_threshold": round(float(np.mean(values[~same] >= thresholds[name])), 6),
                    "tar_at_far": [evaluation.tar_at_far(values[same], values[~same], far) for far in (1e-3, 1e-4)],
                    "accuracy_10fold": evaluation.kfold_accuracy(values, same, folds),
                }
                for name, values in columns.items()
            },
            "fusion": {**fusion.to_record(), "learned_on": "this file" if learned_here else "calibration record"},
            "optimism": ("each score's threshold, and the fusion's normalisation and weights, come from the "
                         "calibration record; where that was learned on this file, its figures are optimistic. "
                         "fused_cross_validated learns the fusion on all folds but one and measures on that one."),
            "fused_cross_validated": _fused_cross_validated(scores, same, folds),
            "folds": {"count": int(len(np.unique(folds))), "from": fold_source},
            "pairs_per_s": round(len(rows) / elapsed, 1),
            "models": self.models,
        }
        decisions = columns[shipped_name] >= thresholds[shipped_name]
        if by is not None:
            groups = np.array([r[by] for r in rows])
            per_group = {str(g): evaluation.error_rates(columns[shipped_name][groups == g], same[groups == g],
                                                        thresholds[shipped_name]) for g in np.unique(groups)}
            report["by_group"] = {"column": by, "score": shipped_name, "threshold": thresholds[shipped_name],
                                  "interval": "95% Wilson score", "groups": per_group,
                                  **evaluation.differentials(per_group)}
        if scores_csv is not None:
            _write_scores(scores_csv, rows, scores, columns, decisions)
            report["scores_csv"] = str(scores_csv)
        if plot is not None:
            from portrait.plots import det_plot

            curves = {name: (v[same], v[~same]) for name, v in columns.items()}
            det_plot(curves, (shipped_name, thresholds[shipped_name]), plot,
                     f"{pairs_csv.name}: {int(same.sum())} genuine, {int((~same).sum())} impostor pairs")
            report["plot"] = str(plot)
        return report

    def calibrate(self, pairs_csv: Path, root: Path, far: float, output: Path | None = None) -> dict:
        """Thresholds at `far` for SFace, dlib and their fusion, the fusion's parameters, and
        whether fusion ships (only if it wins under cross-validation), into the record."""
        rows, same, scores = self._labelled_scores(pairs_csv, root)
        detected = scores.detected
        fusion = _learn_fusion(scores, same)
        columns = _score_columns(scores, fusion)
        thresholds = {name: evaluation.recorded(evaluation.threshold_at_far(v[detected & ~same], far))
                      for name, v in columns.items()}
        folds, fold_source = _folds(rows)
        cv = _fused_cross_validated(scores, same, folds, far)
        fused_wins = (cv["accuracy_10fold"]["fused"]["mean"] > cv["accuracy_10fold"]["sface"]["mean"]
                      and cv["tar_at_far_out_of_fold"]["fused"] >= cv["tar_at_far_out_of_fold"]["sface"])
        chosen = "fused" if fused_wins else "sface"
        data = f"{pairs_csv.name} ({len(rows)} pairs)"
        impostors, genuine = int((detected & ~same).sum()), int((detected & same).sum())
        embedders = [m for m in self.models if m["name"] in ("sface", "dlib_resnet")]
        record = {
            "match_threshold": thresholds["sface"],
            "target_far": far,
            "tar_on_detected_pairs": round(float(np.mean(columns["sface"][detected & same] >= thresholds["sface"])), 4),
            "impostor_pairs": impostors,
            "genuine_pairs": genuine,
            "data": data,
            "embedder": next((m for m in embedders if m["name"] == "sface"), None),
            "match": {
                "score": chosen,
                "threshold": thresholds[chosen],
                "target_far": far,
                "thresholds": thresholds,
                "tar_at_threshold": {name: round(float(np.mean(v[detected & same] >= thresholds[name])), 4)
                                     for name, v in columns.items()},
                "fusion": fusion.to_record(),
                "why": (f"{chosen} ships: fusion ships only when its cross-validated {cv['folds']}-fold accuracy"
                        " beats SFace's and its out-of-fold TAR at the target FAR is not lower"),
                "cross_validation": cv,
                "data": data,
                "folds_from": fold_source,
                "genuine_pairs": genuine,
                "impostor_pairs": impostors,
                "refused_pairs": int((~detected).sum()),
                "far_resolution": round(1.0 / max(impostors, 1), 6),
                "optimism": (f"thresholds, normalisation and weights were learned on these {len(rows)} pairs; "
                             f"evaluated on the same pairs they are optimistic. With {impostors} impostor pairs "
                             f"no FAR below {1.0 / max(impostors, 1):.1g} can be measured, and the pairs are "
                             "web photos of few people, not ID documents against selfies: recalibrate on the "
                             "carrier's own labelled pairs. The cross-validation figures learn on 9 folds and "
                             "measure on the 10th: they estimate what fusion gains on unseen pairs of this kind."),
                "embedders": embedders,
            },
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        target = output or CALIBRATION
        previous = json.loads(target.read_text()) if target.exists() else {}
        previous.pop("tar_at_threshold", None)  # an older name of tar_on_detected_pairs
        target.write_text(json.dumps({**previous, **record}, indent=2) + "\n")
        return record

    def calibrate_liveness(self, list_csv: Path, root: Path, output: Path | None = None) -> dict:
        """Fit the YuNet -> PAD box map against the PAD models' own detector, then the passive
        threshold on the list's live and attack samples and the continuity threshold on its
        live clips against splices of every two of them; write both to the calibration record."""
        rows = _read_csv(list_csv, ["path", "label"])
        net = _pad_detector(self.settings.model_mirror)
        cfg = self.pipeline.config
        scored, clips, skipped = [], {}, {}
        boxes, reference, kinds = [], [], []
        for row in rows:
            path = root / row["path"]
            try:
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    video = self.labelled_clip(path)  # as the service would judge it
                    analysis = self.pipeline.analyse_video(video, Timings())
                    if analysis.track.reason:
                        skipped[row["path"]] = analysis.track.reason
                        continue
                    kept = np.flatnonzero(analysis.track.present)
                    chosen = kept[quality.spread(len(kept), cfg.pad_frames)]
                    frames, faces = video.frames[chosen], analysis.track.faces[chosen]
                    if row["label"].strip() == "live":
                        clips[row["path"]] = analysis.continuity_sample
                else:
                    image = self.image(path)
                    found = self.pipeline.image_faces([image])[0]
                    if found.face is None:
                        skipped[row["path"]] = found.reason
                        continue
                    frames, faces = image[None], found.face[None]
            except (MediaError, OSError) as error:
                skipped[row["path"]] = getattr(error, "code", "unreadable")
                continue
            scored.append((row, frames, faces))
            for frame, face in zip(frames, faces):
                box = _reference_box(net, frame, face)
                if box is not None:
                    boxes.append(face[:4])
                    reference.append(box)
                    kinds.append("video" if len(frames) > 1 or path.suffix.lower() in VIDEO_SUFFIXES else "photo")
        boxes, reference, kinds = np.array(boxes), np.array(reference), np.array(kinds)
        # Rounded as the record keeps it, so the scores below are those the shipped map gives.
        fitted = pad.BoxMap(**{k: round(v, 4) for k, v in vars(pad.fit_box_map(boxes, reference)).items()})
        is_live = np.array([r["label"].strip() == "live" for r, _, _ in scored])
        # YuNet's own box against the fitted map: the one with fewer live samples rejected
        # (every attack rejected) ships; on a tie, the one with the wider margin.
        trials = {}
        for name, candidate in (("yunet", pad.BoxMap()), ("mapped", fitted)):
            scorer = Pipeline(self.backend, replace(cfg, pad_box_map=candidate), self.pipeline.ops)
            values = np.array([float(np.median(scorer.passive_scores(f, b))) for _, f, b in scored])
            threshold = evaluation.recorded(evaluation.threshold_rejecting_all(values[is_live], values[~is_live]))
            trials[name] = {"map": candidate, "scores": values, "threshold": threshold,
                            "bpcer": float(np.mean(values[is_live] < threshold)),
                            "margin": threshold - float(values[~is_live].max())}
        chosen = min(trials, key=lambda n: (trials[n]["bpcer"], -trials[n]["margin"]))
        box_map, per_sample, pad_threshold = (trials[chosen][k] for k in ("map", "scores", "threshold"))
        pad_record = {
            "threshold": pad_threshold,
            "box_map": {k: round(v, 4) for k, v in vars(box_map).items()},
            "box_map_choice": {"chosen": chosen, **{n: {"bpcer": round(t["bpcer"], 4), "threshold": t["threshold"],
                                                       "margin_over_highest_attack": round(t["margin"], 4)}
                                                   for n, t in trials.items()},
                               "fitted_map": {k: round(v, 4) for k, v in vars(fitted).items()}},
            "aggregate": f"median of the live score over up to {cfg.pad_frames} frames evenly spaced among the "
                         "frames with the face (photos: their one face)",
            "data": f"{list_csv.name}: {int(is_live.sum())} live and {int((~is_live).sum())} attack samples"
                    + (f"; not acquired: {skipped}" if skipped else ""),
            "rule": "every dev attack rejected; under that, the middle of the gap above the highest attack score",
            "bpcer_at_threshold": round(float(np.mean(per_sample[is_live] < pad_threshold)), 4),
            "lowest_live": round(float(per_sample[is_live].min()), 4),
            "highest_attack": round(float(per_sample[~is_live].max()), 4) if (~is_live).any() else None,
            "box_map_data": {
                "faces": int(len(boxes)), "photos": int((kinds == "photo").sum()), "frames": int((kinds == "video").sum()),
                "reference": "RetinaFace_PAD (Silent-Face-Anti-Spoofing's detector), most confident box over the "
                             "YuNet face (IoU >= 0.3)",
                "iou_with_reference_median": {"yunet": _median_iou(boxes, reference),
                                              "mapped": _median_iou(fitted.apply(boxes), reference)},
            },
            "optimism": "threshold chosen and measured on the same few samples (one replay clip, one print and one "
                        "replay photo): it separates these, and says little about unseen attacks or cameras",
        }
        names = sorted(clips)
        genuine = {name: continuity.continuity(clips[name]).score for name in names}
        splices = {f"{a} > {b}": continuity.continuity(continuity.splice(clips[a], clips[b])).score
                   for a in names for b in names if a != b}
        cross = _cross_identity_pairs(clips)
        continuity_threshold = evaluation.recorded(evaluation.separating_threshold(
            np.array(list(genuine.values())), np.array(list(splices.values()))))
        hardest = max(splices, key=splices.get)
        continuity_record = {
            "threshold": continuity_threshold,
            "statistic": "lowest over cuts between sampled frames of the median similarity of pose-matched frame "
                         f"pairs across the cut (windows {list(continuity.WINDOWS)} frames, pose within "
                         f"{continuity.POSE_TOLERANCE} degrees), over up to {cfg.continuity_frames} frames spread in time",
            "data": f"{list_csv.name}: {len(genuine)} live clips (genuine) and {len(splices)} splices of every two of "
                    "them, first half of one then second half of the other (impostor)",
            "lowest_genuine": {"clip": min(genuine, key=genuine.get), "score": round(min(genuine.values()), 4)},
            "highest_splice": {"splice": hardest, "score": round(splices[hardest], 4)},
            "cross_identity_pose_matched_pairs": cross,
            "optimism": "threshold chosen and measured on the same clips; the gap between the sets is what it has, "
                        "with few people, no twins and no look-alikes: recalibrate on the carrier's own clips",
        }
        target = output or CALIBRATION
        record = json.loads(target.read_text()) if target.exists() else {}
        record.update(pad=pad_record, continuity=continuity_record,
                      liveness_calibrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        target.write_text(json.dumps(record, indent=2) + "\n")
        return {"pad": {**pad_record, "samples": {r["path"]: round(float(v), 4) for (r, _, _), v in zip(scored, per_sample)}},
                "continuity": {**continuity_record, "genuine": _rounded(genuine),
                                                  "splices": _rounded(splices)}}

    def calibrate_synthetic(self, list_csv: Path, pairs_csv: Path, same_capture_csv: Path, root: Path,
                            output: Path | None = None) -> dict:
        """The generated-face check's threshold: above the score of every genuine pair of
        `pairs_csv` (two photographs of one person), in the middle of the gap to the next
        derived score: the list's generated clips against the stills they were made from, and
        the pairs of `pairs_csv` that are one photograph (`same_capture_csv`)."""
        same = {frozenset((r["img_a"], r["img_b"])) for r in _read_csv(same_capture_csv, ["img_a", "img_b"])}
        genuine, derived, unusable = {}, {}, {}
        for row in _read_csv(pairs_csv, ["img_a", "img_b", "same_person"]):
            if row["same_person"].strip() not in ("1", "true", "True"):
                continue
            name = f"{row['img_a']} ~ {row['img_b']}"
            score = self.photo_similarity(root / row["img_a"], root / row["img_b"])
            if score is None:
                unusable[name] = "no clear subject"
            elif frozenset((row["img_a"], row["img_b"])) in same:
                derived[name] = {"score": round(score, 4), "family": "same_capture"}
            else:
                genuine[name] = round(score, 4)
        for row in _read_csv(list_csv, ["path", "label", "family", "source_image"]):
            if row["label"].strip() != "spoof" or not row["source_image"] or _is_photo(row["path"]):
                continue
            score = self.clip_derived_score(root / row["path"], root / row["source_image"])
            if score is None:
                unusable[row["path"]] = "no usable face"
            else:
                derived[row["path"]] = {"score": round(score, 4), "family": row["family"]}
        genuine_scores = np.array(list(genuine.values()))
        derived_scores = np.array([d["score"] for d in derived.values()])
        threshold = evaluation.recorded(evaluation.threshold_rejecting_all(derived_scores, genuine_scores))
        highest = max(genuine, key=genuine.get)
        record = {
            "threshold": threshold,
            "score": "best sampled frame's mean of the fine-detail and layout (less its plane of brightness) "
                     f"correlations with the ID face or its mirror image, after registration ({synthetic.SIZE}x"
                     f"{synthetic.SIZE} crops at {synthetic.CONTEXT}x the embedder's); a genuine pair scored with "
                     "either photo as the ID, the higher of the two",
            "rule": "above every genuine pair (BPCER budget: none of the dev genuine pairs flagged, 1 in 100 "
                    "stated), in the middle of the gap to the next derived score",
            "data": f"{pairs_csv.name}: {len(genuine)} genuine pairs of different photographs; {list_csv.name}: "
                    f"generated clips with their source stills, and {same_capture_csv.name}: pairs that are one "
                    f"photograph ({len(derived)} derived in all)",
            "genuine": {"pairs": len(genuine), "highest": {"pair": highest, "score": genuine[highest]},
                        "scores": sorted(genuine.values())},
            "derived": derived,
            "derived_flagged": int((derived_scores >= threshold).sum()),
            "unusable": unusable,
            "optimism": "genuine pairs are photographs against photographs, one comparison each; a selfie is "
                        "compared frame by frame with the ID photo and its best frame counts, so a genuine "
                        "customer's score sits higher than these, and an ID photo taken of a printed card "
                        "(smaller, softer) raises the scores a little (benchmarks/synthetic_evasion.py --on id). "
                        "The derived clips are few, from few tools, "
                        "and chose the threshold's place in the gap: leave-one-family-out figures "
                        "(`eval liveness --by family`) are the honest ones.",
        }
        target = output or CALIBRATION
        previous = json.loads(target.read_text()) if target.exists() else {}
        previous["synthetic"] = {"derived_from_id": record,
                                 "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        target.write_text(json.dumps(previous, indent=2) + "\n")
        return previous["synthetic"]

    def eval_liveness(self, list_csv: Path, root: Path, required: Sequence[str], plot: Path | None = None,
                      by: str | None = None) -> dict:
        """APCER per attack type and BPCER at the shipped thresholds. A `source_image` column
        gives the still a generated clip was made from: the generated-face check then runs
        with it as the ID photo. `by` (a column, such as `family`) adds the same figures per
        group, with the generated-face threshold recalibrated without the group's samples."""
        rows = _read_csv(list_csv, ["path", "label"])
        if by is not None and by not in rows[0]:
            raise ValueError(f"{list_csv}: --by {by}: the file has no {by!r} column")
        cfg = self.pipeline.config
        outcomes = []
        for row in rows:
            path = root / row["path"]
            outcome = {"path": row["path"], "label": row["label"]}
            reference = (row.get("source_image") or "").strip()
            try:
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    outcome.update(self._video_liveness(path, required, root / reference if reference else None))
                else:
                    outcome.update(self._image_liveness(path))
            except (MediaError, OSError) as error:
                outcome.update(live=None, reasons=[getattr(error, "code", "unreadable")])
            outcomes.append(outcome)
        report = {
            **_liveness_rates(rows, outcomes, cfg.synthetic_threshold),
            "passive_threshold": cfg.pad_threshold,
            "continuity_threshold": cfg.continuity_threshold,
            "synthetic_threshold": cfg.synthetic_threshold,
            "required_actions": list(required),
            "samples": outcomes,
            "models": self.models,
        }
        if by is not None:
            report["by"] = _leave_one_out(by, rows, outcomes, cfg.synthetic_threshold, self.record)
        if plot is not None:
            from portrait.plots import liveness_plot

            scored = [o for o in outcomes if o.get("passive_score") is not None]
            liveness_plot({label: np.array([o["passive_score"] for o in scored if o["label"].strip() == label])
                           for label in ("live", "spoof")}, cfg.pad_threshold, plot,
                          f"{list_csv.name}: passive score per sample")
            report["plot"] = str(plot)
        return report

    def _image_liveness(self, path: Path) -> dict:
        image = self.image(path)
        face = self.pipeline.image_faces([image])[0]
        if face.face is None:
            return {"live": None, "reasons": [f"image_{face.reason}"]}
        score = float(self.pipeline.passive_scores(image[None], face.face[None])[0])
        live = score >= self.pipeline.config.pad_threshold
        return {"live": live, "passive_score": round(score, 4), "reasons": [] if live else ["passive_spoof"],
                "passive_frames": _summary(np.array([score]))}

    def _video_liveness(self, path: Path, required: Sequence[str], reference: Path | None) -> dict:
        cfg = self.pipeline.config
        video = self.labelled_clip(path)
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
        derived = None
        if reference is not None:
            image, face = self.photo_face(reference)
            derived = None if face is None else self.pipeline.derived_score(image, face, analysis)
        if derived is not None and derived >= cfg.synthetic_threshold:
            reasons.append("synthetic_face")
        return {"live": not reasons, "reasons": reasons, "passive_score": round(analysis.passive_score, 4),
                "synthetic_score": None if derived is None else round(derived, 4),
                "passive_frames": _summary(analysis.passive_frames),
                "continuity": None if analysis.continuity is None else round(analysis.continuity, 4),
                "actions": sorted({e.action for e in analysis.events})}

    def action_signals(self, events_csv: Path, root: Path) -> tuple[dict, dict]:
        """Every annotated clip's action signals, sampled at VIDEO_FPS over its whole length
        (the rate a timed challenge gets; the frame cap is lifted for clips longer than a
        challenge), and the annotations."""
        annotations = action_scoring.read_annotations(events_csv)
        fps = self.settings.video_limits.target_fps
        limits = replace(self.settings.video_limits, max_duration_s=CALIBRATION_MAX_SECONDS,
                         max_frames=int(np.ceil(CALIBRATION_MAX_SECONDS * fps)) + 1)
        clips = {}
        for path in sorted(annotations):
            video = self.decode.video((root / path).read_bytes(), limits)
            analysis = self.pipeline.analyse_video(video, Timings(), need_embeddings=False)
            if analysis.track.reason:
                raise ValueError(f"{path}: {analysis.track.reason}: an annotated clip must show one face")
            clips[path] = action_calibration.ClipSignals(analysis.times, analysis.openness, analysis.pose,
                                                         analysis.mouth)
        return clips, annotations

    def eval_actions(self, events_csv: Path, root: Path) -> dict:
        """The pipeline's events on annotated clips against the annotations."""
        clips, annotations = self.action_signals(events_csv, root)
        cfg = self.pipeline.config
        report = action_calibration.evaluate(clips, annotations, cfg.liveness, _observe)
        return {"events": events_csv.name, "annotated_clips": len(clips), "fps": self.settings.video_limits.target_fps,
                "tolerance_s": action_scoring.TOLERANCE_S, "onset_limit_s": action_calibration.ONSET_LIMIT_S,
                **report, "observed": {path: [vars(e) for e in _observe(clips[path], cfg.liveness)]
                                       for path in sorted(clips)},
                "thresholds": asdict(cfg.liveness)}

    def calibrate_actions(self, events_csv: Path, root: Path, output: Path | None = None) -> dict:
        """The action thresholds chosen on the annotated clips, into the calibration record."""
        clips, annotations = self.action_signals(events_csv, root)
        found = action_calibration.calibrate(clips, annotations)
        limits = liveness.LivenessThresholds.from_record(found["thresholds"])
        measured = action_calibration.evaluate(clips, annotations, limits, _observe)["actions"]
        counted = sum(len(spans) for spans in annotations.values())
        record = {
            **found,
            "data": f"{events_csv.name}: {len(clips)} clips, {counted} annotated actions, sampled at "
                    f"{self.settings.video_limits.target_fps:g} fps",
            "rule": ("per kind of action, the grid point with the most annotated actions found exactly once (start "
                     f"within {action_calibration.ONSET_LIMIT_S} s) minus extra events, deepest inside the region "
                     "of such points; tilts on the clips plus copies carrying a synthetic "
                     f"{action_calibration.SYNTHETIC_TILT_DEG:g}-degree tilt"),
            "measured_on_the_same_clips": measured,
            "optimism": (f"chosen and measured on the same {len(clips)} clips, annotated by one person, none of "
                         f"them prompted: {_counted(annotations)}. Looks, which the clips never show, are bounded by "
                         "extra events alone, tilts by those and synthetic tilts. The thresholds separate what these "
                         "clips show, and the margins (grid steps) say how far: recalibrate on annotated captures of "
                         "prompted challenges."),
        }
        target = output or CALIBRATION
        previous = json.loads(target.read_text()) if target.exists() else {}
        previous.update(actions=record, actions_calibrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        target.write_text(json.dumps(previous, indent=2) + "\n")
        return record

    def eval_challenge(self, root: Path, draws: int, seed: int | None, events_csv: Path | None = None) -> dict:
        """What a replayed recording answers: each clip (the annotated ones with `events_csv`,
        else every video under `root`), its actions as the pipeline sees them (VIDEO_FPS over
        the whole clip), its exact chance over all server challenges and its count among
        `draws` drawn ones; the best recording crafted for the purpose; and, with
        `events_csv`, what the challenge costs simulated genuine customers."""
        rng = np.random.default_rng(seed)
        index, schedules = challenge.draw(rng, draws)
        fps = self.settings.video_limits.target_fps
        limits = replace(self.settings.video_limits, max_duration_s=120.0,  # longer dev clips too
                         max_frames=int(np.ceil(120.0 * fps)) + 1)
        names = (sorted(action_scoring.read_annotations(events_csv)) if events_csv is not None else
                 sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES))
        clips = {}
        for name in names:
            video = self.decode.video((root / name).read_bytes(), limits)
            analysis = self.pipeline.analyse_video(video, Timings(), need_embeddings=False)
            events, duration = analysis.events, float(video.duration_s)
            clips[name] = {"rate": liveness.answer_rate(events, duration),
                           "answered": liveness.count_answered(events, duration, index, schedules),
                           "duration_s": round(duration, 2), "moves": [e.action for e in events if e.action != "blink"]}
        crafted = liveness.best_crafted_rate()
        made = [liveness.ActionEvent(action, start, start + 0.6, 20.0)
                for action, start in zip(challenge.sequences()[int(index[0])], crafted["starts_s"])]
        report = {
            "draws": draws, "sequences": len(challenge.sequences()), "moves_per_challenge": challenge.DRAWN_ACTIONS,
            "distinct_challenges": challenge.distinct_challenges(), "window_s": list(challenge.WINDOW_S),
            "max_record_s": challenge.MAX_RECORD_S, "fps": fps,
            "worst_clip_rate": max((c["rate"] for c in clips.values()), default=None), "clips": clips,
            "crafted_recording": {**crafted, "answered": liveness.count_answered(
                made, crafted["duration_s"], index, schedules), "made_for": list(challenge.sequences()[int(index[0])])},
        }
        if events_csv is not None:
            report["genuine"] = self._genuine(events_csv, draws, rng)
        return report

    def _genuine(self, events_csv: Path, count: int, rng: np.random.Generator) -> dict:
        """Simulated customers (`genuine.py`): durations from the annotations, the pipeline's
        onset errors and minimum times from the calibration record; the stated reaction model
        and two slower, wider ones."""
        spans = [s for clip in action_scoring.read_annotations(events_csv).values() for s in clip]
        durations = {"turn": np.array([s.end_s - s.start_s for s in spans if s.action.startswith("turn")]),
                     "open_mouth": np.array([s.end_s - s.start_s for s in spans if s.action == "open_mouth"])}
        record = json.loads(CALIBRATION.read_text())["actions"]
        measured = record["measured_on_the_same_clips"]
        errors = np.array([e for action, row in measured.items() if action != "blink" for e in row["onset_errors_s"]])
        limits = self.pipeline.config.liveness
        held = {a: getattr(limits, "mouth" if a == "open_mouth" else a.split("_")[0]).min_s for a in challenge.MOVES}
        results = {}
        for median, spread in ((genuine.REACTION_MEDIAN_S, genuine.REACTION_LOG_SD), (1.0, 0.35), (1.1, 0.4)):
            customers = genuine.Customers(durations, errors, held, median, spread)
            results[f"median {median:g} s, log-sd {spread:g}"] = genuine.success_rate(customers, count, rng)
        return results


def _counted(annotations: dict) -> str:
    kinds = [span.action for spans in annotations.values() for span in spans]
    return ", ".join(f"{kinds.count(a)} {a}" for a in challenge.ACTIONS if kinds.count(a)) or "no action"


def _observe(signals: action_calibration.ClipSignals, limits: liveness.LivenessThresholds):
    return liveness.observe(signals.openness, signals.pose, signals.mouth, signals.times, limits)


GENERATED = ("talking_head", "reenactment", "faceswap")  # the attack types the generated-face check is for


def _liveness_rates(rows: list[dict[str, str]], outcomes: list[dict], synthetic_threshold: float) -> dict:
    """APCER (overall, per attack type, and over generated faces) and BPCER with the
    generated-face check at `synthetic_threshold`. Samples that could not be judged
    (unreadable, no face) are failures to acquire, reported apart as ISO/IEC 30107-3 does."""
    judged = [(r, o) for r, o in zip(rows, outcomes) if o["live"] is not None]
    if not judged:
        return {"apcer": None, "bpcer": None, "failures_to_acquire": len(rows)}
    is_attack = np.array([r["label"].strip() == "spoof" for r, _ in judged])
    kinds = np.array([(r.get("attack") or "unspecified").strip() for r, _ in judged])
    live = np.array([_live_at(o, synthetic_threshold) for _, o in judged])
    return {**_rates_with_generated(is_attack, live, kinds), "failures_to_acquire": len(rows) - len(judged)}


def _rates_with_generated(is_attack: np.ndarray, live: np.ndarray, kinds: np.ndarray) -> dict:
    """PAD error rates, and the APCER of generated faces alone with its 95% interval."""
    generated = is_attack & np.isin(kinds, GENERATED)
    return {
        **evaluation.pad_error_rates(is_attack, live, kinds),
        "apcer_generated": round(float(live[generated].mean()), 4) if generated.any() else None,
        "apcer_generated_ci95": evaluation.wilson_interval(int(live[generated].sum()), int(generated.sum())),
        "generated_attacks": int(generated.sum()),
    }


def _live_at(outcome: dict, synthetic_threshold: float) -> bool:
    """A judged sample's outcome with the generated-face check at another threshold."""
    others = [r for r in outcome["reasons"] if r != "synthetic_face"]
    score = outcome.get("synthetic_score")
    return not others and (score is None or score < synthetic_threshold)


def _leave_one_out(column: str, rows: list[dict[str, str]], outcomes: list[dict], shipped: float,
                   record_path: Path) -> dict:
    """Per group of `column`: the rates at the shipped threshold (in sample) and with the
    generated-face threshold recalibrated as `calibrate --synthetic` does, on the record's
    genuine pairs and the derived clips of every other group (out of group). The PAD and
    continuity thresholds stay as shipped (calibrated on other material)."""
    record = json.loads(record_path.read_text())["synthetic"]["derived_from_id"]
    genuine = np.array(record["genuine"]["scores"])
    fixed = [d["score"] for d in record["derived"].values() if d["family"] == "same_capture"]
    groups = {}
    for group in sorted({r[column] for r in rows}):
        inside = [r[column] == group for r in rows]
        derived = fixed + [o["synthetic_score"] for r, o, i in zip(rows, outcomes, inside)
                           if not i and r["label"].strip() == "spoof" and o.get("synthetic_score") is not None]
        threshold = evaluation.recorded(evaluation.threshold_rejecting_all(np.array(derived), genuine))
        members = ([r for r, i in zip(rows, inside) if i], [o for o, i in zip(outcomes, inside) if i])
        groups[group] = {"samples": len(members[0]),
                         "attack_types": sorted({(r.get("attack") or "").strip() for r in members[0]} - {""}),
                         "in_sample": _liveness_rates(*members, shipped),
                         "left_out": {"synthetic_threshold": threshold, **_liveness_rates(*members, threshold)}}
    return {"column": column, "groups": groups, **_pooled(rows, outcomes, groups, column)}


def _pooled(rows: list[dict[str, str]], outcomes: list[dict], groups: dict, column: str) -> dict:
    """Every sample judged with its own group left out of calibration, pooled."""
    judged = [(r, o) for r, o in zip(rows, outcomes) if o["live"] is not None]
    is_attack = np.array([r["label"].strip() == "spoof" for r, _ in judged])
    kinds = np.array([(r.get("attack") or "unspecified").strip() for r, _ in judged])
    live = np.array([_live_at(o, groups[r[column]]["left_out"]["synthetic_threshold"]) for r, o in judged])
    return {"left_out_pooled": _rates_with_generated(is_attack, live, kinds)}


def _is_photo(path: str) -> bool:
    return Path(path).suffix.lower() not in VIDEO_SUFFIXES


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items()}


def _median_iou(boxes: np.ndarray, reference: np.ndarray) -> float:
    from portrait.stages.track import iou

    return round(float(np.median([iou(a, b[None])[0] for a, b in zip(boxes, reference)])), 4)


def _cross_identity_pairs(clips: dict[str, continuity.Sample]) -> dict:
    """Similarities of frame pairs from different clips (different people) whose poses are
    alike: how close two people's single frames can come."""
    values = []
    names = sorted(clips)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pose = np.abs(clips[a].angles[:, None] - clips[b].angles[None]).max(-1)
            values.append((clips[a].embeddings @ clips[b].embeddings.T)[pose <= continuity.POSE_TOLERANCE])
    joined = np.concatenate(values) if values else np.zeros(0)
    if not len(joined):
        return {"pairs": 0}
    return {"pairs": int(len(joined)), "median": round(float(np.median(joined)), 4),
            "p99": round(float(np.percentile(joined, 99)), 4), "max": round(float(joined.max()), 4)}


def _summary(scores: np.ndarray) -> dict:
    """Per-frame passive scores of one sample, summarised."""
    return {"count": int(len(scores)), "min": round(float(scores.min()), 4),
            "median": round(float(np.median(scores)), 4), "max": round(float(scores.max()), 4)}


def _pad_detector(mirror: Path | None):
    """Silent-Face's RetinaFace from the model mirror, hash-checked, through OpenCV's DNN."""
    import cv2

    if mirror is None:
        raise ValueError("calibrating PAD needs the model mirror (PORTRAIT_MODEL_MIRROR) for RetinaFace_PAD")
    for name, digest in PAD_DETECTOR.items():
        if not (mirror / name).exists() or sha256_of(mirror / name) != digest:
            raise ValueError(f"{mirror / name}: missing or not the pinned file (sha256 {digest})")
    return cv2.dnn.readNetFromCaffe(str(mirror / "RetinaFace_PAD.prototxt"), str(mirror / "RetinaFace_PAD.caffemodel"))


def _reference_box(net, image: np.ndarray, near: np.ndarray) -> np.ndarray | None:
    """The PAD detector's box (x,y,w,h) for the face YuNet found at `near`, prepared as
    Silent-Face does (about 192x192 pixels, mean subtracted); None where it finds none there."""
    import cv2

    from portrait.stages.track import iou

    h, w = image.shape[:2]
    small = image
    if h * w >= 192 * 192:
        aspect = w / h
        small = cv2.resize(image, (int(192 * np.sqrt(aspect)), int(192 / np.sqrt(aspect))), interpolation=cv2.INTER_LINEAR)
    net.setInput(cv2.dnn.blobFromImage(small, 1.0, mean=(104, 117, 123)), "data")
    rows = net.forward("detection_out").reshape(-1, 7)
    rows = rows[rows[:, 2] >= 0.6]
    if not len(rows):
        return None
    left, top, right, bottom = (rows[:, 3 + i] * (w, h)[i % 2] for i in range(4))
    boxes = np.stack([left, top, right - left + 1, bottom - top + 1], 1)
    overlaps = iou(near[:4], boxes)
    best = int(np.argmax(overlaps))
    return boxes[best] if overlaps[best] >= 0.3 else None


def _read_csv(path: Path, required: list[str]) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: expected columns {', '.join(required)}" + (f"; missing {missing}" if missing else ""))
    return rows


def _fusion_from(match: dict) -> Fusion | None:
    return Fusion.from_record(match["fusion"]) if "fusion" in match else None


def _learn_fusion(scores: PairScores, same: np.ndarray) -> Fusion:
    """Learned on these pairs and rounded as the record keeps it, so that the thresholds
    calibrated on its scores are those of the fusion that ships."""
    detected = scores.detected
    return Fusion.from_record(learn(scores.sface[detected], scores.dlib[detected], same[detected]).to_record())


def _score_columns(scores: PairScores, fusion: Fusion) -> dict[str, np.ndarray]:
    """SFace, dlib and fused scores; a refused pair scores -inf (the service would not match it)."""
    columns = {"sface": scores.sface, "dlib": scores.dlib, "fused": fusion(scores.sface, scores.dlib)}
    return {name: np.where(scores.detected, values, -np.inf) for name, values in columns.items()}


def _thresholds(match: dict, columns: dict[str, np.ndarray], same: np.ndarray) -> dict[str, float]:
    """Each score's threshold from the calibration record; for a score the record has none
    for, the FAR 1e-3 point of this file (optimistic: learned where it is measured)."""
    recorded = match.get("thresholds", {"sface": match["threshold"]} if match["score"] == "sface" else {})
    return {name: float(recorded[name]) if name in recorded
            else evaluation.recorded(evaluation.threshold_at_far(values[np.isfinite(values) & ~same], 1e-3))
            for name, values in columns.items()}


def _folds(rows: list[dict[str, str]]) -> tuple[np.ndarray, str]:
    if "fold" in rows[0]:
        return np.array([r["fold"].strip() for r in rows]), "the file's fold column"
    return evaluation.assign_folds(len(rows)), "assigned: 10 folds of a fixed shuffle (seed 0)"


def _fused_cross_validated(scores: PairScores, same: np.ndarray, folds: np.ndarray, far: float = 1e-3) -> dict:
    """Fusion learned on all folds but one and measured on that one, for every fold: the
    honest estimate of what fusion gains. Accuracy follows the LFW protocol (threshold chosen
    on the training folds); TAR at `far` is measured on the pooled out-of-fold scores."""
    detected = scores.detected
    out_of_fold = np.full(len(same), -np.inf)
    accuracy: dict[str, list[float]] = {"sface": [], "dlib": [], "fused": []}
    for fold in np.unique(folds):
        test, train = folds == fold, folds != fold
        fusion = _learn_fusion(PairScores(scores.sface[train], scores.dlib[train], {}), same[train])
        columns = _score_columns(scores, fusion)
        out_of_fold[test] = columns["fused"][test]
        for name, values in columns.items():
            threshold = evaluation.best_threshold(values[train], same[train])
            accuracy[name].append(evaluation.accuracy_at(values[test], same[test], threshold))
    pooled = {"sface": np.where(detected, scores.sface, -np.inf), "dlib": np.where(detected, scores.dlib, -np.inf),
              "fused": out_of_fold}
    return {
        "folds": int(len(np.unique(folds))),
        "accuracy_10fold": {name: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)}
                            for name, v in accuracy.items()},
        "far": far,
        "tar_at_far_out_of_fold": {name: evaluation.tar_at_far(v[same], v[~same], far)["tar"]
                                   for name, v in pooled.items()},
        "tar_at_far_1e-4_out_of_fold": {name: evaluation.tar_at_far(v[same], v[~same], 1e-4)["tar"]
                                        for name, v in pooled.items()},
    }


def _refusals(rows: list[dict[str, str]], scores: PairScores) -> dict:
    refused = {n: r for n, r in scores.problems.items() if r in REFUSALS}
    return {"pairs": sum(1 for r in rows if r["img_a"] in refused or r["img_b"] in refused),
            "by_reason": {reason: sum(1 for r in refused.values() if r == reason) for reason in REFUSALS},
            "images": refused}


def _errors(rows: list[dict[str, str]], scores: PairScores) -> dict:
    failed = {n: r for n, r in scores.problems.items() if r not in REFUSALS}
    return {"pairs": sum(1 for r in rows if r["img_a"] in failed or r["img_b"] in failed), "images": failed}


def _write_scores(path: Path, rows: list[dict[str, str]], scores: PairScores, columns: dict[str, np.ndarray],
                  decisions: np.ndarray) -> None:
    """One line per pair: the file's own columns, each score (empty where refused) and the decision."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*rows[0].keys(), *columns, "decision"])
        for i, row in enumerate(rows):
            detected = bool(scores.detected[i])
            values = [f"{columns[name][i]:.6f}" if detected else "" for name in columns]
            writer.writerow([*row.values(), *values, ("match" if decisions[i] else "no_match") if detected else "refused"])
