"""The capture module in a real browser: Debian's Chromium driven by Playwright, its fake
camera fed a `.y4m` made here from a test clip, recording through `portrait-capture.js` on
the demo page, uploading through the demo relay to `portrait serve` (uvicorn, a subprocess).

Chromium starts the file when the camera opens and loops it; the module starts recording as
soon as the stream is live, so the clip's actions land a fraction of a second earlier in the
recording than in the file. Each challenge puts its prompt well before the clip's action, so
that offset stays inside the action's window."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import cv2
import httpx
import pytest

from test_service import KEY_A, start_service, stop_service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAKE_CAMERA = ["--use-fake-device-for-media-stream"]
ALLOW_CAMERA = ["--use-fake-ui-for-media-stream"]
# From the module: the message a customer sees when the camera is refused.
CAMERA_DENIED = "Camera access was denied"


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def demo(tmp_path_factory, model_repository, testdata):
    running = start_service(tmp_path_factory.mktemp("demo"), model_repository, {
        "PORTRAIT_DEMO": "1", "PORTRAIT_CLIENT_ACTIONS_TENANTS": "demo", "PORTRAIT_DEMO_RATE_LIMIT_BURST": "20"})
    yield running
    if running["process"].poll() is None:
        stop_service(running)


def write_y4m(clip: Path, target: Path) -> None:
    """The clip's frames as YUV4MPEG2 4:2:0, Chromium's fake-camera format."""
    import av

    with av.open(str(clip)) as container, target.open("wb") as out:
        stream = container.streams.video[0]
        rate = stream.average_rate
        out.write(f"YUV4MPEG2 W{stream.width} H{stream.height} F{rate.numerator}:{rate.denominator} "
                  "Ip A1:1 C420jpeg\n".encode())
        for frame in container.decode(stream):
            out.write(b"FRAME\n" + frame.reformat(format="yuv420p").to_ndarray().tobytes())


def first_frame_jpeg(clip: Path) -> bytes:
    """The ID stand-in: the clip's first frame, encoded in memory."""
    import av

    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    return cv2.imencode(".jpg", frame)[1].tobytes()


