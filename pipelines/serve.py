"""``vssflow serve``: the generator as an HTTP service (Ray Serve + FastAPI), with a web page at ``/``.

Three deployments, each sized and scaled on its own (``autoscaling_config``, ``num_cpus``/``num_gpus``):

    Api (FastAPI ingress, ~0 CPU)  --bytes-->  FeatureExtractor (CPU: decoding + encoders)
                                   --ClipFeatures-->  GeneratorServer (the DiT; @serve.batch)

* ``POST /v1/generate``  multipart: ``video`` file, optional ``transcript``, optional ``reference_voice`` file,
  optional ``speech_span`` ("START,END" seconds where the words are; default: where the mouth moves, else the whole
  video), ``task``, ``steps``, ``cfg``, ``seed``, ``output`` ("wav" or "mp4") -> audio/wav or video/mp4 (video copied).
* ``POST /v1/generate/features``  multipart: ``features`` (.npz with sem/lip/sync/phonemes/speaker/duration_s/task and
  optional speech_span (2,) / phoneme_durations (P,), or a one-row Parquet file of our shard schema), ``steps``,
  ``cfg``, ``seed`` -> audio/wav.
* ``GET /healthz`` (process up), ``/readyz`` (both model deployments answer), ``/v1/stats`` (in-flight requests and
  recent batch sizes), ``/openapi.json`` + ``/docs`` (FastAPI), ``/`` the web page.
* Every response carries ``X-Request-Id`` (Ray Serve's request id: the client's own when it sends one, which is
  also the id in the error bodies and the replica logs); generations also ``X-Seed`` (drawn when not given: send
  it back to get the same audio), ``X-Speech-Span`` ("START,END" seconds the phonemes were laid over, or "none")
  with ``X-Speech-Span-Source`` (user, features, mouth, clip), ``X-Batch-Size`` (requests in the @serve.batch call),
  ``X-Group-Size`` (of
  those, the ones generated together in one tensor batch) and ``Server-Timing`` (ms: ``queue`` waiting for a
  batch, ``generate`` the batch's generation, ``ingress`` everything inside the HTTP deployment).

The generator batches concurrent requests with ``@serve.batch`` and splits each batch into groups of one shape:
same task, duration bucket (the shard buckets, so padding is bounded) and sampling options. A request alone in the
generator replica starts at once; only when others are queued or generating does a batch wait (up to
``batch_wait_timeout_s``) to fill.

Bad input never reaches a 5xx: limits on upload bytes (413), video duration and resolution (413), corrupt or
non-video uploads, unknown fields, out-of-range steps/cfg/seed (422, one-line ``detail``). Under overload (more
than ``max_inflight`` requests inside the ingress) the answer is 503 with ``Retry-After``. Uploads live in a fresh
directory per request under ``upload_dir``, removed in ``finally``; no request parameter is ever used as a path.

Metrics (Prometheus, through Ray's metrics agent): ``vssflow_requests_total{route,task,status}``,
``vssflow_request_seconds{route,task}``, ``vssflow_inflight``, ``vssflow_batch_size``, ``vssflow_group_size``,
plus Ray Serve's own ``ray_serve_*`` series.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations (Request) inside the replica.
import argparse
import asyncio
import functools
import io
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from vssflow.constants import SAMPLE_RATE, TASKS
from vssflow.errors import InputError, VssflowError
from vssflow.inference import check_request, is_model_uri, with_speech_span

WEB_DIR = Path(__file__).resolve().parent / "web"
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


# ------------------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Scaling:
    """Resources and autoscaling of one deployment."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 32

    def options(self) -> dict:
        return {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
        }


@dataclass(frozen=True)
class ServeConfig:
    """What ``vssflow serve`` runs.

    Attributes:
        model: local model directory (MLflow URIs are resolved before, by :func:`resolve_model_dir`).
        device: torch device of the extractors and the generator ("cpu", "cuda").
        max_upload_mb: largest request body (413 above it).
        max_video_seconds: longest video accepted (413); longer than the model window is fine (windows).
        max_pixels: largest frame (width * height) accepted (413).
        max_steps, max_cfg: bounds of the sampling options (422 outside).
        max_inflight: requests inside the ingress at once; more get 503 + Retry-After.
        retry_after_s: the Retry-After value.
        max_batch_size, batch_wait_timeout_s: @serve.batch settings of the generator.
        upload_dir: parent of the per-request upload directories (default: a fresh temporary directory).
        ingress, extractor, generator: resources and autoscaling of each deployment.
    """

    model: str
    device: str = "cpu"
    max_upload_mb: float = 50.0
    max_video_seconds: float = 60.0
    max_pixels: int = 1920 * 1080
    max_steps: int = 200
    max_cfg: float = 20.0
    max_inflight: int = 16
    retry_after_s: int = 2
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    upload_dir: str | None = None
    ingress: Scaling = field(default_factory=lambda: Scaling(num_cpus=0.0, max_ongoing_requests=1000))
    extractor: Scaling = field(default_factory=Scaling)
    generator: Scaling = field(default_factory=lambda: Scaling(max_ongoing_requests=64))


