"""The dubbing routes of the HTTP front: ``POST /v1/dub``, ``GET /v1/jobs/{id}`` (+ ``/files/{name}``) and
``DELETE /v1/jobs/{id}``.

* ``POST /v1/dub``, multipart: ``video`` and ``subtitles`` (.srt or .vtt, UTF-8) files; optional
  ``reference_voice`` (the voice of cues without a known speaker); the voices of named speakers (``[ALICE] text``,
  WebVTT ``<v Alice>``) either as one file part per speaker named ``voice.ALICE``, or as ``voices`` (a YAML mapping
  ``ALICE: alice.wav``, as a field or a file) naming the file names of ``recordings`` parts; fields ``sound``
  (on/off), ``strict``, ``stems``, ``output`` (mp4/wav), ``steps``, ``cfg``, ``seed``. Everything is checked before
  the answer: bad subtitles are a 422 whose one line names the cue and the fix; then 202 with the job (its ``id``,
  ``state`` "queued", ``status_url``) and ``Location``. More unfinished jobs than the server admits: 503 +
  Retry-After; a video longer than it dubs: 413.
* ``GET /v1/jobs/{id}``: ``state`` (queued, running, done, failed, cancelled), ``stage``, ``cues_done`` /
  ``cues_total``, ``progress`` (0-1, solver steps), the subtitle ``fixes``; when done ``summary`` (the timing
  report's) and ``urls`` of the files: ``video`` (the video with its new soundtrack, or .wav), ``report`` (the timing
  report JSON) and with ``stems`` ``speech``/``sound``/``mix``; when failed ``error``. A finished job is kept
  ``result_ttl_s`` (``expires_in_s``), then 410.
* ``DELETE /v1/jobs/{id}``: cancel (a running job stops at its next solver step).

Mixed into :class:`pipelines.serve.ingress.Api` (which sets ``self.dubber``, the DubWorker's handle, or None) and
registered on its FastAPI app by :func:`add_dub_routes`.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations (Request) inside the replica.
import os
import re
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from pipelines.serve.forms import HTTPError, multipart_schema
from pipelines.serve.limits import read_upload

__all__ = ["DubForm", "DubRoutes", "add_dub_routes", "voices_mapping"]

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
SPEAKER = r"[A-Za-z0-9][A-Za-z0-9 _.'-]{0,63}"
VOICE_PART = re.compile(rf"^voice\.({SPEAKER})$")
FILE_PARTS = {"video", "subtitles", "reference_voice", "voices", "recordings"}
MAX_VOICES = 16
MAX_FILES = 4 + MAX_VOICES  # video, subtitles, reference_voice, voices + the recordings
_VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}


class DubForm(BaseModel):
    """Fields of ``POST /v1/dub`` (multipart/form-data). Files: ``video``, ``subtitles`` (required),
    ``reference_voice``, ``voice.NAME`` (one per speaker) or ``recordings`` named by ``voices``."""

    model_config = ConfigDict(extra="forbid")
    sound: Literal["on", "off"] = Field("on", description="sound effects for the whole video (V2S)")
    strict: bool = Field(False, description="refuse any problem in the subtitles or voices instead of repairing it")
    stems: bool = Field(False, description="also keep the speech, sound and mix stems (.wav)")
    output: Literal["mp4", "wav"] = Field("mp4", description="the video with its new soundtrack, or the audio")
    steps: int | None = Field(None, ge=1, description="solver steps (default: the model's)")
    cfg: float | None = Field(None, ge=0.0, description="classifier-free guidance scale")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random seed; drawn when absent, in the status")
    voices: str | None = Field(None, max_length=20_000,
                               description="YAML 'NAME: file name' of the uploaded 'recordings' parts")  # fmt: skip


def voices_mapping(text: str) -> dict[str, str]:
    """The ``voices`` YAML (``NAME: file name`` per line) -> {name: file name}; a 422 :class:`HTTPError` naming the
    problem otherwise."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HTTPError(422, "bad_voices", f"voices: not YAML ({first}); write one 'NAME: file.wav' per line") from e
    if not isinstance(data, dict) or not data:
        raise HTTPError(422, "bad_voices", "voices: expected a mapping of speaker names to the file names of the "
                        "uploaded 'recordings', e.g. 'ALICE: alice.wav'")  # fmt: skip
    out = {}
    for name, fname in data.items():
        if not re.fullmatch(SPEAKER, str(name)):
            raise HTTPError(422, "bad_voices", f"voices: {str(name)[:40]!r} is not a speaker name (letters, digits, "
                            "space, _ . ' -, at most 64)")  # fmt: skip
        if not isinstance(fname, str) or not fname.strip():
            raise HTTPError(422, "bad_voices", f"voices: speaker {name!r}: expected the file name of an uploaded "
                            f"recording, got {fname!r}")  # fmt: skip
        out[str(name)] = os.path.basename(fname.strip())
    return out


