"""Ray Data preprocessing throughput for 1 and 2 CPUs, against raw decord decoding of the same clips.

    raw decode = decord: every video frame + the audio track of each clip, in 1 or 2 processes (the floor)
    pipeline   = `vssflow preprocess` on a local Ray with 1 or 2 CPUs: decode at 10/25 fps, semantic encoder,
                 mouth crops, speaker embedding, phonemes, log-mel, Parquet shards (one encoder actor)

Printed per CPU count: clips/s of raw decode, of the pipeline's execution (Ray Data run, actor start included)
and end to end (Ray start and driver-side model check included), and pipeline / raw decode (goal >= 0.8).
Run: ``python -m bench.bench_preprocess [--clips 16] [--encoder mobilenetv2|DIR]`` (also part of ``make bench``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def raw_decode(video: str) -> int:
    """Decode every frame and the audio track with decord; returns a count so nothing is optimised away."""
    import decord

    vr = decord.VideoReader(video, num_threads=1)
    frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    ar = decord.AudioReader(video, sample_rate=16000, mono=True)
    return frames.shape[0] + ar[:].asnumpy().shape[-1]


def _raw_rate(videos: list[str], procs: int) -> float:
    t0 = time.perf_counter()
    if procs == 1:
        for v in videos:
            raw_decode(v)
    else:
        with mp.get_context("spawn").Pool(procs) as pool:
            pool.map(raw_decode, [videos[0]] * procs)  # start-up outside the timing
            t0 = time.perf_counter()
            pool.map(raw_decode, videos, chunksize=1)
    return len(videos) / (time.perf_counter() - t0)


def bench_preprocess(
    *, clips: int = 16, encoder: str = "mobilenetv2", corpus: str | None = None, cpus=(1, 2), log=print
) -> dict:
    """Measure and print clips/s for each CPU count and the ratio to raw decode; returns the numbers."""
    from pipelines.preprocess import PreprocessConfig, run_preprocess
    from vssflow.data.manifest import read_manifest
    from vssflow.features.extract import ExtractConfig

    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        if corpus is None:
            from vssflow.synth.corpus import CorpusConfig, write_corpus

            cc = CorpusConfig(out=f"{tmp}/corpus", clips=clips, seed=11, duration=(2.0, 2.0))
            manifest = write_corpus(cc).manifest
        else:
            manifest = Path(corpus) / "manifest.jsonl"
        videos = [r.video for r in read_manifest(manifest)]
        raw_decode(videos[0])  # warm the file cache and decord
        results = {}
        for n in cpus:
            raw = _raw_rate(videos, n)
            cfg = PreprocessConfig(
                manifest=str(manifest), out=f"{tmp}/out{n}", extract=ExtractConfig(encoder=encoder), num_cpus=n,
                rows_per_shard=8, progress=False,
            )  # fmt: skip
            s = run_preprocess(cfg, log=lambda *_: None)
            pipe = s.written / s.pipeline_seconds
            results[n] = {
                "raw_decode_clips_s": raw,
                "pipeline_clips_s": pipe,
                "end_to_end_clips_s": s.written / s.seconds,
                "ratio": pipe / raw,
                "written": s.written,
            }
    log(f"{len(videos)} clips of 2 s, encoder {encoder}")
    log(f"{'CPUs':>4} {'raw decode':>11} {'pipeline':>9} {'end-to-end':>11} {'pipeline/raw':>13}  (clips/s)")
    for n, r in results.items():
        log(
            f"{n:>4} {r['raw_decode_clips_s']:>11.1f} {r['pipeline_clips_s']:>9.2f} {r['end_to_end_clips_s']:>11.2f} "
            f"{r['ratio']:>13.3f}"
        )
    if len(results) == 2:
        a, b = (results[n]["pipeline_clips_s"] for n in cpus)
        log(f"pipeline speed-up {cpus[0]} -> {cpus[1]} CPUs: {b / a:.2f}x")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--encoder", default="mobilenetv2", help="'mobilenetv2' or a local CLIPVisionModel dir")
    parser.add_argument("--corpus", default=None, help="existing corpus dir (default: synthesize one)")
    args = parser.parse_args(argv)
    return bench_preprocess(clips=args.clips, encoder=args.encoder, corpus=args.corpus)


if __name__ == "__main__":
    main()