def resolve_model_dir(spec: str, *, tracking_uri: str | None = None) -> Path:
    """A local model directory for ``spec``: a directory as is, or the download of an MLflow URI
    (``models:/name/version``, ``models:/name/stage``, ``runs:/<id>/model``) from ``tracking_uri``."""
    if not is_model_uri(spec):
        return Path(spec)
    if not tracking_uri:
        raise InputError(f"{spec}: an MLflow URI needs a tracking URI (--tracking-uri or $MLFLOW_TRACKING_URI)")
    from pipelines.mlflow_utils import download_registered_model_dir

    try:
        return download_registered_model_dir(spec, tracking_uri=tracking_uri)
    except FileNotFoundError as e:
        raise InputError(str(e).splitlines()[0]) from e


# -------------------------------------------------------------------------------------------------- request schemas


class GenerateForm(BaseModel):
    """Fields of ``POST /v1/generate`` (multipart/form-data). Files: ``video`` (required), ``reference_voice``."""

    model_config = ConfigDict(extra="forbid")
    task: Literal["v2s", "tts", "joint"] = "v2s"
    transcript: str | None = Field(None, max_length=2000, description="what is said (tts, joint)")
    speech_span: str | None = Field(
        None, max_length=64, description="START,END seconds where the words are (tts, joint); default: the mouth's"
    )
    steps: int | None = Field(None, ge=1, description="solver steps (default: the model's)")
    cfg: float | None = Field(None, ge=0.0, description="classifier-free guidance scale")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random seed; drawn when absent, echoed in X-Seed")
    output: Literal["wav", "mp4"] = "wav"


class FeaturesForm(BaseModel):
    """Fields of ``POST /v1/generate/features``. File: ``features`` (.npz or one-row .parquet)."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=1)
    cfg: float | None = Field(None, ge=0.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


def _multipart_schema(form: type[BaseModel], files: dict[str, bool]) -> dict:
    schema = form.model_json_schema()
    props = dict(schema.get("properties", {}))
    for name, required in files.items():
        props[name] = {"type": "string", "format": "binary", **({} if required else {"nullable": True})}
    body = {"type": "object", "properties": props, "required": [n for n, r in files.items() if r]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


class HTTPError(Exception):
    """An answer with a status and a one-line reason (raised inside handlers, turned into JSON)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts).replace("\n", " ")


def _clean(message: str, paths: dict[str, str]) -> str:
    """An error message without server paths (each replaced by the client's name for the file)."""
    for path, name in paths.items():
        message = message.replace(path, name)
    return message.splitlines()[0] if message else message


# ------------------------------------------------------------------------------------------------------- deployments


