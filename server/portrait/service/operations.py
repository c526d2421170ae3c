"""The judged endpoints as data: the parts each reads and the pipeline work it runs on a
worker thread. The engine gives every one of them the same path."""

from __future__ import annotations

from portrait.security.tokens import Challenge
from portrait.service.engine import Operation, Parts, Run


def _verify(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    image = run.image(parts.files["id_image"])
    video = run.video(parts.files["video"])
    return run.pipeline.verify(image, video, challenge.spec, timings=run.timings)


def _liveness(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    video = run.video(parts.files["video"])
    return run.pipeline.liveness(video, challenge.spec, timings=run.timings)


def _compare(run: Run, parts: Parts, challenge: Challenge | None) -> dict:
    return run.pipeline.compare(run.image(parts.files["image_a"]), run.image(parts.files["image_b"]))


VERIFY = Operation("/v1/verifications", ("id_image", "video"), (), True, _verify)
LIVENESS = Operation("/v1/liveness", ("video",), (), True, _liveness)
COMPARE = Operation("/v1/compare", ("image_a", "image_b"), (), False, _compare)