def run_demo(playwright, demo: dict, args: list[str], id_jpeg: bytes, query: dict[str, str],
             during: Callable[[Any], None] | None = None) -> dict:
    """Open the demo page, choose the ID photo, start (then `during(page)`); returns the
    page's final state."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + args)
    try:
        page = browser.new_page()
        page.goto(f"{demo['url']}/demo?{urlencode(query)}")
        page.set_input_files("#id-image", files=[{"name": "id.jpg", "mimeType": "image/jpeg", "buffer": id_jpeg}])
        started = time.monotonic()
        page.click("#start")
        if during:
            during(page)
        page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached", timeout=180_000)
        return {
            "state": page.evaluate("document.body.dataset.state"),
            "code": page.get_attribute("#status", "data-code"),
            "alert": page.inner_text(".pc-alert") if page.query_selector(".pc-alert") else "",
            "answer": page.evaluate("window.portraitAnswer || null"),
            "html": page.content(),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        browser.close()


def _recorded(testdata: Path, tmp_path: Path, name: str) -> tuple[list[str], bytes]:
    clip = testdata / f"videos/liveportrait/{name}.mp4"
    y4m = tmp_path / f"{name}.y4m"
    write_y4m(clip, y4m)
    return ALLOW_CAMERA + FAKE_CAMERA + [f"--use-file-for-fake-video-capture={y4m}"], first_frame_jpeg(clip)


def _summary(result: dict) -> str:
    answer = result["answer"] or {}
    return json.dumps({"state": result["state"], "code": result["code"], "seconds": result["seconds"],
                       "decision": answer.get("decision"), "reasons": answer.get("reasons")})


@pytest.mark.parametrize("clip, actions, schedule", [
    ("d0", "blink", "0.8"),          # d0 blinks at 2.6 s of the file
    # d12 turns left at 1.3 s and right at 3.0 s of the file, opens its mouth at 4.6 s, then
    # opens it again and turns left at 6.4 s: the recording (record_s 5.7 s) stops before
    # those, which were not asked for.
    ("d12", "turn_left,turn_right,open_mouth", "0.3,1.5,2.6"),
])
def test_a_recording_that_performs_the_challenge_is_accepted(playwright, demo, testdata, tmp_path,
                                                             clip, actions, schedule):
    args, id_jpeg = _recorded(testdata, tmp_path, clip)
    result = run_demo(playwright, demo, args, id_jpeg, {"actions": actions, "schedule": schedule})
    print(_summary(result))
    assert result["state"] == "done", result
    answer = result["answer"]
    assert answer["decision"] == "accept", _summary(result)
    assert set(answer) == {"decision", "reasons", "request_id"}  # no score, threshold or receipt
    assert "score" not in result["html"].lower().replace("scores stay", "")


def test_a_recording_that_does_not_perform_the_challenge_is_refused(playwright, demo, testdata, tmp_path):
    args, id_jpeg = _recorded(testdata, tmp_path, "d0")  # d0 never turns its head
    result = run_demo(playwright, demo, args, id_jpeg, {"actions": "turn_left", "schedule": "0.8"})
    print(_summary(result))
    assert result["state"] == "done", result
    answer = result["answer"]
    assert answer["decision"] == "retry" and answer["reasons"] == ["challenge_incomplete"], _summary(result)


@pytest.mark.parametrize("args, code", [
    (FAKE_CAMERA, "camera_denied"),  # no fake UI: the permission prompt is refused
    ([], "no_camera"),               # a headless browser with no fake device has no camera
])
def test_the_customer_is_told_why_the_camera_did_not_start(playwright, demo, args, code):
    result = run_demo(playwright, demo, args, b"not-used", {"actions": "blink", "schedule": "0.8"})
    assert result["state"] == "error" and result["code"] == code, result
    assert result["alert"], "no message shown in the capture area"
    if code == "camera_denied":
        assert CAMERA_DENIED in result["alert"]


def test_a_page_hidden_during_the_recording_ends_it_as_too_short(playwright, demo, testdata, tmp_path):
    def hide(page) -> None:
        page.wait_for_selector(".pc-recording", timeout=30_000)
        page.evaluate("""() => {
            Object.defineProperty(document, "hidden", { value: true, configurable: true });
            document.dispatchEvent(new Event("visibilitychange"));
        }""")

    args, id_jpeg = _recorded(testdata, tmp_path, "d0")
    result = run_demo(playwright, demo, args, id_jpeg, {"actions": "blink", "schedule": "0.8"}, during=hide)
    assert result["state"] == "error" and result["code"] == "recording_too_short", result
    assert "stopped too early" in result["alert"]


def test_the_service_serves_the_module_and_the_demo_page(demo):
    module = httpx.get(f"{demo['url']}/v1/capture/portrait-capture.js")
    assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
    assert "export async function record" in module.text
    page = httpx.get(f"{demo['url']}/demo")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert KEY_A not in page.text and KEY_A not in httpx.get(f"{demo['url']}/demo/demo.js").text
    # The demo runs as its own tenant; the browser sends no key, and the API wants one.
    assert httpx.post(f"{demo['url']}/v1/challenges", json={}).json()["code"] == "invalid_api_key"
    same_site = {"sec-fetch-site": "same-origin"}
    issued = httpx.post(f"{demo['url']}/demo/api/challenge", json={"mirrored": False}, headers=same_site)
    assert issued.status_code == 200 and issued.json()["actions"] and issued.json()["client_named"] is False
    refused = httpx.post(f"{demo['url']}/demo/api/verify", files={"video": ("v.webm", b"x", "video/webm")},
                         data={"challenge": issued.json()["token"]}, headers=same_site)
    assert refused.status_code == 422 and refused.json()["code"] == "missing_field"
    # A token issued to the demo is the demo tenant's: a carrier cannot spend it, nor the reverse.
    carrier = httpx.post(f"{demo['url']}/v1/verifications", data={"challenge": issued.json()["token"]},
                         files={"video": ("v.webm", b"x", "video/webm"), "id_image": ("i.jpg", b"x", "image/jpeg")},
                         headers={"Authorization": f"Bearer {KEY_A}"})
    assert carrier.status_code == 403 and carrier.json()["code"] == "wrong_tenant"


def test_the_demo_is_off_by_default_and_never_a_carriers_tenant(caplog):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from portrait.service import capture
    from portrait.service.guard import Guard
    from portrait.settings import Settings

    def statuses(settings: Settings) -> list[int]:
        app = FastAPI()
        app.include_router(capture.router(settings))
        client = TestClient(app)
        return [client.get(capture.MODULE_PATH).status_code, client.get("/demo").status_code]

    assert statuses(Settings()) == [200, 404]
    with caplog.at_level("WARNING", logger="portrait.service"):
        assert statuses(Settings(demo=True, api_keys=f"carrier-a:{KEY_A}")) == [200, 200]
    assert any("DEMO PAGE ON" in record.getMessage() for record in caplog.records)
    with pytest.raises(ValueError, match="is a tenant of the API keys"):
        Guard(Settings(demo=True, demo_tenant="carrier-a", api_keys=f"carrier-a:{KEY_A}"))
