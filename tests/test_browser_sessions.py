"""Live sessions in a real browser: Debian's Chromium driven by Playwright, `portrait-capture.js`
streaming the camera to `portrait serve` over the WebSocket, showing the prompts and filling
the screen around the face oval with each colour the session reveals. Two ways in: as a
carrier integrates it (the back end, here the test, creates the session with its API key and
asks the verdict, a full answer; the page only streams), and the demo page's session mode
(the demo's own tenant, told the decision and reasons only).

The camera is a test hook: the page's getUserMedia returns a canvas stream, and this test
draws each frame into it from a dev clip, lit by the colour the page is showing at that
moment through the reflection simulation (`portrait.reflection`): the clip as a real camera
would record it in front of that screen. The hook reads what the page shows (colour, prompt)
as a camera and an attacker watching the screen would. The clip starts when the recording does. The same
clip unlit, and the forged recording (the clip's actions cut out and re-timed to each prompt
as it is revealed, `portrait.forgery`), must be refused."""

from __future__ import annotations

import base64
import json
import time

import cv2
import httpx
import pytest

from portrait import forgery, reflection
from portrait.media.limits import VideoLimits
from portrait.offline import Offline
from portrait.pipeline import Timings
from portrait.settings import Settings
from portrait.streamer import Revealed
from test_browser import CHROMIUM, CHROMIUM_ARGS, demo, playwright  # noqa: F401 (fixtures)
from test_service import KEY_A

# The service is test_browser's demo fixture: start_service, whose calibration record is
# conftest.frame_id_record, since the ID photo here is a frame of the clip itself.

FPS = 15
# d3, as the pipeline reads it, turns right from 0.07 s of the file, blinks at 1.6 s, turns left
# from 4.5 s and right again from 6.4 s. The camera holds its first frame for a second, so the
# recording sees the turns from 1.1 and 5.5 s (a little earlier where frames are sparse); with
# prompts at 0.2 and 3.5 s (windows 0.1-2.3 s after each reveal, which comes up to a chunk or
# two late) it stops at about 6.6-7.0 s, before the second right turn.
CLIP, ACTIONS, SCHEDULE, HOLD_S = "videos/liveportrait/d3.mp4", "turn_right,turn_left", "0.2,3.5", 1.0

HOOK = """
(() => {
  const canvas = document.createElement("canvas");
  canvas.width = %(width)d; canvas.height = %(height)d;
  const context = canvas.getContext("2d");
  navigator.mediaDevices.getUserMedia = async () => canvas.captureStream(30);
  window.__pushFrame = async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }));
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const root = document.querySelector(".pc-root");
    const prompt = document.querySelector(".pc-prompt.pc-active");
    return { light: root ? root.dataset.light || "" : "", recording: !!root && root.classList.contains("pc-recording"),
             prompt: prompt ? prompt.dataset.action || "" : "", state: document.body.dataset.state || "" };
  };
})();
"""


@pytest.fixture(scope="module")
def clip(testdata, model_repository):
    """The clip's frames (15 per second, at most 480 pixels), its face per frame, its events."""
    offline = Offline(Settings(model_repository=model_repository))
    video = offline.decode.video((testdata / CLIP).read_bytes(), VideoLimits(max_frames=400, max_side=480))
    analysis = offline.pipeline.analyse_video(video, Timings(), need_embeddings=False)
    boxes = [face if present else None for face, present in zip(analysis.track.faces, analysis.track.present)]
    return {"frames": video.frames, "times": video.timestamps - video.timestamps[0], "boxes": boxes,
            "events": analysis.events, "id": cv2.imencode(".jpg", video.frames[0])[1].tobytes()}


# The carrier's page: the module streams a session its back end created, then says so.
CARRIER_PAGE = """
async (session) => {
  const { recordSession } = await import("/v1/capture/portrait-capture.js");
  document.body.dataset.state = "recording";
  recordSession(session, document.getElementById("capture")).then(
    () => { document.body.dataset.state = "done"; },
    (error) => { document.getElementById("status").dataset.code = error.code; document.body.dataset.state = "error"; });
}
"""


