// Portrait capture: records the customer's answer to a Portrait challenge in the browser.
//
//   import { record } from "/v1/capture/portrait-capture.js";
//   const { blob, mimeType } = await record(challenge, document.querySelector("#capture"));
//
// `challenge` is the JSON the carrier's back end got from POST /v1/challenges (token, actions,
// schedule, window_s, record_s, mirrored). The module opens the front camera, starts recording
// as soon as the stream is live (the schedule counts from the start of the recording), shows
// each prompt at its second with a countdown, stops at record_s and resolves with the
// recording. It rejects with a CaptureError whose `code` is stable. No dependencies, no build.

export const ACTION_TEXT = {
  blink: "Blink",
  turn_left: "Turn your head to your left",
  turn_right: "Turn your head to your right",
  tilt_left: "Tilt your head toward your left shoulder",
  tilt_right: "Tilt your head toward your right shoulder",
  look_up: "Look up",
  look_down: "Look down",
  open_mouth: "Open your mouth",
};

// Glyphs as seen in the preview, which is always shown as a mirror.
const ACTION_ICON = {
  blink: "\u{1F441}", turn_left: "\u2B05", turn_right: "\u27A1", tilt_left: "\u2196", tilt_right: "\u2197",
  look_up: "\u2B06", look_down: "\u2B07", open_mouth: "\u{1F62E}",
};

export const ERROR_MESSAGES = {
  unsupported_browser: "This browser cannot record video. Please use a recent Chrome, Firefox, Safari or Edge.",
  insecure_context: "The camera is only available on a secure (https) page.",
  camera_denied: "Camera access was denied. Allow the camera for this site and try again.",
  no_camera: "No camera was found. Connect a camera, or use a phone, and try again.",
  camera_busy: "The camera is in use by another application. Close it and try again.",
  camera_error: "The camera could not be started. Please try again.",
  recording_too_short: "The recording stopped too early. Keep this page open and the camera on until the end, then try again.",
  invalid_challenge: "The challenge is not usable by this page. Please start again.",
  aborted: "The recording was cancelled.",
};

// WebM first (VP8 is the cheapest to encode on small phones); MP4 where only that is offered (Safari).
const MIME_TYPES = ["video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm",
  "video/mp4;codecs=avc1", "video/mp4"];
// A recording may end this much earlier than record_s before it counts as too short.
const SHORT_SLACK_S = 0.25;
const TICK_MS = 100;

export class CaptureError extends Error {
  constructor(code, detail) {
    super(ERROR_MESSAGES[code] || code);
    this.name = "CaptureError";
    this.code = code;
    this.detail = detail;
  }
}

export function pickMimeType() {
  if (typeof MediaRecorder === "undefined" || !MediaRecorder.isTypeSupported) return null;
  return MIME_TYPES.find((type) => MediaRecorder.isTypeSupported(type)) || null;
}

export function checkChallenge(challenge) {
  const c = challenge || {};
  const ok = Array.isArray(c.actions) && c.actions.length > 0 && Array.isArray(c.schedule)
    && c.schedule.length === c.actions.length
    && c.schedule.every((s, i) => Number.isFinite(s) && s >= 0 && (i === 0 || s >= c.schedule[i - 1]))
    && Number.isFinite(c.record_s) && c.record_s > c.schedule[c.schedule.length - 1];
  if (!ok) throw new CaptureError("invalid_challenge", "needs actions, one schedule time per action and record_s");
  return c;
}

