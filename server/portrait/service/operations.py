"""The judged endpoints as data: the parts each reads and the pipeline work it runs on a
worker thread. The engine gives every one of them the same path."""

from __future__ import annotations

import hashlib

import numpy as np

from portrait.media.clip import Video
from portrait.security.tokens import Challenge
from portrait.service.engine import Operation, Parts, Run


def _verify(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    image = run.image(parts.files["id_image"])
    video = run.video(parts.files["video"])
    return run.pipeline.verify(image, video, challenge.spec, timings=run.timings)


def _liveness(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    video = run.video(parts.files["video"])
    return run.pipeline.liveness(video, challenge.spec, timings=run.timings)


def _session_verify(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    """A live session's recording against the prompts and colours as it revealed them."""
    live = parts.session
    image = run.image(parts.files["id_image"])
    media = live.media()
    video = _until(run.video(media), live.stop_s)
    answer = run.pipeline.verify(image, video, live.challenge(), timings=run.timings, shown=live.shown())
    return {**answer, "session": {**live.claims(), "video_sha256": hashlib.sha256(media).hexdigest()}}


def _until(video: Video, stop_s: float | None) -> Video:
    """The recording up to the session's stop: the frames the recorder sent while the stop
    was on its way are not part of it."""
    if stop_s is None:
        return video
    keep = video.timestamps - (video.timestamps[0] if len(video.timestamps) else 0.0) <= stop_s
    if keep.all():
        return video
    frames = np.ascontiguousarray(video.frames[keep]) if keep.any() else video.frames[:1]
    return Video(frames, video.timestamps[keep] if keep.any() else video.timestamps[:1], video.fps, video.codec,
                 min(float(video.duration_s), stop_s), video.rotation)


def _compare(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    return run.pipeline.compare(run.image(parts.files["image_a"]), run.image(parts.files["image_b"]))


VERIFY = Operation("/v1/verifications", ("id_image", "video"), (), True, _verify)
LIVENESS = Operation("/v1/liveness", ("video",), (), True, _liveness)
SESSION_VERIFY = Operation("/v1/sessions/{session_id}/verifications", ("id_image",), (), False, _session_verify,
                           session=True)
COMPARE = Operation("/v1/compare", ("image_a", "image_b"), (), False, _compare)