def run_session(playwright, demo, clip, source, carrier: bool) -> dict:  # noqa: F811
    """A session with `source(t, revealed)` as the page's camera: created and judged by the
    carrier's back end (`carrier`, tenant carrier-a, full answers), or the demo page's own."""
    height, width = clip["frames"].shape[1:3]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    auth = {"Authorization": f"Bearer {KEY_A}"}
    try:
        page = browser.new_page()
        page.add_init_script(HOOK % {"width": width, "height": height})
        if carrier:
            created = httpx.post(f"{demo['url']}/v1/sessions", headers=auth, json={
                "actions": ACTIONS.split(","), "schedule": [float(s) for s in SCHEDULE.split(",")]})
            assert created.status_code == 200, created.text
            page.goto(f"{demo['url']}/demo")
            page.evaluate(CARRIER_PAGE, created.json())
        else:
            page.goto(f"{demo['url']}/demo?mode=session&actions={ACTIONS}&schedule={SCHEDULE}")
            page.set_input_files("#id-image", files=[{"name": "id.jpg", "mimeType": "image/jpeg", "buffer": clip["id"]}])
            page.click("#start")
        revealed, shown, prompted, started, frames = Revealed(), "", "", None, 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = time.monotonic()
            t = 0.0 if started is None else now - started
            frame = source(t, revealed) if started is not None else clip["frames"][0]
            jpeg = base64.b64encode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1]).decode()
            seen = page.evaluate("b => window.__pushFrame(b)", jpeg)
            frames += 1
            if seen["recording"] and started is None:
                started = time.monotonic()
            if started is not None and seen["light"] != shown:
                shown = seen["light"]
                if shown:
                    revealed.colours.append((time.monotonic() - started, shown))
            if started is not None and seen["prompt"] != prompted:  # what the customer is asked, as shown
                prompted = seen["prompt"]
                if prompted:
                    revealed.prompts.append((time.monotonic() - started, prompted))
            if seen["state"] in ("verifying", "done", "error"):
                break
            time.sleep(max(0.0, 1 / FPS - (time.monotonic() - now)))
        page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached", timeout=180_000)
        state = page.evaluate("document.body.dataset.state")
        if carrier and state == "done":  # the back end asks the verdict with the ID photo
            answer = httpx.post(f"{demo['url']}/v1/sessions/{created.json()['session_id']}/verifications",
                                headers=auth, files={"id_image": ("id.jpg", clip["id"], "image/jpeg")},
                                timeout=120).json()
        else:
            answer = page.evaluate("window.portraitAnswer || null")
        return {"state": state, "code": page.get_attribute("#status", "data-code"), "answer": answer,
                "frames": frames, "colours_seen": len(revealed.colours), "html": page.content()}
    finally:
        browser.close()


def _summary(result: dict) -> str:
    answer = result["answer"] or {}
    liveness = answer.get("liveness") or {}
    return json.dumps({"state": result["state"], "code": result["code"], "frames_pushed": result["frames"],
                       "colours_seen": result["colours_seen"], "decision": answer.get("decision"),
                       "reasons": answer.get("reasons"), "light": liveness.get("light"),
                       "observed": [(e["action"], e["start_s"]) for e in liveness.get("active", {}).get("observed", [])],
                       "prompts": [(r["value"], r["media_s"]) for r in (answer.get("session") or {}).get("reveals", [])
                                   if r["kind"] == "prompt"]})


def _lit(clip, conditions):
    return reflection.LitCamera(clip["frames"], clip["times"], clip["boxes"], conditions, hold_s=HOLD_S)


def test_a_live_session_lit_by_the_colours_it_revealed_is_accepted(playwright, demo, clip):  # noqa: F811
    result = run_session(playwright, demo, clip, _lit(clip, reflection.Conditions(strength=0.2, latency_s=0.1)),
                         carrier=True)
    print(_summary(result))
    assert result["state"] == "done", _summary(result)
    answer = result["answer"]
    assert answer["decision"] == "accept", _summary(result)
    light = answer["liveness"]["light"]
    assert light["score"] >= light["threshold"] and light["steps"] >= 6
    # The receipt's record of what was revealed when: every prompt and colour, in media time.
    kinds = [r["kind"] for r in answer["session"]["reveals"]]
    assert kinds.count("prompt") == 2 and kinds.count("light") == len(light["colours"]) >= 7
    assert KEY_A not in result["html"]


def test_the_same_clip_unlit_is_refused_on_the_demo_page(playwright, demo, clip):  # noqa: F811
    result = run_session(playwright, demo, clip, _lit(clip, None), carrier=False)
    print(_summary(result))
    answer = result["answer"]
    # The actions were answered, so the light is the only reason; the page is told no more.
    assert answer["decision"] == "retry" and answer["reasons"] == ["light_mismatch"], _summary(result)
    assert set(answer) == {"decision", "reasons", "request_id"} and KEY_A not in result["html"]


def test_the_forged_recording_is_refused(playwright, demo, clip):  # noqa: F811
    forger = forgery.Forger(clip["frames"], clip["times"], forgery.cuts(clip["events"]))
    result = run_session(playwright, demo, clip, forger, carrier=True)
    print(_summary(result))
    answer = result["answer"]
    assert answer["decision"] != "accept" and "light_mismatch" in answer["reasons"], _summary(result)
