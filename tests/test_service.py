"""The real service: `portrait serve` (uvicorn) in a subprocess on a loopback port, real
media from the test data over HTTP, then /metrics, the logs and the temp folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import pytest

from portrait.backends import runtime_table
from portrait.bench import wait_ready
from portrait.challenge import DRAWN_ACTIONS, TAIL_S, WINDOW_S, ChallengeSpec
from portrait.security.receipts import ReceiptSigner, generate_key, verify_receipt
from portrait.security.tokens import ChallengeSigner

from conftest import frame_id_record, free_port

KEY_A = "carrier-a-key-0123456789abcdef"
KEY_B = "carrier-b-key-0123456789abcdef"
KEY_C = "carrier-c-key-0123456789abcdef"
SECRET = "test-challenge-secret-0123456789abcdef0123"
MAX_UPLOAD = 12 * 1024 * 1024
BLINK_AT_1S = ChallengeSpec.timed(["blink"], [1.0])


def start_service(tmp: Path, repository: Path, extra_env: dict[str, str] | None = None,
                  args: tuple[str, ...] = ()) -> dict:
    port = free_port()
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir()
    key_file = tmp / "receipt.pem"
    key_file.write_bytes(generate_key())
    log_path = tmp / "service.log"
    env = {
        **os.environ,
        "PORTRAIT_MODEL_REPOSITORY": str(repository),
        "PORTRAIT_PORT": str(port),
        "PORTRAIT_API_KEYS": f"carrier-a:{KEY_A},carrier-b:{KEY_B},carrier-c:{KEY_C}",
        "PORTRAIT_CHALLENGE_SECRET": SECRET,
        "PORTRAIT_CLIENT_ACTIONS_TENANTS": "carrier-a,carrier-b,carrier-c", "PORTRAIT_FULL_ANSWER_TENANTS": "carrier-a,carrier-b",
        "PORTRAIT_MIRRORED_TENANTS": "carrier-b",
        "PORTRAIT_RECEIPT_KEY_FILE": str(key_file),
        "PORTRAIT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "PORTRAIT_BATCH_MAX_DELAY_MS": "20",
        # The ID stand-ins are frames of the clips themselves (conftest.frame_id_record).
        "PORTRAIT_CALIBRATION": str(frame_id_record(tmp)),
        "TMPDIR": str(tmpdir),
        **(extra_env or {}),
    }
    log = open(log_path, "wb")
    if "--port" in args:
        port = int(args[args.index("--port") + 1])
    process = subprocess.Popen([sys.executable, "-m", "portrait.cli", "serve", *args], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s=120)
    except RuntimeError as error:
        process.kill()
        raise AssertionError(f"{error}: " + log_path.read_text()[-2000:]) from None
    # ONNX Runtime leaves a session-id file (.ses) in the temp folder at import; what must
    # not appear is anything created while serving requests.
    at_start = sorted(p.name for p in tmpdir.iterdir())
    return {"process": process, "url": url, "tmpdir": tmpdir, "tmp_at_start": at_start, "log": log_path,
            "key_file": key_file}


def stop_service(service: dict) -> int:
    service["process"].send_signal(signal.SIGTERM)
    return service["process"].wait(timeout=120)


@pytest.fixture(scope="module")
def service(tmp_path_factory, model_repository, testdata):
    running = start_service(tmp_path_factory.mktemp("service"), model_repository)
    yield running
    if running["process"].poll() is None:
        stop_service(running)


def _auth(key=KEY_A):
    return {"Authorization": f"Bearer {key}"}


def _challenge(service, actions, schedule=None, key=KEY_A):
    body = {"actions": actions} if schedule is None else {"actions": actions, "schedule": schedule}
    response = httpx.post(f"{service['url']}/v1/challenges", json=body, headers=_auth(key))
    assert response.status_code == 200, response.text
    return response.json()["token"]


# What d18 does, as the pipeline sees it: opens its mouth wide at ~2.2 s, blinks at ~3.2 s
# (mid-yawn) and opens its mouth again at ~4.1 s; nothing else. A challenge whose prompts
# came just before each is answered exactly.
# d18 (7.2 s) opens its mouth wide at ~2.1 s and ~3.9 s and blinks at ~3.1 s and ~6.2 s.
D18 = (["open_mouth", "blink", "open_mouth", "blink"], [1.8, 2.8, 3.7, 4.2])


def _d18_challenge(service, key=KEY_A):
    return _challenge(service, *D18, key=key)


@pytest.fixture(scope="module")
def media(testdata):
    """In memory only: a JPEG of the d12 subject (the ID stand-in) and the clips' bytes."""
    import av

    with av.open(str(testdata / "videos/liveportrait/d12.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    ok, jpeg = cv2.imencode(".jpg", frame)
    with av.open(str(testdata / "videos/liveportrait/d18.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    ok, jpeg_d18 = cv2.imencode(".jpg", frame)
    return {
        "id_d18": jpeg_d18.tobytes(),
        "d18": (testdata / "videos/liveportrait/d18.mp4").read_bytes(),
        "id_d12": jpeg.tobytes(),
        "d12": (testdata / "videos/liveportrait/d12.mp4").read_bytes(),
        "fake": (testdata / "videos/replay_pair/fake.mp4").read_bytes(),
        "obama": (testdata / "images/face_recognition/examples/obama.jpg").read_bytes(),
        "obama2": (testdata / "images/face_recognition/examples/obama2.jpg").read_bytes(),
        "biden": (testdata / "images/face_recognition/examples/biden.jpg").read_bytes(),
    }


def _verify(service, token, id_image, video, key=KEY_A, timeout=120):
    files = {"id_image": ("id.jpg", id_image, "image/jpeg"), "video": ("v.mp4", video, "video/mp4")}
    return httpx.post(f"{service['url']}/v1/verifications", data={"challenge": token}, files=files,
                      headers=_auth(key), timeout=timeout)


def test_health_readiness_and_openapi(service):
    assert httpx.get(f"{service['url']}/healthz").json() == {"status": "ok", "detail": None}
    assert httpx.get(f"{service['url']}/readyz").status_code == 200
    spec = httpx.get(f"{service['url']}/openapi.json").json()
    assert {"/v1/challenges", "/v1/verifications", "/v1/compare", "/v1/liveness"} <= set(spec["paths"])


def test_the_start_log_and_metrics_name_each_models_runtime(service):
    lines = [json.loads(line) for line in service["log"].read_text().splitlines() if line.startswith("{")]
    said = [line for line in lines if line.get("msg") == "model runtimes"]
    assert len(said) == 1 and said[0]["backend"] == "embedded", said
    assert said[0]["runtimes"] == runtime_table("auto")
    assert "openvino" in said[0]["runtimes"].values()  # the fast runtime comes with the default install
    metrics = httpx.get(f"{service['url']}/metrics").text
    for model, runtime in said[0]["runtimes"].items():
        assert re.search(rf'^portrait_model_info{{name="{model}",runtime="{runtime}",', metrics, re.M), model


def test_challenge_then_verification_accepts_the_live_subject(service, media):
    token = _d18_challenge(service)
    response = _verify(service, token, media["id_d18"], media["d18"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["decision"] == "accept", answer["reasons"]
    active = answer["liveness"]["active"]
    assert active["missing"] == [] and active["unrequested"] == [] and active["reason"] is None
    assert answer["match"]["score"] > answer["match"]["threshold"]
    assert {m["name"] for m in answer["models"]} >= {"yunet", "facemesh", "iris_landmark", "sface"}
    public = ReceiptSigner(service["key_file"].read_bytes()).public_key_pem()
    claims = verify_receipt(answer["receipt"], public)
    assert claims["decision"] == "accept" and claims["tenant"] == "carrier-a"
    assert claims["inputs"]["video_sha256"] == __import__("hashlib").sha256(media["d18"]).hexdigest()
    # What was asked, what was seen, every threshold and every model's digest.
    assert claims["challenge"] == {"actions": D18[0], "schedule": D18[1], "window_s": list(WINDOW_S),
                                   "record_s": round(D18[1][-1] + WINDOW_S[1] + TAIL_S, 3), "mirrored": False,
                                   "client_named": True}
    assert [e["action"] for e in claims["events"]] == ["open_mouth", "blink", "open_mouth", "blink"]
    assert all(set(e) == {"action", "start_s", "end_s"} for e in claims["events"])
    assert {"match", "passive", "continuity", "detection_score", "liveness"} <= set(claims["thresholds"])
    assert claims["thresholds"]["liveness"]["mouth"]["enter"] > 0
    assert all(len(m["sha256"]) == 64 for m in claims["models"])


def test_replay_video_is_a_spoof(service, media):
    token = _challenge(service, ["blink"])
    answer = _verify(service, token, media["obama"], media["fake"]).json()
    assert answer["decision"] == "reject_spoof"


def test_an_unrequested_head_move_is_refused(service, media):
    """d12 turns left (~1.5 s) and right (~3.2 s) as asked, then opens its mouth and turns
    left again: not asked for."""
    token = _challenge(service, ["turn_left", "turn_right"], [1.0, 2.8])
    answer = _verify(service, token, media["id_d12"], media["d12"]).json()
    assert answer["decision"] == "retry" and answer["reasons"] == ["unrequested_action"]
    assert "open_mouth" in {e["action"] for e in answer["liveness"]["active"]["unrequested"]}


def test_the_right_actions_at_the_wrong_times_are_refused(service, media):
    token = _challenge(service, D18[0], [3.0, 4.0, 5.0, 5.5])  # the mouth opened before its prompt
    answer = _verify(service, token, media["id_d18"], media["d18"]).json()
    assert answer["decision"] == "retry" and answer["reasons"] == ["action_out_of_window"]


def test_a_challenge_carries_its_schedule_and_mirroring(service):
    drawn = httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth()).json()
    assert set(drawn) == {"token", "actions", "schedule", "window_s", "record_s", "mirrored", "client_named",
                          "expires_at"}
    assert drawn["client_named"] is False
    assert len(drawn["actions"]) == DRAWN_ACTIONS and len(drawn["schedule"]) == len(drawn["actions"])
    assert all(a != b for a, b in zip(drawn["actions"], drawn["actions"][1:])) and "blink" not in drawn["actions"]
    assert drawn["schedule"] == sorted(drawn["schedule"]) and drawn["window_s"] == list(WINDOW_S)
    assert drawn["record_s"] == round(drawn["schedule"][-1] + WINDOW_S[1] + TAIL_S, 3) and drawn["mirrored"] is False
    tenant_b = httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth(KEY_B)).json()
    assert tenant_b["mirrored"] is True  # PORTRAIT_MIRRORED_TENANTS
    said = httpx.post(f"{service['url']}/v1/challenges", json={"mirrored": True}, headers=_auth()).json()
    assert said["mirrored"] is True
    named = httpx.post(f"{service['url']}/v1/challenges", json={"actions": ["blink", "turn_left"]},
                       headers=_auth()).json()
    assert named["actions"] == ["blink", "turn_left"] and len(named["schedule"]) == 2  # drawn by the server
    assert named["client_named"] is True
    for body in ({"actions": ["blink"], "schedule": [2.0, 1.0]}, {"actions": ["blink"], "schedule": [60.0]},
                 {"schedule": [1.0]}, {"actions": ["blink", "blink"]}):
        refused = httpx.post(f"{service['url']}/v1/challenges", json=body, headers=_auth())
        assert refused.status_code == 422 and refused.json()["code"] in ("invalid_schedule", "invalid_actions"), body


def test_a_request_cannot_set_mirrored(service, media):
    """Mirroring is signed into the token; saying it on the request is refused, whatever
    the value, and does not spend the challenge."""
    token = _d18_challenge(service)
    for value in ("true", "false"):
        files = {"id_image": ("id.jpg", media["id_d18"], "image/jpeg"), "video": ("v.mp4", media["d18"], "video/mp4")}
        refused = httpx.post(f"{service['url']}/v1/verifications", data={"challenge": token, "mirrored": value},
                             files=files, headers=_auth(), timeout=120)
        assert refused.status_code == 422 and refused.json()["code"] == "mirrored_not_accepted"
        live = httpx.post(f"{service['url']}/v1/liveness", data={"challenge": token, "mirrored": value},
                          files={"video": ("v.mp4", media["d18"], "video/mp4")}, headers=_auth(), timeout=120)
        assert live.status_code == 422 and live.json()["code"] == "mirrored_not_accepted"
    answer = _verify(service, token, media["id_d18"], media["d18"]).json()
    assert answer["decision"] == "accept" and answer["liveness"]["active"]["challenge"]["mirrored"] is False
    # The same clip under a challenge issued as mirrored: the token says so, and it is applied.
    mirrored = httpx.post(f"{service['url']}/v1/challenges", json={"actions": D18[0], "schedule": D18[1],
                                                                   "mirrored": True}, headers=_auth()).json()
    answer = _verify(service, mirrored["token"], media["id_d18"], media["d18"]).json()
    assert answer["liveness"]["active"]["challenge"]["mirrored"] is True


def test_compare_and_liveness_building_blocks(service, media):
    files = {"image_a": ("a.jpg", media["obama"], "image/jpeg"), "image_b": ("b.jpg", media["obama2"], "image/jpeg")}
    assert httpx.post(f"{service['url']}/v1/compare", files=files, headers=_auth(), timeout=60).json()["decision"] == "match"
    token = _d18_challenge(service)
    live = httpx.post(f"{service['url']}/v1/liveness", data={"challenge": token},
                      files={"video": ("v.mp4", media["d18"], "video/mp4")}, headers=_auth(), timeout=120)
    assert live.status_code == 200 and live.json()["decision"] == "accept"


def _metric_sum(text: str, name: str, label: str = "") -> float:
    pattern = rf"^{name}{{[^}}]*{label}[^}}]*}} ([0-9.e+]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_concurrent_requests_share_model_batches(service, media):
    def one(_):
        files = {"image_a": ("a.jpg", media["obama"], "image/jpeg"), "image_b": ("b.jpg", media["biden"], "image/jpeg")}
        return httpx.post(f"{service['url']}/v1/compare", files=files, headers=_auth(KEY_B), timeout=120).status_code

    before = httpx.get(f"{service['url']}/metrics").text
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(16))) == {200}
    after = httpx.get(f"{service['url']}/metrics").text
    calls = _metric_sum(after, "portrait_batch_requests_count", 'model="sface"') - _metric_sum(
        before, "portrait_batch_requests_count", 'model="sface"')
    callers = _metric_sum(after, "portrait_batch_requests_sum", 'model="sface"') - _metric_sum(
        before, "portrait_batch_requests_sum", 'model="sface"')
    assert callers == 16 and calls < callers, f"{callers} callers in {calls} calls: no cross-request batching"
    assert _metric_sum(after, "portrait_request_duration_seconds_count", 'endpoint="/v1/compare"') >= 16
    assert 'portrait_model_info{' in after and "portrait_decisions_total" in after


def test_wrong_or_missing_key_is_401(service):
    for headers in ({}, _auth("not-a-real-key-0123456789"), {"Authorization": "Basic abc"}):
        response = httpx.post(f"{service['url']}/v1/challenges", json={}, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "invalid_api_key"


def test_token_of_another_tenant_is_403(service, media):
    token = _challenge(service, ["blink"], key=KEY_B)
    response = _verify(service, token, media["obama"], media["fake"])
    assert response.status_code == 403 and response.json()["code"] == "wrong_tenant"


def test_replayed_token_is_409(service, media):
    token = _challenge(service, ["blink"])
    assert _verify(service, token, media["obama"], media["fake"]).status_code == 200
    again = _verify(service, token, media["obama"], media["fake"])
    assert again.status_code == 409 and again.json()["code"] == "replayed_challenge"


def test_concurrent_requests_with_one_token_are_judged_once(service, media):
    """The claim is atomic: of requests racing with one token, exactly one is judged."""
    token = _challenge(service, ["blink"])
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: _verify(service, token, media["obama"], media["fake"]), range(4)))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]


