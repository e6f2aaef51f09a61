// vssflow web page: upload -> POST /v1/generate -> play the result next to the input, offer a download.
// Progress: the upload in percent (XHR upload events), then the generation time as it runs.
// With a subtitle file: POST /v1/dub starts a job (202 + its id), GET /v1/jobs/{id} is polled for its progress
// (cues done / total), and the finished job's files are played and offered from their URLs.
"use strict";

const $ = (id) => document.getElementById(id);
let resultUrl = null;
let timer = null;

// An API token (vssflow serve --api-token-file): asked for once, at the first 401, and kept for this tab only
// (sessionStorage); sent as "Authorization: Bearer" on every /v1 call. A server without a token never asks.
const TOKEN_KEY = "vssflow-api-token";

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function authorize(xhr) {
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
}

// After a 401 (no token sent) or a 403 for the token sent: ask for it; true when there is one to send again with.
function askToken(status) {
  if (status !== 401 && !(status === 403 && sessionStorage.getItem(TOKEN_KEY))) return false;
  sessionStorage.removeItem(TOKEN_KEY);
  const token = window.prompt(status === 401 ? "This server needs an API token:" : "The token was refused. API token:");
  if (!token || !token.trim()) return false;
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  return true;
}

// A player's or a link's URL of a /v1 file: with a token, fetched with it (an <audio src> cannot send headers).
async function fileUrl(url) {
  if (!sessionStorage.getItem(TOKEN_KEY)) return url;
  const r = await fetch(url, { headers: authHeaders() });
  return URL.createObjectURL(await r.blob());
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

$("video").addEventListener("change", () => {
  const file = $("video").files[0];
  if (file) {
    $("input-video").src = URL.createObjectURL(file);
    setStatus(`Ready: ${file.name}`);
  }
});

// The default task (no task sent) is the server's, as in the CLI: joint with a transcript, else v2s. v2s takes no
// transcript, voice or span (the server refuses a transcript with v2s): their fields are disabled, not dropped.
// With subtitles the cues say what is said and when: task, transcript and span give way to the speakers' voices.
function updateFields() {
  const task = $("task").value;
  const dubbing = $("subtitles").files.length > 0;
  $("transcript").required = !dubbing && (task === "tts" || task === "joint");
  for (const id of ["transcript", "speech_span"]) $(id).disabled = dubbing || task === "v2s";
  $("reference_voice").disabled = !dubbing && task === "v2s";
  $("task").disabled = dubbing;
  for (const id of ["voices", "stems"]) $(id).disabled = !dubbing;
  $("submit").textContent = dubbing ? "Dub" : "Generate";
}
$("task").addEventListener("change", updateFields);
$("subtitles").addEventListener("change", updateFields);

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("subtitles").files.length > 0) {
    startDub();
    return;
  }
  const data = new FormData();
  data.append("video", $("video").files[0]);
  if ($("task").value) data.append("task", $("task").value);
  data.append("output", $("output").value);
  if ($("task").value !== "v2s" && $("transcript").value.trim()) data.append("transcript", $("transcript").value.trim());
  if ($("task").value !== "v2s" && $("reference_voice").files[0]) data.append("reference_voice", $("reference_voice").files[0]);
  if ($("task").value !== "v2s" && $("speech_span").value.trim()) data.append("speech_span", $("speech_span").value.trim());
  for (const name of ["steps", "cfg", "seed"]) if ($(name).value !== "") data.append(name, $(name).value);

  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/generate");
  xhr.responseType = "blob";
  authorize(xhr);
  begin(xhr);
  xhr.upload.onload = () => {
    const t0 = Date.now();
    progress.removeAttribute("value"); // indeterminate while the server works
    timer = setInterval(() => setStatus(`Generating... ${((Date.now() - t0) / 1000).toFixed(0)} s`), 250);
  };
  xhr.onerror = () => finish(false, "Network error: is the server running?");
  xhr.onload = async () => {
    if (xhr.status !== 200) {
      if (askToken(xhr.status)) {
        clearInterval(timer);
        $("form").requestSubmit(); // the same form again, now with the token
        return;
      }
      finish(false, await errorText(xhr.status, xhr.response));
      return;
    }
    const type = xhr.getResponseHeader("Content-Type") || "";
    const ext = type.startsWith("video/") ? "mp4" : "wav";
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(xhr.response);
    const player = ext === "mp4" ? $("result-video") : $("result-audio");
    $("result-audio").hidden = ext === "mp4";
    $("result-video").hidden = ext !== "mp4";
    player.src = resultUrl;
    const rid = xhr.getResponseHeader("X-Request-Id");
    const seed = xhr.getResponseHeader("X-Seed");
    const link = $("download");
    link.href = resultUrl;
    link.download = `vssflow-${rid}.${ext}`;
    link.hidden = false;
    const span = xhr.getResponseHeader("X-Speech-Span");
    const spanText = span && span !== "none"
      ? ` · speech ${span.replace(",", "–")} s (${xhr.getResponseHeader("X-Speech-Span-Source")})` : "";
    $("meta").textContent = `request ${rid} · seed ${seed} · ${xhr.getResponseHeader("X-Duration-S")} s${spanText}`;
    $("seed").placeholder = `random (last: ${seed})`;
    finish(true, `Done: ${ext} ready.`);
  };
  xhr.send(data);
});

