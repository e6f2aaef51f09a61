"""``vssflow dub-batch``: dub every video of a manifest from its subtitles with Ray Data (issue 18).

    vssflow dub-batch MANIFEST.jsonl|.csv --model MODEL --out DIR [--sound on|off] [--stems] [--strict]
        [--steps N --cfg S --seed K] [--actors 1 --actor-cpus 1] [--wav]

One row per video: ``id``, ``video``, ``subtitles`` (.srt/.vtt), optional ``voices`` (a speakers file, YAML
``NAME: recording.wav``, as for ``vssflow dub --voices``) and ``reference_voice``; paths relative to the manifest
and inside its directory. An actor pool (``ActorPoolStrategy``) holds the generator, loaded once per actor; each
actor dubs one video at a time (:func:`vssflow.dub.dub`: a dub batches its cue windows itself) and writes
``DIR/<id>.mp4`` (or ``.wav`` with ``--wav``), with ``--stems`` ``DIR/<id>.speech.wav``/``.sound.wav``/``.mix.wav``,
and last, atomically, ``DIR/<id>.timing.json``, the timing report.

Resumable like preprocessing: a video whose timing report exists is finished (everything else of it was written
before) and is skipped, so rerunning after a crash or a kill dubs only the rest; each video's seed comes from
``--seed`` and its id, so a resumed run writes what an uninterrupted one would have. A bad row (a line that does not
parse, a missing or escaping path, a repeated id, bad subtitles, an unreadable video or voice, a failure while
dubbing) is quarantined with its stage, reason and one-line message in ``DIR/_quarantine.jsonl`` and the job goes
on; the next run tries it again. ``DIR/_summary.json`` has the counts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.devices import load_actor_generator, map_on_actors
from pipelines.generate_batch import clip_seed, output_path
from pipelines.quarantine import error_fields, record
from pipelines.ray_runtime import add_ray_arguments, start_ray
from vssflow.commands.flags import add_mlflow_uri, add_model, mlflow_uri
from vssflow.device import DEVICE_HELP
from vssflow.errors import InputError, ManifestError, MissingFileError

__all__ = ["DubBatchConfig", "DubActor", "outputs", "read_dub_manifest", "run_dub_batch"]

COLUMNS = ("id", "video", "subtitles", "voices", "reference_voice")
REQUIRED = ("id", "video", "subtitles")


@dataclass(frozen=True)
class DubBatchConfig:
    """Options of a batch dubbing run (see the module docstring)."""

    manifest: str
    model: str
    out: str
    sound: bool = True
    stems: bool = False
    strict: bool = False
    wav: bool = False
    steps: int | None = None
    cfg: float | None = None
    seed: int = 0
    actors: int = 1
    actor_cpus: float = 1.0
    device: str = "cpu"  # --device auto|cpu|cuda, resolved against the cluster by run_dub_batch


def outputs(out: str | os.PathLike, video_id: str, *, wav: bool = False, stems: bool = False) -> dict[str, Path]:
    """Every file a row writes: {"video", "report", and with stems "speech", "sound", "mix"}; "report" is last."""
    paths = {"video": output_path(out, video_id, ".wav" if wav else ".mp4")}
    if stems:
        paths.update({k: output_path(out, video_id, f".{k}.wav") for k in ("speech", "sound", "mix")})
    paths["report"] = output_path(out, video_id, ".timing.json")
    return paths


def read_dub_manifest(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """A dubbing manifest (.jsonl or .csv), read past its bad lines.

    Returns:
        (jobs, records): one job per good row ({"id", "video", "subtitles", "voices", "reference_voice"}, absolute
        real paths, "" when not given) and quarantine records of the bad ones (stage "manifest"; a line without a
        usable id is named ``line:<n>``).

    Raises:
        MissingFileError when the manifest is missing; ManifestError when it has no row at all.
    """
    from vssflow.data.manifest import resolve_path

    path = Path(path)
    if not path.is_file():
        raise MissingFileError("manifest not found; check the path", source=str(path))
    base = path.resolve().parent
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        raw = [(i + 2, rec) for i, rec in enumerate(csv.DictReader(io.StringIO(text)))]
    else:
        raw = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not raw:
        raise ManifestError("manifest has no rows; add one JSON object (or CSV record) per video", source=str(path))
    jobs, bad, ids, names = [], [], set(), {}
    for n, line in raw:
        where, vid = f"{path}:{n}", f"line:{n}"
        try:
            try:
                rec = line if isinstance(line, dict) else json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"not valid JSON ({e})", source=where) from None
            if not isinstance(rec, dict):
                raise ManifestError("expected a JSON object per line", source=where)
            if isinstance(rec.get("id"), str) and rec["id"].strip():
                vid = rec["id"].strip()
            unknown = sorted(set(rec) - set(COLUMNS))
            if unknown:
                raise ManifestError(f"unknown column(s) {unknown}; the columns are {list(COLUMNS)}", source=where)
            missing = [c for c in REQUIRED if not str(rec.get(c) or "").strip()]
            if missing:
                raise ManifestError(f"missing {', '.join(missing)}; every row needs id, video and subtitles",
                                    source=where)  # fmt: skip
            name = output_path("", vid).name
            if vid in ids or name in names:
                first = vid if vid in ids else names[name]
                vid = f"{vid}#line:{n}"  # the record needs an id of its own
                raise ManifestError(f"id {first!r} is used twice (or writes the same files); ids must be unique",
                                    source=where)  # fmt: skip
            ids.add(vid)
            names[name] = vid
            job = {"id": vid}
            for c in COLUMNS[1:]:
                value = str(rec.get(c) or "").strip()
                if value:
                    value = resolve_path(value, base, [base], where, c)
                    if not Path(value).is_file():
                        raise MissingFileError(f"{c}: {rec[c]!r} not found; fix the path", source=where)
                job[c] = value
            jobs.append(job)
        except InputError as e:
            bad.append({**record({"clip_id": vid, **error_fields("manifest", e)}), "video": None})
    return jobs, bad


class DubActor:
    """Ray Data actor: loads the generator once; dubs the videos of each batch one by one, each failure its own."""

    def __init__(self, config: DubBatchConfig):
        self.config = config
        self.gen = load_actor_generator(config.model, config.device, threads=config.actor_cpus)

    def dub_one(self, job: dict) -> dict:
        """Dub one row and write its files; returns {"status": "ok"} or the error fields of its quarantine record."""
        from vssflow.audio.io import write_audio
        from vssflow.dub import DubConfig, dub, read_voices, voice_for
        from vssflow.media.mux import mux_audio
        from vssflow.media.video import probe
        from vssflow.text.subtitles import read_subtitles

        c, stage = self.config, "inputs"
        t0 = time.perf_counter()
        try:
            info = probe(job["video"])
            subs = read_subtitles(job["subtitles"], duration_s=float(info.duration), strict=c.strict)
            voices = read_voices(job["voices"]) if job["voices"] else None
            if voices and c.strict:
                for cue in subs.cues:
                    voice_for(cue, voices, job["reference_voice"] or None, strict=True)
            stage = "dub"
            config = DubConfig(sound=c.sound, strict=c.strict, seed=clip_seed(c.seed, job["id"]), steps=c.steps,
                               cfg=c.cfg)  # fmt: skip
            result = dub(self.gen, job["video"], subs, voices=voices, reference_voice=job["reference_voice"] or None,
                         config=config, info=info)  # fmt: skip
            paths = outputs(c.out, job["id"], wav=c.wav, stems=c.stems)
            if c.wav:
                write_audio(paths["video"], result.mix)
            else:
                mux_audio(job["video"], result.mix, paths["video"])
            for kind in ("speech", "sound", "mix"):
                wav = getattr(result, kind)
                if kind in paths and wav is not None:
                    write_audio(paths[kind], wav)
            report = {**result.report, "id": job["id"], "subtitles": job["subtitles"], "output": str(paths["video"]),
                      "model": c.model, "asr_note": "not run by dub-batch"}  # fmt: skip
            _atomic_text(paths["report"], json.dumps(report, indent=2))  # last: marks the row finished
            return {"status": "ok", "cues": len(subs.cues), "seconds": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 - a bad row is quarantined, the job goes on
            return {"status": "failed", **error_fields(stage, e), "cues": 0, "seconds": time.perf_counter() - t0}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = [{k: str(batch[k][i]) for k in batch} for i in range(len(batch["id"]))]
        results = [{"id": j["id"], "video": j["video"], **self.dub_one(j)} for j in jobs]
        keys = ("id", "video", "status", "error_stage", "error_reason", "error_type", "error_message", "cues",
                "seconds")  # fmt: skip
        return {k: np.array([r.get(k, "") if k not in ("cues", "seconds") else r[k] for r in results]) for k in keys}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_dub_batch(config: DubBatchConfig, *, log=print) -> dict:
    """Dub every row of ``config.manifest`` not finished in ``config.out``. Ray must be initialised (or is started
    locally). Returns the summary written to ``out/_summary.json``."""

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs, bad = read_dub_manifest(config.manifest)
    todo = [j for j in jobs if not outputs(out, j["id"])["report"].exists()]
    log(f"vssflow dub-batch: {len(jobs) + len(bad)} rows in {config.manifest} ({len(bad)} bad); {len(jobs) - len(todo)}"
        f" already dubbed; {len(todo)} to dub with {config.actors} actor(s) -> {out}")  # fmt: skip
    t0 = time.perf_counter()
    results = []
    if todo:
        config, rows = map_on_actors(todo, DubActor, config, batch_size=1)
        for r in rows:
            results.append(r)
            what = "dubbed" if r["status"] == "ok" else f"quarantined ({r['error_reason']}: {r['error_message']})"
            log(f"  {len(results)}/{len(todo)} {r['id']}: {what}")
    failed = [record({**r, "clip_id": r["id"]}) for r in results if r["status"] != "ok"]
    quarantine = bad + failed
    _atomic_text(out / "_quarantine.jsonl", "".join(json.dumps(q) + "\n" for q in quarantine))
    summary = {"rows": len(jobs) + len(bad), "skipped": len(jobs) - len(todo),
               "dubbed": sum(r["status"] == "ok" for r in results), "quarantined": len(quarantine),
               "reasons": dict(Counter(q["reason"] for q in quarantine)),
               "cues": int(sum(r["cues"] for r in results)), "seconds": round(time.perf_counter() - t0, 2),
               "config": asdict(config)}  # fmt: skip
    _atomic_text(out / "_summary.json", json.dumps(summary, indent=2))
    log(f"vssflow dub-batch: dubbed {summary['dubbed']}, skipped {summary['skipped']}, quarantined "
        f"{summary['quarantined']} in {summary['seconds']:.1f} s; outputs in {out}"
        + (f"; quarantine in {out / '_quarantine.jsonl'}" if quarantine else ""))  # fmt: skip
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="manifest (.jsonl/.csv): id, video, subtitles[, voices, reference_voice] per row")
    add_model(p)
    add_mlflow_uri(p, local="none (only an MLflow URI given as --model needs one)", old="--tracking-uri")
    p.add_argument("--out", required=True, help="output directory (<id>.mp4 + <id>.timing.json; rerun to resume)")
    p.add_argument("--sound", choices=("on", "off"), default="on", help="sound effects for the whole video (V2S)")
    p.add_argument("--stems", action="store_true", help="also write <id>.speech.wav, .sound.wav and .mix.wav")
    p.add_argument("--strict", action="store_true", help="refuse (quarantine) any problem in subtitles or voices")
    p.add_argument("--wav", action="store_true", help="write <id>.wav instead of the muxed <id>.mp4")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="run seed (each video's comes from it and its id)")
    p.add_argument("--actors", type=int, default=1, help="dubbing actors (each loads the model once)")
    p.add_argument("--actor-cpus", type=float, default=1.0)
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP}; cuda: one GPU per actor, bf16")
    add_ray_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pipelines.model_uri import resolve_model_dir
    from vssflow.model_dir import read_model_config

    model = resolve_model_dir(args.model, tracking_uri=mlflow_uri(args))
    read_model_config(model)
    read_dub_manifest(args.manifest)  # a missing or empty manifest fails here, in one line, before Ray starts
    start_ray(args.ray_address, num_cpus=args.num_cpus)
    config = DubBatchConfig(manifest=args.manifest, model=str(Path(model).resolve()), out=args.out,
                            sound=args.sound == "on", stems=args.stems, strict=args.strict, wav=args.wav,
                            steps=args.steps, cfg=args.cfg, seed=args.seed, actors=args.actors,
                            actor_cpus=args.actor_cpus, device=args.device)  # fmt: skip
    summary = run_dub_batch(config)
    return 0 if summary["quarantined"] == 0 else 1
