"""The dubbing deployment: whole videos dubbed from their subtitles (:func:`vssflow.dub.dub`) as jobs.

``POST /v1/dub`` gives the uploads to :meth:`DubWorker.submit`, which checks them at once (the video and its
duration, the subtitles against it, every voice recording, the sampling options: a bad one is a 4xx answer to the
POST, the subtitles' naming the cue) and admits the job to its :class:`~pipelines.serve.jobs.JobTable`; the answer is
202 with the job's id before anything is generated. One job thread runs the admitted jobs in turn, on this
deployment's own copy of the model, and records the progress (cues done / total, solver steps) that
``GET /v1/jobs/{id}`` shows; when done, the job's directory holds the video with its new soundtrack (or a .wav), the
timing report and, if asked, the stems, until the result expires. One replica: the job table lives in it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import serve

from pipelines.serve.config import ServeConfig, replica_model_dir
from pipelines.serve.forms import HTTPError, clean_paths
from pipelines.serve.jobs import Job, JobCancelled, JobTable
from vssflow.errors import InputError

__all__ = ["DubWorker", "FILES"]

log = logging.getLogger("ray.serve")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}

# what a done job can hold: file name -> (kind, media type); no name from a client is ever used as a path
FILES = {"dub.mp4": ("video", "video/mp4"), "dub.wav": ("video", "audio/wav"),
         "timing.json": ("report", "application/json"), "speech.wav": ("speech", "audio/wav"),
         "sound.wav": ("sound", "audio/wav"), "mix.wav": ("mix", "audio/wav")}  # fmt: skip


def _clean(message: str, names: dict[str, str]) -> str:
    """``message`` with each server path replaced by the client's name (longest first: a file before its
    directory), one line."""
    return clean_paths(message, dict(sorted(names.items(), key=lambda kv: -len(kv[0]))))


def _reply(fn, *args) -> dict:
    """``{"ok": True, **fn(*args)}`` or the :class:`HTTPError` as ``{"ok": False, ...}`` (errors cross Ray as data)."""
    try:
        return {"ok": True, **fn(*args)}
    except HTTPError as e:
        return {"ok": False, "status": e.status, "reason": e.reason, "detail": e.detail, "headers": e.headers}


@serve.deployment
class DubWorker:
    """Admits, runs and keeps dubbing jobs (see the module docstring)."""

    def __init__(self, model: str, config: ServeConfig):
        import torch

        from vssflow.device import resolve_device
        from vssflow.generator import Generator

        self.config, self.limits = config, config.dub
        threads = max(1, int(self.limits.worker.num_cpus))
        torch.set_num_threads(threads)
        device = resolve_device(config.device if self.limits.worker.num_gpus > 0 else "cpu")
        model_dir = replica_model_dir(model, config)  # this replica's own copy (an MLflow URI: its own download)
        self.gen = Generator.from_pretrained(model_dir, device=device.torch, dtype=device.dtype)
        self.gen.extractors  # noqa: B018 - loaded now: a missing encoder fails the deployment, not the first job
        self.root = Path(self.limits.jobs_dir or tempfile.mkdtemp(prefix="vssflow-dub-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.table = JobTable(max_jobs=self.limits.max_jobs, ttl_s=self.limits.result_ttl_s,
                              retry_after_s=max(config.retry_after_s, 5))  # fmt: skip
        # one job at a time, with torch's thread count set inside its thread (OpenMP settings are per thread)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dub", initializer=torch.set_num_threads,
                                       initargs=(threads,))  # fmt: skip
        self.stop = threading.Event()
        threading.Thread(target=self._sweep_every, args=(min(30.0, self.limits.result_ttl_s / 10),), daemon=True,
                         name="dub-expiry").start()  # fmt: skip

    def _sweep_every(self, period: float) -> None:
        while not self.stop.wait(max(0.5, period)):
            self.table.sweep()

    def ready(self) -> bool:
        return True

    # ---- what the ingress calls (async: status polls are answered while a job runs in its thread) -------------

    async def submit(self, upload: dict) -> dict:
        """Check ``upload`` and admit its job. ``upload``: the bytes and client names of ``video``, ``subtitles``,
        ``reference_voice`` (optional), ``voices`` {NAME: (bytes, name)}, and ``options`` (the form's fields).
        Returns {"ok", "job": the job's status} or {"ok": False, "status", "reason", "detail", "headers"}."""
        try:
            self.table.check_room()  # before the uploads are written
            job = await asyncio.to_thread(self._prepare, upload)
        except HTTPError as e:
            return {"ok": False, "status": e.status, "reason": e.reason, "detail": e.detail, "headers": e.headers}
        try:
            self.table.add(job)
        except HTTPError as e:
            shutil.rmtree(job.workdir, ignore_errors=True)
            return {"ok": False, "status": e.status, "reason": e.reason, "detail": e.detail, "headers": e.headers}
        snapshot = self.table.snapshot(job.id)  # taken before the job thread can start: "queued", no progress
        self.pool.submit(self._run, job)
        log.info("dub job %s admitted: %s", job.id, job.info)
        return {"ok": True, "job": snapshot}

    async def status(self, job_id: str) -> dict:
        return _reply(lambda: {"job": self.table.snapshot(job_id)})

    async def cancel(self, job_id: str) -> dict:
        def cancel() -> dict:
            job = self.table.get(job_id)
            job.cancel.set()
            if job.state == "queued":  # its turn will not come; a running job stops at its next solver step
                self.table.update(job, state="cancelled", stage="cancelled")
            return {"job": self.table.snapshot(job_id)}

        return _reply(cancel)

    async def file(self, job_id: str, name: str) -> dict:
        """{"ok", "data": bytes, "media_type"} of one result file of a done job."""

        def read() -> dict:
            job = self.table.get(job_id)
            if job.state != "done" or name not in job.files.values():
                have = ", ".join(job.files.values()) if job.state == "done" else f"none yet (job is {job.state})"
                raise HTTPError(404, "no_such_file", f"job {job_id}: no file {name!r}; files: {have}")
            return {"data": (job.workdir / name).read_bytes(), "media_type": FILES[name][1]}

        return await asyncio.to_thread(_reply, read)

    # ---- admission: everything a client sent is checked before the job is queued ----------------------------

    def _prepare(self, upload: dict) -> Job:
        from vssflow.audio.io import read_audio
        from vssflow.dub import voice_for
        from vssflow.features.speaker_base import check_reference_voice
        from vssflow.media.video import probe
        from vssflow.text.subtitles import read_subtitles

        opts = upload["options"]
        job_id = uuid.uuid4().hex
        job = Job(id=job_id, workdir=self.root / job_id)
        inp = job.workdir / "in"
        inp.mkdir(parents=True)
        names = {str(job.workdir): "upload"}
        try:
            video = inp / ("video" + upload["video_suffix"])
            video.write_bytes(upload["video"])
            names[str(video)] = upload["video_name"]
            info = probe(video)
            if info.duration > self.limits.max_video_seconds:
                raise HTTPError(413, "video_too_long", f"{upload['video_name']}: video is {info.duration:.1f} s; at "
                                f"most {self.limits.max_video_seconds:g} s are dubbed, cut it")  # fmt: skip
            if info.width * info.height > self.config.max_pixels:
                raise HTTPError(413, "resolution_too_large", f"{upload['video_name']}: {info.width}x{info.height} "
                                f"frames; at most {self.config.max_pixels} pixels per frame, downscale it")  # fmt: skip
            subs_path = inp / ("subtitles" + upload["subtitles_suffix"])
            subs_path.write_bytes(upload["subtitles"])
            names[str(subs_path)] = upload["subtitles_name"]
            names[subs_path.name] = upload["subtitles_name"]  # messages name the file too ("iconv ... NAME")
            subs = read_subtitles(subs_path, duration_s=float(info.duration), strict=bool(opts["strict"]))

            def recording(data: bytes, client_name: str, stem: str, label: str) -> Path:
                suffix = Path(client_name).suffix.lower()
                path = inp / (stem + (suffix if suffix in AUDIO_SUFFIXES else ".wav"))
                path.write_bytes(data)
                names[str(path)] = client_name
                check_reference_voice(read_audio(path), source=label)  # readable, >= 1 s, not silent
                return path

            voices = {name: recording(data, fname, f"voice-{k}", f"voice {name} ({fname})")
                      for k, (name, (data, fname)) in enumerate(upload["voices"].items())}  # fmt: skip
            ref = None
            if upload.get("reference_voice") is not None:
                ref = recording(upload["reference_voice"], upload["reference_name"], "reference", "reference_voice")
            if opts["strict"] and voices:
                for cue in subs.cues:
                    voice_for(cue, voices, ref, strict=True)
            steps, cfg, _ = self.gen.check(steps=opts.get("steps"), cfg=opts.get("cfg"))
        except InputError as e:
            shutil.rmtree(job.workdir, ignore_errors=True)
            raise HTTPError(422, e.reason, _clean(str(e), names)) from e
        except BaseException:
            shutil.rmtree(job.workdir, ignore_errors=True)
            raise
        job.work = {"video": video, "info": info, "subtitles": subs, "voices": voices, "reference_voice": ref,
                    "options": {**opts, "steps": steps, "cfg": cfg}, "names": names}  # fmt: skip
        job.cues_total = len(subs.cues)
        job.info = {"video": upload["video_name"], "subtitles": upload["subtitles_name"],
                    "duration_s": round(float(info.duration), 3), "speakers": list(subs.speakers),
                    "voices": sorted(voices), "fixes": list(subs.fixes), "seed": opts["seed"]}  # fmt: skip
        return job

    # ---- the job thread ---------------------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        from vssflow.audio.io import write_audio
        from vssflow.dub import DubConfig, dub
        from vssflow.media.mux import mux_audio

        if job.cancel.is_set():
            return
        w, opts = job.work, job.work["options"]
        self.table.update(job, state="running", stage="features")
        sound = opts["sound"] == "on"

        def progress(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled
            self.table.update(job, steps_done=done, steps_total=total)

        def cue_progress(done: int, total: int) -> None:
            stage = "speech" if done < total else ("sound" if sound else "mixing")
            self.table.update(job, cues_done=done, cues_total=total, stage=stage)

        try:
            config = DubConfig(sound=sound, strict=bool(opts["strict"]), seed=int(opts["seed"]), steps=opts["steps"],
                               cfg=opts["cfg"], batch=self.limits.batch)  # fmt: skip
            result = dub(self.gen, w["video"], w["subtitles"], voices=w["voices"] or None,
                         reference_voice=w["reference_voice"], config=config, info=w["info"], progress=progress,
                         cue_progress=cue_progress)  # fmt: skip
            self.table.update(job, stage="writing")
            files = {}
            if opts["output"] == "mp4":
                files["video"] = mux_audio(w["video"], result.mix, job.workdir / "dub.mp4").name
            else:
                files["video"] = write_audio(job.workdir / "dub.wav", result.mix).name
            if opts["stems"]:
                for kind, wav in (("speech", result.speech), ("sound", result.sound), ("mix", result.mix)):
                    if wav is not None:
                        files[kind] = write_audio(job.workdir / f"{kind}.wav", wav).name
            report = {**result.report, "video": job.info["video"], "subtitles": job.info["subtitles"],
                      "job": job.id, "asr_note": "not run by the service"}  # fmt: skip
            report = json.loads(_clean(json.dumps(report), {k: v for k, v in w["names"].items() if "/" in k}))
            (job.workdir / "timing.json").write_text(json.dumps(report, indent=2))
            files["report"] = "timing.json"
            self.table.update(job, files=files, summary=report["summary"], state="done", stage="done")
        except JobCancelled:
            self.table.update(job, state="cancelled", stage="cancelled")
        except InputError as e:
            self.table.update(
                job,
                state="failed",
                stage="failed",
                error={"status": 422, "error": e.reason, "detail": _clean(str(e), w["names"])},
            )
        except Exception as e:  # noqa: BLE001 - a job fails alone; the trace goes to the replica's log
            log.exception("dub job %s failed", job.id)
            self.table.update(job, state="failed", stage="failed",
                              error={"status": 500, "error": "dub_failed", "detail": f"{type(e).__name__} while "
                                     f"dubbing; the server's log has the trace of job {job.id}"})  # fmt: skip
        finally:
            shutil.rmtree(job.workdir / "in", ignore_errors=True)  # the results stay until the job expires
