"""Preprocessing throughput: the Ray Data pipeline against a bare loop of the same work, and how it scales.

    bare loop  = one process on one core, one torch thread: ``extract_clip`` of each clip (decode at 10/25 fps,
                 semantic encoder, mouth crops, speaker embedding, phonemes, log-mel) and the same Parquet shards
                 (grouped by task and duration bucket, written atomically). The floor per CPU: on CPU the encoders
                 dominate, so raw decoding is not the floor.
    pipeline   = ``vssflow preprocess`` (:func:`pipelines.preprocess.run_preprocess`, its default plan) on a local
                 Ray with 1 and 2 CPUs, and on a 2-node ``ray.cluster_utils.Cluster`` of 1 CPU per node.

Each run is its own process pinned to as many cores as it has CPUs (``sched_setaffinity``; Ray's processes
inherit it), so "1 CPU" is one core. Throughput is the steady rate: clips finished after the first quarter of
the clips were out, over the time they took (start-up, i.e. Ray workers starting and loading their models, is
left out of every run alike; it is printed apart). Peak memory is the largest sum of the resident memory of the
run's process and all its descendants (driver, Ray's own processes, workers), sampled every 0.25 s.

The streaming check runs the 2-CPU pipeline on the same clips repeated to ``--scale`` rows (new clip ids, same
videos, so the same clip length): peak memory and throughput should stay within +25 % and +-15 % of the short run.

Run: ``python -m bench.bench_preprocess [--clips 48] [--scale 400]`` (also part of ``make bench``). Returns a dict
of the figures; :data:`GOALS` are checked by ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROWS_PER_SHARD = 4  # results often enough for a steady rate (a shard per 4 clips per task and bucket)


# ------------------------------------------------------------------------------------------------ measuring
class PeakMemory:
    """Largest sum of RSS over this process and its descendants, and the CPU time they used (the last reading of
    each process, so one that ends between samples loses at most 0.25 s), sampled in a thread."""

    def __init__(self, every_s: float = 0.25):
        import psutil

        self.proc, self.every_s, self.peak = psutil.Process(), every_s, 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system
            except Exception:  # noqa: BLE001 - a process that ended between the listing and the read
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self._sample())

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def steady_rate(timeline: list[tuple[float, int]], n: int) -> float:
    """Clips per second after the first quarter of the ``n`` clips were out (start-up left out)."""
    done = [(t, c) for t, c in timeline if c > 0]
    if not done:
        return 0.0
    t_a, c_a = next((t, c) for t, c in done if c >= n / 4)
    t_b, c_b = done[-1]
    if c_b <= c_a or t_b <= t_a:  # everything came out at once: the whole run is the only window
        return c_b / t_b
    return (c_b - c_a) / (t_b - t_a)


class _WarningLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "memory" in msg.lower():
            self.messages.append(" ".join(msg.split())[:300])


# ------------------------------------------------------------------------------------------------ one run each
def bare_loop(manifest: str, out: str, *, encoder: str) -> dict:
    """``extract_clip`` + shard writing in this process, one torch thread: the per-CPU floor."""
    import torch

    torch.set_num_threads(1)
    from vssflow.data import schema as S
    from vssflow.data.manifest import read_manifest
    from vssflow.data.shards import shard_name, write_table_atomic
    from vssflow.features.extract import ExtractConfig, Extractors, extract_clip

    rows = read_manifest(manifest)
    t0 = time.perf_counter()
    ex = Extractors.load(ExtractConfig(encoder=encoder))
    start_s = time.perf_counter() - t0
    groups: dict[tuple, list] = {}
    timeline, done = [], 0

    def flush(key):
        feats = groups.pop(key)
        schema = S.build_schema(sem_dim=ex.sem_dim, lip_dim=0, metadata={S.META["task"]: key[0]})
        ids = [r["clip_id"] for r in feats]
        write_table_atomic(S.rows_to_table(feats, schema), Path(out) / shard_name(key[0], key[1], ids))

    Path(out).mkdir(parents=True, exist_ok=True)
    for row in rows:
        f = extract_clip(row, ex)
        S.check_features(f, sem_dim=ex.sem_dim, lip_dim=0)
        key = (f.task, float(f.meta["bucket_s"]))
        groups.setdefault(key, []).append(S.features_to_row(f))
        done += 1
        if len(groups[key]) >= ROWS_PER_SHARD:
            flush(key)
            timeline.append((time.perf_counter() - t0, done))
    for key in list(groups):
        flush(key)
    timeline.append((time.perf_counter() - t0, done))
    return {"clips": done, "seconds": time.perf_counter() - t0, "start_s": start_s, "timeline": timeline}


def pipeline(manifest: str, out: str, *, encoder: str, cpus: int, nodes: int = 0) -> dict:
    """``run_preprocess`` on a local Ray of ``cpus`` CPUs, or (``nodes`` > 0) on a ``Cluster`` of ``nodes`` nodes
    of ``cpus`` CPUs each."""
    import ray.data  # noqa: F401 - its logging config, applied at import, would drop a handler added before

    from pipelines.preprocess import PreprocessConfig, run_preprocess
    from vssflow.features.extract import ExtractConfig

    warnings = _WarningLog()
    logging.getLogger("ray.data").addHandler(warnings)
    cluster = None
    kw = {"num_cpus": cpus}
    if nodes:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        kw = {"ray_address": cluster.address}
    try:
        cfg = PreprocessConfig(manifest=manifest, out=out, extract=ExtractConfig(encoder=encoder),
                               rows_per_shard=ROWS_PER_SHARD, progress=False, **kw)  # fmt: skip
        lines: list[str] = []
        s = run_preprocess(cfg, log=lines.append)
    finally:
        if cluster is not None:
            cluster.shutdown()
    plan = next((x for x in lines if "actor" in x), "")
    first = next((t for t, c in s.timeline if c > 0), s.pipeline_seconds)
    return {"clips": s.written, "seconds": s.pipeline_seconds, "start_s": first, "timeline": s.timeline,
            "quarantined": sum(s.quarantined.values()), "plan": plan.removeprefix("vssflow preprocess: "),
            "memory_warnings": warnings.messages}  # fmt: skip


def _child(spec: dict) -> None:
    """The body of one pinned run (``--_run SPEC``): prints its result as the last line of stdout."""
    with PeakMemory() as mem:
        if spec["mode"] == "bare":
            r = bare_loop(spec["manifest"], spec["out"], encoder=spec["encoder"])
        else:
            r = pipeline(spec["manifest"], spec["out"], encoder=spec["encoder"], cpus=spec["cpus"],
                         nodes=spec.get("nodes", 0))  # fmt: skip
    r["rate"] = steady_rate(r["timeline"], r["clips"])
    r["peak_mib"] = mem.peak / 2**20
    r["cpu_s_per_clip"] = mem.cpu_s / max(1, r["clips"])  # the whole run's, start-up included
    print(json.dumps(r))


def _run(spec: dict, cores: int) -> dict:
    """One run in a fresh process pinned to the first ``cores`` cores this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < cores:
        raise SystemExit(f"bench_preprocess: the run needs {cores} cores, this process may use {len(allowed)}")
    pin = set(allowed[:cores])
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    cmd = [sys.executable, "-m", "bench.bench_preprocess", "--_run", json.dumps(spec)]
    p = subprocess.run(cmd, preexec_fn=lambda: os.sched_setaffinity(0, pin), capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench_preprocess run {spec['mode']} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["memory_warnings"] = r.get("memory_warnings", []) + [
        " ".join(x.split())[:300] for x in p.stderr.splitlines() if "memory=" in x or "uses" in x and "MiB" in x
    ]
    return r


def repeat_manifest(manifest: Path, n: int, out: Path) -> Path:
    """The manifest's rows repeated (clip ids suffixed) to ``n`` rows: same videos, same clip lengths."""
    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    base = manifest.parent
    lines = []
    for i in range(n):
        r = dict(rows[i % len(rows)])
        r["clip_id"] = f"{r['clip_id']}-r{i // len(rows)}"
        for k in ("video", "audio", "reference_audio", "speech_stem"):
            if r.get(k) and r[k] != "from_video" and not os.path.isabs(r[k]):
                r[k] = str(base / r[k])
        lines.append(json.dumps(r))
    out.write_text("\n".join(lines) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ the bench
def bench_preprocess(*, clips: int = 48, scale: int = 400, encoder: str = "mobilenetv2", log=print) -> dict:
    """Run every preprocessing measurement; print them; return the figures (see the module docstring)."""
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        manifest = Path(write_corpus(CorpusConfig(out=f"{tmp}/corpus", clips=clips, seed=11,
                                                  duration=(2.0, 2.0))).manifest)  # fmt: skip
        common = {"manifest": str(manifest), "encoder": encoder}
        runs = {
            "bare loop, 1 core": _run({**common, "mode": "bare", "out": f"{tmp}/bare"}, 1),
            "pipeline, 1 CPU": _run({**common, "mode": "pipeline", "out": f"{tmp}/p1", "cpus": 1}, 1),
            "pipeline, 2 CPUs": _run({**common, "mode": "pipeline", "out": f"{tmp}/p2", "cpus": 2}, 2),
            "pipeline, 2 nodes x 1 CPU": _run(
                {**common, "mode": "pipeline", "out": f"{tmp}/n2", "cpus": 1, "nodes": 2}, 2
            ),
        }
        if scale:
            long = repeat_manifest(manifest, scale, Path(tmp) / "long.jsonl")
            runs[f"pipeline, 2 CPUs, {scale} clips"] = _run(
                {**common, "manifest": str(long), "mode": "pipeline", "out": f"{tmp}/long", "cpus": 2}, 2
            )
    load1 = os.getloadavg()
    bare, p1, p2, n2 = (runs[k]["rate"] for k in list(runs)[:4])
    figures = {
        "clips": clips,
        "load_before": load0[0],
        "load_after": load1[0],
        "bare_clips_s": bare,
        "pipeline_1cpu_clips_s": p1,
        "pipeline_2cpu_clips_s": p2,
        "cluster_2node_clips_s": n2,
        "pipeline_per_cpu_vs_bare": p1 / bare,
        "pipeline_2cpu_per_cpu_vs_bare": p2 / (2 * bare),
        "scaling_2cpu_vs_1cpu": p2 / p1,
        "scaling_2node_vs_1node": n2 / p1,
        "memory_warnings": sum(len(r["memory_warnings"]) for r in runs.values()),
        # CPU time per clip (every process of the run, start-up included): what load on the machine disturbs least
        **{f"cpu_s_per_clip[{k}]": r["cpu_s_per_clip"] for k, r in runs.items()},
        "plan_2cpu": runs["pipeline, 2 CPUs"].get("plan", ""),
    }
    if scale:
        short, longr = runs["pipeline, 2 CPUs"], runs[f"pipeline, 2 CPUs, {scale} clips"]
        figures.update(scale_clips=scale, scale_memory_ratio=longr["peak_mib"] / short["peak_mib"],
                       scale_throughput_ratio=longr["rate"] / short["rate"])  # fmt: skip

    log(f"{clips} clips of 2 s (synthetic corpus), encoder {encoder}; load average {load0[0]:.2f} before, "
        f"{load1[0]:.2f} after")  # fmt: skip
    log(f"{'run':<34} {'clips':>6} {'clips/s':>8} {'start s':>8} {'total s':>8} {'CPU s/clip':>10} {'peak MiB':>9}  "
        "plan")  # fmt: skip
    for name, r in runs.items():
        log(f"{name:<34} {r['clips']:>6} {r['rate']:>8.2f} {r['start_s']:>8.1f} {r['seconds']:>8.1f} "
            f"{r['cpu_s_per_clip']:>10.2f} {r['peak_mib']:>9.0f}  {r.get('plan', '')}")  # fmt: skip
        for w in r["memory_warnings"][:3]:
            log(f"    memory warning: {w}")
    log(f"pipeline / bare loop per CPU: 1 CPU {figures['pipeline_per_cpu_vs_bare']:.2f}, "
        f"2 CPUs {figures['pipeline_2cpu_per_cpu_vs_bare']:.2f}")  # fmt: skip
    log(f"scaling: 2 CPUs / 1 CPU {figures['scaling_2cpu_vs_1cpu']:.2f}x, 2 nodes / 1 node (the 1-CPU run) "
        f"{figures['scaling_2node_vs_1node']:.2f}x")  # fmt: skip
    if scale:
        log(f"streaming, {scale} vs {clips} clips at 2 CPUs: peak memory {figures['scale_memory_ratio']:.2f}x, "
            f"throughput {figures['scale_throughput_ratio']:.2f}x")  # fmt: skip
    return figures


# (figure, goal, comparison): what ``bench/run.py`` prints as PASS/MISS
GOALS = [
    ("pipeline_per_cpu_vs_bare", 0.9, ">="),
    ("scaling_2cpu_vs_1cpu", 1.8, ">="),
    ("scaling_2node_vs_1node", 1.7, ">="),
    ("scale_memory_ratio", 1.25, "<="),
    ("scale_throughput_ratio", (0.85, 1.15), "within"),
    ("memory_warnings", 0, "<="),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48, help="clips of 2 s in the corpus")
    parser.add_argument("--scale", type=int, default=400, help="rows of the streaming check (0: skip it)")
    parser.add_argument("--encoder", default="mobilenetv2", help="'mobilenetv2' or a local CLIPVisionModel dir")
    parser.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._run:
        _child(json.loads(args._run))
        return {}
    return bench_preprocess(clips=args.clips, scale=args.scale, encoder=args.encoder)


if __name__ == "__main__":
    main()
