"""scripts/gpu_check.sh --smoke on CPU: the device check's code runs end to end, so it cannot rot before a GPU loan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]
# what bench/gpu_check.py imports of this project (its four measurements)
CHECKED = ("bench.gpu_check", "vssflow.generator", "vssflow.compiled", "vssflow.device", "vssflow.training",
           "pipelines.deepspeed_config", "pipelines.train_loop", "vssflow.features.extract",
           "vssflow.features.visual")  # fmt: skip


def _broken_torchaudio(tmp_path: Path) -> dict[str, str]:
    """The environment of a GPU machine whose torchaudio does not match its PyTorch: ``import torchaudio`` finds a
    package (so gpu_check.sh installs none) and fails, as a torchaudio built for another torch does."""
    pkg = tmp_path / "broken" / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('torchaudio: built for another torch (the test blocks it)')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg.parent), str(ROOT)])}


def test_the_device_check_imports_no_torchaudio(tmp_path):
    code = f"import sys; [__import__(m) for m in {CHECKED!r}]; assert 'torchaudio' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], env=_broken_torchaudio(tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_gpu_check_smoke_runs_on_cpu_and_writes_every_measurement(tmp_path):
    """With a broken torchaudio, as on a GPU machine whose PyTorch has none that matches: nothing needs it."""
    out = tmp_path / "gpu_check.json"
    env = {**_broken_torchaudio(tmp_path), "PYTHON": sys.executable, "VSSFLOW_GPU_WHEELS": str(tmp_path / "no-wheels"),
           "VSSFLOW_GPU_SITE": str(tmp_path / "site")}  # fmt: skip
    env.pop("DS_ACCELERATOR", None)  # the check derives it from --device (cpu here)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--smoke", "--device", "cpu",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] and r["device"] == "cpu" and r["sizes"]["preset"] == "tiny"
    t = r["train"]
    assert t["engine"] == "zero2" and t["dtype"] == "fp32" and t["loss_finite"]  # DeepSpeed ZeRO-2, one process
    assert t["worker"] == {"device": "cpu", "param_dtype": "float32", "bf16": "false"}
    assert t["samples_per_s"] > 0 and t["peak_memory_mb"] > 0 and t["parameters"] > 10**6
    assert [g["steps"] for g in r["generate"]] == [2, 4]
    for g in r["generate"]:  # the ratio is of the two timings reported (no wall time is asserted)
        assert g["seconds"] > 0 and g["floor_s"] > 0
        assert g["ratio_to_floor"] == pytest.approx(g["seconds"] / g["floor_s"])
    assert [b["batch"] for b in r["batching"]] == [1, 2, 4] and r["batching"][0]["throughput_ratio"] == 1.0
    c = r["compiled"]  # inductor builds on this CPU (a C++ compiler): the compiled DiT is measured, no note
    assert c["steps"] == 2 and c["seconds"] > 0 and c["speedup"] == pytest.approx(c["eager_s"] / c["seconds"])
    ((b, n, m),) = c["shapes"]  # one compiled shape: cond + uncond, 1 s (25 latent frames) padded to the 2 s bucket
    assert (b, n) == (2, 50) and m % 32 == 0
    assert r["encoder"]["clips"] == 2 and r["encoder"]["batched_clips_per_s"] > 0
    assert r["notes"] == []  # everything importable in the test venv: nothing skipped, no fallback
    table = proc.stdout
    assert "| training, tiny preset, zero2 fp32" in table and "| generate batch 4, 2 steps |" in table
    assert "| generate 1 s, 2 Euler steps, cfg 3, compiled |" in table
    assert "compute floor" in table and "MobileNetV2 fp32" in table
