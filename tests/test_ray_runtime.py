"""pipelines.ray_runtime: the one Ray start-up of every command (a real local Ray in a fresh process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]

START_TWICE = """
import ray
from pipelines.ray_runtime import start_ray
first, second = start_ray(num_cpus=1, log_to_driver=False), start_ray(num_cpus=3)
print("RESULT", first, second, int(ray.cluster_resources()["CPU"]))
ray.shutdown()
"""


def test_starts_a_local_ray_once_and_leaves_a_running_one_alone():
    proc = subprocess.run([sys.executable, "-c", START_TWICE], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line == "RESULT True False 1"  # the second call neither restarts nor resizes the first one's Ray


def test_no_command_starts_ray_by_itself():
    """Every command and bench goes through start_ray: one place for the address, the local defaults and the logs."""
    calls = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted([*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("bench/*.py")])
        if p.name != "ray_runtime.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bray\.init\(", line)
    ]
    assert calls == [], f"ray.init outside pipelines/ray_runtime.start_ray: {calls}"
