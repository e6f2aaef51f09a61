"""The HTTP front (FastAPI ingress, ~0 CPU): routes, validation, limits, load shedding, metrics, error mapping.

It parses and checks each request once, then delegates: video uploads to the extractor deployment, conditions to
the generator deployment. Bad input is answered here with a 4xx and a one-line ``detail``, never a 5xx.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations (Request) inside the replica.
import asyncio
import io
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve

from pipelines.serve import auth, limits
from pipelines.serve.auth import ApiAuth
from pipelines.serve.config import ServeConfig
from pipelines.serve.dub_routes import DubRoutes, add_dub_routes
from pipelines.serve.forms import FeaturesForm, GenerateForm, HTTPError, clean_paths, multipart_schema, one_line
from pipelines.serve.limits import Admission, cancel_on_exit, limited_receive, read_upload, timed_out, too_large
from vssflow.constants import SAMPLE_RATE, TASKS
from vssflow.data.features_file import FeaturesTooLargeError, read_features_file
from vssflow.errors import InputError
from vssflow.inference import check_request, with_speech_span

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}

app = FastAPI(
    title="vssflow",
    description="Generate sound effects and lip-synced speech for silent video (VSSFlow).",
    version="1",
)
app.add_middleware(ApiAuth)  # the API token on /v1/*, or the same-origin check (pipelines.serve.auth)
add_dub_routes(app)  # POST /v1/dub, GET/DELETE /v1/jobs/{id}: methods of DubRoutes, bound to Api by Serve


def _wav_bytes(wav: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _suffix(filename: str | None, allowed: set[str], default: str) -> str:
    """A safe suffix from the client's file name (the name itself is never used as a path)."""
    s = Path(filename or "").suffix.lower()
    return s if s in allowed else default