def test_expired_and_forged_tokens(service, media):
    expired = ChallengeSigner(SECRET, ttl_s=1, clock=lambda: time.time() - 3600).issue(
        "carrier-a", BLINK_AT_1S, epoch="any").token
    response = _verify(service, expired, media["obama"], media["fake"])
    assert response.status_code == 410 and response.json()["code"] == "expired_challenge"
    forged = ChallengeSigner("another-secret-0123456789abcdef-0123456").issue(
        "carrier-a", BLINK_AT_1S, epoch="any").token
    assert _verify(service, forged, media["obama"], media["fake"]).json()["code"] == "forged_challenge"
    assert _verify(service, "garbage", media["obama"], media["fake"]).json()["code"] == "malformed_challenge"


def test_oversized_upload_is_413(service, media):
    token = _challenge(service, ["blink"])
    response = _verify(service, token, media["obama"], b"\0" * (MAX_UPLOAD + 1))
    assert response.status_code == 413 and response.json()["code"] == "upload_too_large"


@pytest.mark.parametrize("video,status,code", [
    (b"this is not a video at all", 415, "unsupported_media_type"),
    ("truncated", 422, "corrupt_media"),
])
def test_unsupported_or_corrupt_media(service, media, video, status, code):
    if video == "truncated":
        video = media["d12"][: len(media["d12"]) // 3]
    token = _challenge(service, ["blink"])
    response = _verify(service, token, media["obama"], video)
    assert (response.status_code, response.json()["code"]) == (status, code)


def test_not_an_image_is_a_clear_4xx(service, media):
    token = _challenge(service, ["blink"])
    response = _verify(service, token, b"GIF89a-not-really", media["d12"])
    assert 400 <= response.status_code < 500 and response.json()["code"] in ("unsupported_media_type", "corrupt_media")


def test_missing_field_and_wrong_content_type(service, media):
    response = httpx.post(f"{service['url']}/v1/verifications", json={"x": 1}, headers=_auth())
    assert response.status_code == 415
    token = _challenge(service, ["blink"])
    response = httpx.post(f"{service['url']}/v1/verifications", data={"challenge": token},
                          files={"video": ("v.mp4", media["d12"], "video/mp4")}, headers=_auth())
    assert response.status_code == 422 and response.json()["code"] == "missing_field"


def test_repeated_multipart_field_is_refused(service, media):
    token = _challenge(service, ["blink"])
    response = httpx.post(f"{service['url']}/v1/verifications", headers=_auth(), timeout=60, files=[
        ("challenge", (None, token)), ("challenge", (None, token)),
        ("id_image", ("id.jpg", media["obama"], "image/jpeg")), ("video", ("v.mp4", media["fake"], "video/mp4"))])
    assert response.status_code == 422 and response.json()["code"] == "duplicate_field"
    files = {"image_a": ("a.jpg", media["obama"], "image/jpeg"), "image_b": ("b.jpg", media["biden"], "image/jpeg")}
    twice = httpx.post(f"{service['url']}/v1/compare", headers=_auth(), timeout=60,
                       files=[("image_a", files["image_a"]), *files.items()])
    assert twice.status_code == 422 and twice.json()["code"] == "duplicate_field"
    # the token was not spent by the refused request
    assert _verify(service, token, media["obama"], media["fake"]).status_code == 200


def test_declared_size_is_refused_before_the_body_is_read(service):
    """413 on Content-Length alone: the client sends headers and no body, and is answered."""
    import socket

    host, port = service["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /v1/compare HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
                      f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {MAX_UPLOAD + 1}\r\n\r\n").encode())
        answer = b""
        while b"upload_too_large" not in answer:  # headers and body may come in separate packets
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"upload_too_large" in answer


def test_metric_labels_cannot_be_inflated(service):
    for method in ("FOOBAR", "BREW", "X-ANYTHING"):
        assert httpx.request(method, f"{service['url']}/v1/compare", headers=_auth()).status_code == 405
    assert httpx.get(f"{service['url']}/no/such/path/123").json()["code"] == "not_found"
    metrics = httpx.get(f"{service['url']}/metrics").text
    methods = set(re.findall(r'^portrait_request_duration_seconds_count{[^}]*method="([^"]*)"', metrics, re.MULTILINE))
    endpoints = set(re.findall(r'^portrait_request_duration_seconds_count{endpoint="([^"]*)"', metrics, re.MULTILINE))
    assert "other" in methods and not methods & {"FOOBAR", "BREW", "X-ANYTHING"}
    assert "/no/such/path/123" not in endpoints and "unmatched" in endpoints


def test_no_temp_files_and_no_keys_in_logs(service):
    """Runs last in this module: after every request above."""
    assert sorted(p.name for p in service["tmpdir"].iterdir()) == service["tmp_at_start"]
    logs = service["log"].read_text()
    assert KEY_A not in logs and KEY_B not in logs and SECRET not in logs
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(line.get("msg") == "decision" for line in lines)
    assert all(line["request_id"] for line in lines if line.get("msg") == "request")


def test_receipt_verify_command(service, media, tmp_path):
    token = _challenge(service, ["blink"])
    receipt = _verify(service, token, media["obama"], media["fake"]).json()["receipt"]
    env = {**os.environ, "PORTRAIT_RECEIPT_KEY_FILE": str(service["key_file"])}
    public = subprocess.run([sys.executable, "-m", "portrait.cli", "receipt", "public-key"], env=env,
                            capture_output=True, check=True).stdout
    (tmp_path / "public.pem").write_bytes(public)
    ok = subprocess.run([sys.executable, "-m", "portrait.cli", "receipt", "verify", receipt, "--public-key",
                         str(tmp_path / "public.pem")], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["claims"]["decision"] == "reject_spoof"
    printed = json.loads(ok.stdout)["claims"]
    assert printed["challenge"]["actions"] == ["blink"] and printed["challenge"]["mirrored"] is False
    assert "events" in printed and printed["thresholds"]["passive"] > 0 and printed["models"]
    head, payload, signature = receipt.split(".")
    tampered = ".".join([head, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1], signature])
    bad = subprocess.run([sys.executable, "-m", "portrait.cli", "receipt", "verify", tampered, "--public-key",
                          str(tmp_path / "public.pem")], capture_output=True, text=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["valid"] is False


def test_graceful_shutdown_finishes_in_flight_work(tmp_path, model_repository, media):
    service = start_service(tmp_path, model_repository)
    token = _d18_challenge(service)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_verify, service, token, media["id_d18"], media["d18"])
        time.sleep(1.0)  # the request is in progress
        service["process"].send_signal(signal.SIGTERM)
        response = pending.result(timeout=120)
    assert response.status_code == 200 and response.json()["decision"] == "accept"
    assert service["process"].wait(timeout=120) == 0  # a drain is the normal end, not death by SIGTERM
    lines = [json.loads(line) for line in service["log"].read_text().splitlines() if line.startswith("{")]
    drain = next(line for line in lines if line["msg"] == "drain started")
    assert drain["signal"] == "SIGTERM" and drain["admitted"] == 1 and drain["level"] == "info"
    assert lines.index(drain) < next(i for i, line in enumerate(lines) if line["msg"] == "Application shutdown complete.")


@pytest.fixture(scope="module")
def triton_service(tmp_path_factory, model_repository):
    pytest.importorskip("pytriton", reason="the Triton extra is not installed")
    from portrait.triton.server import TritonServer

    triton = TritonServer(model_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    triton.start(timeout_s=180)
    running = start_service(tmp_path_factory.mktemp("triton-service"), model_repository,
                            {"PORTRAIT_BACKEND": "triton", "PORTRAIT_TRITON_URL": triton.urls()["grpc"]})
    yield {**running, "triton": triton}
    if running["process"].poll() is None:
        stop_service(running)
    triton.stop()


def test_verification_through_a_real_triton_server(triton_service, media):
    token = _d18_challenge(triton_service)
    answer = _verify(triton_service, token, media["id_d18"], media["d18"]).json()
    assert answer["decision"] == "accept", answer["reasons"]
    token = _challenge(triton_service, ["blink"])
    assert _verify(triton_service, token, media["obama"], media["fake"]).json()["decision"] == "reject_spoof"
    metrics = httpx.get(f"{triton_service['url']}/metrics").text
    assert "portrait_backend_up 1.0" in metrics


def test_readiness_follows_triton(triton_service, media):
    assert httpx.get(f"{triton_service['url']}/readyz").status_code == 200
    triton_service["triton"].stop()
    deadline = time.monotonic() + 30
    while httpx.get(f"{triton_service['url']}/readyz").status_code != 503:
        assert time.monotonic() < deadline, "readiness did not follow Triton going away"
        time.sleep(0.5)
    assert httpx.get(f"{triton_service['url']}/healthz").status_code == 200  # the process is still up
    token = _challenge(triton_service, ["blink"])
    response = _verify(triton_service, token, media["obama"], media["fake"])
    assert response.status_code == 503 and response.json()["code"] == "backend_unavailable"
    assert "Retry-After" in response.headers


def _in_flight(service) -> float:
    text = httpx.get(f"{service['url']}/metrics").text
    return float(re.search(r"^portrait_in_flight_requests ([0-9.e+]+)$", text, re.MULTILINE).group(1))


def test_overload_is_503_and_a_retry_with_the_same_token_is_answered(tmp_path, model_repository, media):
    """One worker and one waiting place, taken by two tenants: a third tenant's verification
    is refused before it is judged (503 + Retry-After), a second request of a busy tenant hits
    its cap (429), and the refused token is still good for the retry."""
    service = start_service(tmp_path, model_repository, {
        "PORTRAIT_WORKERS": "1", "PORTRAIT_MAX_WAITING": "1", "PORTRAIT_MAX_IN_FLIGHT_PER_TENANT": "1"})
    try:
        token = _challenge(service, ["blink"], key=KEY_C)
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(_verify, service, _challenge(service, ["turn_left"], key=key), media["id_d12"], media["d12"],
                                key) for key in (KEY_A, KEY_B)]
            deadline = time.monotonic() + 30
            while _in_flight(service) < 3:  # both verifications and this /metrics call
                assert time.monotonic() < deadline, "the two verifications never got in"
                time.sleep(0.05)
            time.sleep(0.3)  # past admission (it follows authentication at once)
            refused = _verify(service, token, media["obama"], media["fake"], key=KEY_C)
            capped = _verify(service, _challenge(service, ["blink"]), media["obama"], media["fake"], key=KEY_A)
            assert all(f.result().status_code == 200 for f in busy)
        assert refused.status_code == 503 and refused.json()["code"] == "overloaded", refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert capped.status_code == 429 and capped.json()["code"] == "too_many_in_flight"
        time.sleep(int(refused.headers["Retry-After"]))
        again = _verify(service, token, media["obama"], media["fake"], key=KEY_C)
        assert again.status_code == 200 and again.json()["decision"] == "reject_spoof", again.text
        metrics = httpx.get(f"{service['url']}/metrics").text
        assert 'portrait_rejected_requests_total{reason="overloaded"}' in metrics
        assert 'portrait_rejected_requests_total{reason="too_many_in_flight"}' in metrics
    finally:
        stop_service(service)


def test_a_client_that_disconnects_stops_costing_work(service, media):
    def dropped(text):
        return _metric_sum(text, "portrait_batch_dropped_total", 'reason="cancelled"') + _metric_sum(
            text, "portrait_batch_dropped_total", 'reason="deadline"')

    before = httpx.get(f"{service['url']}/metrics").text
    token = _d18_challenge(service)
    with pytest.raises(httpx.TimeoutException):
        _verify(service, token, media["id_d18"], media["d18"], timeout=0.8)  # the client gives up
    deadline = time.monotonic() + 60
    while True:
        after = httpx.get(f"{service['url']}/metrics").text
        closed = _metric_sum(after, "portrait_request_duration_seconds_count", 'status="499"')
        if closed >= 1 and dropped(after) > dropped(before):
            break
        assert time.monotonic() < deadline, "the abandoned request was neither seen as closed nor dropped"
        time.sleep(0.5)
    assert httpx.get(f"{service['url']}/readyz").status_code == 200
    # The abandoned request was never judged: its challenge was given back, and is good once.
    retry = _verify(service, token, media["id_d18"], media["d18"])
    assert retry.status_code == 200 and retry.json()["decision"] == "accept", retry.text
    assert _verify(service, token, media["id_d18"], media["d18"]).json()["code"] == "replayed_challenge"


def test_rate_limit_is_429_with_retry_after(tmp_path, model_repository):
    service = start_service(tmp_path, model_repository,
                            {"PORTRAIT_RATE_LIMIT_PER_S": "0.5", "PORTRAIT_RATE_LIMIT_BURST": "2"})
    try:
        codes = [httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth()).status_code for _ in range(3)]
        assert codes[:2] == [200, 200] and codes[2] == 429
        limited = httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth())
        assert limited.json()["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
        other = httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth(KEY_B))
        assert other.status_code == 200  # limits are per tenant
    finally:
        stop_service(service)


