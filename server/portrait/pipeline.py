"""The verification pipeline: stages in order over an inference backend.

Within one request every stage runs as one batch over all frames (and the ID image); the
backend (or the cross-request batcher in front of it) decides how calls are grouped
further. Stages stay pure; this module only moves arrays between them and times them.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from portrait.backends.base import InferenceBackend
from portrait.challenge import ChallengeSpec
from portrait.frames import FrameOps, HostFrames
from portrait.media.clip import Video
from portrait.modelrepo.specs import BY_NAME
from portrait.settings import Settings
from portrait.stages import (align, continuity, decide, detect, embed, keyframes, landmarks, light, liveness, pad,
                             quality, synthetic)
from portrait.stages.fusion import Fusion
from portrait.stages.liveness import ActionEvent
from portrait.stages.track import MIN_COVERAGE, MIN_IOU, Track, iou, track_primary

CALIBRATION = Path(__file__).with_name("calibration.json")


def shipped_match(path: Path = CALIBRATION) -> dict:
    """The calibration record's `match` object: which score decides a match, its threshold and
    the fusion parameters; SFace alone at `match_threshold` where the record has none."""
    record = json.loads(path.read_text())
    return record.get("match") or {"score": "sface", "threshold": record["match_threshold"]}


def _shipped_match_score_threshold() -> float:
    return float(shipped_match()["threshold"])


def _shipped_fusion() -> Fusion | None:
    match = shipped_match()
    return Fusion.from_record(match["fusion"]) if match["score"] == "fused" else None


def shipped_pad() -> dict:
    return json.loads(CALIBRATION.read_text())["pad"]


def shipped_continuity_threshold() -> float:
    return float(json.loads(CALIBRATION.read_text())["continuity"]["threshold"])


def shipped_light_threshold() -> float | None:
    """The light check's threshold (`portrait calibrate --light`); None leaves every session
    with light unanswered (`light_mismatch`) rather than judged without one."""
    return _light_threshold(json.loads(CALIBRATION.read_text()))


def _light_threshold(record: dict) -> float | None:
    threshold = record.get("light", {}).get("threshold")
    return None if threshold is None else float(threshold)


def shipped_synthetic_threshold() -> float:
    """The generated-face check's threshold: a selfie at least this close to the ID photo
    is an animation of it (`calibrate --synthetic`)."""
    return float(json.loads(CALIBRATION.read_text())["synthetic"]["derived_from_id"]["threshold"])


def shipped_liveness() -> liveness.LivenessThresholds:
    """The action thresholds `portrait calibrate --actions` wrote (`actions.thresholds`)."""
    return liveness.LivenessThresholds.from_record(json.loads(CALIBRATION.read_text())["actions"]["thresholds"])


@dataclass(frozen=True)
class PipelineConfig:
    image_detector_size: int = 640
    video_detector_size: int = 320
    detect_every: int = Settings.model_fields["video_detect_every"].default  # the service passes its setting
    detection_score: float = 0.7
    match_threshold: float = field(default_factory=_shipped_match_score_threshold)  # of the shipped score
    fusion: Fusion | None = field(default_factory=_shipped_fusion)  # None: SFace's cosine alone decides
    continuity_threshold: float = field(default_factory=shipped_continuity_threshold)
    synthetic_threshold: float = field(default_factory=shipped_synthetic_threshold)
    pad_threshold: float = field(default_factory=lambda: float(shipped_pad()["threshold"]))
    pad_box_map: pad.BoxMap = field(default_factory=lambda: pad.BoxMap(**shipped_pad()["box_map"]))
    light_threshold: float | None = field(default_factory=shipped_light_threshold)
    match_frames: int = 3
    pad_frames: int = 12
    continuity_frames: int = 12  # the splice gap is as wide at 6 to 32 (README, Continuity); each costs an SFace row
    liveness: liveness.LivenessThresholds = field(default_factory=shipped_liveness)


def config_from_record(path: Path = CALIBRATION, **settings) -> PipelineConfig:
    """Every calibrated threshold from a calibration record (the shipped one, or a carrier's
    own from `portrait calibrate --output`); `settings` set the rest, or override."""
    record = json.loads(path.read_text())
    match = shipped_match(path)
    calibrated = {
        "match_threshold": float(match["threshold"]),
        "fusion": Fusion.from_record(match["fusion"]) if match["score"] == "fused" else None,
        "continuity_threshold": float(record["continuity"]["threshold"]),
        "synthetic_threshold": float(record["synthetic"]["derived_from_id"]["threshold"]),
        "pad_threshold": float(record["pad"]["threshold"]),
        "pad_box_map": pad.BoxMap(**record["pad"]["box_map"]),
        "liveness": liveness.LivenessThresholds.from_record(record["actions"]["thresholds"]),
        "light_threshold": _light_threshold(record),
    }
    return PipelineConfig(**{**calibrated, **settings})


@dataclass
class Timings:
    ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000, 2)


@dataclass(frozen=True)
class ImageFace:
    face: np.ndarray | None  # [15] detection row
    reason: str | None  # "no_face" or "multiple_faces"


@dataclass(frozen=True)
class VideoAnalysis:
    track: Track
    times: np.ndarray
    openness: np.ndarray  # [M,2] for present frames
    angles: np.ndarray  # [M,2] yaw, pitch from FaceMesh's 3-D points (frame quality, continuity's pose pairs)
    mouth: np.ndarray  # [M] lip gap over mouth width
    events: list[ActionEvent]
    passive_score: float | None  # median of passive_frames
    continuity: float | None  # see stages/continuity.py
    embeddings: np.ndarray | None  # [K,128] best frames, normalised
    second_embeddings: np.ndarray | None = None  # [K,128] dlib's, same frames, where fusion is on
    passive_frames: np.ndarray = field(default_factory=lambda: np.zeros(0))  # live score per frame scored
    continuity_sample: continuity.Sample | None = None  # the frames continuity compared
    context: np.ndarray | None = None  # [K,S,S] luma context crops of those frames (stages/synthetic.py)
    pose: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [M,3] the actions' yaw, pitch, roll
    light: light.Response | None = None  # the skin's answer to a session's screen colours, when asked


class Pipeline:
    def __init__(self, backend: InferenceBackend, config: PipelineConfig | None = None,
                 frames: FrameOps | None = None) -> None:
        self.backend = backend
        self.config = config or PipelineConfig()
        self.ops = frames or HostFrames()

    def run(self, model: str, batch) -> dict[str, np.ndarray]:
        """One model over a batch of any length, in chunks of the model's max batch."""
        batch = self.ops.for_backend(batch)
        limit = BY_NAME[model].max_batch_size
        if len(batch) <= limit:
            return self.backend.infer(model, batch)
        parts = [self.backend.infer(model, batch[i : i + limit]) for i in range(0, len(batch), limit)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def detect(self, frames: np.ndarray, size: int) -> list[np.ndarray]:
        """Same-size BGR frames [N,H,W,3] -> faces per frame in frame coordinates."""
        batch, scale = self.ops.letterbox(frames, size)
        found = detect.decode(self.run("yunet", batch), tuple(batch.shape[2:]), self.config.detection_score)
        return [detect.rescale(f, scale) for f in found]

    def image_faces(self, images: Sequence[np.ndarray]) -> list[ImageFace]:
        """The primary face of each image (ID photos, photos to compare), one detector batch."""
        size = self.config.image_detector_size
        if not images:
            return []
        boxed = [(self.ops.to_host(b), scale) for b, scale in (self.ops.letterbox(i[None], size) for i in images)]
        height, width = (max(b.shape[axis] for b, _ in boxed) for axis in (2, 3))
        batch = np.concatenate([detect.pad_to(b, height, width) for b, _ in boxed])
        scales = [scale for _, scale in boxed]
        found = detect.decode(self.run("yunet", batch), (height, width), self.config.detection_score)
        results = []
        for image, faces, scale in zip(images, found, scales):
            faces = detect.rescale(faces, scale)
            index = detect.primary_face(faces, image.shape[:2], sharpness=self.face_sharpness([image], 0, faces))
            if index is None:
                results.append(ImageFace(None, "multiple_faces" if len(faces) else "no_face"))
            else:
                results.append(ImageFace(faces[index], None))
        return results

    def face_sharpness(self, frames, index: int, faces: np.ndarray) -> np.ndarray | None:
        """Sharpness of each face's aligned crop in frames[index], where there is more than one
        face to choose from (the subject is then the face in focus)."""
        if len(faces) < 2:
            return None
        matrices = align.similarity_transforms(align.landmarks5(faces))
        return quality.sharpness(self.ops.to_host(self.ops.crops(frames, [index] * len(faces), matrices, 112)))

    def aligned_crops(self, images: Sequence[np.ndarray], faces: np.ndarray):
        """One 112x112 aligned crop per (image, face)."""
        matrices = align.similarity_transforms(align.landmarks5(faces))
        return self.ops.crops(images, range(len(faces)), matrices, 112)

    def embed_crops(self, aligned) -> np.ndarray:
        """Aligned crops -> normalised embeddings [K,128]."""
        return embed.normalise(self.run("sface", self.ops.model_input(aligned, embed.INPUT))["fc1"])

    def embed(self, images: Sequence[np.ndarray], faces: np.ndarray) -> np.ndarray:
        return self.embed_crops(self.aligned_crops(images, faces))

    def embed_second(self, images: Sequence[np.ndarray], faces: np.ndarray,
                     index: Sequence[int] | None = None) -> np.ndarray:
        """dlib's embeddings [K,128] of 150x150 chips aligned from the same 5 points (face k
        in images[index[k]], images[k] by default)."""
        matrices = align.similarity_transforms(align.landmarks5(faces), align.TEMPLATE_DLIB_150)
        chips = self.ops.crops(images, _each(faces, index), matrices, embed.DLIB_CHIP)
        return self.run("dlib_resnet", self.ops.model_input(chips, embed.DLIB_INPUT))["embedding"]

    def match_scores(self, first: tuple[np.ndarray, np.ndarray | None],
                     second: tuple[np.ndarray, np.ndarray | None]) -> dict[str, float]:
        """Each embedder's similarity of two faces given as (SFace, dlib) embeddings, and the
        fused score where fusion is on; `score` is the one the threshold applies to."""
        scores = {"sface": float(first[0] @ second[0])}
        if self.config.fusion is not None:
            scores["dlib"] = float(embed.distance_similarity(first[1], second[1])[0])
            scores["fused"] = float(self.config.fusion(scores["sface"], scores["dlib"]))
        return {**scores, "score": scores["fused" if self.config.fusion is not None else "sface"]}

    def passive_scores(self, frames: np.ndarray, faces: np.ndarray, index: Sequence[int] | None = None) -> np.ndarray:
        """Live probability per (frame, YuNet face), both MiniFASNet models, on crops made
        from the box mapped to the geometry the models were trained on (face k in
        frames[index[k]], frames[k] by default)."""
        boxes = self.config.pad_box_map.apply(faces)
        logits = {}
        for model, scale in pad.SCALES.items():
            matrices = pad.crop_transforms(boxes, tuple(frames.shape[1:3]), scale)
            crops = self.ops.crops(frames, _each(faces, index), matrices, pad.SIZE)
            logits[model] = self.run(model, self.ops.model_input(crops, pad.INPUT))["logits"]
        return pad.live_scores(logits)

    def face_mesh(self, frames: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FaceMesh on one face per frame -> (frame->crop matrices [N,2,3], points [N,468,3]
        in crop pixels, face probability [N])."""
        crop_matrices = landmarks.crop_transforms(faces)
        crops = self.ops.crops(frames, range(len(faces)), crop_matrices, landmarks.CROP)
        points, presence = landmarks.mesh_points(self.run("facemesh", self.ops.model_input(crops, landmarks.INPUT)))
        return crop_matrices, points, presence

    def face_geometry(self, frames: np.ndarray, faces: np.ndarray,
                      mesh: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FaceMesh (unless `mesh` holds its result for these faces) and the iris model on one
        face per frame -> (eye openness [N,2], angles [N,2], mouth openness [N])."""
        count = len(faces)
        crop_matrices, points, _ = mesh if mesh is not None else self.face_mesh(frames, faces)
        eye_matrices = landmarks.eye_transforms(points, crop_matrices)
        eyes = self.ops.crops(frames, [*range(count), *range(count)], eye_matrices, landmarks.EYE_CROP)
        openness = landmarks.eye_openness(self.run("iris_landmark", self.ops.model_input(eyes, landmarks.INPUT)))
        return openness, landmarks.head_angles(points), landmarks.mouth_openness(points)

    def track_video(self, frames, timings: Timings) -> tuple[Track, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """The subject through the clip: detected on key frames, followed between them by
        FaceMesh (see `stages.keyframes`), detected again where the mesh loses the face.
        Returns the track over every frame and the mesh of its present frames, in order."""
        cfg = self.config
        count, size = len(frames), cfg.video_detector_size
        keys = keyframes.key_indices(count, cfg.detect_every)
        with timings.stage("detect"):
            key_detections = self.detect(_take(frames, keys), size)
        with timings.stage("track"):
            sharpness = [self.face_sharpness(frames, k, faces) for k, faces in zip(keys, key_detections)]
            key_track = track_primary(key_detections, frames.shape[1:3], sharpness=sharpness)
            faces, present = keyframes.interpolate(keys, key_track.faces, key_track.present, count)
            if key_track.reason is not None:
                return Track(faces, present, key_track.reason), None
        with timings.stage("landmarks"):
            detected = np.zeros(count, bool)
            detected[keys[key_track.present]] = True
            kept = np.flatnonzero(present)
            matrices, points, presence = self.face_mesh(_take(frames, kept), faces[kept])
            follow = ~detected[kept]
            lost = kept[(presence < keyframes.PRESENT) & follow]
        if follow.any():  # with the detector on every frame (the default) nothing is followed
            with timings.stage("track"):
                key_mesh = keyframes.mesh_rows(keyframes.frame_points(points[~follow], matrices[~follow]))
                fit = keyframes.fit_to_detector(key_mesh, faces[kept[~follow]])
        if len(lost):
            with timings.stage("detect"):
                found = self.detect(frames[lost], size)
            with timings.stage("landmarks"):
                for i, candidates in zip(lost, found):
                    overlaps = iou(faces[i, :4], candidates[:, :4]) if len(candidates) else np.zeros(1)
                    best = int(np.argmax(overlaps))
                    present[i] = detected[i] = bool(overlaps[best] >= MIN_IOU)
                    if present[i]:
                        faces[i] = candidates[best]
                again = np.isin(kept, lost[present[lost]])
                if again.any():
                    matrices[again], points[again], presence[again] = self.face_mesh(frames[kept[again]], faces[kept[again]])
                still = present[kept]
                kept, matrices, points, presence = kept[still], matrices[still], points[still], presence[still]
        with timings.stage("track"):
            follow = ~detected[kept]
            if follow.any():
                raw = keyframes.mesh_rows(keyframes.frame_points(points[follow], matrices[follow]))
                faces[kept[follow]] = keyframes.apply_fit(raw, fit, presence[follow])
            reason = None if present.mean() >= MIN_COVERAGE else "face_lost"
        return Track(faces, present, reason), (matrices, points, presence)

    def analyse_video(self, video: Video, timings: Timings, mirrored: bool = False,
                      need_embeddings: bool = True, shown: light.Shown | None = None) -> VideoAnalysis:
        cfg = self.config
        frames = self.ops.prepare(video.frames)
        track, mesh = self.track_video(frames, timings)
        if track.reason is not None:
            return VideoAnalysis(track, video.timestamps, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), [],
                                 None, None, None)
        kept = np.flatnonzero(track.present)
        # Seconds after the start of recording, as the challenge's schedule counts them.
        times = video.timestamps[kept] - (video.timestamps[0] if len(video.timestamps) else 0.0)
        frames, faces = _take(frames, kept), track.faces[kept]
        with timings.stage("landmarks"):
            openness, angles, mouth = self.face_geometry(frames, faces, mesh)
        with timings.stage("active_liveness"):
            pose = landmarks.action_pose(mesh[1], faces)
            events = liveness.observe(openness, pose, mouth, times, cfg.liveness, mirrored)
        response = None
        if shown is not None:
            with timings.stage("light"):
                observed = light.observe(self.ops.to_host(frames), keyframes.frame_points(mesh[1], mesh[0]))
                response = light.respond(observed, times, shown)
        with timings.stage("quality"):
            aligned = self.aligned_crops(frames, faces)  # also what the embedder takes, below
            sharp = quality.sharpness(self.ops.to_host(aligned))
            score = quality.frame_quality(angles[:, 0], angles[:, 1], openness, sharp, float(np.median(angles[:, 1])))
            best = np.argsort(-score, kind="stable")[: cfg.match_frames]
        with timings.stage("passive_liveness"):
            chosen = quality.spread(len(kept), cfg.pad_frames)
            per_frame = self.passive_scores(frames, faces[chosen], chosen)
            passive = float(np.median(per_frame))
        embeddings, kept_together, second, sample, context = None, None, None, None, None
        if need_embeddings:
            with timings.stage("embed"):
                # The match frames join the continuity sample, so they are checked against
                # their neighbours: a few frames of someone else cannot carry the match.
                picked = np.union1d(quality.spread(len(kept), cfg.continuity_frames), best)
                vectors = self.embed_crops(aligned[picked])
                embeddings = vectors[np.searchsorted(picked, best)]
                if cfg.fusion is not None:
                    second = self.embed_second(frames, faces[best], best)
            with timings.stage("continuity"):
                sample = continuity.Sample(vectors, angles[picked], times[picked])
                kept_together = continuity.continuity(sample)
            with timings.stage("synthetic"):
                context = self.context_crops(frames, faces[picked], picked)
        return VideoAnalysis(track, times, openness, angles, mouth, events, passive,
                             None if kept_together is None else kept_together.score, embeddings, second, per_frame,
                             sample, context=context, pose=pose, light=response)

    def context_crops(self, images: Sequence[np.ndarray], faces: np.ndarray,
                      index: Sequence[int] | None = None) -> np.ndarray:
        """Luma context crops [N,S,S] of one face per image (face k in images[index[k]],
        images[k] by default), as the generated-face check compares them."""
        crops = self.ops.crops(images, _each(faces, index), synthetic.crop_transforms(faces), synthetic.SIZE)
        return synthetic.grey(self.ops.to_host(crops))

    def derived_score(self, image: np.ndarray, face: np.ndarray, analysis: VideoAnalysis) -> float | None:
        """How closely the clip reproduces this photo's face (the ID photo, or the still a
        labelled attack was made from): see stages/synthetic.py."""
        if analysis.context is None:
            return None
        return synthetic.derived_score(self.context_crops([image], face[None])[0], analysis.context)

    def verify(self, id_image: np.ndarray, video: Video, challenge: ChallengeSpec | None = None,
               timings: Timings | None = None, shown: light.Shown | None = None) -> dict:
        """The whole verification: is a live person in the video, and are they the person
        on the document? Without a challenge the active check is skipped (offline use); with
        `shown` (a live session's screen colours) the skin must have answered them.
        Returns the answer in the shape the API and CLI print."""
        timings = timings or Timings()
        with timings.stage("detect"):
            id_face = self.image_faces([id_image])[0]
        analysis = self.analyse_video(video, timings, challenge is not None and challenge.mirrored, shown=shown)
        match, derived = None, None
        if id_face.face is not None and analysis.embeddings is not None:
            with timings.stage("embed"):
                id_vectors = (self.embed([id_image], id_face.face[None])[0], None)
                template = (embed.normalise(analysis.embeddings.mean(0, keepdims=True))[0], None)
                if self.config.fusion is not None:
                    id_vectors = (id_vectors[0], self.embed_second([id_image], id_face.face[None])[0])
                    template = (template[0], analysis.second_embeddings.mean(0))
                match = self.match_scores(template, id_vectors)
            with timings.stage("synthetic"):
                derived = self.derived_score(id_image, id_face.face, analysis)
        return self._answer(analysis, video, challenge, timings, id_face.reason, match, derived, shown)

    def liveness(self, video: Video, challenge: ChallengeSpec | None = None, timings: Timings | None = None) -> dict:
        """Is a live person in the video? The verification without an ID photo."""
        timings = timings or Timings()
        analysis = self.analyse_video(video, timings, challenge is not None and challenge.mirrored)
        answer = self._answer(analysis, video, challenge, timings, None, None, None)
        answer.pop("match")
        return answer

    def _answer(self, analysis: VideoAnalysis, video: Video, challenge: ChallengeSpec | None,
                timings: Timings, id_problem: str | None, match: dict[str, float] | None,
                derived: float | None, shown: light.Shown | None = None) -> dict:
        cfg = self.config
        verdict = None
        if challenge is not None and analysis.track.reason is None:
            verdict = liveness.judge(challenge, analysis.events, float(video.duration_s))
        light_problem = None
        if shown is not None and analysis.track.reason is None:
            reading = analysis.light
            passed = (reading is not None and reading.score is not None and cfg.light_threshold is not None
                      and reading.score >= cfg.light_threshold)
            light_problem = None if passed else "light_mismatch"
        with timings.stage("decide"):
            decision, reasons = decide.decide(decide.Evidence(
                id_face_problem=id_problem,
                video_face_problem=analysis.track.reason,
                passive_score=analysis.passive_score,
                passive_threshold=cfg.pad_threshold,
                continuity=analysis.continuity,
                continuity_threshold=cfg.continuity_threshold,
                synthetic_score=derived,
                synthetic_threshold=cfg.synthetic_threshold,
                challenge_problem=None if verdict is None else verdict.reason,
                light_problem=light_problem,
                match_score=None if match is None else match["score"],
                match_threshold=cfg.match_threshold,
            ))
        liveness_answer = {
            "active": {
                "challenge": None if challenge is None else challenge.claims(),
                "observed": [vars(e) for e in analysis.events],
                "missing": [] if verdict is None else verdict.missing,
                "unrequested": [] if verdict is None else [vars(e) for e in verdict.unrequested],
                "reason": None if verdict is None else verdict.reason,
            },
            "passive": {"score": _round(analysis.passive_score), "threshold": cfg.pad_threshold},
            "continuity": {"score": _round(analysis.continuity), "threshold": cfg.continuity_threshold},
            "synthetic": {"score": _round(derived), "threshold": cfg.synthetic_threshold, "signal": "derived_from_id"},
        }
        if shown is not None:
            liveness_answer["light"] = {
                **shown.claims(), **(analysis.light or light.Response(None, None, None, 0)).claims(),
                "threshold": cfg.light_threshold, "reason": light_problem}
        return {
            "decision": decision,
            "reasons": reasons,
            "match": self._match_answer(match),
            "liveness": liveness_answer,
            "video": {
                "frames": int(len(video.frames)),
                "frames_with_face": int(analysis.track.present.sum()),
                "duration_s": round(float(video.duration_s), 3),
                "codec": video.codec,
            },
            "thresholds": self.thresholds(),
            "timings_ms": timings.ms,
        }

    def thresholds(self) -> dict:
        """Every threshold a video decision uses, for the answer and its receipt."""
        cfg = self.config
        return {"detection_score": cfg.detection_score, "match": cfg.match_threshold,
                "fusion": None if cfg.fusion is None else cfg.fusion.to_record(), "passive": cfg.pad_threshold,
                "continuity": cfg.continuity_threshold, "synthetic": cfg.synthetic_threshold,
                "liveness": asdict(cfg.liveness)}

    def compare(self, first: np.ndarray, second: np.ndarray) -> dict:
        """Photo against photo: the similarity of the two primary faces."""
        timings = Timings()
        with timings.stage("detect"):
            faces = self.image_faces([first, second])
        problems = [f"{which}_{f.reason}" for which, f in zip(("first", "second"), faces) if f.reason]
        scores = None
        if not problems:
            with timings.stage("embed"):
                images, found = [first, second], np.stack([f.face for f in faces])
                vectors = self.embed(images, found)
                seconds = self.embed_second(images, found) if self.config.fusion is not None else [None, None]
                scores = self.match_scores((vectors[0], seconds[0]), (vectors[1], seconds[1]))
        same = None if scores is None else scores["score"] >= self.config.match_threshold
        return {
            "decision": "retry" if problems else ("match" if same else "no_match"),
            "reasons": problems,
            "match": self._match_answer(scores),
            "thresholds": {k: v for k, v in self.thresholds().items() if k in ("detection_score", "match", "fusion")},
            "timings_ms": timings.ms,
        }

    def _match_answer(self, scores: dict[str, float] | None) -> dict:
        """`score` against `threshold` decides; `method` names that score, `scores` gives each
        embedder's own (SFace cosine, dlib minus Euclidean distance) and the fused one."""
        return {
            "score": None if scores is None else _round(scores["score"]),
            "threshold": self.config.match_threshold,
            "method": "fused" if self.config.fusion is not None else "sface",
            "scores": None if scores is None else {k: _round(v) for k, v in scores.items() if k != "score"},
        }


def _take(frames, index: np.ndarray):
    """frames[index], without copying the clip when the index is every frame in order (the
    detector on every frame, the face in all of them): a copy of a clip's frames is 46 MB at
    the default 56 frames of 640 x 427."""
    if len(index) == len(frames) and np.array_equal(index, np.arange(len(frames))):
        return frames
    return frames[index]


def _each(faces: np.ndarray, index: Sequence[int] | None) -> Sequence[int]:
    """The frame of each face: `index`, or face k in frame k."""
    return range(len(faces)) if index is None else [int(i) for i in index]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
