"""The feature-extraction deployment: an uploaded video (+ transcript, reference voice) -> the model's conditions.

CPU-heavy (decoding and encoders), sized and scaled apart from the generator. The one path from a user's video to
conditions is :func:`vssflow.inference.prepare`; this deployment adds the upload's limits (duration, frame size) and
writes the bytes to a fresh directory that is removed in ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from pathlib import Path

from ray import serve

from pipelines.serve.config import ServeConfig
from pipelines.serve.forms import HTTPError, clean_paths
from vssflow.errors import InputError, VssflowError


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
        device = config.device if config.extractor.num_gpus > 0 else "cpu"  # a GPU only with a GPU share
        self.extractors = Extractors.load(extract_config_for(mc.get("info", {}), device=device))
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
            return {"ok": False, "status": 422, "reason": e.reason, "detail": clean_paths(str(e), names)}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