export async function record(challenge, container, options = {}) {
  const c = checkChallenge(challenge);
  const view = buildView(container, !c.mirrored);
  let stream = null;
  let recorder = null;
  let timer = null;
  let stopTimer = null;
  let onHidden = null;
  try {
    if (options.signal?.aborted) throw new CaptureError("aborted");
    if (!window.isSecureContext) throw new CaptureError("insecure_context");
    const mimeType = pickMimeType();
    if (!navigator.mediaDevices?.getUserMedia || !mimeType) throw new CaptureError("unsupported_browser");
    view.say("Starting the camera\u2026");
    stream = await openCamera();
    view.video.srcObject = stream;
    view.video.play().catch(() => {});
    recorder = new MediaRecorder(stream, { mimeType, videoBitsPerSecond: options.videoBitsPerSecond || 2_000_000 });
    const chunks = [];
    recorder.ondataavailable = (event) => { if (event.data && event.data.size) chunks.push(event.data); };
    const started = once(recorder, "start");
    // The recording's time zero is its first frame, just after start(); the "start" event
    // comes later (it is queued), so the schedule counts from the call.
    const t0 = performance.now();
    recorder.start(250);
    await started;
    view.root.classList.add("pc-recording");
    view.say("Recording. Keep your face inside the oval and follow the prompts.");

    const elapsed = await new Promise((resolve, reject) => {
      let shown = -1;
      const finish = () => resolve((performance.now() - t0) / 1000);
      const track = stream.getVideoTracks()[0];
      track.addEventListener("ended", finish);
      // A hidden page cannot show the prompts: stop, and the recording is too short.
      onHidden = () => { if (document.hidden) finish(); };
      document.addEventListener("visibilitychange", onHidden);
      options.signal?.addEventListener("abort", () => reject(new CaptureError("aborted")), { once: true });
      const tick = () => {
        const t = (performance.now() - t0) / 1000;
        if (t >= c.record_s) return finish();
        let current = -1;
        while (current + 1 < c.schedule.length && c.schedule[current + 1] <= t) current += 1;
        if (current !== shown) {
          shown = current;
          if (current >= 0) {
            view.prompt(c.actions[current], true);
            view.say(actionText(c.actions[current]));
            options.onPrompt?.(c.actions[current], current, t);
          }
        }
        const next = current + 1 < c.schedule.length ? c.schedule[current + 1] : c.record_s;
        const from = current >= 0 ? c.schedule[current] : 0;
        view.progress((t - from) / Math.max(next - from, 0.001));
        if (current + 1 < c.schedule.length) {
          const left = Math.ceil(c.schedule[current + 1] - t);
          view.countdown(`Next: ${actionText(c.actions[current + 1])} in ${left} s`);
          if (current < 0) view.prompt(c.actions[0], false);
        } else {
          view.countdown(`Done in ${Math.max(Math.ceil(c.record_s - t), 0)} s`);
        }
      };
      tick();
      timer = setInterval(tick, TICK_MS);
      // Its own timer, so the stop is not late by up to a tick: the server refuses a
      // recording that runs well past record_s.
      stopTimer = setTimeout(finish, c.record_s * 1000 - (performance.now() - t0));
    });
    clearInterval(timer);
    clearTimeout(stopTimer);
    const stopped = once(recorder, "stop");
    recorder.stop();
    await stopped;
    const blob = new Blob(chunks, { type: recorder.mimeType || mimeType });
    if (elapsed < c.record_s - SHORT_SLACK_S || blob.size === 0) {
      throw new CaptureError("recording_too_short", `recorded ${elapsed.toFixed(2)} s of ${c.record_s} s`);
    }
    view.done("Recording finished.");
    return { blob, mimeType: blob.type, durationS: elapsed };
  } catch (error) {
    const failure = error instanceof CaptureError ? error : new CaptureError("camera_error", String(error));
    view.fail(failure.message);
    throw failure;
  } finally {
    clearInterval(timer);
    clearTimeout(stopTimer);
    if (onHidden) document.removeEventListener("visibilitychange", onHidden);
    if (recorder && recorder.state !== "inactive") recorder.stop();
    stream?.getTracks().forEach((track) => track.stop());
  }
}

export function actionText(action) {
  return ACTION_TEXT[action] || action.replace(/_/g, " ");
}

async function openCamera() {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
    });
  } catch (error) {
    const code = {
      NotAllowedError: "camera_denied", SecurityError: "camera_denied",
      NotFoundError: "no_camera", OverconstrainedError: "no_camera",
      NotReadableError: "camera_busy", AbortError: "camera_busy",
    }[error && error.name] || "camera_error";
    throw new CaptureError(code, error && error.name);
  }
}

function once(target, type) {
  return new Promise((resolve, reject) => {
    target.addEventListener(type, resolve, { once: true });
    target.addEventListener("error", (event) => reject(new CaptureError("camera_error", String(event.error))), { once: true });
  });
}