@serve.deployment
@serve.ingress(app)
class Api(DubRoutes):
    """HTTP front: validation, limits, load shedding; delegates to the extractor, generator and dubbing deployments
    (the dubbing routes: :mod:`pipelines.serve.dub_routes`)."""

    def __init__(self, extractor, generator, config: ServeConfig, dubber=None):
        from ray.util import metrics

        self.extractor, self.generator, self.config, self.dubber = extractor, generator, config, dubber
        auth.configure(config.api_token_file)  # read here, in each replica: the token never travels in the config
        self.upload_dir = config.upload_dir or tempfile.mkdtemp(prefix="vssflow-serve-")
        os.makedirs(self.upload_dir, exist_ok=True)
        self.admission = Admission(config.max_inflight, config.max_queued)
        self.m_requests = metrics.Counter("vssflow_requests_total", description="requests by route, task, status",
                                          tag_keys=("route", "task", "status"))  # fmt: skip
        self.m_latency = metrics.Histogram("vssflow_request_seconds", description="request latency",
                                           boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120],
                                           tag_keys=("route", "task"))  # fmt: skip
        self.m_inflight = metrics.Gauge("vssflow_inflight", description="requests inside the ingress")

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _error(self, e: HTTPError, rid: str) -> JSONResponse:
        headers = dict(e.headers)  # X-Request-Id is added by Ray Serve's proxy to every response
        body = {"error": e.reason, "detail": e.detail, "request_id": rid}
        return JSONResponse(body, status_code=e.status, headers=headers)

    async def _handle(self, request: Request, route: str, work, *, max_files: int = 4) -> Response:
        """Request id, size limit, load shedding, metrics and error mapping around ``work(form, rid)``."""
        rid = request.headers.get("x-request-id", "")  # set by Serve's proxy (the client's, or a new one)
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        t0 = time.perf_counter()
        task, status = "-", 500
        try:
            size = request.headers.get("content-length")  # a claim: the bytes are counted as they arrive too
            if size is not None and size.isdigit() and int(size) > self.config.max_upload_mb * 1e6:
                raise too_large("request body", int(size), self.config.max_upload_mb)
            c = self.config
            request = Request(request.scope, limited_receive(request.receive, max_mb=c.max_upload_mb,
                                                             timeout_s=c.body_timeout_s))  # fmt: skip
            try:  # the body first (bounded in bytes and time), and only then a work slot
                form = await request.form(max_files=max_files, max_fields=16, max_part_size=64 * 1024)
            except HTTPError:
                raise
            except Exception as e:  # noqa: BLE001 - malformed multipart bodies
                raise HTTPError(422, "bad_form", f"not a multipart/form-data body ({type(e).__name__})") from e
            try:
                task = str(form.get("task") or "-")
                deadline = asyncio.get_running_loop().time() + c.request_timeout_s
                limits.DEADLINE.set(time.time() + c.request_timeout_s)  # the same in wall-clock time, for replicas
                try:
                    async with self.admission.slot(deadline, retry_after_s=c.retry_after_s,
                                                   timeout_s=c.request_timeout_s):  # fmt: skip
                        self.m_inflight.set(self.admission.active)
                        try:  # the remote calls inside are cancelled at the deadline (cancel_on_exit)
                            async with asyncio.timeout_at(deadline):
                                response = await work(form, rid)
                        except TimeoutError:
                            raise timed_out(c.request_timeout_s, "extraction and generation") from None
                finally:
                    self.m_inflight.set(self.admission.active)
                if "server-timing" in response.headers:  # + the time inside this ingress, parsing included
                    response.headers["Server-Timing"] += f", ingress;dur={1000 * (time.perf_counter() - t0):.1f}"
            finally:
                await form.close()
            status = response.status_code
            return response
        except HTTPError as e:
            status = e.status
            return self._error(e, rid)
        finally:
            tags = {"route": route, "task": task if task in TASKS else "-"}
            self.m_requests.inc(tags={**tags, "status": str(status)})
            self.m_latency.observe(time.perf_counter() - t0, tags=tags)

    async def _read_file(self, form, name: str, *, required: bool) -> tuple[bytes | None, str]:
        item = form.get(name)
        if item is None or isinstance(item, str):
            if required:
                raise HTTPError(422, "missing_file", f"{name}: a file upload is required")
            if isinstance(item, str) and item:
                raise HTTPError(422, "bad_field", f"{name}: must be a file upload, got text")
            return None, ""
        data = await read_upload(item, name, max_mb=self.config.max_upload_mb)
        if not data:
            raise HTTPError(422, "empty_file", f"{name}: the uploaded file is empty")
        return data, os.path.basename(item.filename or name)[:100] or name

    def _fields(self, form, model: type[BaseModel], files: set[str]) -> BaseModel:
        fields = {k: v for k, v in form.multi_items() if k not in files}
        unknown = sorted(k for k in fields if k not in model.model_fields)
        if unknown:
            raise HTTPError(422, "unknown_field", f"unknown field(s) {unknown}; allowed: "
                            f"{sorted(model.model_fields) + sorted(files)}")  # fmt: skip
        try:
            params = model.model_validate({k: (v if v != "" else None) for k, v in fields.items()})
        except ValidationError as e:
            raise HTTPError(422, "bad_field", one_line(e)) from e
        if getattr(params, "steps", None) is not None and params.steps > self.config.max_steps:
            raise HTTPError(422, "bad_field", f"steps: at most {self.config.max_steps}, got {params.steps}")
        if getattr(params, "cfg", None) is not None and params.cfg > self.config.max_cfg:
            raise HTTPError(422, "bad_field", f"cfg: at most {self.config.max_cfg:g}, got {params.cfg:g}")
        return params

    async def _generate(self, features, params, rid: str) -> tuple[np.ndarray, dict]:
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        deadline = limits.DEADLINE.get(time.time() + self.config.request_timeout_s)  # the generator stops by then
        res = await cancel_on_exit(self.generator.generate.remote({"features": features, "steps": params.steps,
                                                                   "cfg": params.cfg, "seed": seed,
                                                                   "deadline": deadline}))  # fmt: skip
        if not res["ok"]:
            raise HTTPError(res["status"], res["reason"], res["detail"])
        if not np.isfinite(res["wav"]).all():  # never a NaN wav (PCM of NaN is noise): the inputs were finite
            raise HTTPError(500, "non_finite_output", "the model produced non-finite audio for these inputs; "
                            "report it with the request id")  # fmt: skip
        span = features.speech_span
        headers = {"X-Seed": str(seed), "X-Batch-Size": str(res["batch_size"]), "X-Group-Size": str(res["group_size"]),
                   "X-Duration-S": f"{features.duration_s:.3f}", "X-Task": features.task,
                   "X-Speech-Span": "none" if span is None else f"{span[0]:.3f},{span[1]:.3f}",
                   "X-Speech-Span-Source": str(features.meta.get("speech_span_source", "clip")),
                   "Server-Timing": f"queue;dur={1000 * res['queue_s']:.1f}, "
                                    f"generate;dur={1000 * res['generate_s']:.1f}"}  # fmt: skip
        return res["wav"], headers

    # ---- routes ---------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index(self) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(self, name: str) -> Response:
        if name not in WEB_FILES:  # a fixed list: no path from the client reaches the file system
            return JSONResponse({"error": "not_found", "detail": f"no static file {name!r}"}, status_code=404)
        return FileResponse(WEB_DIR / name, media_type=WEB_FILES[name])

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> Response:
        try:
            ok = await asyncio.wait_for(
                asyncio.gather(self.extractor.ready.remote(), self.generator.ready.remote()), timeout=10
            )
        except Exception as e:  # noqa: BLE001 - not ready, whatever the reason
            return JSONResponse({"ready": False, "detail": type(e).__name__}, status_code=503)
        return JSONResponse({"ready": all(ok)}, status_code=200 if all(ok) else 503)

    @app.get("/v1/stats")
    async def stats(self) -> dict:
        gen = await self.generator.stats.remote()
        a = self.admission
        return {"inflight": a.active, "queued": a.waiting, "rejected": a.rejected, "max_inflight": a.slots,
                "max_queued": a.queued, "generator": gen}  # fmt: skip

    @app.post(
        "/v1/generate",
        openapi_extra=multipart_schema(GenerateForm, {"video": True, "reference_voice": False}),
        responses={200: {"content": {"audio/wav": {}, "video/mp4": {}}}, 413: {}, 422: {}, 503: {}},
    )
    async def generate(self, request: Request) -> Response:
        """Generate the soundtrack of an uploaded video: audio/wav, or the video with the new audio (output=mp4)."""
        return await self._handle(request, "generate", self._generate_video)

    async def _generate_video(self, form, rid: str) -> Response:
        params: GenerateForm = self._fields(form, GenerateForm, {"video", "reference_voice"})
        try:  # checked once, here; a span outside the video fails in the extractor, once its length is known
            checked = check_request(params.task, params.transcript, speech_span=params.speech_span,
                                    span_source="speech_span")  # fmt: skip
        except InputError as e:
            raise HTTPError(422, e.reason, str(e).splitlines()[0]) from e
        video, video_name = await self._read_file(form, "video", required=True)
        ref, ref_name = await self._read_file(form, "reference_voice", required=False)
        job = {"request_id": rid, "request": checked, "video": video,  # bytes: no path crosses deployments
               "video_name": video_name,
               "video_suffix": _suffix(video_name, _VIDEO_SUFFIXES, ".mp4"),
               "reference_voice": ref, "reference_name": ref_name,
               "reference_suffix": _suffix(ref_name, _AUDIO_SUFFIXES, ".wav")}  # fmt: skip
        res = await cancel_on_exit(self.extractor.remote(job))
        if not res["ok"]:
            raise HTTPError(res["status"], res["reason"], res["detail"])
        wav, headers = await self._generate(res["features"], params, rid)
        if params.output == "wav":
            return Response(_wav_bytes(wav), media_type="audio/wav", headers=headers)
        body = await asyncio.to_thread(self._mux, video, job["video_suffix"], wav, rid)
        return Response(body, media_type="video/mp4", headers=headers)

    def _mux(self, video: bytes, suffix: str, wav: np.ndarray, rid: str) -> bytes:
        from vssflow.media.mux import mux_audio

        workdir = tempfile.mkdtemp(prefix=f"m-{rid}-", dir=self.upload_dir)
        try:
            src = Path(workdir, "video" + suffix)
            src.write_bytes(video)
            try:
                out = mux_audio(src, wav, Path(workdir, "out.mp4"))
            except InputError as e:
                raise HTTPError(422, e.reason, clean_paths(str(e), {str(src): "video", workdir: "upload"})) from e
            return out.read_bytes()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @app.post(
        "/v1/generate/features",
        openapi_extra=multipart_schema(FeaturesForm, {"features": True}),
        responses={200: {"content": {"audio/wav": {}}}, 413: {}, 422: {}, 503: {}},
    )
    async def generate_features(self, request: Request) -> Response:
        """Generate from features preprocessed with our pipeline (.npz arrays or a one-row Parquet shard)."""
        return await self._handle(request, "features", self._generate_from_features)

    async def _generate_from_features(self, form, rid: str) -> Response:
        params: FeaturesForm = self._fields(form, FeaturesForm, {"features"})
        data, name = await self._read_file(form, "features", required=True)
        try:  # never unpacks to more than the body limit: the declared sizes are checked first
            f = read_features_file(data, max_bytes=int(self.config.max_upload_mb * 1e6))
        except FeaturesTooLargeError as e:
            raise HTTPError(413, e.reason, str(e).splitlines()[0]) from e
        except InputError as e:
            raise HTTPError(422, e.reason, str(e).splitlines()[0]) from e
        if not (np.isfinite(f.duration_s) and 0 < f.duration_s <= self.config.max_video_seconds):
            raise HTTPError(
                422, "bad_features", f"features: duration_s must be in (0, {self.config.max_video_seconds:g}]"
            )
        f.meta = {"clip_id": rid, "source": name}
        try:  # the span sent with the features (or stored in the shard row), else the mouth's, else the clip
            f = with_speech_span(f, f.speech_span, source="features: speech_span", given_as="features")
        except InputError as e:
            raise HTTPError(422, "bad_features", str(e).splitlines()[0]) from e
        wav, headers = await self._generate(f, params, rid)
        return Response(_wav_bytes(wav), media_type="audio/wav", headers=headers)
