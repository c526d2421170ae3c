"""Live capture sessions: the media clock, sealed plans, the light check's arithmetic and the
reflection simulation as units; then the real service (`portrait serve`, uvicorn) streamed to
over its WebSocket by `portrait.streamer`, with the pace, size and use refusals, a lit dev clip
accepted with its receipt, the same clip unlit refused, and the memory the sessions hold."""

from __future__ import annotations

import threading
import time

import av
import cv2
import httpx
import numpy as np
import pytest

from portrait import reflection, streamer
from portrait.media.errors import MediaError
from portrait.media.limits import VideoLimits
from portrait.media.webm import MediaClock
from portrait.offline import Offline
from portrait.pipeline import Timings
from portrait.security.receipts import ReceiptSigner, verify_receipt
from portrait.service.sessions import Plan, Sealer
from portrait.settings import Settings
from portrait.challenge import ChallengeSpec
from portrait.stages import light
from test_service import KEY_A, KEY_B, KEY_C, start_service, stop_service

SESSION_MAX = 2 * 1024 * 1024
SESSIONS_MAX = 4 * SESSION_MAX


def _webm(seconds: float, fps: int = 30, size: int = 64) -> bytes:
    sink = streamer._Sink()
    with av.open(sink, "w", format="webm", options={"live": "1"}) as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i % 255, np.uint8), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return sink.take()


# Units ---------------------------------------------------------------------------------------


def test_the_media_clock_follows_the_stream_in_any_slicing():
    data = _webm(2.0)
    for step in (1, 97, 4096, len(data)):
        clock = MediaClock()
        times = [clock.feed(data[i : i + step]) for i in range(0, len(data), step)]
        seen = [t for t in times if t is not None]
        assert seen == sorted(seen) and abs(seen[-1] - 59 / 30) < 0.02 and clock.blocks == 60


@pytest.mark.parametrize("data, code", [
    (b"\x00\x00\x00\x20ftypisom" + bytes(100), "unsupported_media_type"),  # an MP4
    (b"\x1a\x45\xdf\xa3\x84" + b"abcd" + b"\xff" * 20, "unsupported_media_type"),  # EBML that is not WebM
    (b"\x1a\x45\xdf\xa3\x01\xff\xff\xff\xff\xff\xff\xff", "corrupt_media"),  # a header of unknown size
])
def test_the_media_clock_refuses_what_is_not_webm(data, code):
    with pytest.raises(MediaError) as refused:
        MediaClock().feed(data)
    assert refused.value.code == code


def test_a_session_id_seals_its_plan():
    sealer = Sealer(b"s" * 32)
    spec = ChallengeSpec.timed(["turn_left", "blink"], [1.2, 3.0])
    plan = Plan("carrier-a", spec, light.Sequence((0, 3, 1), (0.5, 1.0, 1.4)), "n" * 22, "epoch", time.time() + 60)
    session_id = sealer.seal(plan)
    assert sealer.open(session_id) == plan
    assert b"turn_left" not in session_id.encode() and "carrier-a" not in session_id  # nothing disclosed
    assert sealer.seal(plan) != session_id  # a fresh IV each time
    tampered = session_id[:-3] + ("A" if session_id[-3] != "A" else "B") + session_id[-2:]
    with pytest.raises(Exception) as refused:
        Sealer(b"s" * 32).open(tampered)
    assert refused.value.code == "session_not_found"
    with pytest.raises(Exception):
        Sealer(b"t" * 32).open(session_id)  # another deployment's secret
    assert sealer.token_ok(session_id, sealer.client_token(session_id))
    assert not sealer.token_ok(session_id, sealer.client_token(sealer.seal(plan)))


def test_a_session_created_before_the_nonce_store_lost_its_data_is_not_streamed():
    import asyncio

    from portrait.security.nonces import MemoryNonceStore
    from portrait.service.guard import Guard
    from portrait.service.metrics import Metrics
    from portrait.service.sessions import Sessions

    async def run() -> list[str]:
        settings = Settings(client_actions_tenants="carrier-a")
        sessions = Sessions(settings, Guard(settings), Metrics())
        session_id, _, plan = await sessions.create("carrier-a", False, ["blink"], [1.0])
        assert plan.challenge.client_named and sessions.sealer.open(session_id).epoch == plan.epoch
        sessions.guard.nonces = MemoryNonceStore()  # the store restarted empty: a new epoch
        outcomes = []
        for _ in range(2):
            try:
                await sessions._start(session_id, sessions.sealer.open(session_id))
                outcomes.append("started")
            except Exception as refused:
                outcomes.append(refused.code)
        fresh_id, _, fresh = await sessions.create("carrier-a", False)  # under the store's new epoch
        await sessions._start(fresh_id, fresh)
        return outcomes

    assert asyncio.run(run()) == ["session_expired", "session_expired"]


