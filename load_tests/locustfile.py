"""Locust scenarios for the Portrait HTTP service.

    locust -f load_tests/locustfile.py --host http://127.0.0.1:8080

Users:
- CarrierUser (weight 3): a carrier's back end registering a number: POST /v1/challenges, then
  POST /v1/verifications with an ID photo and a selfie video. Pre-recorded media cannot follow
  a random challenge, so by default it names the challenge's actions itself (the server must run
  with PORTRAIT_CLIENT_ACTIONS_TENANTS naming its tenant); with LOCUST_ACTIONS="" it takes the server's random
  actions and most answers will be `retry` (still a full pipeline run).
- CompareUser (weight 1): POST /v1/compare with photo pairs from a pairs CSV.

Environment:
  LOCUST_API_KEY      API key (`Authorization: Bearer`); required
  LOCUST_ID_IMAGE     ID photo (default ../shared/testdata/images/compreface/001_A.jpg)
  LOCUST_VIDEO        selfie video (default ../shared/testdata/videos/liveportrait/d3.mp4)
  LOCUST_ACTIONS      comma-separated challenge actions (default "blink"); empty: server's choice
  LOCUST_MIRRORED     "true" when the video is mirrored (default "false")
  LOCUST_PAIRS        CSV with img_a,img_b columns relative to its folder (default ../shared/testdata/pairs.csv)
  LOCUST_PAIRS_LIMIT  pairs held in memory (default 64)
  LOCUST_ALLOW_REMOTE "1" to allow a --host that is not loopback (default: loopback only)
  PORTRAIT_TESTDATA   where the default media live (default ../shared/testdata from the project root)

Overload: a 429 or 503 is recorded as a failure named after its status and problem code
("429 rate_limited", "503 overloaded"), and that user then waits for the Retry-After the server
sent (at most 60 s) before its next request, as a well-behaved client would. Each verification's
decision is also recorded as a zero-time "decision" entry so the stats table counts outcomes.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
import os
import random
import uuid
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import gevent
from locust import HttpUser, between, events, task
from locust.exception import StopUser

log = logging.getLogger("portrait.locust")

PROJECT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("PORTRAIT_TESTDATA") or PROJECT.parent / "shared" / "testdata")
MAX_RETRY_AFTER_S = 60.0
TIMEOUT = (5, 120)  # connect, read: a verification may queue behind others under load
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm", ".mkv": "video/x-matroska"}


def loopback_only(host: str | None) -> str | None:
    """Why `host` may not be targeted, or None when it may: loopback unless LOCUST_ALLOW_REMOTE=1."""
    if os.environ.get("LOCUST_ALLOW_REMOTE") == "1":
        return None
    name = urlparse(host or "").hostname or ""
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return f"refusing to load-test {host!r}: only loopback hosts unless LOCUST_ALLOW_REMOTE=1"


@events.test_start.add_listener
def _check_host(environment, **_kwargs) -> None:
    problem = loopback_only(environment.host)
    if problem:
        log.error(problem)
        if environment.runner is not None:
            environment.runner.quit()


@lru_cache(maxsize=None)
def read_media(path: str) -> tuple[str, bytes, str]:
    """(file name, bytes, media type) of a file read once per process."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found (set LOCUST_ID_IMAGE / LOCUST_VIDEO / LOCUST_PAIRS "
                                f"or PORTRAIT_TESTDATA)")
    return file.name, file.read_bytes(), MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream")


@lru_cache(maxsize=1)
def compare_pairs() -> list[tuple[str, str]]:
    source = Path(os.environ.get("LOCUST_PAIRS") or TESTDATA / "pairs.csv")
    limit = int(os.environ.get("LOCUST_PAIRS_LIMIT", "64"))
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found (set LOCUST_PAIRS or PORTRAIT_TESTDATA)")
    with source.open(newline="") as handle:
        rows = [(row["img_a"], row["img_b"]) for row in csv.DictReader(handle)]
    random.Random(0).shuffle(rows)
    pairs = [(str(source.parent / a), str(source.parent / b)) for a, b in rows[:limit]]
    for a, b in pairs:  # read them now, so a missing file stops the user at once
        read_media(a), read_media(b)
    return pairs


