"""The device check: what a GPU gives this project, measured in one short run (``scripts/gpu_check.sh``).

    python -m bench.gpu_check [--smoke] [--device auto|cpu|cuda[:N]] [--out gpu_check.json]

Four measurements on one device, written to one JSON file and printed as a table:

1. training: the preset's forward/backward + optimizer step in bf16 (fp32 on CPU) with DeepSpeed ZeRO-2 on one
   process when DeepSpeed imports, else plain torch AdamW (:class:`pipelines.deepspeed_config.DDPEngine`; the JSON
   says which, and why): samples/s and peak memory;
2. ``Generator.generate`` of a 10 s clip at 16 and 32 Euler steps with guidance: seconds, and the ratio to the
   compute floor (the same number of bare ``predict_flow`` calls on the same shapes: what sampling costs beyond the
   network);
3. generation batched 1 / 4 / 16 clips: clips/s and the throughput ratio to one clip (what Serve batching can reach);
   then one clip at the first step count with the DiT compiled (``Generator.compile``: torch.compile at bucket
   shapes): the compile's seconds and the speed-up over eager (a note in the JSON when it cannot build);
4. the MobileNetV2 encoder on 10 fps frames, clips batched together vs one at a time: clips/s.

The paper preset has random weights here: speed does not depend on them. ``--smoke`` runs the same code on the tiny
preset with tiny sizes (a test runs it on CPU, so it cannot rot). Needs torch, numpy, einops, safetensors,
soundfile (not torchaudio: a test runs the check with a broken one); DeepSpeed and torchvision (step 4) are
optional, each missing one is a note in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Sizes:
    preset: str
    seconds: float  # clip length of training and generation
    train_batch: int
    train_steps: int  # timed optimizer steps (after 2 untimed)
    gen_steps: tuple[int, ...]
    gen_batches: tuple[int, ...]
    encoder_clips: int
    encoder_frames: int  # frames per clip (10 fps)
    frame_size: int


FULL = Sizes("paper", 10.0, 8, 10, (16, 32), (1, 4, 16), 16, 100, 224)
SMOKE = Sizes("tiny", 1.0, 2, 2, (2, 4), (1, 2, 4), 2, 4, 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of the process (Linux: KiB)


def _clips(cfg, seconds: float, n: int, seed: int = 0, *, with_mel: bool = False):
    from vssflow.constants import MEL_FPS, N_MELS, SEM_FPS
    from vssflow.types import ClipFeatures

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mel = rng.normal(-4.0, 2.0, size=(int(round(seconds * MEL_FPS)), N_MELS)).astype(np.float32)
        sem = rng.normal(size=(int(round(seconds * SEM_FPS)), cfg.sem_dim)).astype(np.float32)
        out.append(ClipFeatures(duration_s=seconds, task="v2s", mel=mel if with_mel else None, sem=sem))
    return out


def _init_one_process(device: torch.device) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():  # fmt: skip
        os.environ.setdefault(k, v)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def check_training(sizes: Sizes, device, notes: list[str]) -> dict:
    """Forward/backward + optimizer steps of the preset on one process (DeepSpeed ZeRO-2 if it imports)."""
    from pipelines.deepspeed_config import build_engine
    from pipelines.train_data import encode_batch
    from pipelines.train_loop import TrainJobConfig, _touch, engine_precision
    from vssflow.audio.codec import MelCodec
    from vssflow.model import PRESETS, VSSFlowDiT
    from vssflow.training import FlowConfig, training_step

    mcfg = PRESETS[sizes.preset]
    job = TrainJobConfig.from_dict(dict(preset=sizes.preset, engine="zero2", use_gpu=device.is_cuda,
                                        batch_size=sizes.train_batch, lr=1e-4, warmup_steps=1,
                                        max_steps=sizes.train_steps + 2))  # fmt: skip
    clips = _clips(mcfg, sizes.seconds, sizes.train_batch, with_mel=True)
    codec = MelCodec.for_latent_dim(mcfg.latent_dim).fit(c.mel for c in clips)
    try:
        import deepspeed  # noqa: F401

        _init_one_process(device.torch)
    except ImportError as e:
        notes.append(f"training: DeepSpeed not importable ({e}); plain torch AdamW (DDPEngine) instead of ZeRO-2")
    model = VSSFlowDiT(mcfg).to(device.torch)
    if device.is_cuda:
        torch.cuda.reset_peak_memory_stats(device.torch)
    engine, engine_name = build_engine(model, job.engine_settings(), world=1)
    if engine_name != "zero2":
        notes.append(f"training: engine {engine_name} (DeepSpeed could not start; see the log)")
    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    batch = encode_batch(clips, codec, mcfg).to(device.torch)
    gen = torch.Generator().manual_seed(0)

    def step():
        with device.autocast():
            loss, _ = training_step(engine.module, batch, FlowConfig(), gen)
        engine.backward(loss + _touch(trainable))
        engine.step()
        return float(loss.detach())

    step(), step()  # warm-up: allocator, kernels, DeepSpeed's buffers
    losses: list[float] = []
    seconds = _timed(lambda: losses.extend(step() for _ in range(sizes.train_steps)), device.torch)
    return {
        "preset": sizes.preset,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "engine": engine_name,
        "dtype": "bf16" if job.device.bf16 else "fp32",
        "worker": engine_precision(engine, job),  # as it ran: the parameters' device and dtype, bf16 on or off
        "batch": sizes.train_batch,
        "clip_s": sizes.seconds,
        "steps": sizes.train_steps,
        "seconds": seconds,
        "samples_per_s": sizes.train_batch * sizes.train_steps / seconds,
        "peak_memory_mb": _peak_mb(device.torch),
        "loss_finite": bool(np.isfinite(losses).all()),
    }


def _floor(gen, clip, steps: int, device) -> float:
    """Seconds of ``steps`` bare network calls on the shapes one guided Euler sampling uses (batch 2: cond + uncond)."""
    from vssflow.model import ConditionDrop, Conditions, collate

    with torch.no_grad():
        cond = collate([clip], gen.config).to(device.torch)
        both = Conditions.cat([gen.model.preprocess_conditions(cond),
                               gen.model.preprocess_conditions(cond, ConditionDrop.all(1, device.torch))])  # fmt: skip
        x = torch.randn(2, cond.n_latent, gen.config.latent_dim, device=device.torch, dtype=gen.dtype)
        t = torch.full((2,), 0.5, device=device.torch)

        def calls():
            for _ in range(steps):
                gen.model.predict_flow(x, t, both)

        calls()  # warm-up
        return _timed(calls, device.torch)


def check_compiled(sizes: Sizes, gen, clip, eager_s: float, device, notes: list[str]) -> dict | None:
    """One clip at the first step count with the DiT compiled (a second Generator on the same weights)."""
    from vssflow.generator import Generator

    steps = sizes.gen_steps[0]
    cgen = Generator(gen.config, model=gen.model, device=device.torch, dtype=gen.dtype).compile()
    try:  # the first call at this shape compiles
        compile_s = _timed(lambda: cgen.generate(clip, steps=steps, cfg=3.0, method="euler"), device.torch)
    except Exception as e:  # noqa: BLE001 - no C++ compiler / Triton here: say so, measure the rest
        notes.append(f"compile: not measured ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        return None
    seconds = _timed(lambda: cgen.generate(clip, steps=steps, cfg=3.0, method="euler"), device.torch)
    return {"steps": steps, "clip_s": sizes.seconds, "seconds": seconds, "eager_s": eager_s,
            "speedup": eager_s / seconds, "first_call_s": compile_s, "shapes": sorted(cgen._flow.shapes)}  # fmt: skip


def check_generation(sizes: Sizes, device, notes: list[str]) -> tuple[list[dict], list[dict], dict | None]:
    """(2) one clip at each step count vs the compute floor; (3) batches of clips at the first step count; the
    first step count compiled."""
    from vssflow.generator import Generator
    from vssflow.model import PRESETS

    mcfg = PRESETS[sizes.preset]
    gen = Generator(mcfg, device=device.torch, dtype=device.dtype)
    clip = _clips(mcfg, sizes.seconds, 1)[0]
    gen.generate(clip, steps=2, cfg=3.0)  # warm-up
    single = []
    for steps in sizes.gen_steps:
        seconds = _timed(lambda s=steps: gen.generate(clip, steps=s, cfg=3.0, method="euler"), device.torch)
        floor = _floor(gen, clip, steps, device)
        single.append({"steps": steps, "clip_s": sizes.seconds, "seconds": seconds, "floor_s": floor,
                       "ratio_to_floor": seconds / floor})  # fmt: skip
    steps = sizes.gen_steps[0]
    batched = []
    for b in sizes.gen_batches:
        clips = _clips(mcfg, sizes.seconds, b, seed=b)
        gen.generate(clips, steps=1, cfg=3.0)  # warm-up at this batch shape
        seconds = _timed(lambda c=clips: gen.generate(c, steps=steps, cfg=3.0, method="euler"), device.torch)
        batched.append({"batch": b, "steps": steps, "seconds": seconds, "clips_per_s": b / seconds})
    for row in batched:
        row["throughput_ratio"] = row["clips_per_s"] / batched[0]["clips_per_s"]
    compiled = check_compiled(sizes, gen, clip, single[0]["seconds"], device, notes)
    return single, batched, compiled


def check_encoder(sizes: Sizes, device, notes: list[str]) -> dict | None:
    """(4) MobileNetV2 over 10 fps frames: clips batched together (one pass) vs one clip per pass."""
    try:
        from vssflow.features.extract import encode_semantic
        from vssflow.features.visual import load_visual_encoder

        enc = load_visual_encoder("mobilenetv2", device=device.torch, batch_size=256 if device.is_cuda else 32)
    except Exception as e:  # noqa: BLE001 - torchvision or the weights package missing: say so, measure the rest
        notes.append(f"encoder: MobileNetV2 not measured ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        return None
    rng = np.random.default_rng(0)
    shape = (sizes.encoder_frames, sizes.frame_size, sizes.frame_size, 3)
    clips = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(sizes.encoder_clips)]
    encode_semantic(clips[:2], enc)  # warm-up
    together = _timed(lambda: encode_semantic(clips, enc), device.torch)
    alone = _timed(lambda: [enc.encode(c) for c in clips], device.torch)
    return {"clips": len(clips), "frames_per_clip": sizes.encoder_frames, "frame_size": sizes.frame_size,
            "batched_clips_per_s": len(clips) / together, "one_by_one_clips_per_s": len(clips) / alone,
            "dtype": "bf16" if device.bf16 else "fp32"}  # fmt: skip


def run_check(sizes: Sizes, device_spec: str = "auto") -> dict:
    from vssflow.device import resolve_device

    device = resolve_device(device_spec)
    os.environ.setdefault("DS_ACCELERATOR", device.accelerator)  # before DeepSpeed is imported; never cpu on a GPU
    torch.manual_seed(0)
    notes: list[str] = []
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": sizes is SMOKE,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device.torch) if device.is_cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "sizes": sizes.__dict__,
        "notes": notes,
    }
    t0 = time.perf_counter()
    report["train"] = check_training(sizes, device, notes)
    report["generate"], report["batching"], report["compiled"] = check_generation(sizes, device, notes)
    report["encoder"] = check_encoder(sizes, device, notes)
    report["total_s"] = time.perf_counter() - t0
    return report


def table(report: dict) -> str:
    """The report as the Markdown rows of docs/performance.md."""
    r, lines = report, []
    t = r["train"]
    what = f"training, {t['preset']} preset, {t['engine']} {t['dtype']}, batch {t['batch']} x {t['clip_s']:g} s"
    lines.append(f"| {what} | {t['samples_per_s']:.2f} samples/s, peak {t['peak_memory_mb']:.0f} MiB |")
    for g in r["generate"]:
        lines.append(f"| generate {g['clip_s']:g} s, {g['steps']} Euler steps, cfg 3 | {g['seconds']:.3f} s "
                     f"({g['ratio_to_floor']:.2f}x the {g['floor_s']:.3f} s compute floor) |")  # fmt: skip
    for b in r["batching"]:
        lines.append(f"| generate batch {b['batch']}, {b['steps']} steps | {b['clips_per_s']:.2f} clips/s "
                     f"({b['throughput_ratio']:.2f}x batch 1) |")  # fmt: skip
    c = r.get("compiled")
    if c:
        lines.append(f"| generate {c['clip_s']:g} s, {c['steps']} Euler steps, cfg 3, compiled | {c['seconds']:.3f} s "
                     f"({c['speedup']:.2f}x eager; first call {c['first_call_s']:.1f} s) |")  # fmt: skip
    e = r["encoder"]
    if e:
        lines.append(f"| MobileNetV2 {e['dtype']}, {e['clips']} clips x {e['frames_per_clip']} frames "
                     f"{e['frame_size']}px | {e['batched_clips_per_s']:.2f} clips/s batched, "
                     f"{e['one_by_one_clips_per_s']:.2f} one by one |")  # fmt: skip
    head = f"device {r['device']} ({r['device_name']}), torch {r['torch']}, {r['date']}, {r['total_s']:.0f} s"
    return "\n".join([head, "| measurement | result |", "|---|---|", *lines, *[f"note: {n}" for n in r["notes"]]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny preset and sizes (runs on CPU in seconds)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report")
    args = p.parse_args(argv)
    report = run_check(SMOKE if args.smoke else FULL, args.device)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