def _with_urls(job: dict) -> dict:
    """A job's status as the client sees it: the URLs of its status and files."""
    base = f"/v1/jobs/{job['id']}"
    out = {**job, "status_url": base}
    if "files" in job:
        out["urls"] = {kind: f"{base}/files/{name}" for kind, name in out.pop("files").items()}
    return out


class DubRoutes:
    """The dubbing routes, mixed into the ingress (see the module docstring)."""

    dubber = None  # the DubWorker deployment's handle; None: dubbing is not enabled (501)

    async def dub(self, request: Request) -> Response:
        """Dub a whole video from its subtitles, as a job: 202 with the job's id at once; poll GET /v1/jobs/{id}."""
        return await self._handle(request, "dub", self._start_dub, max_files=MAX_FILES)

    async def job(self, job_id: str, request: Request) -> Response:
        """A dubbing job's state and progress; when done, its summary and the URLs of its files."""
        res = await self._job_call(request, "status", job_id)
        return res if isinstance(res, Response) else JSONResponse(_with_urls(res["job"]))

    async def job_file(self, job_id: str, name: str, request: Request) -> Response:
        """A file of a done job: ``dub.mp4`` / ``dub.wav``, ``timing.json``, ``speech.wav``, ``sound.wav``,
        ``mix.wav`` (the names in the job's ``urls``)."""
        res = await self._job_call(request, "file", job_id, name)
        if isinstance(res, Response):
            return res
        filename = f"dub-{job_id[:8]}{os.path.splitext(name)[1]}"
        return Response(res["data"], media_type=res["media_type"],
                        headers={"Content-Disposition": f'inline; filename="{filename}"'})  # fmt: skip

    async def cancel_job(self, job_id: str, request: Request) -> Response:
        """Cancel a job: a queued one never starts, a running one stops at its next solver step."""
        res = await self._job_call(request, "cancel", job_id)
        return res if isinstance(res, Response) else JSONResponse(_with_urls(res["job"]))

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _not_enabled(self) -> HTTPError:
        return HTTPError(501, "not_enabled", "dubbing is not enabled on this server; start it with --dub on")

    async def _job_call(self, request: Request, method: str, job_id: str, *args) -> dict | Response:
        rid = request.headers.get("x-request-id", "")
        try:
            if self.dubber is None:
                raise self._not_enabled()
            if not JOB_ID.match(job_id):
                raise HTTPError(404, "no_such_job", f"job {job_id[:40]!r}: not a job id (32 hex digits, from "
                                "POST /v1/dub)")  # fmt: skip
            res = await getattr(self.dubber, method).remote(job_id, *args)
            if not res["ok"]:
                raise HTTPError(res["status"], res["reason"], res["detail"], res.get("headers"))
            return res
        except HTTPError as e:
            return self._error(e, rid)

    async def _read_part(self, item, name: str) -> tuple[bytes, str]:
        """A file part's bytes and client file name (413 past the upload limit, 422 empty or text)."""
        if isinstance(item, str):
            raise HTTPError(422, "bad_field", f"{name}: must be a file upload, got text")
        data = await read_upload(item, name, max_mb=self.config.max_upload_mb)
        if not data:
            raise HTTPError(422, "empty_file", f"{name}: the uploaded file is empty")
        return data, os.path.basename(item.filename or name)[:100] or name

    async def _voices(self, form, text: str | None, parts: set[str]) -> dict[str, tuple[bytes, str]]:
        voices: dict[str, tuple[bytes, str]] = {}
        for part in sorted(parts):
            if m := VOICE_PART.match(part):
                voices[m.group(1)] = await self._read_part(form.get(part), part)
        recordings = form.getlist("recordings")
        if text is None:
            if recordings:
                raise HTTPError(422, "bad_voices", "recordings: sent without 'voices' (YAML NAME: file name); add "
                                "it, or send each recording as a part named voice.NAME")  # fmt: skip
        else:
            uploaded = {fname: data for data, fname in [await self._read_part(i, "recordings") for i in recordings]}
            for name, fname in voices_mapping(text).items():
                if name.lower() in {v.lower() for v in voices}:
                    raise HTTPError(422, "bad_voices", f"voices: speaker {name!r} is given twice (voices and "
                                    f"voice.{name})")  # fmt: skip
                if fname not in uploaded:
                    raise HTTPError(422, "bad_voices", f"voices: speaker {name!r}: recording {fname!r} was not "
                                    f"uploaded; send it as a 'recordings' file part (uploaded: "
                                    f"{', '.join(sorted(uploaded)) or 'none'})")  # fmt: skip
                voices[name] = (uploaded[fname], fname)
        if len(voices) > MAX_VOICES:
            raise HTTPError(422, "bad_voices", f"{len(voices)} voices; at most {MAX_VOICES}")
        return voices

    async def _start_dub(self, form, rid: str) -> Response:
        if self.dubber is None:
            raise self._not_enabled()
        parts = {k for k, v in form.multi_items() if not isinstance(v, str)}
        params: DubForm = self._fields(form, DubForm, parts)
        unknown = sorted(k for k in parts if k not in FILE_PARTS and not VOICE_PART.match(k))
        if unknown:
            raise HTTPError(422, "unknown_field", f"unknown file part(s) {unknown}; allowed: {sorted(FILE_PARTS)} "
                            "and voice.NAME")  # fmt: skip
        video, video_name = await self._read_file(form, "video", required=True)
        subtitles, subtitles_name = await self._read_file(form, "subtitles", required=True)
        ref, ref_name = await self._read_file(form, "reference_voice", required=False)
        text = params.voices
        if "voices" in parts:
            data, _ = await self._read_part(form.get("voices"), "voices")
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise HTTPError(422, "bad_voices", "voices: not UTF-8; save the YAML file as UTF-8") from e
        voices = await self._voices(form, text, parts)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        subtitles_suffix = os.path.splitext(subtitles_name)[1].lower()
        video_suffix = os.path.splitext(video_name)[1].lower()
        upload = {"request_id": rid, "video": video, "video_name": video_name,
                  "video_suffix": video_suffix if video_suffix in _VIDEO_SUFFIXES else ".mp4",
                  "subtitles": subtitles, "subtitles_name": subtitles_name,
                  "subtitles_suffix": subtitles_suffix if subtitles_suffix in (".srt", ".vtt") else "",
                  "reference_voice": ref, "reference_name": ref_name, "voices": voices,
                  "options": {**params.model_dump(exclude={"voices"}), "seed": seed}}  # fmt: skip
        res = await self.dubber.submit.remote(upload)
        if not res["ok"]:
            raise HTTPError(res["status"], res["reason"], res["detail"], res.get("headers"))
        job = _with_urls(res["job"])
        return JSONResponse(job, status_code=202, headers={"Location": job["status_url"]})


def add_dub_routes(app: FastAPI) -> None:
    """Register the dubbing routes (methods of :class:`DubRoutes`, bound to the ingress replica by Serve)."""
    files = {"video": True, "subtitles": True, "reference_voice": False, "recordings": False}
    app.post("/v1/dub", status_code=202, openapi_extra=multipart_schema(DubForm, files),
             responses={202: {}, 413: {}, 422: {}, 501: {}, 503: {}})(DubRoutes.dub)  # fmt: skip
    app.get("/v1/jobs/{job_id}", responses={404: {}, 410: {}})(DubRoutes.job)
    app.get(
        "/v1/jobs/{job_id}/files/{name}",
        responses={200: {"content": {"video/mp4": {}, "audio/wav": {}}}, 404: {}, 410: {}},
    )(DubRoutes.job_file)
    app.delete("/v1/jobs/{job_id}", responses={404: {}, 410: {}})(DubRoutes.cancel_job)
