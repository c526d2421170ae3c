"""The load test's scenarios against the real service: `portrait serve` (uvicorn) on a loopback
port, Locust headless in its own process (it monkey-patches the standard library), a few
seconds with two users. The locustfile's exit status is 0 only when every failure is a
documented overload answer and something was answered; its stats (`--json`, printed after the
users in flight at the time limit have finished) say what was sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_service import KEY_A, start_service, stop_service

LOCUSTFILE = Path(__file__).resolve().parents[1] / "load_tests" / "locustfile.py"


def test_a_short_headless_locust_run_has_no_failures_but_overload(tmp_path, model_repository, testdata):
    service = start_service(tmp_path, model_repository)
    try:
        env = {**os.environ, "LOCUST_API_KEY": KEY_A, "PORTRAIT_TESTDATA": str(testdata), "LOCUST_WAIT_S": "0,0"}
        run = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", service["url"], "--headless",
             "-u", "2", "-r", "2", "-t", "6s", "--stop-timeout", "60", "--only-summary", "--json"],
            env=env, capture_output=True, text=True, timeout=150)
    finally:
        stop_service(service)
    said = run.stderr[-3000:]
    assert run.returncode == 0, said
    answered = {row["name"]: row["num_requests"] - row["num_failures"] for row in json.loads(run.stdout)}
    assert answered.get("/v1/verifications", 0) >= 1 and answered.get("/v1/compare", 0) >= 1, answered
    assert "decisions: " in run.stderr and "decisions: none" not in run.stderr, said
