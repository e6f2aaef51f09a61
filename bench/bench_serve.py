"""Ray Serve: throughput and p50/p99 latency at concurrency 1, 4, 16 with dynamic batching vs ``max_batch_size=1``,
and the HTTP overhead of ``POST /v1/generate/features`` vs calling ``Generator.generate`` in process.

Goals (issue 7): >= 3x throughput at concurrency 16 with batching; HTTP overhead <= 10 % at concurrency 1.

The requests go to ``/v1/generate/features`` (a 2 s clip's precomputed features as .npz), so the numbers measure
the server and the generator rather than video decoding. The model is a small untrained DiT with a tiny CLIP
encoder (:func:`make_tiny_serving_model`; also used by the Serve tests): quality is irrelevant here, shapes and
compute are what a served model does.

    python -m bench.bench_serve [--requests 24] [--steps 16] [--depth 4 --width 128]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import time
from pathlib import Path

import numpy as np

TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8}  # fmt: skip


def wake(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give zero-initialised layers (adaLN-Zero, output head) small random weights, so an untrained model's output
    depends on its conditions (a freshly initialised DiT predicts v = 0 whatever it is given)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def make_tiny_serving_model(
    directory: str | os.PathLike, *, model_overrides: dict | None = None, steps: int = 4
) -> Path:
    """Write a tiny generator for Serve tests and benches: a 1-layer CLIPVisionModel (32-d, saved next to the model
    and recorded in ``info["extractors"]``) and a small DiT with ``sem_dim`` = 32. Returns the model directory."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vssflow.generator import Generator, SamplingConfig
    from vssflow.model import ModelConfig

    directory = Path(directory)
    clip_dir = directory.with_name(directory.name + "-clip")
    CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(clip_dir)
    kw = dict(depth=1, width=32, heads=2, cross_dim=32, sem_dim=TINY_CLIP["hidden_size"], lip_dim=8, phoneme_dim=8,
              max_seconds=4.0)  # fmt: skip
    kw.update(model_overrides or {})
    gen = Generator(ModelConfig(**kw), sampling=SamplingConfig(steps=steps, cfg_scale=2.0))
    wake(gen.model)
    extractors = {"encoder": str(clip_dir.resolve()), "speaker_encoder": "resemblyzer", "g2p_backend": "espeak",
                  "lips": True}  # fmt: skip
    return gen.save_pretrained(directory, extractors=extractors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 240.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/readyz not ready after {timeout:.0f} s")


def features_npz(features) -> bytes:
    """ClipFeatures -> the .npz body of ``POST /v1/generate/features``."""
    arrays = {"duration_s": np.float32(features.duration_s), "task": np.str_(features.task), "sem": features.sem}
    for k in ("lip", "phonemes", "speaker"):
        if getattr(features, k) is not None:
            arrays[k] = getattr(features, k)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def random_features(sem_dim: int, duration: float = 2.0, task: str = "v2s", seed: int = 0):
    """A clip's features with random values (what a client that preprocessed would send)."""
    from vssflow.constants import LIP_FPS, SEM_FPS
    from vssflow.types import ClipFeatures

    rng = np.random.default_rng(seed)
    f = ClipFeatures(duration_s=duration, task=task,
                     sem=rng.standard_normal((round(duration * SEM_FPS), sem_dim)).astype(np.float32))  # fmt: skip
    if task != "v2s":
        f.lip = rng.integers(0, 255, (round(duration * LIP_FPS), 32, 32), dtype=np.uint8)
        f.phonemes = rng.integers(1, 60, 20).astype(np.int16)
        spk = rng.standard_normal(256).astype(np.float32)
        f.speaker = spk / np.linalg.norm(spk)
    return f


async def _load(url: str, body: bytes, *, concurrency: int, n: int, steps: int) -> tuple[float, list[float], list[int]]:
    import httpx

    latencies: list[float] = []
    batches: list[int] = []
    sem = asyncio.Semaphore(concurrency)

    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/generate/features", files={"features": ("f.npz", body)},
                                      data={"steps": str(steps), "seed": str(i)})  # fmt: skip
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, (r.status_code, r.text[:200])
                batches.append(int(r.headers["X-Batch-Size"]))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, latencies, batches


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_serve", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    p.add_argument("--steps", type=int, default=16, help="solver steps (the models' default)")
    p.add_argument("--depth", type=int, default=4, help="DiT depth of the benchmark model")
    p.add_argument("--width", type=int, default=128, help="DiT width of the benchmark model")
    args = p.parse_args(argv or [])

    import tempfile

    import ray
    from ray import serve

    from pipelines.serve import Scaling, ServeConfig, start
    from vssflow.generator import Generator

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    # the default ModelConfig (the project's tiny CPU preset: depth 4, width 128) fed by the 32-d tiny CLIP encoder
    overrides = {"depth": args.depth, "width": args.width, "heads": 4, "cross_dim": 128}
    model = make_tiny_serving_model(tmp / "model", model_overrides=overrides)
    features = random_features(32, 2.0, "v2s")
    body = features_npz(features)

    # in-process references (1 thread, as the generator replica): one clip, and 8 clips in one batch
    import torch

    torch.set_num_threads(1)
    gen = Generator.from_pretrained(model)
    gen.generate(features, steps=args.steps, seed=0)
    one = statistics.median(_timed(lambda: gen.generate(features, steps=args.steps, seed=0)) for _ in range(5))
    eight = statistics.median(
        _timed(lambda: gen.generate([features] * 8, steps=args.steps, seed=list(range(8)))) for _ in range(3)
    )

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for mbs in (8, 1):
            config = ServeConfig(
                model=str(model), max_batch_size=mbs, batch_wait_timeout_s=0.01, max_inflight=64,
                upload_dir=str(tmp / "uploads"), generator=Scaling(num_cpus=1, max_ongoing_requests=64),
                extractor=Scaling(num_cpus=0.5),
            )  # fmt: skip
            port = free_port()
            url = start(config, port=port, name=f"bench{mbs}")
            wait_ready(url)
            asyncio.run(_load(url, body, concurrency=2, n=4, steps=args.steps))  # warm-up
            if mbs > 1:  # HTTP vs in-process, interleaved so drifting machine load hits both alike
                http_t, local_t = _overhead(url, body, gen, features, steps=args.steps, n=max(8, args.requests // 3))
            for c in (1, 4, 16):
                n = max(args.requests, 2 * c) if c > 1 else max(8, args.requests // 4)
                wall, lat, batches = asyncio.run(_load(url, body, concurrency=c, n=n, steps=args.steps))
                rows.append({"max_batch_size": mbs, "concurrency": c, "requests": n, "rps": n / wall,
                             "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
                             "mean_batch": float(np.mean(batches))})  # fmt: skip
            serve.shutdown()
    finally:
        if started:
            ray.shutdown()

    print(f"model: DiT depth {args.depth} width {args.width}, 2.0 s clip, {args.steps} steps, cfg 2 (doubled batch), "
          "Griffin-Lim decode; generator replica 1 CPU")  # fmt: skip
    print(f"{'batching':>10} {'conc':>5} {'req':>5} {'req/s':>8} {'p50 s':>8} {'p99 s':>8} {'mean batch':>11}")
    for r in rows:
        print(f"{'max ' + str(r['max_batch_size']):>10} {r['concurrency']:>5} {r['requests']:>5} {r['rps']:>8.2f} "
              f"{r['p50']:>8.3f} {r['p99']:>8.3f} {r['mean_batch']:>11.2f}")  # fmt: skip
    by = {(r["max_batch_size"], r["concurrency"]): r for r in rows}
    speedup = by[(8, 16)]["rps"] / by[(1, 16)]["rps"]
    print(f"throughput at concurrency 16, batching vs max_batch_size=1: {speedup:.2f}x (goal >= 3x)")
    print(f"  in-process batch efficiency (the ceiling of batching here): 8 clips in one generate() "
          f"{eight:.3f} s vs 8 x {one:.3f} s = {8 * one / eight:.2f}x")  # fmt: skip
    overhead = http_t / local_t - 1
    print(f"HTTP overhead at concurrency 1 (median of interleaved calls): POST {http_t:.3f} s vs in-process "
          f"generate {local_t:.3f} s = {1000 * (http_t - local_t):+.0f} ms, {100 * overhead:+.1f} % "
          "(goal <= 10 %)")  # fmt: skip
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _overhead(url: str, body: bytes, gen, features, *, steps: int, n: int) -> tuple[float, float]:
    """Median seconds of POST /v1/generate/features and of in-process generate(), calls alternating."""
    import httpx

    http_t, local_t = [], []
    with httpx.Client(timeout=600) as client:
        for i in range(n):
            local_t.append(_timed(lambda: gen.generate(features, steps=steps, seed=i)))  # noqa: B023
            t0 = time.perf_counter()
            r = client.post(f"{url}/v1/generate/features", files={"features": ("f.npz", body)},
                            data={"steps": str(steps), "seed": str(i)})  # fmt: skip
            http_t.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text[:200]
    return statistics.median(http_t), statistics.median(local_t)


if __name__ == "__main__":
    raise SystemExit(main())