@pytest.fixture
def redis_url(tmp_path):
    import shutil

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


def test_two_replicas_share_single_use_challenges_through_redis(tmp_path, model_repository, redis_url, media):
    """A token issued by one replica is good on the other once, and never twice."""
    shared = {"PORTRAIT_REDIS_URL": redis_url}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_service(tmp_path / "a", model_repository, shared)
    second = start_service(tmp_path / "b", model_repository, shared)
    try:
        token = _challenge(first, ["blink"])
        assert _verify(second, token, media["obama"], media["fake"]).status_code == 200
        replay = _verify(first, token, media["obama"], media["fake"])
        assert replay.status_code == 409 and replay.json()["code"] == "replayed_challenge"
    finally:
        stop_service(first)
        stop_service(second)


def _redis_pid(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return client.info()["process_id"]
    finally:
        client.close()


def test_a_redis_that_stops_answering_leaves_healthz_fast_and_readyz_503(tmp_path, model_repository, redis_url, media):
    """Failure injection on the real Redis: SIGSTOP keeps its socket open and silent (a
    brownout). With a 3 s limit on each Redis call, anything waiting on Redis on the event
    loop would hold /healthz for seconds; it must stay at milliseconds, while /readyz turns
    503 and a verification is refused before it is judged, its token still good for the
    retry once Redis answers again."""
    service = start_service(tmp_path, model_repository, {"PORTRAIT_REDIS_URL": redis_url,
                                                         "PORTRAIT_REDIS_TIMEOUT_S": "3"})
    pid = _redis_pid(redis_url)
    client = httpx.Client(base_url=service["url"], timeout=30)

    def timed(path: str) -> tuple[int, float]:
        started = time.perf_counter()
        status = client.get(path).status_code
        return status, time.perf_counter() - started

    try:
        assert client.get("/readyz").status_code == 200
        baseline = [timed("/healthz")[1] for _ in range(20)]
        token = _challenge(service, ["blink"])
        os.kill(pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(2) as pool:
                pending = pool.submit(_verify, service, token, media["obama"], media["fake"])
                ready = pool.submit(timed, "/readyz")
                health = []
                while not pending.done() and len(health) < 200:
                    health.append(timed("/healthz"))
                    time.sleep(0.02)
                refused = pending.result(timeout=60)
                ready_status, ready_s = ready.result(timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        seconds = sorted(s for _, s in health)
        print(f"/healthz while Redis is stopped: {len(health)} calls, median {seconds[len(seconds) // 2] * 1000:.1f} ms, "
              f"slowest {seconds[-1] * 1000:.1f} ms (Redis up: median {sorted(baseline)[10] * 1000:.1f} ms, slowest "
              f"{max(baseline) * 1000:.1f} ms); /readyz {ready_status} after {ready_s * 1000:.0f} ms")
        assert {status for status, _ in health} == {200} and len(health) > 20 and seconds[-1] < 1.0
        assert ready_status == 503
        assert refused.status_code == 503 and refused.json()["code"] == "nonce_store_unavailable", refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back with Redis"
            time.sleep(0.2)
        again = _verify(service, token, media["obama"], media["fake"])
        assert again.status_code == 200 and again.json()["decision"] == "reject_spoof", again.text
    finally:
        client.close()
        stop_service(service)


def _p95(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def test_one_tenant_flooding_does_not_starve_another(tmp_path, model_repository, media):
    """Tenant A floods /v1/compare from 16 clients (8x the 2 workers, 4x its cap of 4)
    while tenant B sends one request at a time: every B request succeeds and A is held at
    its cap (429). Workers are handed out round-robin by tenant, so B waits behind at most
    A's running work, never A's queue. B's latency is measured before, during and after the
    flood (the machine's other load drifts; before and after bracket it)."""
    service = start_service(tmp_path, model_repository, {
        "PORTRAIT_WORKERS": "2", "PORTRAIT_MAX_WAITING": "6", "PORTRAIT_MAX_IN_FLIGHT_PER_TENANT": "4",
        "PORTRAIT_RATE_LIMIT_PER_S": "1000", "PORTRAIT_RATE_LIMIT_BURST": "1000"})
    files = {"image_a": ("a.jpg", media["obama"], "image/jpeg"), "image_b": ("b.jpg", media["biden"], "image/jpeg")}

    def one(client: httpx.Client, key: str) -> tuple[int, float]:
        started = time.perf_counter()
        status = client.post("/v1/compare", files=files, headers=_auth(key)).status_code
        return status, time.perf_counter() - started

    def tenant_b(n: int) -> list[tuple[int, float]]:
        with httpx.Client(base_url=service["url"], timeout=120) as client:
            return [one(client, KEY_B) for _ in range(n)]

    stop = threading.Event()
    flood: list[int] = []

    def flooder() -> None:
        with httpx.Client(base_url=service["url"], timeout=120) as client:
            while not stop.is_set():
                status, _ = one(client, KEY_A)
                flood.append(status)
                if status == 429:
                    time.sleep(0.01)

    try:
        tenant_b(2)  # warm-up
        before = tenant_b(10)
        with ThreadPoolExecutor(16) as pool:
            for _ in range(16):
                pool.submit(flooder)
            time.sleep(2.0)  # the flood is established
            during = tenant_b(10)
            stop.set()
        after = tenant_b(10)
        p95 = {name: _p95([s for _, s in runs]) for name, runs in (("before", before), ("during", during),
                                                                   ("after", after))}
        counts = {code: flood.count(code) for code in sorted(set(flood))}
        unloaded = max(p95["before"], p95["after"])
        print(f"tenant B p95: unloaded {p95['before'] * 1000:.0f} ms before / {p95['after'] * 1000:.0f} ms after, "
              f"under A's flood {p95['during'] * 1000:.0f} ms (x{p95['during'] / unloaded:.1f}); A's answers {counts}")
        assert {status for status, _ in before + during + after} == {200}
        assert counts.get(200, 0) > 0 and counts.get(429, 0) > 0 and not counts.get(503)
    finally:
        stop.set()
        stop_service(service)


def test_readiness_is_503_from_the_moment_a_drain_starts(tmp_path, model_repository, media):
    service = start_service(tmp_path, model_repository, {"PORTRAIT_DRAIN_GRACE_S": "3"})
    assert httpx.get(f"{service['url']}/readyz").status_code == 200
    service["process"].send_signal(signal.SIGTERM)
    started = time.monotonic()
    ready = httpx.get(f"{service['url']}/readyz")
    assert ready.status_code == 503 and ready.json()["detail"] == "shutting down"
    assert httpx.get(f"{service['url']}/healthz").status_code == 200
    files = {"image_a": ("a.jpg", media["obama"], "image/jpeg"), "image_b": ("b.jpg", media["obama2"], "image/jpeg")}
    assert httpx.post(f"{service['url']}/v1/compare", files=files, headers=_auth(), timeout=60).status_code == 200
    assert time.monotonic() - started < 3  # all of that inside the grace period, listener still open
    assert service["process"].wait(timeout=60) == 0
    assert '"msg": "drain started"' in service["log"].read_text()


def test_deadline_is_504_and_leaves_the_token_unspent(tmp_path, model_repository, media):
    service = start_service(tmp_path, model_repository, {"PORTRAIT_REQUEST_TIMEOUT_S": "0.3"})
    try:
        token = _challenge(service, ["turn_left"])
        for _ in range(2):  # the second try is not a replay: the first was never judged
            response = _verify(service, token, media["id_d12"], media["d12"])
            assert response.status_code == 504 and response.json()["code"] == "deadline_exceeded", response.text
    finally:
        stop_service(service)


def test_serve_flags_win_over_the_environment(tmp_path, model_repository):
    port = free_port()
    service = start_service(tmp_path, model_repository, {"PORTRAIT_PORT": "1", "PORTRAIT_WORKERS": "100000"},
                            args=("--host", "127.0.0.1", "--port", str(port), "--workers", "3"))
    try:
        assert service["url"].endswith(f":{port}") and httpx.get(f"{service['url']}/healthz").status_code == 200
    finally:
        stop_service(service)


@pytest.mark.parametrize("env, says", [
    ({"PORTRAIT_DECODER": "gpu"}, "PORTRAIT_DECODER=gpu leaves frames on the GPU: set PORTRAIT_FRAMES=gpu too"),
    ({"PORTRAIT_DECODER": "nvdec"}, "PORTRAIT_DECODER: Input should be 'pyav', 'dali' or 'gpu'"),
    ({"PORTRAIT_WORKERS": "0"}, "PORTRAIT_WORKERS: Input should be greater than or equal to 1"),
    ({"PORTRAIT_MAX_IN_FLIGHT_PER_TENANT": "24"}, "must be below PORTRAIT_WORKERS + PORTRAIT_MAX_WAITING (24)"),
    ({"PORTRAIT_API_KEYS": "a:short"}, "too short"),
])
def test_serve_refuses_bad_settings_with_one_line(model_repository, env, says):
    result = subprocess.run([sys.executable, "-m", "portrait.cli", "serve"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PORTRAIT_MODEL_REPOSITORY": str(model_repository),
                                              "PORTRAIT_PORT": str(free_port()), **env})
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("portrait serve:")]
    assert len(lines) == 1 and says in lines[0], result.stderr[-2000:]


def test_serve_refuses_the_gpu_paths_without_a_gpu(model_repository):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run([sys.executable, "-m", "portrait.cli", "serve"], capture_output=True, text=True,
                            timeout=180, env={**os.environ, "PORTRAIT_MODEL_REPOSITORY": str(model_repository),
                                              "PORTRAIT_DECODER": "gpu", "PORTRAIT_FRAMES": "gpu",
                                              "PORTRAIT_API_KEYS": f"carrier-a:{KEY_A}"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("portrait serve:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "GPU" in lines[0] or "CUDA" in lines[0]
