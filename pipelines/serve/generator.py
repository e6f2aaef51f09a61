"""The generator deployment: the DiT, concurrent requests batched when the compute thread is free and grouped into
one-shape batches."""

from __future__ import annotations

import asyncio
import functools
import os
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
    """The DiT. Concurrent requests are batched and split into one-shape groups.

    A batch is formed when the compute thread is free, from every request waiting then (up to ``max_batch_size``).
    Ray Serve's ``@serve.batch`` forms the next batch as soon as its first request arrives and holds it while the
    current one generates, so under load the batches stayed small (3-5 requests at concurrency 16 with 8 allowed):
    whoever arrived in the first ``batch_wait_timeout_s`` after the previous batch started. Here the requests that
    arrive during a generation all wait for the next one. A request that finds the replica idle starts at once;
    when a batch has just ended and fewer than ``max_batch_size`` wait, the next waits up to
    ``batch_wait_timeout_s`` for the callers of the batch that ended to send their next requests.
    """

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
        self.torch_threads = self.pool.submit(torch.get_num_threads).result()  # what the generations run with
        device = resolve_device(config.device)  # "cuda": the GPU Ray gave this replica (num_gpus); bf16 there
        # the DiT and the vocoder on that device: a batch's group is one tensor batch (Generator.generate)
        model_dir = replica_model_dir(model, config)  # downloaded here, by this replica, for an MLflow URI
        self.gen = Generator.from_pretrained(model_dir, device=device.torch, dtype=device.dtype)
        if config.compile:
            self.gen.compile()
        self.config = config
        self.waiting: deque[dict] = deque()  # requests waiting for the compute thread, in arrival order
        self.arrived: asyncio.Event | None = None  # set when a request joins `waiting` (made in the event loop)
        self.batcher: asyncio.Task | None = None
        self.recent: deque[tuple[int, int]] = deque(maxlen=512)  # (batch size, groups)
        self.abandoned: deque[float] = deque(maxlen=512)  # fraction of its steps each abandoned group had run
        bounds = [1.5, 2.5, 4.5, 8.5, 16.5, 32.5]
        self.m_batch = metrics.Histogram("vssflow_batch_size", description="requests per generation batch",
                                         boundaries=bounds)  # fmt: skip
        self.m_group = metrics.Histogram("vssflow_group_size", description="clips per one-shape tensor batch",
                                         boundaries=bounds)  # fmt: skip

    def ready(self) -> bool:
        return True

    def stats(self) -> dict:
        sizes = [b for b, _ in self.recent]
        return {"batches": len(sizes), "max_batch_size": max(sizes, default=0), "recent_batch_sizes": sizes[-64:],
                "configured_max_batch_size": self.config.max_batch_size, "abandoned": len(self.abandoned),
                "abandoned_at": list(self.abandoned)[-64:], "waiting": len(self.waiting),
                "torch_threads": self.torch_threads, "niceness": os.nice(0)}  # fmt: skip

    async def generate(self, request: dict) -> dict:
        """``{"features", "steps", "cfg", "seed"}`` -> ``{"ok", "wav" (L,) float32, "batch_size", "group_size"}``."""
        try:  # reject a bad request alone, before it can fail a whole batch
            self.gen.check(request["features"], steps=request.get("steps"), cfg=request.get("cfg"))
        except InputError as e:
            return {"ok": False, "status": 422, "reason": e.reason, "detail": str(e).splitlines()[0]}
        loop = asyncio.get_running_loop()
        if self.batcher is None or self.batcher.done():
            self.arrived = asyncio.Event()
            self.batcher = loop.create_task(self._batches())
        cancelled = threading.Event()  # set when the caller gives up: the batch stops once all of its group have
        item = {**request, "queued_at": time.perf_counter(), "cancelled": cancelled, "future": loop.create_future()}
        self.waiting.append(item)
        self.arrived.set()
        try:
            return await item["future"]
        except asyncio.CancelledError:
            cancelled.set()  # (a request still waiting is skipped: its future is cancelled with it)
            raise

    async def _batches(self) -> None:
        """The batching loop: one batch at a time, formed when the previous one is done."""
        just_ended = False
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                just_ended = False  # the replica was idle: the request that woke it starts at once
            max_size, wait_s = self.config.max_batch_size, self.config.batch_wait_timeout_s
            if just_ended and len(self.waiting) < max_size and wait_s > 0:
                deadline = time.perf_counter() + wait_s
                while len(self.waiting) < max_size and (left := deadline - time.perf_counter()) > 0:
                    self.arrived.clear()
                    try:
                        await asyncio.wait_for(self.arrived.wait(), left)
                    except TimeoutError:
                        break
            batch = []
            while self.waiting and len(batch) < max_size:
                item = self.waiting.popleft()
                if not item["future"].done():  # a caller that gave up while waiting is dropped
                    batch.append(item)
            if batch:
                try:
                    results = await self._generate_batch(batch)
                except Exception as e:  # noqa: BLE001 - an internal error fails this batch's callers, not the loop
                    results = [e] * len(batch)
                for item, result in zip(batch, results, strict=True):
                    if not item["future"].done():
                        (item["future"].set_exception if isinstance(result, Exception) else
                         item["future"].set_result)(result)  # fmt: skip
            just_ended = bool(batch)

    async def _generate_batch(self, requests: list[dict]) -> list[dict]:
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
