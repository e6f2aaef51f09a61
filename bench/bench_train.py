"""Training throughput and memory: Ray Train + DeepSpeed vs a bare single-process PyTorch loop.

    python -m bench.bench_train [--steps 20] [--workers 2] [--out runs/bench_train.json]

* samples/s of the full distributed path (Ray Data shard -> sampler -> DeepSpeed ZeRO-2 engine -> report) against a
  plain ``for`` loop in one process on the same model, the same clips, the same batch size (goal: ratio >= 0.9
  per worker-CPU, i.e. the distributed overheads cost < 10 %);
* per-worker optimizer-state bytes and peak RSS for ZeRO 0/1/2/3.

Also home of :func:`make_toy_shards`, a small but real shard set (synthesized event sounds placed at visual events,
espeak-ng speech with its phonemes, mouth crops following the speech envelope) written through the schema module;
tests and the benchmark use it when no ``vssflow preprocess`` output is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from vssflow.audio.mel import log_mel
from vssflow.constants import LIP_FPS, SAMPLE_RATE, SEM_FPS, SPEAKER_DIM
from vssflow.data.schema import build_schema, features_to_row, file_metadata, rows_to_table
from vssflow.data.shards import ShardManifest, config_hash, set_latest, shard_name, version_dir, write_table_atomic
from vssflow.types import ClipFeatures

TOY_SEM_DIM = 32
TOY_MODEL = {"depth": 2, "width": 64, "heads": 2, "cross_dim": 64, "sem_dim": TOY_SEM_DIM, "lip_dim": 16,
             "phoneme_dim": 16, "time_freq_dim": 64}  # fmt: skip
SENTENCES = ("the red ball bounces", "a bell rings twice", "open the blue door", "we hear a drum", "say hello now",
             "the key clicks", "tap the wood block", "ring the small bell")  # fmt: skip


def _v2s_clip(rng: np.random.Generator, idx: int, duration: float) -> ClipFeatures:
    from vssflow.synth.sounds import CLASS_NAMES, synth_sound

    n = int(duration * SAMPLE_RATE)
    audio = np.zeros(n, np.float32)
    t_sem = int(round(duration * SEM_FPS))
    sem = rng.normal(0, 0.05, (t_sem, TOY_SEM_DIM)).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(CLASS_NAMES)))
        onset = float(rng.uniform(0.0, duration - 0.3))
        s = synth_sound(CLASS_NAMES[k])[: n - int(onset * SAMPLE_RATE)]
        audio[int(onset * SAMPLE_RATE) : int(onset * SAMPLE_RATE) + len(s)] += 0.5 * s
        f = int(onset * SEM_FPS)
        sem[f : f + 2, 4 * k : 4 * k + 4] += 1.0  # the "visual event": the object's class lights up at the impact
    return ClipFeatures(duration_s=duration, task="v2s", sem=sem, mel=log_mel(audio),
                        meta={"clip_id": f"v2s-{idx:04d}", "split": "train"})  # fmt: skip


def _espeak(text: str, *, pitch: int, rate: int) -> tuple[np.ndarray, str]:
    """16 kHz speech and its IPA string from the espeak-ng command line."""
    import subprocess
    import tempfile

    import soundfile as sf
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-p", str(pitch), "-s", str(rate), "-w", str(wav), text], check=True)
        audio, sr = sf.read(wav, dtype="float32")
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", text], check=True, capture_output=True, text=True).stdout
    return resample_poly(audio, SAMPLE_RATE // 50, sr // 50).astype(np.float32), ipa.strip()


def _tts_clip(rng: np.random.Generator, idx: int, duration: float) -> ClipFeatures:
    pitch, rate = int(rng.integers(20, 80)), int(rng.integers(150, 200))
    speech_audio, ipa = _espeak(SENTENCES[idx % len(SENTENCES)], pitch=pitch, rate=rate)
    n = int(duration * SAMPLE_RATE)
    audio = np.zeros(n, np.float32)
    a = speech_audio[:n]
    audio[: len(a)] = a
    t_lip = int(round(duration * LIP_FPS))
    env = np.array([np.abs(audio[i * 640 : (i + 1) * 640]).mean() for i in range(t_lip)])
    openness = np.clip(env / (env.max() + 1e-6), 0, 1)
    yy, xx = np.mgrid[:32, :32]
    lip = np.stack([(((xx - 16) / 10) ** 2 + ((yy - 16) / (1 + 8 * o)) ** 2 < 1) * 200 + 30 for o in openness])
    phon = np.array([1 + (ord(ch) % 60) for ch in ipa if not ch.isspace() and ch not in "ˈˌ"], np.int16)
    spk = np.random.default_rng(pitch).normal(size=SPEAKER_DIM).astype(np.float32)
    sem = np.tile(rng.normal(0, 0.05, (1, TOY_SEM_DIM)), (int(round(duration * SEM_FPS)), 1)).astype(np.float32)
    sem[:, -4:] += 1.0  # "a talking face"
    return ClipFeatures(duration_s=duration, task="tts", sem=sem, lip=lip.astype(np.uint8), phonemes=phon,
                        speaker=spk / np.linalg.norm(spk), mel=log_mel(audio),
                        meta={"clip_id": f"tts-{idx:04d}", "split": "train",
                              "transcript": SENTENCES[idx % len(SENTENCES)]})  # fmt: skip


def make_toy_shards(
    out: str | os.PathLike, *, n_v2s: int = 24, n_tts: int = 24, n_val: int = 2, duration: float = 2.0, seed: int = 0
) -> Path:
    """Write a small real shard set (one shard per task, plus val rows) and return its version directory."""
    rng = np.random.default_rng(seed)
    cfg = {"toy": True, "n_v2s": n_v2s, "n_tts": n_tts, "duration": duration, "seed": seed}
    h = config_hash(cfg)
    vdir = version_dir(out, h)
    manifest = ShardManifest(vdir, config_hash=h, config=cfg)
    clips = {
        "v2s": [_v2s_clip(rng, i, duration) for i in range(n_v2s + n_val)],
        "tts": [_tts_clip(rng, i, duration) for i in range(n_tts + n_val)],
    }
    for task, items in clips.items():
        for c in items[-n_val:] if n_val else []:
            c.meta["split"] = "val"
        md = file_metadata(config_hash=h, config=cfg, extractors={"toy": {"model": "toy"}},
                           created_at=time.strftime("%Y-%m-%dT%H:%M:%S"), task=task, bucket_s=duration)  # fmt: skip
        schema = build_schema(sem_dim=TOY_SEM_DIM, lip_dim=0, metadata=md)
        table = rows_to_table([features_to_row(c) for c in items], schema)
        entry = write_table_atomic(table, vdir / shard_name(task, duration, [c.meta["clip_id"] for c in items]),
                                   row_group_rows=8)  # fmt: skip
        manifest.add({**entry, "task": task, "bucket_s": duration})
    manifest.save()
    set_latest(out, vdir)
    return vdir


# ---- the benchmark -------------------------------------------------------------------------------------------------


BENCH_MODEL = {"sem_dim": TOY_SEM_DIM}  # the real tiny preset (condition width set by the toy shards)


def bare_loop_samples_per_s(data: str, *, steps: int, batch_size: int, threads: int, seed: int = 0) -> float:
    """Samples/s of a single-process PyTorch loop (same model, clips, batch size, AdamW, no Ray, no DeepSpeed)."""
    import torch

    from pipelines.train import _read_rows, fit_codec, shard_paths
    from pipelines.train_loop import TrainJobConfig, build_model, encode_batch
    from vssflow.data.sampler import BucketSampler
    from vssflow.training import training_step

    torch.set_num_threads(threads)
    cfg = TrainJobConfig(data=data, model_overrides=BENCH_MODEL, batch_size=batch_size, seed=seed)
    paths, _, _ = shard_paths(data)
    clips = _read_rows(paths, "train")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        codec = fit_codec(paths, Path(tmp))
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    done, t0, epoch, warm = 0, None, 0, 2
    while done < steps + warm:
        for batch in BucketSampler(cfg.sampler_config(), epoch=epoch).batches(iter(clips)):
            if done == warm:
                t0, n = time.perf_counter(), 0
            tb = encode_batch(batch.clips, codec, cfg.model_config())
            loss, _ = training_step(model, tb, cfg.flow_config(), gen)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if t0 is not None:
                n += len(batch.clips)
            done += 1
            if done >= steps + warm:
                break
        epoch += 1
    return n / (time.perf_counter() - t0)


def bench_train(*, steps: int = 30, workers: int = 2, root: str | os.PathLike = "runs/bench_train") -> dict:
    """Run the comparison and the ZeRO sweep; returns (and prints) a JSON-able report."""
    from pipelines.mlflow_utils import run_metrics
    from pipelines.train import run_training
    from pipelines.train_loop import TrainJobConfig

    root = Path(root).resolve()
    data = str(make_toy_shards(root / "shards", n_v2s=64, n_tts=64))
    report: dict = {"steps": steps, "workers": workers, "batch_size": 4, "model": {"preset": "tiny", **BENCH_MODEL}}
    report["bare_samples_per_s"] = bare_loop_samples_per_s(data, steps=steps, batch_size=4, threads=1)
    report["zero"] = {}
    for engine in ("zero0", "zero1", "zero2", "zero3"):
        cfg = TrainJobConfig(data=data, model_overrides=BENCH_MODEL, workers=workers, engine=engine, max_steps=steps,
                             checkpoint_every=steps, eval_every=0, batch_size=4)  # fmt: skip
        res = run_training(cfg, out=root / f"model_{engine}", run_dir=root / f"run_{engine}", register_as=None,
                           n_val_clips=0)  # fmt: skip
        m = run_metrics(res.mlflow_run_id, tracking_uri=res.tracking_uri)
        sps = [v for s, v in sorted(m["samples_per_s"]) if s > 2]  # skip the warm-up steps
        report["zero"][engine] = {
            "samples_per_s": float(np.median(sps)),
            "optimizer_state_mb_per_worker": m["optimizer_state_mb"][-1][1],
            "peak_rss_mb_per_worker": max(v for _, v in m.get("peak_rss_mb", [(0, 0.0)])),
            "wall_s": res.seconds,
        }
    z2 = report["zero"]["zero2"]["samples_per_s"]
    # Each Ray worker runs on one CPU; the bare loop on one CPU too: the fair ratio is per worker.
    report["ratio_ray_deepspeed_vs_bare_per_worker"] = z2 / workers / report["bare_samples_per_s"]
    report["peak_rss_mb_driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_train")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/bench_train.json")
    args = p.parse_args(argv)
    report = bench_train(steps=args.steps, workers=args.workers, root=Path(args.out).with_suffix(""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
