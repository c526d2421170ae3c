"""The OpenAPI document is the contract: Schemathesis, with every check and a bounded number
of examples, against the live service (uvicorn in a subprocess), must find nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from portrait.service.problems import CODES
from test_service import KEY_A, start_service, stop_service

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def contract_service(tmp_path_factory, model_repository):
    service = start_service(tmp_path_factory.mktemp("contract"), model_repository, {
        "PORTRAIT_RATE_LIMIT_PER_S": "1000", "PORTRAIT_RATE_LIMIT_BURST": "1000",
    })
    yield service
    stop_service(service)


def test_schemathesis_finds_no_failure(contract_service):
    pytest.importorskip("schemathesis", reason="the test extra is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
         f"{contract_service['url']}/openapi.json", "--checks", "all", "--max-examples", "25", "--workers", "1",
         "--seed", "1", "-H", f"Authorization: Bearer {KEY_A}", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600)
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    print(summary)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", summary).groups())
    assert generated == passed > 100
    assert "Tested: 10" in summary


def test_every_status_is_documented_with_its_codes(contract_service):
    spec = httpx.get(f"{contract_service['url']}/openapi.json").json()
    verifications = spec["paths"]["/v1/verifications"]["post"]
    for status in ("400", "401", "403", "409", "410", "413", "415", "422", "429", "503", "504"):
        schema = verifications["responses"][status]["content"]["application/problem+json"]["schema"]
        assert all(CODES[code][0] == int(status) for code in schema["properties"]["code"]["enum"])
    body = verifications["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["required"]) == {"id_image", "video", "challenge"}
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    codes_503 = verifications["responses"]["503"]["content"]["application/problem+json"]["schema"]
    assert set(codes_503["properties"]["code"]["enum"]) == {"overloaded", "backend_unavailable",
                                                            "nonce_store_unavailable"}