def test_sequences_change_colour_every_step_on_the_documented_timing():
    colours, due = light.draw(np.random.default_rng(0), 5000, 20)
    assert (np.diff(colours, axis=1) != 0).all() and colours.min() == 0 and colours.max() == len(light.PALETTE) - 1
    assert np.isin(np.round(np.diff(due, axis=1), 3), light.DURATIONS_S).all() and (due[:, 0] == light.FIRST_S).all()


def test_skin_that_follows_the_colours_scores_high_and_other_sequences_do_not():
    rng = np.random.default_rng(1)
    times = np.arange(0, 9, 1 / 10)
    colours, due = light.draw(rng, 1, 20)
    shown = due[0] + rng.uniform(0, 0.25, 20)
    on = np.searchsorted(shown + 0.2, times, "right") - 1  # the colour on camera 0.2 s after each reveal
    predicted = light.predicted_chroma(np.where(on >= 0, colours[0][np.maximum(on, 0)], -1))
    observed = 0.1 * predicted + rng.normal(0, 0.005, predicted.shape) + [0.9, -0.3]
    reading = light.respond(observed, times, light.Shown(tuple(shown), tuple(colours[0])))
    assert reading.score > 0.8 and abs(reading.latency_s - 0.2) <= 0.1 and 0.05 < reading.strength < 0.15
    others, due2 = light.draw(rng, 2000, 20)
    scores = light.scores(observed, times, due2 + rng.uniform(0, 0.25, due2.shape), others)[0]
    assert np.nanmax(scores) < reading.score - 0.2
    still = light.respond(np.tile([0.9, -0.3], (len(times), 1)), times, light.Shown(tuple(shown), tuple(colours[0])))
    assert still.score is None or still.score < 0.1  # a still image has no response at all


def test_the_reflection_lights_the_face_in_the_screen_colour_and_the_camera_adapts():
    frame = np.full((120, 160, 3), 120, np.uint8)
    box = np.array([50, 20, 60, 80], float)
    camera = reflection.Camera(reflection.Conditions(strength=0.3, jpeg_quality=100, noise_levels=0))
    red = light.PALETTE_LINEAR[light.NAMES.index("red")]
    first = camera.capture(frame, 0.0, red, box).astype(float)
    face, room = first[60, 80], first[5, 5]
    assert face[2] > face[1] + 10 and abs(room[2] - room[1]) < face[2] - face[1]  # BGR: red rises on the face
    for t in np.arange(0.1, 3.0, 0.1):
        later = camera.capture(frame, float(t), red, box).astype(float)
    assert later[60, 80, 2] - later[60, 80, 1] < face[2] - face[1]  # white balance pulled it back


# The service ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory, model_repository, testdata):
    # start_service runs it with conftest.frame_id_record (PORTRAIT_CALIBRATION): the lit
    # session's ID photo is a frame of its own clip, which the generated-face check rightly
    # refuses; the test data hold no second capture of that person.
    running = start_service(tmp_path_factory.mktemp("sessions"), model_repository, {
        "PORTRAIT_SESSION_MAX_BYTES": str(SESSION_MAX), "PORTRAIT_SESSIONS_MAX_BYTES": str(SESSIONS_MAX),
        "PORTRAIT_SESSION_REQUIRED_TENANTS": "carrier-c", "PORTRAIT_CLIENT_ACTIONS_TENANTS": "carrier-a,carrier-c",
        "PORTRAIT_DEMO": "1"})
    yield running
    if running["process"].poll() is None:
        stop_service(running)


def _auth(key=KEY_A):
    return {"Authorization": f"Bearer {key}"}