// Shared by both flows: the progress bar, the busy state and the upload's progress.
function begin(xhr) {
  const progress = $("progress");
  progress.hidden = false;
  progress.value = 0;
  $("submit").disabled = true;
  document.body.dataset.state = "running";
  for (const id of ["download", "report"]) $(id).hidden = true;
  $("stem-links").textContent = "";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      progress.value = Math.round((30 * e.loaded) / e.total);
      setStatus(`Uploading ${Math.round((100 * e.loaded) / e.total)}%`);
    }
  };
}

async function errorText(status, body) {
  let detail = `HTTP ${status}`;
  try { detail += ": " + JSON.parse(await body.text()).detail; } catch (e) { /* not JSON */ }
  return detail;
}

function startDub() {
  const data = new FormData();
  data.append("video", $("video").files[0]);
  data.append("subtitles", $("subtitles").files[0]);
  if ($("reference_voice").files[0]) data.append("reference_voice", $("reference_voice").files[0]);
  // a recording named ALICE.wav is the voice of the cues of speaker ALICE (names match case-insensitively)
  for (const f of $("voices").files) data.append(`voice.${f.name.replace(/\.[^.]*$/, "")}`, f);
  data.append("output", $("output").value);
  if ($("stems").checked) data.append("stems", "true");
  for (const name of ["steps", "cfg", "seed"]) if ($(name).value !== "") data.append(name, $(name).value);

  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/dub");
  xhr.responseType = "blob";
  authorize(xhr);
  begin(xhr);
  xhr.upload.onload = () => setStatus("Checking the video and subtitles...");
  xhr.onerror = () => finish(false, "Network error: is the server running?");
  xhr.onload = async () => {
    if (xhr.status !== 202) {
      if (askToken(xhr.status)) {
        startDub();
        return;
      }
      finish(false, await errorText(xhr.status, xhr.response));
      return;
    }
    const job = JSON.parse(await xhr.response.text());
    setStatus(`Queued: job ${job.id}, ${job.cues_total} cues`);
    poll(job.status_url);
  };
  xhr.send(data);
}

// The job runs on the server; the page asks how far it is every half second (no request stays open).
async function poll(url) {
  let job;
  try {
    const r = await fetch(url, { headers: authHeaders() });
    if (!r.ok) {
      finish(false, await errorText(r.status, r));
      return;
    }
    job = await r.json();
  } catch (e) {
    finish(false, "Network error: is the server running?");
    return;
  }
  if (job.state === "done") return showDub(job);
  if (job.state === "failed" || job.state === "cancelled") {
    finish(false, job.error ? `Job ${job.state}: ${job.error.detail}` : `Job ${job.state}.`);
    return;
  }
  const progress = $("progress");
  progress.value = 30 + Math.round(70 * job.progress);
  setStatus(job.state === "queued" ? `Queued: job ${job.id}, ${job.cues_total} cues`
    : `Dubbing: cue ${job.cues_done}/${job.cues_total} (${job.stage}, ${Math.round(100 * job.progress)}%)`);
  setTimeout(() => poll(url), 500);
}

async function showDub(job) {
  const ext = job.urls.video.endsWith(".mp4") ? "mp4" : "wav";
  const url = await fileUrl(job.urls.video);
  const player = ext === "mp4" ? $("result-video") : $("result-audio");
  $("result-audio").hidden = ext === "mp4";
  $("result-video").hidden = ext !== "mp4";
  player.src = url;
  const link = $("download");
  link.href = url;
  link.download = `vssflow-dub-${job.id}.${ext}`;
  link.hidden = false;
  const report = $("report");
  report.href = await fileUrl(job.urls.report);
  report.download = `vssflow-dub-${job.id}.timing.json`;
  report.hidden = false;
  const stems = $("stem-links");
  stems.textContent = "";
  for (const kind of ["speech", "sound", "mix"]) {
    if (!job.urls[kind]) continue;
    const a = document.createElement("a");
    a.href = await fileUrl(job.urls[kind]);
    a.download = `vssflow-dub-${job.id}.${kind}.wav`;
    a.textContent = `${kind}.wav`;
    a.id = `stem-${kind}`;
    stems.append(a);
  }
  const s = job.summary;
  const offset = s.max_abs_offset_s === null ? "" : ` · largest cue offset ${s.max_abs_offset_s.toFixed(3)} s`;
  const fixes = job.fixes.length ? ` · ${job.fixes.length} subtitle fixes (see the report)` : "";
  $("meta").textContent = `job ${job.id} · seed ${job.seed} · ${job.cues_total} cues${offset}${fixes}`;
  $("seed").placeholder = `random (last: ${job.seed})`;
  finish(true, `Done: dubbed ${job.cues_total} cues; ${ext} ready.`);
}

function finish(ok, text) {
  clearInterval(timer);
  const progress = $("progress");
  progress.value = ok ? 100 : 0;
  progress.hidden = !ok;
  $("submit").disabled = false;
  document.body.dataset.state = ok ? "done" : "error";
  setStatus(text, !ok);
}
