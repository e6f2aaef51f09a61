"""pipelines/cli.py: the `vssflow` entry point sits above both layers; the library's commands need no Ray.

A subprocess in which ray, deepspeed, mlflow and fastapi cannot be imported (as in `pip install vssflow` without
the pipelines extra): `info` and `generate --help` work; a pipeline command fails in one line (what to install,
or its own input error when it checks that first), and so does an MLflow URI given to `generate`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_WITHOUT_EXTRA = textwrap.dedent(
    """
    import sys
    for name in ("ray", "deepspeed", "mlflow", "fastapi"):
        sys.modules[name] = None  # import fails with ModuleNotFoundError, as when not installed
    from pipelines.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
    print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow") and sys.modules[m]))
    sys.exit(code)
    """
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_EXTRA, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from vssflow.generator import Generator
    from vssflow.model import ModelConfig

    gen = Generator(ModelConfig(depth=1, width=32, heads=2, cross_dim=32, lip_dim=8, phoneme_dim=8, latent_dim=32))
    return gen.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def test_library_commands_run_without_the_pipelines_extra(model_dir, tmp_path):
    info = _run("info", str(model_dir))
    assert info.returncode == 0, info.stderr
    assert "modules: []" in info.stdout
    helped = _run("generate", "--help")
    assert helped.returncode == 0 and "--speech-span" in helped.stdout, helped.stderr

    serve = _run("serve", "--help")  # pipelines/serve/ imports Ray Serve at the top
    assert serve.returncode == 2
    assert serve.stderr.strip().splitlines()[-1].endswith("pip install 'vssflow[pipelines]'"), serve.stderr
    train = _run("train", "--data", str(tmp_path), "--out", str(tmp_path / "m"))  # imports Ray when it runs
    lines = [ln for ln in train.stderr.splitlines() if ln.startswith("vssflow train: error")]
    assert train.returncode == 2 and len(lines) == 1, train.stderr

    uri = _run("generate", "--model", "models:/tiny/1", "--video", str(tmp_path / "v.mp4"), "--out", "o.wav")
    lines = [ln for ln in uri.stderr.splitlines() if ln.startswith("vssflow generate: error")]
    assert uri.returncode == 2 and len(lines) == 1 and "vssflow[pipelines]" in lines[0], uri.stderr


def test_every_command_is_listed_and_loads_its_module():
    from pipelines.cli import COMMANDS, LIBRARY_COMMANDS, build_parser

    assert set(LIBRARY_COMMANDS) == {"synth", "generate", "dub", "info"}
    for name, (module, _) in COMMANDS.items():
        assert module.startswith("vssflow.commands." if name in LIBRARY_COMMANDS else "pipelines."), name
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        assert sub.get_default("_run") is not None, name
