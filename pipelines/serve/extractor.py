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

from pipelines.serve.config import ServeConfig, replica_model_dir
from pipelines.serve.forms import HTTPError, clean_paths
from vssflow.errors import InputError, VssflowError


@serve.deployment
class FeatureExtractor:
    """Video bytes (+ transcript, reference voice bytes) -> ClipFeatures. CPU-heavy: decoding and encoders."""

    def __init__(self, model: str, config: ServeConfig):
        import torch

        from vssflow.features.extract import Extractors
        from vssflow.inference import extract_config_for
        from vssflow.model_dir import read_model_config

        torch.set_num_threads(max(1, int(config.extractor.num_cpus)))
        self.config = config
        mc = read_model_config(replica_model_dir(model, config))
        device = config.extractor_device  # its own: a GPU only with a GPU share (check_devices)
        self.extractors = Extractors.load(extract_config_for(mc.get("info", {}), device=device))
        if self.extractors.sem_dim != int(mc["model"]["sem_dim"]):
            raise VssflowError(
                f"visual encoder gives {self.extractors.sem_dim}-d features, the model expects {mc['model']['sem_dim']}"
            )
        # this replica's own scratch space: the ingress sends bytes, never a path (its pod's paths are not here)
        self.upload_dir = config.upload_dir or tempfile.mkdtemp(prefix="vssflow-extract-")
        os.makedirs(self.upload_dir, exist_ok=True)
        self.lock = threading.Lock()  # encoders (tflite face detector) are not shared across threads

    def ready(self) -> bool:
        return True

    async def __call__(self, job: dict) -> dict:
        return await asyncio.to_thread(self._extract, job)

    def _check_video(self, name: str, width: int, height: int, duration: float | None) -> None:
        """The limits on a video upload (413): length, frame size and the pixels its decoding would hold."""
        from vssflow.inference import decoded_pixels

        c = self.config
        if duration is not None and duration > c.max_video_seconds:
            raise HTTPError(413, "video_too_long", f"{name}: video is {duration:.1f} s; at most "
                            f"{c.max_video_seconds:g} s are accepted")  # fmt: skip
        if width * height > c.max_pixels:
            raise HTTPError(413, "resolution_too_large", f"{name}: {width}x{height} frames; at most "
                            f"{c.max_pixels} pixels per frame are accepted, downscale it")  # fmt: skip
        short_side = self.extractors.config.max_short_side
        if duration is not None and decoded_pixels(height, width, duration, max_short_side=short_side) > (
            c.max_decoded_pixels
        ):
            raise HTTPError(413, "too_many_pixels", f"{name}: {width}x{height} for {duration:.1f} s decodes to more "
                            f"than {c.max_decoded_pixels / 1e6:g} megapixels; make it shorter or smaller")  # fmt: skip

    def _extract(self, job: dict) -> dict:
        from vssflow.audio.io import read_audio
        from vssflow.errors import ClipTooLongError, ProbeTimeoutError
        from vssflow.inference import prepare
        from vssflow.media.video import declared_video, probe

        workdir = tempfile.mkdtemp(prefix=f"x-{job['request_id']}-", dir=self.upload_dir)
        video = os.path.join(workdir, "video" + job["video_suffix"])
        names = {video: job["video_name"], workdir: "upload"}
        try:
            Path(video).write_bytes(job["video"])
            ref = None
            if job.get("reference_voice") is not None:
                path = os.path.join(workdir, "reference" + job["reference_suffix"])
                Path(path).write_bytes(job["reference_voice"])
                names = {path: job["reference_name"], **names}  # before its directory's name replaces it
                try:  # decoded up to the limit and no further, whatever its header says
                    ref = read_audio(path, max_seconds=self.config.max_reference_seconds)
                except ClipTooLongError as e:
                    raise HTTPError(413, "reference_too_long", clean_paths(str(e), names)) from e
            # the header's claims first (ffprobe), so that nothing over a limit is ever opened by decord; then the
            # same limits on what decord finds
            declared = declared_video(video, timeout_s=self.config.probe_timeout_s)
            self._check_video(job["video_name"], declared.width, declared.height, declared.duration)
            info = probe(video)
            self._check_video(job["video_name"], info.width, info.height, info.duration)
            with self.lock:
                features = prepare(video, request=job["request"], reference_voice=ref, extractors=self.extractors,
                                   info=info, clip_id=job["request_id"])  # fmt: skip
            features.meta["video"] = job["video_name"]
            return {"ok": True, "features": features}
        except HTTPError as e:
            return {"ok": False, "status": e.status, "reason": e.reason, "detail": e.detail}
        except ProbeTimeoutError as e:
            return {"ok": False, "status": 504, "reason": e.reason, "detail": clean_paths(str(e), names)}
        except InputError as e:
            return {"ok": False, "status": 422, "reason": e.reason, "detail": clean_paths(str(e), names)}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