def _create(service, key=KEY_A, **body):
    response = httpx.post(f"{service['url']}/v1/sessions", json=body, headers=_auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def _ws(service, session):
    return service["url"].replace("http://", "ws://") + session["stream_path"]


def _grey(t, revealed):
    return np.full((96, 128, 3), 100 + int(20 * np.sin(t)), np.uint8)


def _verify(service, session, id_image=b"", key=KEY_A):
    files = {"id_image": ("id.jpg", id_image or _jpeg(np.full((64, 64, 3), 128, np.uint8)), "image/jpeg")}
    return httpx.post(f"{service['url']}/v1/sessions/{session['session_id']}/verifications", files=files,
                      headers=_auth(key), timeout=120)


def _jpeg(image) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def _metric(service, name) -> float:
    text = httpx.get(f"{service['url']}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or
               line.startswith(name + "{"))


@pytest.mark.parametrize("pace, code", [
    (streamer.Pace(speed=4.0), "session_ahead_of_real_time"),  # a file pushed
    (streamer.Pace(speed=0.4), "session_behind_real_time"),  # frames made slower than real time
    (streamer.Pace(stall_at_s=1.0, stall_s=3.0), "session_stalled"),
    (streamer.Pace(overrun_s=4.0), "session_too_long"),  # recording on well past stop
])
def test_a_stream_off_the_recording_pace_is_refused_with_its_code(service, pace, code):
    session = _create(service)
    outcome = streamer.stream(_ws(service, session), session["client_token"], _grey, (128, 96), pace=pace)
    assert outcome["last"]["type"] == "error" and outcome["last"]["code"] == code, outcome["last"]
    refused = _verify(service, session)
    assert refused.status_code == 422 and refused.json()["code"] == code


def test_a_session_is_streamed_once_by_its_token_and_judged_for_its_tenant_only(service):
    session = _create(service)
    wrong = streamer.stream(_ws(service, session), "not-the-token", _grey, (128, 96))
    assert wrong["last"]["code"] == "invalid_client_token"
    assert _verify(service, session).json()["code"] == "session_not_streamed"
    assert _verify(service, session, key=KEY_B).json()["code"] == "wrong_tenant"
    assert httpx.post(f"{service['url']}/v1/sessions/not-a-session/verifications", headers=_auth(),
                      files={"id_image": ("i.jpg", b"x", "image/jpeg")}).json()["code"] == "session_not_found"
    done = streamer.stream(_ws(service, session), session["client_token"], _grey, (128, 96))
    assert done["last"]["type"] == "complete"
    again = streamer.stream(_ws(service, session), session["client_token"], _grey, (128, 96))
    assert again["last"]["code"] == "session_already_streamed"
    reveals = done["revealed"]
    assert reveals.prompts and reveals.colours and reveals.stopped_at is not None
    first = _verify(service, session)
    assert first.status_code == 200 and first.json()["decision"] == "retry"  # a grey picture has no face
    assert _verify(service, session).json()["code"] == "session_already_judged"


def test_nothing_of_the_challenge_is_disclosed_before_it_is_due(service):
    session = _create(service)
    assert set(session) == {"session_id", "client_token", "stream_path", "chunk_ms", "mirrored", "expires_at"}
    outcome = streamer.stream(_ws(service, session), session["client_token"], _grey, (128, 96))
    answer = _verify(service, session).json()
    reveals = answer["session"]["reveals"]
    # Each prompt and colour came when the media received had reached its due second, no earlier.
    prompts = [r for r in reveals if r["kind"] == "prompt"]
    for reveal, (arrived_at, action) in zip(prompts, outcome["revealed"].prompts):
        assert reveal["value"] == action and arrived_at >= reveal["media_s"] - 0.3
    shown = [r["media_s"] for r in reveals if r["kind"] == "light"]
    assert shown == sorted(shown) and shown[0] >= light.FIRST_S
    assert answer["liveness"]["light"]["colours"] == [r["value"] for r in reveals if r["kind"] == "light"]


def test_session_media_are_bounded_per_session_and_in_total(service):
    # Frames as large as a chunk may be (the media clock reads their times, not their pixels),
    # 33 ms apart and sent as they would be recorded.
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    def block(relative_ms: int, size: int) -> bytes:
        body = b"\x81" + relative_ms.to_bytes(2, "big", signed=True) + b"\x80" + np.random.bytes(size)
        return b"\xa3" + ((1 << 56) | len(body)).to_bytes(8, "big") + body

    session = _create(service)
    with connect(_ws(service, session)) as ws:
        ws.send('{"token": "%s"}' % session["client_token"])
        assert '"ready"' in ws.recv(timeout=10)
        try:
            ws.send(_webm(0.1))
            for k in range(SESSION_MAX // (600 * 1024) + 2):
                time.sleep(0.033)
                ws.send(block(100 + 33 * k, 600 * 1024))
        except ConnectionClosed:
            pass
    refused = _verify(service, session)
    assert refused.status_code == 413 and refused.json()["code"] == "session_too_large", refused.json()
    # Each open stream reserves SESSION_MAX of SESSIONS_MAX: a fifth is refused while four wait.
    from contextlib import ExitStack

    from websockets.sync.client import connect

    with ExitStack() as held:
        for _ in range(SESSIONS_MAX // SESSION_MAX):
            session = _create(service)
            ws = held.enter_context(connect(_ws(service, session)))
            ws.send('{"token": "%s"}' % session["client_token"])
            assert '"ready"' in ws.recv(timeout=10)
        session = _create(service)
        refused = streamer.stream(_ws(service, session), session["client_token"], _grey, (128, 96))
        assert refused["last"]["code"] == "sessions_full"


def test_a_session_required_tenant_cannot_use_the_one_shot_mode(service):
    refused = httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth(KEY_C))
    assert refused.status_code == 403 and refused.json()["code"] == "session_required"
    assert httpx.post(f"{service['url']}/v1/challenges", json={}, headers=_auth()).status_code == 200
    files = {"id_image": ("i.jpg", b"x", "image/jpeg"), "video": ("v.webm", b"x", "video/webm")}
    refused = httpx.post(f"{service['url']}/v1/verifications", files=files, data={"challenge": "x"}, headers=_auth(KEY_C))
    assert refused.status_code == 403 and refused.json()["code"] == "session_required"


def test_a_session_request_meets_the_front_doors_rules(service):
    url = f"{service['url']}/v1/sessions"
    json_body = {"content-type": "application/json"}
    assert httpx.post(url, content=b"{}", headers=json_body).json()["code"] == "invalid_api_key"
    wrong_type = httpx.post(url, content=b"{}", headers={**_auth(), "content-type": "text/plain"})
    assert wrong_type.status_code == 415 and wrong_type.json()["code"] == "unsupported_content_type"
    too_large = httpx.post(url, content=b" " * 5000, headers={**_auth(), **json_body})
    assert too_large.status_code == 413 and too_large.json()["code"] == "upload_too_large"
    # Client-named actions are per tenant (carrier-b may not), and marked so.
    named = httpx.post(url, json={"actions": ["blink"]}, headers=_auth(KEY_B))
    assert named.status_code == 403 and named.json()["code"] == "client_actions_disabled"
    invalid = httpx.post(url, json={"actions": ["blink", "blink"]}, headers=_auth())
    assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_actions"


def test_a_tenant_without_full_answers_is_told_the_decision_and_the_receipt_keeps_the_rest(service):
    session = _create(service, key=KEY_C)
    assert streamer.stream(_ws(service, session), session["client_token"], _grey, (128, 96))["last"]["type"] == "complete"
    answer = _verify(service, session, key=KEY_C).json()
    assert set(answer) == {"decision", "reasons", "request_id", "receipt"} and answer["decision"] == "retry"
    claims = verify_receipt(answer["receipt"], ReceiptSigner(service["key_file"].read_bytes()).public_key_pem())
    assert claims["tenant"] == "carrier-c" and claims["session"]["reveals"] and claims["session"]["video_sha256"]


def test_the_demo_runs_sessions_as_its_own_tenant_from_its_own_page_only(service):
    demo = f"{service['url']}/demo/api/session"
    refused = httpx.post(demo, json={})  # no Sec-Fetch-Site, no Origin: not the demo page
    assert refused.status_code == 403 and refused.json()["code"] == "cross_site_request"
    session = httpx.post(demo, json={}, headers={"sec-fetch-site": "same-origin"}).json()
    assert set(session) == {"session_id", "client_token", "stream_path", "chunk_ms", "mirrored", "expires_at"}
    # The session is the demo tenant's: no carrier can ask its verdict.
    assert _verify(service, session).json()["code"] == "wrong_tenant"
    verdict = httpx.post(f"{demo}/{session['session_id']}/verify", headers={"sec-fetch-site": "same-origin"},
                         files={"id_image": ("id.jpg", _jpeg(np.full((64, 64, 3), 128, np.uint8)), "image/jpeg")})
    assert verdict.status_code == 409 and verdict.json()["code"] == "session_not_streamed"


@pytest.fixture(scope="module")
def d3(testdata, model_repository):
    offline = Offline(Settings(model_repository=model_repository))
    video = offline.decode.video((testdata / "videos/liveportrait/d3.mp4").read_bytes(),
                                 VideoLimits(max_frames=400, max_side=480))
    track, _ = offline.pipeline.track_video(video.frames, Timings())
    return {"frames": video.frames, "times": video.timestamps - video.timestamps[0],
            "boxes": [f if p else None for f, p in zip(track.faces, track.present)], "id": _jpeg(video.frames[0])}


def test_a_lit_session_is_accepted_and_its_receipt_says_what_was_revealed_when(service, d3):
    # d3 after a second's stillness: a right turn from 1.1 s, a left turn from 5.5 s; the
    # recording stops before its second right turn at 7.4 s (tests/test_browser_sessions.py).
    session = _create(service, actions=["turn_right", "turn_left"], schedule=[0.2, 3.5])
    camera = reflection.LitCamera(d3["frames"], d3["times"], d3["boxes"], reflection.Conditions(strength=0.2),
                                  hold_s=1.0)
    held = []
    watcher = threading.Thread(target=lambda: (time.sleep(3), held.append(_metric(service, "portrait_session_media_bytes"))))
    watcher.start()
    outcome = streamer.stream(_ws(service, session), session["client_token"], camera, (480, 480))
    watcher.join()
    assert outcome["last"]["type"] == "complete"
    assert 0 < held[0] <= SESSION_MAX  # the media held while streaming, in memory
    answer = _verify(service, session, d3["id"])
    body = answer.json()
    assert answer.status_code == 200 and body["decision"] == "accept", (body.get("reasons"), body["liveness"])
    public = ReceiptSigner(service["key_file"].read_bytes()).public_key_pem()
    claims = verify_receipt(body["receipt"], public)
    assert claims["session"]["reveals"] == body["session"]["reveals"]
    assert claims["light"]["score"] >= claims["light"]["threshold"]
    assert [r["value"] for r in claims["session"]["reveals"] if r["kind"] == "prompt"] == ["turn_right", "turn_left"]
    assert claims["challenge"]["schedule"] == [r["media_s"] for r in claims["session"]["reveals"] if r["kind"] == "prompt"]
    assert claims["challenge"]["client_named"] is True  # the test named the actions
    assert _metric(service, "portrait_session_media_bytes") == 0  # judged: the media are gone


def test_a_session_holds_its_media_and_little_else():
    """Measured with tracemalloc: the memory a streamed session holds is its media's bytes
    plus a fixed few kilobytes (the reveals, the media clock), whatever the slicing."""
    import asyncio
    import tracemalloc

    from portrait.service.guard import Guard
    from portrait.service.metrics import Metrics
    from portrait.service.sessions import Live, Sessions

    data = _webm(7.0, size=256)
    slices = [data[i : i + 512] for i in range(0, len(data), 512)]
    clock = MediaClock()
    ends = [clock.feed(chunk) or 0.0 for chunk in slices]
    sessions = Sessions(Settings(), Guard(Settings()), Metrics())
    spec = ChallengeSpec.timed(["turn_left", "blink"], [1.0, 2.6])
    plan = Plan("carrier-a", spec, light.random_sequence(7.0, np.random.default_rng(0)), "n" * 22, "epoch",
                time.time() + 60)

    class Socket:
        async def send_json(self, message: dict) -> None:
            pass

    async def stream() -> int:
        live = Live("id", plan, reserved=True)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        start = time.monotonic()
        for chunk, end in zip(slices, ends):
            await sessions._chunk(Socket(), live, bytes(bytearray(chunk)), start + end)  # received: new bytes
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert live.size == len(data) and live.stop_s is not None and len(live.colours) >= 8
        return held

    held = asyncio.run(stream())
    print(f"media {len(data)} bytes in {len(slices)} chunks: the session holds {held} bytes")
    assert len(data) <= held <= len(data) + 64 * 1024
