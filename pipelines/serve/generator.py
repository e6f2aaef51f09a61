"""The generator deployment: the DiT behind ``@serve.batch``, concurrent requests grouped into one-shape batches."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from pipelines.serve.config import ServeConfig, replica_model_dir
from vssflow.device import resolve_device
from vssflow.errors import InputError


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

    def __init__(self, model: str, config: ServeConfig):
        import torch
        from ray.util import metrics

        from vssflow.generator import Generator

        threads = max(1, int(config.generator.num_cpus))
        torch.set_num_threads(threads)
        # One compute thread, with torch's thread count set inside it (OpenMP settings are per thread); the event
        # loop stays free to receive and queue the next requests while a batch is generated.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate", initializer=torch.set_num_threads,
                                       initargs=(threads,))  # fmt: skip
        device = resolve_device(config.device)  # "cuda": the GPU Ray gave this replica (num_gpus); bf16 there
        # the DiT and the vocoder on that device: a @serve.batch group is one tensor batch (Generator.generate)
        model_dir = replica_model_dir(model, config)  # downloaded here, by this replica, for an MLflow URI
        self.gen = Generator.from_pretrained(model_dir, device=device.torch, dtype=device.dtype)
        self.config = config
        self.inflight = 0  # requests inside this replica (queued for a batch or being generated)
        self._batched.set_max_batch_size(config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.recent: deque[tuple[int, int]] = deque(maxlen=512)  # (batch size, groups)
        self.abandoned: deque[float] = deque(maxlen=512)  # fraction of its steps each abandoned group had run
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
                "configured_max_batch_size": self.config.max_batch_size, "abandoned": len(self.abandoned),
                "abandoned_at": list(self.abandoned)[-64:]}  # fmt: skip

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
        cancelled = threading.Event()  # set when the caller gives up: the batch stops once all of its group have
        try:
            return await self._batched({**request, "queued_at": time.perf_counter(), "cancelled": cancelled})
        except asyncio.CancelledError:
            cancelled.set()
            raise
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
            group = [requests[i] for i in idx]
            try:
                t0 = time.perf_counter()
                wavs = await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(
                    self.gen.generate, [r["features"] for r in group], steps=first.get("steps"),
                    cfg=first.get("cfg"), seed=[int(r["seed"]) for r in group], progress=_stop_when_abandoned(group),
                ))  # fmt: skip
                t1 = time.perf_counter()
                for i, w in zip(idx, wavs, strict=True):
                    out[i] = {"ok": True, "wav": w, "batch_size": len(requests), "group_size": len(idx),
                              "queue_s": t0 - requests[i]["queued_at"], "generate_s": t1 - t0}  # fmt: skip
            except InputError as e:
                for i in idx:
                    out[i] = {"ok": False, "status": 422, "reason": e.reason, "detail": str(e).splitlines()[0]}
            except GenerationAbandoned as e:
                self.abandoned.append(e.done / e.total)
                for i in idx:
                    out[i] = {"ok": False, "status": 504, "reason": "timeout",
                              "detail": f"generation stopped after {e.done} of {e.total} solver steps: the request "
                                        "passed its deadline; retry with a shorter video or fewer steps"}  # fmt: skip
        return out


class GenerationAbandoned(Exception):
    """Every request of a group is past its deadline or its caller is gone: its generation stops."""

    def __init__(self, done: int, total: int):
        super().__init__(f"{done}/{total}")
        self.done, self.total = done, total


def _stop_when_abandoned(group: list[dict]):
    """``Generator.generate``'s progress callback (called after each solver step, in the compute thread) that stops
    the generation once no request of the group is waiting for it any more."""

    def progress(done: int, total: int) -> None:
        now = time.time()
        if done < total and all(r["cancelled"].is_set() or now > r.get("deadline", float("inf")) for r in group):
            raise GenerationAbandoned(done, total)

    return progress
