"""Generation speed vs its compute floor, for the tiny and paper presets.

For 10 s of audio, at 16 and 32 Euler steps with CFG (scale 3: one network call on a doubled batch per step):
    measured  = wall time of Generator.generate (conditions encoded once, solver loop, codec decode, vocoder)
    floor     = steps x (one DiT forward on the same doubled batch) + codec decode + vocoder
    ratio     = measured / floor   (goal <= 1.1: generate() adds little beyond the network and the decoder)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vssflow import Generator
from vssflow.model import PRESETS, ConditionDrop, Conditions, collate
from vssflow.types import ClipFeatures


def _clip(cfg, duration: float, seed: int = 0) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    spk = rng.standard_normal(256).astype(np.float32)
    return ClipFeatures(
        duration_s=duration,
        task="joint",
        sem=rng.standard_normal((int(duration * 10), cfg.sem_dim)).astype(np.float32),
        lip=rng.integers(0, 255, (int(duration * 25), 32, 32), dtype=np.uint8),
        phonemes=rng.integers(2, 60, int(duration * 12)),
        speaker=spk / np.linalg.norm(spk),
    )


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def bench_preset(name: str, *, duration: float = 10.0, steps_list=(16, 32), repeats: int = 3) -> list[dict]:
    cfg = PRESETS[name]
    torch.manual_seed(0)
    gen = Generator(cfg)
    clip = _clip(cfg, duration)
    # the floor's parts, measured on exactly the shapes generate() uses
    cond = collate([clip], cfg)
    both = Conditions.cat(
        [gen.model.preprocess_conditions(cond), gen.model.preprocess_conditions(cond, ConditionDrop.all(1))]
    )
    x = torch.randn(2, cond.n_latent, cfg.latent_dim)
    t = torch.full((2,), 0.5)
    gen.model.predict_flow(x, t, both)  # warm-up
    fwd = _median_time(lambda: gen.model.predict_flow(x, t, both), repeats)
    x1 = torch.randn(1, cond.n_latent, cfg.latent_dim)
    gen.decode(x1, cond.n_frames, [duration])
    dec = _median_time(lambda: gen.decode(x1, cond.n_frames, [duration]), repeats)
    rows = []
    for steps in steps_list:
        gen.generate(clip, steps=1, cfg=3.0)  # warm-up of the whole path
        measured = _median_time(lambda s=steps: gen.generate(clip, steps=s, cfg=3.0, seed=0), max(1, repeats - 1))
        floor = steps * fwd + dec
        rows.append(
            dict(
                preset=name,
                params=gen.model.num_params(),
                steps=steps,
                seconds=measured,
                floor=floor,
                forward=fwd,
                decode=dec,
                ratio=measured / floor,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"== generation of {args.duration:g} s of audio on CPU ({torch.get_num_threads()} threads), CFG 3, Euler ==")
    print(
        f"{'preset':<7} {'params':>12} {'steps':>5} {'generate s':>10} {'floor s':>8} {'1 fwd s':>8} "
        f"{'decode s':>8} {'ratio':>6}"
    )
    rows = []
    for name in args.presets.split(","):
        for r in bench_preset(name, duration=args.duration):
            rows.append(r)
            print(
                f"{r['preset']:<7} {r['params']:>12,} {r['steps']:>5} {r['seconds']:>10.2f} {r['floor']:>8.2f} "
                f"{r['forward']:>8.3f} {r['decode']:>8.3f} {r['ratio']:>6.3f}",
                flush=True,
            )
    print("ratio = generate time / (steps x one DiT forward on the CFG-doubled batch + decode + vocoder); goal <= 1.1")
    return rows


if __name__ == "__main__":
    main()