function buildView(container, mirrorPreview) {
  injectStyle();
  container.replaceChildren();
  const root = el("div", "pc-root");
  const stage = el("div", "pc-stage");
  const video = el("video", "pc-video");
  Object.assign(video, { muted: true, playsInline: true, autoplay: true });
  video.setAttribute("aria-hidden", "true");
  if (mirrorPreview) video.classList.add("pc-mirror");
  const oval = el("div", "pc-oval");
  const dot = el("div", "pc-dot");
  dot.textContent = "REC";
  stage.append(video, oval, dot);
  const prompt = el("div", "pc-prompt");
  const icon = el("span", "pc-icon");
  icon.setAttribute("aria-hidden", "true");
  const text = el("span", "pc-text");
  prompt.append(icon, text);
  const bar = el("div", "pc-bar");
  const fill = el("div", "pc-fill");
  bar.append(fill);
  const countdown = el("div", "pc-countdown");
  const live = el("div", "pc-live");
  live.setAttribute("role", "status");
  live.setAttribute("aria-live", "assertive");
  live.setAttribute("aria-atomic", "true");
  const alert = el("div", "pc-alert");
  alert.setAttribute("role", "alert");
  root.append(stage, prompt, bar, countdown, live, alert);
  container.append(root);
  return {
    root, video,
    say(message) { live.textContent = message; },
    prompt(action, active) {
      icon.textContent = ACTION_ICON[action] || "\u2022";
      text.textContent = active ? actionText(action) : "Get ready";
      prompt.dataset.action = active ? action : "";
      prompt.classList.toggle("pc-active", active);
    },
    progress(fraction) { fill.style.width = `${Math.min(Math.max(fraction, 0), 1) * 100}%`; },
    countdown(message) { countdown.textContent = message; },
    done(message) {
      root.classList.remove("pc-recording");
      prompt.classList.remove("pc-active");
      fill.style.width = "100%";
      text.textContent = message;
      icon.textContent = "\u2713";
      countdown.textContent = "";
      live.textContent = message;
    },
    fail(message) {
      root.classList.remove("pc-recording");
      root.classList.add("pc-failed");
      alert.textContent = message;
    },
  };
}

function el(tag, className) {
  const node = document.createElement(tag);
  node.className = className;
  return node;
}

function injectStyle() {
  if (document.getElementById("portrait-capture-style")) return;
  const style = document.createElement("style");
  style.id = "portrait-capture-style";
  style.textContent = `
.pc-root{font:16px/1.4 system-ui,sans-serif;max-width:480px;color:#111}
.pc-stage{position:relative;aspect-ratio:4/3;background:#222;border-radius:12px;overflow:hidden}
.pc-video{width:100%;height:100%;object-fit:cover;display:block}
.pc-mirror{transform:scaleX(-1)}
.pc-oval{position:absolute;left:50%;top:50%;width:46%;aspect-ratio:3/4;transform:translate(-50%,-50%);
  border-radius:50%;border:3px solid #fff;box-shadow:0 0 0 999px rgba(0,0,0,.45)}
.pc-recording .pc-oval{border-color:#3ddc84}
.pc-dot{position:absolute;top:10px;right:12px;color:#fff;font-weight:700;font-size:13px;opacity:0}
.pc-dot::before{content:"";display:inline-block;width:10px;height:10px;border-radius:50%;background:#e33;margin-right:6px}
.pc-recording .pc-dot{opacity:1}
.pc-prompt{display:flex;align-items:center;gap:12px;min-height:56px;margin-top:12px;font-size:22px;font-weight:600}
.pc-prompt:not(.pc-active){color:#555;font-weight:400}
.pc-icon{font-size:32px;width:40px;text-align:center}
.pc-bar{height:6px;background:#ddd;border-radius:3px;overflow:hidden}
.pc-fill{height:100%;width:0;background:#1a73e8}
.pc-countdown{min-height:24px;margin-top:6px;color:#333}
.pc-live{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
.pc-alert:not(:empty){margin-top:10px;padding:10px 12px;border-radius:8px;background:#fde8e8;color:#8a1111}
@media (prefers-reduced-motion:reduce){.pc-fill{transition:none}}`;
  document.head.append(style);
}
