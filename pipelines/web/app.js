// vssflow web page: upload -> POST /v1/generate -> play the result next to the input, offer a download.
// Progress: the upload in percent (XHR upload events), then the generation time as it runs.
"use strict";

const $ = (id) => document.getElementById(id);
let resultUrl = null;
let timer = null;

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
$("task").addEventListener("change", () => {
  const task = $("task").value;
  $("transcript").required = task === "tts" || task === "joint";
  for (const id of ["transcript", "reference_voice", "speech_span"]) $(id).disabled = task === "v2s";
});

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
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
  const progress = $("progress");
  progress.hidden = false;
  progress.value = 0;
  $("submit").disabled = true;
  document.body.dataset.state = "running";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      progress.value = Math.round((30 * e.loaded) / e.total);
      setStatus(`Uploading ${Math.round((100 * e.loaded) / e.total)}%`);
    }
  };
  xhr.upload.onload = () => {
    const t0 = Date.now();
    progress.removeAttribute("value"); // indeterminate while the server works
    timer = setInterval(() => setStatus(`Generating... ${((Date.now() - t0) / 1000).toFixed(0)} s`), 250);
  };
  xhr.onerror = () => finish(false, "Network error: is the server running?");
  xhr.onload = async () => {
    if (xhr.status !== 200) {
      let detail = `HTTP ${xhr.status}`;
      try { detail += ": " + JSON.parse(await xhr.response.text()).detail; } catch (e) { /* not JSON */ }
      finish(false, detail);
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

function finish(ok, text) {
  clearInterval(timer);
  const progress = $("progress");
  progress.value = ok ? 100 : 0;
  progress.hidden = !ok;
  $("submit").disabled = false;
  document.body.dataset.state = ok ? "done" : "error";
  setStatus(text, !ok);
}