def challenge_actions() -> list[str] | None:
    text = os.environ.get("LOCUST_ACTIONS", "blink")
    actions = [a.strip() for a in text.split(",") if a.strip()]
    return actions or None


class PortraitUser(HttpUser):
    abstract = True
    host = "http://127.0.0.1:8080"
    wait_time = between(1, 3)

    def on_start(self) -> None:
        problem = loopback_only(self.host)
        if problem:
            log.error(problem)
            raise StopUser()
        key = os.environ.get("LOCUST_API_KEY", "")
        if not key:
            log.error("set LOCUST_API_KEY to a key of the server's PORTRAIT_API_KEYS")
            raise StopUser()
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, path: str, **kwargs):
        headers = {**self.headers, "X-Request-ID": f"locust-{uuid.uuid4().hex}"}
        return self.client.post(path, name=path, headers=headers, timeout=TIMEOUT, catch_response=True, **kwargs)

    def accepted(self, response) -> bool:
        """True for a 200; otherwise mark the failure by status and problem code, and after a
        429 or 503 wait as long as Retry-After asks."""
        if response.status_code == 200:
            response.success()
            return True
        code = "no_problem_body"
        try:
            code = response.json().get("code", code)
        except ValueError:
            pass
        response.failure(f"{response.status_code} {code}")
        if response.status_code in (429, 503):
            try:
                delay = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                delay = 1.0
            gevent.sleep(min(max(delay, 0.0), MAX_RETRY_AFTER_S))
        elif code == "client_actions_disabled":
            log.error("the server chooses challenge actions: run it with PORTRAIT_CLIENT_ACTIONS_TENANTS naming this tenant, "
                      "or set LOCUST_ACTIONS= to take its random actions")
            raise StopUser()
        return False

    def record_decision(self, endpoint: str, answer: dict) -> None:
        decision = answer.get("decision", "missing")
        self.environment.events.request.fire(
            request_type="decision", name=f"{endpoint} {decision}", response_time=0, response_length=0,
            exception=None, context={})


class CarrierUser(PortraitUser):
    """A carrier's back end: a challenge, then a verification with its media."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        try:
            self.id_image = read_media(os.environ.get("LOCUST_ID_IMAGE")
                                       or str(TESTDATA / "images" / "compreface" / "001_A.jpg"))
            self.video = read_media(os.environ.get("LOCUST_VIDEO")
                                    or str(TESTDATA / "videos" / "liveportrait" / "d3.mp4"))
        except FileNotFoundError as error:
            log.error("%s", error)
            raise StopUser() from None
        self.actions = challenge_actions()
        self.mirrored = os.environ.get("LOCUST_MIRRORED", "false")

    @task
    def register_number(self) -> None:
        body = {"actions": self.actions} if self.actions else {}
        with self.post("/v1/challenges", json=body) as response:
            if not self.accepted(response):
                return
            token = response.json()["token"]
        files = {"id_image": self.id_image, "video": self.video}
        with self.post("/v1/verifications", files=files, data={"challenge": token, "mirrored": self.mirrored}) as response:
            if self.accepted(response):
                self.record_decision("/v1/verifications", response.json())


class CompareUser(PortraitUser):
    """Photo-to-photo comparison (a carrier re-checking a document photo)."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        try:
            self.pairs = compare_pairs()
        except (FileNotFoundError, KeyError) as error:
            log.error("compare pairs: %s", error)
            raise StopUser() from None

    @task
    def compare(self) -> None:
        first, second = random.choice(self.pairs)
        with self.post("/v1/compare", files={"image_a": read_media(first), "image_b": read_media(second)}) as response:
            self.accepted(response)