@serve.deployment
class FeatureExtractor:
    """Video bytes (+ transcript, reference voice bytes) -> ClipFeatures. CPU-heavy: decoding and encoders."""

    def __init__(self, model_dir: str, config: ServeConfig):
        import torch

        from vssflow.features.extract import Extractors
        from vssflow.generator import read_model_config
        from vssflow.inference import extract_config_for

        torch.set_num_threads(max(1, int(config.extractor.num_cpus)))
        self.config = config
        mc = read_model_config(model_dir)
        self.extractors = Extractors.load(extract_config_for(mc.get("info", {}), device=config.device))
        if self.extractors.sem_dim != int(mc["model"]["sem_dim"]):
            raise VssflowError(
                f"visual encoder gives {self.extractors.sem_dim}-d features, the model expects {mc['model']['sem_dim']}"
            )
        self.lock = threading.Lock()  # encoders (tflite face detector) are not shared across threads

    def ready(self) -> bool:
        return True

    async def __call__(self, job: dict) -> dict:
        return await asyncio.to_thread(self._extract, job)

    def _extract(self, job: dict) -> dict:
        from vssflow.inference import prepare
        from vssflow.media.video import probe

        workdir = tempfile.mkdtemp(prefix=f"x-{job['request_id']}-", dir=job["upload_dir"])
        video = os.path.join(workdir, "video" + job["video_suffix"])
        names = {video: job["video_name"], workdir: "upload"}
        try:
            Path(video).write_bytes(job["video"])
            ref = None
            if job.get("reference_voice") is not None:
                ref = os.path.join(workdir, "reference" + job["reference_suffix"])
                Path(ref).write_bytes(job["reference_voice"])
                names[ref] = job["reference_name"]
            info = probe(video)
            if info.duration > self.config.max_video_seconds:
                raise HTTPError(413, "video_too_long",
                                f"{job['video_name']}: video is {info.duration:.1f} s; at most "
                                f"{self.config.max_video_seconds:g} s are accepted")  # fmt: skip
            if info.width * info.height > self.config.max_pixels:
                raise HTTPError(413, "resolution_too_large",
                                f"{job['video_name']}: {info.width}x{info.height} frames; at most "
                                f"{self.config.max_pixels} pixels per frame are accepted, downscale it")  # fmt: skip
            with self.lock:
                features = prepare(video, request=job["request"], reference_voice=ref, extractors=self.extractors,
                                   info=info, clip_id=job["request_id"])  # fmt: skip
            features.meta["video"] = job["video_name"]
            return {"ok": True, "features": features}
        except HTTPError as e:
            return {"ok": False, "status": e.status, "reason": e.reason, "detail": e.detail}
        except InputError as e:
            return {"ok": False, "status": 422, "reason": e.reason, "detail": _clean(str(e), names)}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def group_key(features, steps: int | None, cfg: float | None, window_frames: int) -> tuple:
    """Requests with the same key are generated in one tensor batch: task, duration bucket, sampling options.
    Clips longer than the model window are generated alone (in windows)."""
    from vssflow.constants import latent_frames
    from vssflow.data.schema import BUCKETS_S

    n = latent_frames(features.duration_s)
    if n > window_frames:
        return ("long", id(features))
    bucket = next((b for b in BUCKETS_S if features.duration_s <= b + 1e-6), float("inf"))
    return (features.task, bucket, steps, cfg)


@serve.deployment
class GeneratorServer:
    """The DiT. Concurrent requests are batched (``@serve.batch``) and split into one-shape groups."""

    def __init__(self, model_dir: str, config: ServeConfig):
        import torch
        from ray.util import metrics

        from vssflow.generator import Generator

        threads = max(1, int(config.generator.num_cpus))
        torch.set_num_threads(threads)
        # One compute thread, with torch's thread count set inside it (OpenMP settings are per thread); the event
        # loop stays free to receive and queue the next requests while a batch is generated.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate", initializer=torch.set_num_threads,
                                       initargs=(threads,))  # fmt: skip
        self.gen = Generator.from_pretrained(model_dir, device=config.device)
        self.config = config
        self.inflight = 0  # requests inside this replica (queued for a batch or being generated)
        self._batched.set_max_batch_size(config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.recent: deque[tuple[int, int]] = deque(maxlen=512)  # (batch size, groups)
        bounds = [1.5, 2.5, 4.5, 8.5, 16.5, 32.5]
        self.m_batch = metrics.Histogram("vssflow_batch_size", description="requests per @serve.batch call",
                                         boundaries=bounds)  # fmt: skip
        self.m_group = metrics.Histogram("vssflow_group_size", description="clips per one-shape tensor batch",
                                         boundaries=bounds)  # fmt: skip

    def ready(self) -> bool:
        return True

    def stats(self) -> dict:
        sizes = [b for b, _ in self.recent]
        return {"batches": len(sizes), "max_batch_size": max(sizes, default=0), "recent_batch_sizes": sizes[-64:],
                "configured_max_batch_size": self.config.max_batch_size}  # fmt: skip

    async def generate(self, request: dict) -> dict:
        """``{"features", "steps", "cfg", "seed"}`` -> ``{"ok", "wav" (L,) float32, "batch_size", "group_size"}``."""
        try:  # reject a bad request alone, before it can fail a whole batch
            self.gen.check(request["features"], steps=request.get("steps"), cfg=request.get("cfg"))
        except InputError as e:
            return {"ok": False, "status": 422, "reason": e.reason, "detail": str(e).splitlines()[0]}
        # Waiting for company only pays when there is company: a request alone in the replica (nothing queued,
        # nothing generating) starts at once; otherwise the batch waits up to batch_wait_timeout_s to fill.
        self._batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s if self.inflight else 0.0)
        self.inflight += 1
        try:
            return await self._batched({**request, "queued_at": time.perf_counter()})
        finally:
            self.inflight -= 1

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, requests: list[dict]) -> list[dict]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = group_key(r["features"], r.get("steps"), r.get("cfg"), self.gen.config.max_frames)
            groups.setdefault(key, []).append(i)
        self.recent.append((len(requests), len(groups)))
        self.m_batch.observe(len(requests))
        out: list[dict | None] = [None] * len(requests)
        for idx in groups.values():
            first = requests[idx[0]]
            self.m_group.observe(len(idx))
            try:
                t0 = time.perf_counter()
                wavs = await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(
                    self.gen.generate, [requests[i]["features"] for i in idx], steps=first.get("steps"),
                    cfg=first.get("cfg"), seed=[int(requests[i]["seed"]) for i in idx],
                ))  # fmt: skip
                t1 = time.perf_counter()
                for i, w in zip(idx, wavs, strict=True):
                    out[i] = {"ok": True, "wav": w, "batch_size": len(requests), "group_size": len(idx),
                              "queue_s": t0 - requests[i]["queued_at"], "generate_s": t1 - t0}  # fmt: skip
            except InputError as e:
                for i in idx:
                    out[i] = {"ok": False, "status": 422, "reason": e.reason, "detail": str(e).splitlines()[0]}
        return out


