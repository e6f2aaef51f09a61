"""`vssflow info` (vssflow/commands/info.py) in a fresh process: what a saved model is, from its config.json alone."""

import json
import subprocess
import sys

import pytest


def _info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "info", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from vssflow.generator import Generator
    from vssflow.model import ModelConfig

    gen = Generator(ModelConfig(depth=3, width=32, heads=2, cross_dim=32, lip_dim=8, phoneme_dim=8, latent_dim=32))
    return gen.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def test_info_describes_the_model_from_its_config(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    proc = _info(str(model_dir))
    assert proc.returncode == 0, proc.stderr
    lines = dict(ln.split(None, 1) for ln in proc.stdout.splitlines())
    assert lines["model"] == str(model_dir)
    assert lines["parameters"] == f"{config['num_params']:,}" and config["num_params"] > 1000
    assert lines["DiT"].startswith("depth 3, width 32, heads 2, cross_dim 32, time conditioning ")
    assert lines["step"] == str(config.get("step", 0))
    assert lines["weights"].split(", ") == sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert lines["format"].startswith(f"{config['format']} v{config['format_version']} ")


def test_info_json_prints_the_whole_config(model_dir):
    proc = _info(str(model_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads((model_dir / "config.json").read_text())


def test_a_directory_that_is_not_a_model_fails_in_one_line(tmp_path):
    missing = _info(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == (f"vssflow info: error: {tmp_path / 'nowhere'}: model directory not found; "
                                      "pass the --out directory of `vssflow train`")  # fmt: skip
    not_a_model = _info(str(tmp_path))
    assert not_a_model.returncode == 2 and len(not_a_model.stderr.strip().splitlines()) == 1
    assert "no config.json; this is not a vssflow model directory" in not_a_model.stderr
