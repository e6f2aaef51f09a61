"""`make bench`: every performance number the project claims, measured side by side in one run.

Each section is a module of bench/ with a ``main(argv)``; a section whose module is not part of this checkout is
reported as missing rather than skipped silently. A section whose ``main`` returns a dict of figures and whose
module has ``GOALS`` (``(figure, goal, "<=" | ">=" | "within")``) has each goal printed next to its figure with
PASS or MISS at the end. Every figure, the machine's load average before and after each section, the commit and
the date go to ``runs/bench.json`` (``--json PATH``), so runs can be compared.

    python -m bench.run [SECTION ...] [--json runs/bench.json]     # SECTION: part of a module name, e.g. serve
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

# (title, module, argv for make bench)
SECTIONS = [
    ("generation vs compute floor (issue 3)", "bench.bench_generate", []),
    ("feature extraction vs raw decode (issue 4)", "bench.bench_extract", []),
    ("preprocessing: pipeline vs bare loop, scaling, streaming (issues 5, 16)", "bench.bench_preprocess", []),
    ("Ray Train + DeepSpeed (issue 6)", "bench.bench_train", []),
    # the demo's model (the goals name it); `python -m bench.bench_serve` alone also runs the 1-block test model
    (
        "Ray Serve: batching, HTTP vs in-process ceiling, HTTP overhead (issues 7, 16)",
        "bench.bench_serve",
        ["--models", "tiny:4"],
    ),  # fmt: skip
    ("vocoder intelligibility per mel inversion (issue 13)", "bench.bench_vocoder_quality", []),
    ("dubbing a video from its subtitles vs its parts one by one (issue 18)", "bench.bench_dub", []),
]


def check(value, goal, op: str) -> bool:
    """Whether ``value`` meets ``goal`` under ``op``; a missing or NaN figure never does."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if op == ">=":
        return value >= goal
    if op == "<=":
        return value <= goal
    if op == "within":
        return goal[0] <= value <= goal[1]
    raise ValueError(f"unknown goal comparison {op!r}")


def _show_goal(goal, op: str) -> str:
    return f"in [{goal[0]:g}, {goal[1]:g}]" if op == "within" else f"{op} {goal:g}"


def goal_lines(results: dict[str, dict], goals: dict[str, list]) -> tuple[list[str], list[dict]]:
    """The PASS/MISS lines of every section's goals, and the same as records for the JSON."""
    lines, records = [], []
    for module, section_goals in goals.items():
        figures = results.get(module) or {}
        for name, goal, op in section_goals:
            value = figures.get(name)
            ok = check(value, goal, op)
            shown = "missing" if value is None else f"{value:.3g}"
            lines.append(f"{'PASS' if ok else 'MISS'}  {module.removeprefix('bench.')}: {name} = {shown}  "
                         f"(goal {_show_goal(goal, op)})")  # fmt: skip
            records.append({"section": module, "figure": name, "value": value, "goal": goal, "op": op, "pass": ok})
    return lines, records


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, int | float | str | bool) or x is None:
        return x
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    p.add_argument("only", nargs="*", help="run only the sections whose module name contains one of these")
    p.add_argument("--json", default="runs/bench.json", help="where the figures go")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    failed, results, goals, sections = [], {}, {}, []
    t_all = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    print(f"make bench: {started}, commit {_commit()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)", flush=True)  # fmt: skip
    for title, module, section_argv in SECTIONS:
        if args.only and not any(o in module for o in args.only):
            continue
        print(f"\n##### {title} [{module}]", flush=True)
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        record = {"module": module, "title": title, "load_before": load0}
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                print(f"(missing: {module} is not in this checkout)")
                failed.append(module)
                sections.append({**record, "status": "missing"})
                continue
            raise
        try:
            out = mod.main(list(section_argv))
            record["status"] = "ok"
            if isinstance(out, dict):
                results[module] = out
            if getattr(mod, "GOALS", None):
                goals[module] = mod.GOALS
        except Exception:
            traceback.print_exc()
            failed.append(module)
            record["status"] = "failed"
        record.update(seconds=time.perf_counter() - t0, load_after=os.getloadavg()[0])
        sections.append(record)
        print(f"##### {title}: {record['seconds']:.0f} s (load average {load0:.2f} -> {record['load_after']:.2f})",
              flush=True)  # fmt: skip
    lines, records = goal_lines(results, goals)
    total = time.perf_counter() - t_all
    print(f"\n##### goals ({total / 60:.1f} min in all; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")  # fmt: skip
    for line in lines:
        print(line)
    if failed:
        print(f"\nbench sections that failed or are missing: {failed}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"started": started, "commit": _commit(), "cpus": os.cpu_count(), "seconds": total,
              "load_end": os.getloadavg(), "sections": sections, "goals": records, "figures": results,
              "failed": failed}  # fmt: skip
    out.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    print(f"figures: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