# ------------------------------------------------------------------------------------------------------------ ingress

app = FastAPI(
    title="vssflow",
    description="Generate sound effects and lip-synced speech for silent video (VSSFlow).",
    version="1",
)


def _wav_bytes(wav: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _suffix(filename: str | None, allowed: set[str], default: str) -> str:
    """A safe suffix from the client's file name (the name itself is never used as a path)."""
    s = Path(filename or "").suffix.lower()
    return s if s in allowed else default


def _load_npz(data: bytes):
    from vssflow.types import ClipFeatures

    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's file
        raise HTTPError(422, "bad_features", f"features: not a readable .npz file ({type(e).__name__})") from e
    missing = [k for k in ("duration_s", "task", "sem") if k not in arrays]
    if missing:
        raise HTTPError(422, "bad_features", f"features: .npz lacks {missing}; expected duration_s, task, sem, ...")
    known = {"duration_s", "task", "sem", "lip", "sync", "phonemes", "speaker", "speech_span", "phoneme_durations"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise HTTPError(422, "bad_features", f"features: unknown arrays {unknown}")

    def opt(k):
        a = arrays.get(k)
        return None if a is None or a.size == 0 else a

    task = str(arrays["task"])
    if task not in TASKS:
        raise HTTPError(422, "bad_features", f"features: task must be one of {TASKS}, got {task!r}")
    try:
        duration = float(arrays["duration_s"])
    except (TypeError, ValueError) as e:
        raise HTTPError(422, "bad_features", "features: duration_s must be a number") from e
    span = opt("speech_span")
    if span is not None:
        from vssflow.features.span import parse_span

        try:
            span = parse_span(np.asarray(span, np.float64).reshape(-1).tolist(), source="features: speech_span")
        except (InputError, TypeError, ValueError):
            raise HTTPError(422, "bad_features", "features: speech_span must be (2,) seconds [START, END] with "
                            "0 <= START < END") from None  # fmt: skip
    return ClipFeatures(duration_s=duration, task=task, sem=arrays["sem"], lip=opt("lip"), sync=opt("sync"),
                        phonemes=opt("phonemes"), speaker=opt("speaker"), speech_span=span,
                        phoneme_durations=opt("phoneme_durations"))  # fmt: skip


def _load_parquet(data: bytes):
    import pyarrow.parquet as pq

    from vssflow.data.schema import row_to_features, table_to_rows

    try:
        rows = table_to_rows(pq.read_table(io.BytesIO(data)))
        if len(rows) != 1:
            raise HTTPError(422, "bad_features", f"features: the Parquet file has {len(rows)} rows; send exactly one")
        f = row_to_features(rows[0])
    except HTTPError:
        raise
    except Exception as e:  # noqa: BLE001
        raise HTTPError(422, "bad_features", f"features: not a vssflow shard row ({type(e).__name__})") from e
    f.mel = None
    return f


@serve.deployment
@serve.ingress(app)
class Api:
    """HTTP front: validation, limits, load shedding; delegates to the extractor and generator deployments."""

    def __init__(self, extractor, generator, config: ServeConfig):
        from ray.util import metrics

        self.extractor, self.generator, self.config = extractor, generator, config
        self.upload_dir = config.upload_dir or tempfile.mkdtemp(prefix="vssflow-serve-")
        os.makedirs(self.upload_dir, exist_ok=True)
        self.inflight = 0
        self.rejected = 0
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

    async def _handle(self, request: Request, route: str, work) -> Response:
        """Request id, size limit, load shedding, metrics and error mapping around ``work(form, rid)``."""
        rid = request.headers.get("x-request-id", "")  # set by Serve's proxy (the client's, or a new one)
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        t0 = time.perf_counter()
        task, status = "-", 500
        try:
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > self.config.max_upload_mb * 1e6:
                raise HTTPError(413, "too_large", f"request body is {int(size) / 1e6:.1f} MB; at most "
                                f"{self.config.max_upload_mb:g} MB are accepted")  # fmt: skip
            if self.inflight >= self.config.max_inflight:
                self.rejected += 1
                raise HTTPError(503, "overloaded", f"{self.inflight} requests in progress; retry later",
                                {"Retry-After": str(self.config.retry_after_s)})  # fmt: skip
            self.inflight += 1
            self.m_inflight.set(self.inflight)
            try:
                try:
                    form = await request.form(max_files=4, max_fields=16, max_part_size=64 * 1024)
                except Exception as e:  # noqa: BLE001 - malformed multipart bodies
                    raise HTTPError(422, "bad_form", f"not a multipart/form-data body ({type(e).__name__})") from e
                try:
                    task = str(form.get("task") or "-")
                    response = await work(form, rid)
                    if "server-timing" in response.headers:  # + the time inside this ingress, parsing included
                        response.headers["Server-Timing"] += f", ingress;dur={1000 * (time.perf_counter() - t0):.1f}"
                finally:
                    await form.close()
            finally:
                self.inflight -= 1
                self.m_inflight.set(self.inflight)
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
        data = await item.read()
        if len(data) > self.config.max_upload_mb * 1e6:
            raise HTTPError(413, "too_large", f"{name}: {len(data) / 1e6:.1f} MB; at most "
                            f"{self.config.max_upload_mb:g} MB are accepted")  # fmt: skip
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
            raise HTTPError(422, "bad_field", _one_line(e)) from e
        if getattr(params, "steps", None) is not None and params.steps > self.config.max_steps:
            raise HTTPError(422, "bad_field", f"steps: at most {self.config.max_steps}, got {params.steps}")
        if getattr(params, "cfg", None) is not None and params.cfg > self.config.max_cfg:
            raise HTTPError(422, "bad_field", f"cfg: at most {self.config.max_cfg:g}, got {params.cfg:g}")
        return params

    async def _generate(self, features, params, rid: str) -> tuple[np.ndarray, dict]:
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        res = await self.generator.generate.remote({"features": features, "steps": params.steps,
                                                    "cfg": params.cfg, "seed": seed})  # fmt: skip
        if not res["ok"]:
            raise HTTPError(res["status"], res["reason"], res["detail"])
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
        return {"inflight": self.inflight, "rejected": self.rejected, "max_inflight": self.config.max_inflight,
                "generator": gen}  # fmt: skip

    @app.post(
        "/v1/generate",
        openapi_extra=_multipart_schema(GenerateForm, {"video": True, "reference_voice": False}),
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
        job = {"request_id": rid, "upload_dir": self.upload_dir, "request": checked, "video": video,
               "video_name": video_name,
               "video_suffix": _suffix(video_name, _VIDEO_SUFFIXES, ".mp4"),
               "reference_voice": ref, "reference_name": ref_name,
               "reference_suffix": _suffix(ref_name, _AUDIO_SUFFIXES, ".wav")}  # fmt: skip
        res = await self.extractor.remote(job)
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
                raise HTTPError(422, e.reason, _clean(str(e), {str(src): "video", workdir: "upload"})) from e
            return out.read_bytes()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @app.post(
        "/v1/generate/features",
        openapi_extra=_multipart_schema(FeaturesForm, {"features": True}),
        responses={200: {"content": {"audio/wav": {}}}, 413: {}, 422: {}, 503: {}},
    )
    async def generate_features(self, request: Request) -> Response:
        """Generate from features preprocessed with our pipeline (.npz arrays or a one-row Parquet shard)."""
        return await self._handle(request, "features", self._generate_from_features)

    async def _generate_from_features(self, form, rid: str) -> Response:
        params: FeaturesForm = self._fields(form, FeaturesForm, {"features"})
        data, name = await self._read_file(form, "features", required=True)
        f = _load_parquet(data) if data[:4] == b"PAR1" else _load_npz(data)
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


# --------------------------------------------------------------------------------------------------- app and command


def build_app(config: ServeConfig):
    """The Serve application (bind graph) for ``config``."""
    model_dir = str(Path(config.model).resolve())
    extractor = FeatureExtractor.options(name="FeatureExtractor", **config.extractor.options()).bind(model_dir, config)
    generator = GeneratorServer.options(name="GeneratorServer", **config.generator.options()).bind(model_dir, config)
    return Api.options(name="Api", **config.ingress.options()).bind(extractor, generator, config)


def build_app_from_args(args: dict):
    """Application builder for a Serve config file or a KubeRay RayService (``pipelines.serve:build_app_from_args``).

    Args:
        args: ``model`` (directory or MLflow URI), ``tracking_uri`` (for URIs; may be empty), ``device``.
    """
    model = resolve_model_dir(str(args["model"]), tracking_uri=args.get("tracking_uri") or None)
    return build_app(ServeConfig(model=str(model), device=str(args.get("device") or "cpu")))


def start(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, name: str = "vssflow") -> str:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the app (Ray must be initialised). Returns the URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or MLflow URI (models:/NAME/VERSION)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for URIs (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ray-address", default=None, help="join a running cluster ('auto'); default: start Ray locally")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--max-inflight", type=int, default=16, help="requests in progress before answering 503")
    p.add_argument("--max-upload-mb", type=float, default=50.0)
    p.add_argument("--max-video-seconds", type=float, default=60.0)
    p.add_argument("--generator-cpus", type=float, default=1.0)
    p.add_argument("--generator-gpus", type=float, default=0.0)
    p.add_argument("--generator-replicas", default="1", help="N or MIN:MAX (autoscaling)")
    p.add_argument("--extractor-cpus", type=float, default=1.0)
    p.add_argument("--extractor-replicas", default="1", help="N or MIN:MAX (autoscaling)")
    p.add_argument("--upload-dir", default=None, help="where per-request uploads live (removed after each request)")


def _replicas(spec: str) -> tuple[int, int]:
    lo, _, hi = spec.partition(":")
    return int(lo), int(hi or lo)


def config_from_args(args: argparse.Namespace, model_dir: str) -> ServeConfig:
    glo, ghi = _replicas(args.generator_replicas)
    elo, ehi = _replicas(args.extractor_replicas)
    return ServeConfig(
        model=model_dir, device=args.device, max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000, max_inflight=args.max_inflight,
        max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds, upload_dir=args.upload_dir,
        generator=Scaling(num_cpus=args.generator_cpus, num_gpus=args.generator_gpus, min_replicas=glo,
                          max_replicas=ghi, max_ongoing_requests=64),
        extractor=Scaling(num_cpus=args.extractor_cpus, min_replicas=elo, max_replicas=ehi),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import ray

    from vssflow.generator import read_model_config

    model_dir = resolve_model_dir(args.model, tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    read_model_config(model_dir)  # fail fast, one line, before starting Ray
    config = config_from_args(args, str(model_dir))
    # Handlers first: a SIGINT/SIGTERM that arrives while Ray and the app start (the app answers /readyz before
    # serve.run returns) stops the server once it is up, instead of being swallowed inside Ray's start-up code.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.ray_address:
        ray.init(address=args.ray_address)
    else:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    url = start(config, host=args.host, port=args.port)
    print(f"vssflow serve: model {model_dir}; {url}/ (web page), {url}/docs (API), {url}/readyz", flush=True)
    print(f"vssflow serve: config {json.dumps(asdict(config), default=str)}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
        print("vssflow serve: stopping", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def replace_config(config: ServeConfig, **changes: Any) -> ServeConfig:
    """``dataclasses.replace`` (for benches and tests)."""
    return replace(config, **changes)
