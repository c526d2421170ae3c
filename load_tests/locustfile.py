"""Locust scenarios for the Portrait HTTP service.

    locust -f load_tests/locustfile.py --host http://127.0.0.1:8080 --headless -u 4 -t 60s

Users:
- CarrierUser (weight 3): a carrier's back end registering a number: POST /v1/challenges
  (saying whether its capture client mirrors), then POST /v1/verifications with the challenge
  token, an ID photo and a selfie video. Pre-recorded media cannot follow a random challenge, so
  by default it names the challenge's actions itself (the server must run with
  PORTRAIT_CLIENT_ACTIONS_TENANTS naming its tenant); with LOCUST_ACTIONS="" it takes the
  server's random actions and most answers will be `retry` (still a full pipeline run).
- CompareUser (weight 1): POST /v1/compare with photo pairs from a pairs CSV.

The default media are `portrait bench`'s standard workload, so the two measure the same work.

Environment:
  LOCUST_API_KEY      API key (`Authorization: Bearer`); required
  LOCUST_ID_IMAGE     ID photo (default: testdata images/compreface/004_A.jpg)
  LOCUST_VIDEO        selfie video (default: testdata videos/replay_pair/real.mp4)
  LOCUST_ACTIONS      comma-separated challenge actions (default "blink"); empty: server's choice
  LOCUST_MIRRORED     "true" when the capture client mirrors (default "false"); said when the
                      challenge is issued, never on the verification (the API refuses it there)
  LOCUST_WAIT_S       "MIN,MAX" seconds each user waits between tasks (default "1,3"; "0,0": back to back)
  LOCUST_PAIRS        CSV with img_a,img_b columns relative to its folder (default: testdata pairs.csv)
  LOCUST_PAIRS_LIMIT  pairs held in memory (default 64)
  LOCUST_ALLOW_REMOTE "1" to allow a --host that is not loopback (default: loopback only)
  PORTRAIT_TESTDATA   where the default media live (default ../shared/testdata from the project root)

Overload: a 429 or 503 is recorded as a failure named after its status and problem code
("429 rate_limited", "503 overloaded"), and that user then waits for the Retry-After the server
sent (at most 60 s), as a well-behaved client would. A verification refused before it was
judged (429, 503, 504) leaves its challenge unspent, so the user retries it with the same token.

Exit status: 0 when every failure is a documented overload answer (OVERLOAD) and at least one
request was answered; 1 otherwise (a 4xx, a 5xx, a connection error, an answer without a
decision, an exception in this file). The decisions seen are logged when the run stops.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
import os
import random
import uuid
from collections import Counter
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import gevent
from locust import HttpUser, between, events, task
from locust.exception import StopUser

log = logging.getLogger("portrait.locust")

PROJECT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("PORTRAIT_TESTDATA") or PROJECT.parent / "shared" / "testdata")
ID_IMAGE = "images/compreface/004_A.jpg"  # portrait bench's standard workload
VIDEO = "videos/replay_pair/real.mp4"
MAX_RETRY_AFTER_S = 60.0
VERIFY_TRIES = 3  # a verification refused before it was judged is sent again with its token
TIMEOUT = (5, 120)  # connect, read: a verification may queue behind others under load
DECISIONS = {"accept", "reject_mismatch", "reject_spoof", "retry"}
# The answers the README documents for a service at capacity: failures that are not faults.
OVERLOAD = ("429 rate_limited", "429 too_many_in_flight", "503 overloaded")
NOT_JUDGED = {429, 503, 504}  # refused before the challenge was spent
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm", ".mkv": "video/x-matroska"}

decisions: Counter[str] = Counter()  # of this process's users


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


def is_overload(error: object) -> bool:
    """True for a failure recorded for a documented overload answer (see `PortraitUser.answered`):
    the exception itself, or its repr where a distributed run's workers sent it as text."""
    text = error if isinstance(error, str) else str(error)
    return any(text == answer or f"'{answer}'" in text for answer in OVERLOAD)


@events.test_start.add_listener
def _check_host(environment, **_kwargs) -> None:
    problem = loopback_only(environment.host)
    if problem:
        log.error(problem)
        if environment.runner is not None:
            environment.runner.quit()


@events.test_stop.add_listener
def _log_decisions(environment, **_kwargs) -> None:
    log.info("decisions: %s", ", ".join(f"{k} {v}" for k, v in sorted(decisions.items())) or "none")


@events.quitting.add_listener
def _exit_status(environment, **_kwargs) -> None:
    """0 only when nothing but documented overload answers failed and something was answered."""
    stats = environment.stats
    faults = {str(e.error): e.occurrences for e in stats.errors.values() if not is_overload(e.error)}
    answered = stats.total.num_requests - stats.total.num_failures
    exceptions = environment.runner.exceptions if environment.runner is not None else {}
    if faults:
        log.error("failures other than overload answers: %s", faults)
    if exceptions:
        log.error("exceptions in the locustfile: %d", len(exceptions))
    if not answered:
        log.error("no request was answered")
    environment.process_exit_code = 1 if faults or exceptions or not answered else 0


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


def challenge_body() -> dict:
    """The POST /v1/challenges body: mirroring, and the actions when the load names them."""
    mirrored = os.environ.get("LOCUST_MIRRORED", "false").strip().lower() in ("1", "true", "yes")
    text = os.environ.get("LOCUST_ACTIONS", "blink")
    actions = [a.strip() for a in text.split(",") if a.strip()]
    return {"mirrored": mirrored, **({"actions": actions} if actions else {})}


def wait_range() -> tuple[float, float]:
    low, _, high = os.environ.get("LOCUST_WAIT_S", "1,3").partition(",")
    return float(low), float(high or low)


class PortraitUser(HttpUser):
    abstract = True
    host = "http://127.0.0.1:8080"
    wait_time = between(*wait_range())

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

    def answered(self, response) -> bool:
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


class CarrierUser(PortraitUser):
    """A carrier's back end: a challenge, then a verification with its media."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        try:
            self.id_image = read_media(os.environ.get("LOCUST_ID_IMAGE") or str(TESTDATA / ID_IMAGE))
            self.video = read_media(os.environ.get("LOCUST_VIDEO") or str(TESTDATA / VIDEO))
        except FileNotFoundError as error:
            log.error("%s", error)
            raise StopUser() from None
        self.challenge = challenge_body()

    @task
    def register_number(self) -> None:
        with self.post("/v1/challenges", json=self.challenge) as response:
            if not self.answered(response):
                return
            token = response.json()["token"]
        files = {"id_image": self.id_image, "video": self.video}
        for _ in range(VERIFY_TRIES):
            with self.post("/v1/verifications", files=files, data={"challenge": token}) as response:
                if response.status_code == 200:
                    decision = response.json().get("decision")
                    if decision not in DECISIONS:
                        response.failure(f"200 without a decision ({decision!r})")
                        return
                    response.success()
                    decisions[decision] += 1
                    return
                self.answered(response)
                if response.status_code not in NOT_JUDGED:
                    return


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
            self.answered(response)
