"""Training throughput and memory: Ray Train + DeepSpeed vs a bare single-process PyTorch loop.

    python -m bench.bench_train [--steps 40] [--clips 40] [--out runs/bench_train.json]

The model is the real ``tiny`` preset (what ``make demo`` trains) on real shards of the embedded corpus: ``vssflow
synth`` + ``vssflow preprocess`` once (2 s clips), cached under ``<out>/shards-c<clips>`` and reused by later runs.

* **bare loop**: one process, no Ray, no DeepSpeed: the same model, the same train clips (decoded once), the same
  sampler and batch size, the same step (AdamW + clipping + lr schedule + EMA), one intra-op thread;
* **Ray Train + DeepSpeed ZeRO-2** with 1 worker (one CPU, one thread: directly comparable to the bare loop) and with
  2 workers (2 CPUs: compared per CPU, i.e. total samples/s / 2 against the one-thread bare loop; the bare loop with
  2 threads is printed for reference). Goal: ratio >= 0.9, the distributed machinery costs < 10 %;
* per-worker peak RSS and optimizer-state bytes for ZeRO 0/1/2/3 on 2 workers.

Throughput is measured after warm-up (the first steps: imports, DeepSpeed set-up, first epoch's data execution);
Ray start-up and each run's set-up time are reported apart. The machine is shared: the load average is printed
with the numbers, which are indicative when it is above the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vssflow.data.shards import ShardManifest

# ---- the benchmark -------------------------------------------------------------------------------------------------


def bench_shards(root: Path, *, clips: int, seed: int = 0) -> str:
    """Shards of the embedded corpus (``vssflow synth`` + ``vssflow preprocess``), made once under ``root``."""
    import subprocess
    import sys

    from vssflow.data.schema import SCHEMA_VERSION
    from vssflow.data.shards import resolve_shard_dir

    corpus, shards = root / f"corpus-c{clips}", root / f"shards-c{clips}"
    try:
        vdir = resolve_shard_dir(shards)
        if ShardManifest(vdir).data.get("schema_version") == SCHEMA_VERSION:
            return str(vdir)
    except Exception:  # noqa: BLE001 - not made yet (or incomplete, or of an older schema): make it
        pass
    t0 = time.perf_counter()
    cli = [sys.executable, "-m", "pipelines.cli"]
    if not (corpus / "manifest.jsonl").exists():
        subprocess.run([*cli, "synth", "--out", str(corpus), "--clips", str(clips), "--seed", str(seed),
                        "--duration", "2.0", "--workers", "2"], check=True)  # fmt: skip
    subprocess.run([*cli, "preprocess", str(corpus / "manifest.jsonl"), "--out", str(shards), "--num-cpus", "2",
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    print(f"bench_train: shards of {clips} clips made in {time.perf_counter() - t0:.0f} s (cached in {shards})")
    return str(resolve_shard_dir(shards))


def bare_loop(cfg, *, steps: int, warmup: int, threads: int) -> dict:
    """Samples/s of a single-process PyTorch loop over the run's model, clips, sampler and optimizer settings.

    What DeepSpeed does inside ``engine.backward/step`` is done here by hand: AdamW (same hyper-parameters),
    gradient clipping, the lr schedule, and the EMA update of the Ray loop. No Ray, no DeepSpeed, no MLflow.
    """
    import tempfile
    from functools import partial

    import torch

    from pipelines.deepspeed_config import lr_lambda
    from pipelines.train_data import encode_batch
    from pipelines.train_model import build_model
    from pipelines.train_shards import fit_codec, fit_model_to_data, open_shards
    from vssflow.data.sampler import BucketSampler
    from vssflow.ema import EMA
    from vssflow.training import training_step

    torch.set_num_threads(threads)
    shards = open_shards(cfg.data)
    cfg = fit_model_to_data(cfg, shards)
    clips = shards.clips(split="train")
    with tempfile.TemporaryDirectory() as tmp:
        codec = fit_codec(shards, Path(tmp), cfg.model_config().latent_dim)  # the preset's latent (tiny: 128)
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        partial(
            lr_lambda, warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.max_steps, min_ratio=cfg.optim.min_lr_ratio
        ),  # fmt: skip
    )
    ema = EMA(model.named_parameters(), decay=cfg.optim.ema_decay, warmup=cfg.optim.ema_warmup)
    gen = torch.Generator().manual_seed(cfg.seed)
    mcfg, flow_cfg = cfg.model_config(), cfg.flow
    done, n, t0, epoch = 0, 0, 0.0, 0
    while done < warmup + steps:
        for batch in BucketSampler(cfg.sampler_config(), epoch=epoch).batches(iter(clips)):
            if done == warmup:
                t0, n = time.perf_counter(), 0
            loss, _ = training_step(model, encode_batch(batch.clips, codec, mcfg), flow_cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            sched.step()
            ema.update(model.named_parameters())
            n += len(batch.clips)
            done += 1
            if done >= warmup + steps:
                break
        epoch += 1
    return {"samples_per_s": n / (time.perf_counter() - t0), "threads": threads, "train_clips": len(clips)}


def _steady_samples_per_s(metrics: dict, warmup: int) -> float:
    """Aggregate samples/s over the steps after ``warmup`` (each logged value covers one step of equal size)."""
    values = [v for s, v in sorted(metrics["samples_per_s"]) if s > warmup]
    return len(values) / sum(1.0 / v for v in values)


def ray_run(cfg, root: Path, *, warmup: int) -> dict:
    """One ``run_training`` (no validation audio, one checkpoint at the end); its steady samples/s and memory."""
    from pipelines.mlflow_utils import run_metrics
    from pipelines.train import run_training

    name = f"{cfg.engine}-w{cfg.workers}"
    t0 = time.perf_counter()
    res = run_training(cfg, out=root / f"model_{name}", run_dir=root / f"run_{name}", register_as=None, n_val_clips=0)
    wall = time.perf_counter() - t0
    m = run_metrics(res.mlflow_run_id, tracking_uri=res.tracking_uri)
    sps = _steady_samples_per_s(m, warmup)
    steady_s = sum(1.0 / v for s, v in m["samples_per_s"] if s > warmup) * cfg.sampler.batch_size * cfg.workers
    return {
        "engine": res.engine,
        "workers": cfg.workers,
        "steps": res.steps,
        "samples_per_s": sps,
        "wall_s": wall,
        "setup_s": wall - steady_s,  # workers, imports, DeepSpeed, first epoch, warm-up steps, final save
        "optimizer_state_mb_rank0": m["optimizer_state_mb"][-1][1],
        "optimizer_state_mb_max": m["optimizer_state_mb_max"][-1][1],
        "peak_rss_mb_max": max(v for _, v in m["peak_rss_mb"]),
    }


def bench_train(
    *,
    steps: int = 40,
    memory_steps: int = 8,
    warmup: int = 8,
    clips: int = 40,
    root: str | os.PathLike = "runs/bench_train",
) -> dict:
    """Run the comparison and the ZeRO sweep; returns a JSON-able report (and prints the table)."""
    import ray

    from pipelines.ray_runtime import start_ray
    from pipelines.train_loop import TrainJobConfig

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = bench_shards(root, clips=clips)
    base = TrainJobConfig.from_dict(dict(data=data, preset="tiny", batch_size=4, max_steps=warmup + steps,
                                         warmup_steps=5, checkpoint_every=10**6, eval_every=0, threads=1))  # fmt: skip
    report: dict = {"model": "tiny", "clips": clips, "batch_size_per_worker": 4, "steps": steps, "warmup": warmup,
                    "load_before": os.getloadavg()}  # fmt: skip
    bare = [bare_loop(base, steps=steps, warmup=warmup, threads=1)]
    report["bare_2_threads"] = bare_loop(base, steps=steps, warmup=warmup, threads=2)
    t0 = time.perf_counter()
    start_ray(num_cpus=4, log_to_driver=False)
    report["ray_init_s"] = time.perf_counter() - t0
    runs = {}
    try:
        runs["zero2-w1"] = ray_run(replace(base, workers=1, engine="zero2"), root, warmup=warmup)
        runs["zero2-w2"] = ray_run(replace(base, workers=2, engine="zero2"), root, warmup=warmup)
        for engine in ("zero0", "zero1", "zero3"):
            short = replace(base, workers=2, engine=engine, max_steps=warmup // 2 + memory_steps)
            runs[f"{engine}-w2"] = ray_run(short, root, warmup=warmup // 2)
    finally:
        ray.shutdown()
    bare.append(bare_loop(base, steps=steps, warmup=warmup, threads=1))  # again: the load may have changed
    report["bare_1_thread"] = bare
    report["runs"] = runs
    report["load_after"] = os.getloadavg()
    bare_sps = float(np.mean([b["samples_per_s"] for b in bare]))
    report["ratio_1_worker"] = runs["zero2-w1"]["samples_per_s"] / bare_sps
    report["ratio_2_workers_per_cpu"] = runs["zero2-w2"]["samples_per_s"] / 2 / bare_sps
    report["peak_rss_mb_driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(format_table(report))
    return report


def format_table(r: dict) -> str:
    """The report as the table ``make bench`` prints."""
    bare = [b["samples_per_s"] for b in r["bare_1_thread"]]
    bare_sps = float(np.mean(bare))
    lines = [
        f"tiny preset, {r['clips']}-clip corpus ({r['bare_1_thread'][0]['train_clips']} train clips), "
        f"batch {r['batch_size_per_worker']} per worker per step, {r['steps']} steps measured after {r['warmup']} "
        f"warm-up; load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after (2 cores)",
        f"{'':44} {'samples/s':>10} {'CPUs':>5} {'per CPU':>8} {'vs bare':>8} {'set-up s':>9}",
        f"{'bare PyTorch loop, 1 thread (before/after)':44} {bare_sps:10.1f} {1:5d} {bare_sps:8.1f} {1.0:8.2f} "
        f"{'':>9}   ({bare[0]:.1f} / {bare[-1]:.1f})",
        f"{'bare PyTorch loop, 2 threads (reference)':44} {r['bare_2_threads']['samples_per_s']:10.1f} {2:5d} "
        f"{r['bare_2_threads']['samples_per_s'] / 2:8.1f} {r['bare_2_threads']['samples_per_s'] / 2 / bare_sps:8.2f}",
    ]
    for key, label in (
        ("zero2-w1", "Ray Train + DeepSpeed ZeRO-2, 1 worker"),
        ("zero2-w2", "Ray Train + DeepSpeed ZeRO-2, 2 workers"),
    ):
        x = r["runs"][key]
        per_cpu = x["samples_per_s"] / x["workers"]
        lines.append(f"{label:44} {x['samples_per_s']:10.1f} {x['workers']:5d} {per_cpu:8.1f} "
                     f"{per_cpu / bare_sps:8.2f} {x['setup_s']:9.1f}")  # fmt: skip
    lines.append(f"goal: per-CPU ratio >= 0.9 -> 1 worker {r['ratio_1_worker']:.2f}, 2 workers "
                 f"{r['ratio_2_workers_per_cpu']:.2f}; Ray start-up (ray.init) {r['ray_init_s']:.1f} s")  # fmt: skip
    lines.append("")
    lines.append(f"{'2 workers':12} {'opt. state MB':>14} {'(max rank)':>11} {'peak RSS MB':>12} {'samples/s':>10}")
    for engine in ("zero0", "zero1", "zero2", "zero3"):
        x = r["runs"][f"{engine}-w2"]
        name = f"{engine} ({x['engine']})" if x["engine"] != engine else engine  # says so if DeepSpeed fell back
        lines.append(
            f"{name:12} {x['optimizer_state_mb_rank0']:14.1f} {x['optimizer_state_mb_max']:11.1f} "
            f"{x['peak_rss_mb_max']:12.0f} {x['samples_per_s']:10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_train")
    p.add_argument("--steps", type=int, default=40, help="measured steps per throughput run (after the warm-up)")
    p.add_argument("--clips", type=int, default=40, help="clips of the embedded corpus to train on")
    p.add_argument("--out", default="runs/bench_train.json")
    args = p.parse_args(argv)
    report = bench_train(steps=args.steps, clips=args.clips, root=Path(args.out).with_suffix(""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"(report: {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
