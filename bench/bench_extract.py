"""Feature extraction throughput on the embedded corpus, and its cost relative to decoding alone.

    raw decode  = decord: every video frame + the audio track of each clip (the floor: extraction must decode)
    extraction  = vssflow.features.extract.extract_clip: decode at 10 and 25 fps, semantic encoder, mouth crops,
                  speaker embedding, phonemes, log-mel (models loaded once, before timing)
Printed: clips/s of each stage and of the whole, and extraction time / raw decode time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def raw_decode(video: str) -> int:
    import decord

    vr = decord.VideoReader(video)
    frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    ar = decord.AudioReader(video, sample_rate=16000, mono=True)
    return frames.shape[0] + ar[:].asnumpy().shape[-1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--corpus", default=None, help="existing corpus dir (default: synthesize one)")
    args = parser.parse_args(argv)

    import torch

    from vssflow.data.manifest import read_manifest
    from vssflow.features import extract as ex

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus or Path(tmp) / "corpus")
        if args.corpus is None:
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipelines.cli",
                    "synth",
                    "--out",
                    str(corpus),
                    "--clips",
                    str(args.clips),
                    "--seed",
                    "1",
                    "--duration",
                    "2.0..4.0",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            synth_s = time.perf_counter() - t0
            print(
                f"synth: {args.clips} clips in {synth_s:.1f} s = {args.clips / synth_s:.1f} clips/s "
                f"(includes process start-up)"
            )
        rows = [ex.row_dict(r) for r in read_manifest(corpus / "manifest.jsonl")]
        extractors = ex.Extractors.load()
        print(
            f"torch threads {torch.get_num_threads()}; clips {len(rows)}; "
            f"audio seconds {sum(float(r['end']) - float(r['start']) if r['end'] == r['end'] else 0 for r in rows):.0f}"
        )
        raw_decode(rows[0]["video"])  # warm-up
        ex.extract_clip(rows[0], extractors)

        t0 = time.perf_counter()
        for r in rows:
            raw_decode(r["video"])
        raw = time.perf_counter() - t0

        stages = {"decode": 0.0, "phonemes": 0.0, "encoders": 0.0, "mel": 0.0}
        t_all = time.perf_counter()
        for r in rows:
            t = time.perf_counter()
            d = ex.decode_clip(r, extractors.config)
            stages["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            d = ex.phonemize_clip(d, extractors.g2p)
            stages["phonemes"] += time.perf_counter() - t
            t = time.perf_counter()
            d = ex.encode_clip(d, extractors)
            stages["encoders"] += time.perf_counter() - t
            t = time.perf_counter()
            ex.to_features(ex.mel_clip(d))
            stages["mel"] += time.perf_counter() - t
        full = time.perf_counter() - t_all

    n = len(rows)
    print(f"{'stage':<22} {'seconds':>8} {'clips/s':>8}")
    print(f"{'raw decord decode':<22} {raw:>8.2f} {n / raw:>8.1f}")
    for k, v in stages.items():
        print(f"{k:<22} {v:>8.2f} {n / max(v, 1e-9):>8.1f}")
    print(f"{'full extraction':<22} {full:>8.2f} {n / full:>8.1f}")
    print(f"extraction / raw decode = {full / raw:.2f}x (decode is the floor; the encoders are the rest)")
    return {"raw_s": raw, "full_s": full, "ratio": full / raw, "clips": n, **stages, "np": np.__version__}


if __name__ == "__main__":
    main()
