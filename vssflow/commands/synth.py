"""``vssflow synth``: write the embedded audio-visual corpus (real .mp4 files + manifest.jsonl)."""

from __future__ import annotations

import argparse
import os
import sys

from vssflow.commands.flags import add_mix
from vssflow.errors import InputError
from vssflow.synth.sentences import GRID_SIZE, PHRASES_SIZE, TEXTS


def _duration(text: str) -> tuple[float, float]:
    try:
        if ".." in text:
            lo, hi = (float(v) for v in text.split("..", 1))
        else:
            lo = hi = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, e.g. 2.0 or a range 2.0..4.0") from None
    return lo, hi


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give three shares train,val,test, e.g. 0.8,0.1,0.1")
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (clips/, refs/, manifest.jsonl)")
    parser.add_argument("--clips", type=int, default=12, help="number of clips (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same corpus")
    parser.add_argument("--duration", type=_duration, default=(2.0, 4.0), help="clip seconds: 2.0 or 2.0..4.0")
    add_mix(parser, what="share of the clips", default=(0.4, 0.4, 0.2))
    parser.add_argument(
        "--split", type=_split, default=(0.8, 0.1, 0.1),
        help="share of train,val,test (0.8,0.1,0.1); a speech clip follows its sentence's split",
    )  # fmt: skip
    parser.add_argument(
        "--real-speech",
        type=float,
        default=0.25,
        help="share of tts clips with real recorded speech (asterisk package), if installed",
    )
    parser.add_argument(
        "--synth-sounds-only",
        action="store_true",
        help="use synthesized event sounds even when the Debian recordings are installed",
    )
    parser.add_argument(
        "--text",
        choices=TEXTS,
        default="phrases",
        help=f"clip sentences: phrases (short natural sentences, {PHRASES_SIZE:,}; default), grid (GRID grammar, "
        f"{GRID_SIZE:,}) or sentences (the 32 fixed ones)",
    )
    parser.add_argument(
        "--held-out-voices",
        type=int,
        default=2,
        help="espeak voices kept out of train, heard only in val/test (default 2 of 8)",
    )
    parser.add_argument("--size", type=int, default=128, help="frame width and height in pixels (default 128)")
    parser.add_argument("--fps", type=int, default=25, help="video frame rate (default 25)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")


def run(args: argparse.Namespace) -> int:
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    if args.size < 64 or args.size % 2:
        raise InputError(f"--size {args.size}: give an even number >= 64")
    if not 1 <= args.fps <= 60 or 16000 % args.fps:
        raise InputError(f"--fps {args.fps}: give a rate that divides 16000 (e.g. 25)")
    cfg = CorpusConfig(
        out=args.out,
        clips=args.clips,
        seed=args.seed,
        duration=args.duration,
        mix=args.mix,
        split=args.split,
        real_speech=args.real_speech,
        real_sounds=not args.synth_sounds_only,
        text=args.text,
        held_out_voices=args.held_out_voices,
        size=args.size,
        fps=args.fps,
        workers=args.workers,
    )
    print(
        f"vssflow synth: writing {cfg.clips} clips (seed {cfg.seed}, {cfg.duration[0]}-{cfg.duration[1]} s, "
        f"mix v2s/tts/joint {cfg.mix}, text {cfg.text}, {cfg.held_out_voices} held-out voices) to {cfg.out} "
        f"with {cfg.workers} workers",
        flush=True,
    )

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() or done == total or done % 50 == 0:
            print(f"\r  {done}/{total} clips", end="" if done < total else "\n", file=sys.stderr, flush=True)

    report = write_corpus(cfg, progress=progress)
    by_task: dict[str, int] = {}
    for r in report.rows:
        by_task[r.task] = by_task.get(r.task, 0) + 1
    tasks = ", ".join(f"{k} {v}" for k, v in sorted(by_task.items()))
    print(f"vssflow synth: {len(report.rows)} clips ({tasks}) in {report.seconds:.1f} s "
          f"({report.clips_per_second:.1f} clips/s); manifest: {report.manifest}")  # fmt: skip
    return 0
