// The demo page: ID photo -> challenge -> recording -> verification (as the demo's own tenant).
// `?mode=session` runs a live session (prompts and screen colours revealed while recording);
// `?actions=blink,turn_left&schedule=1,3` names the challenge when the server allows it.
import { record, recordSession, actionText } from "/v1/capture/portrait-capture.js";

const $ = (id) => document.getElementById(id);
const input = $("id-image");
const start = $("start");
const status = $("status");

function setState(state, message = "", code = "") {
  document.body.dataset.state = state;
  status.textContent = message;
  status.dataset.code = code;
}

input.addEventListener("change", () => {
  const file = input.files[0];
  start.disabled = !file;
  if (file) {
    $("id-preview").src = URL.createObjectURL(file);
    $("id-preview").hidden = false;
  }
});

start.addEventListener("click", async () => {
  start.disabled = true;
  $("result").hidden = true;
  try {
    if (new URLSearchParams(location.search).get("mode") === "session") {
      await runSession();
      return;
    }
    setState("challenge", "Asking Portrait for a challenge\u2026");
    const challenge = await post("/demo/api/challenge", JSON.stringify(challengeRequest()), "application/json");
    setState("recording", `Challenge: ${challenge.actions.map(actionText).join(", then ")}.`);
    const { blob, mimeType } = await record(challenge, $("capture"));
    setState("verifying", "Verifying\u2026");
    const form = new FormData();
    form.append("challenge", challenge.token);
    form.append("id_image", input.files[0]);
    form.append("video", blob, mimeType.startsWith("video/mp4") ? "selfie.mp4" : "selfie.webm");
    show(challenge, await post("/demo/api/verify", form));
    setState("done", "");
  } catch (error) {
    setState("error", error.message, error.code || "request_failed");
  } finally {
    start.disabled = !input.files[0];
  }
});

async function runSession() {
  setState("challenge", "Starting a live session\u2026");
  const session = await post("/demo/api/session", JSON.stringify(challengeRequest()), "application/json");
  setState("recording", "Follow the prompts as they appear.");
  const asked = { actions: [], schedule: [] };  // the prompts as the stream revealed them
  const onPrompt = (action, index, mediaS) => { asked.actions[index] = action; asked.schedule[index] = mediaS.toFixed(2); };
  await recordSession(session, $("capture"), { onPrompt });
  setState("verifying", "Verifying\u2026");
  const form = new FormData();
  form.append("id_image", input.files[0]);
  show(asked, await post(`/demo/api/session/${encodeURIComponent(session.session_id)}/verify`, form));
  setState("done", "");
}

function challengeRequest() {
  const params = new URLSearchParams(location.search);
  const request = { mirrored: false };  // browsers deliver the camera's frames unmirrored
  if (params.get("actions")) request.actions = params.get("actions").split(",");
  if (params.get("schedule")) request.schedule = params.get("schedule").split(",").map(Number);
  return request;
}

async function post(url, body, contentType) {
  const response = await fetch(url, { method: "POST", body, headers: contentType ? { "content-type": contentType } : {} });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(answer.detail || `the server answered ${response.status}`);
    error.code = answer.code || `http_${response.status}`;
    throw error;
  }
  return answer;
}

function show(challenge, answer) {
  // The demo is told the decision and its reasons only: scores would help anyone tune a fake.
  window.portraitAnswer = answer;
  const decision = $("decision");
  decision.textContent = answer.decision;
  decision.dataset.decision = answer.decision;
  $("reasons").textContent = answer.reasons.length ? answer.reasons.join(", ") : "none";
  $("actions").textContent = challenge.actions.map((a, i) => `${actionText(a)} at ${challenge.schedule[i]} s`).join(", ");
  $("request-id").textContent = answer.request_id;
  $("result").hidden = false;
}
