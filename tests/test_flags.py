"""One set of conventions (vssflow/commands/flags.py, pipelines/ray_runtime.py): every command's ``--help`` runs, and
a flag two commands share has the same name, help, default and parser in both; old spellings still work for one
release and say so; the default task is the same in the CLI, the HTTP API and the web page."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS, build_parser, main
from vssflow.commands import flags
from vssflow.device import DEVICE_HELP
from vssflow.errors import TranscriptError
from vssflow.inference import check_request

ROOT = Path(__file__).resolve().parents[1]


def _options(command: str) -> dict[str, argparse.Action]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s: a for a in sub._actions for s in a.option_strings if a.help is not argparse.SUPPRESS}


@pytest.fixture(scope="module")
def options() -> dict[str, dict[str, argparse.Action]]:
    return {name: _options(name) for name in COMMANDS}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_runs(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vssflow {command}") and "--tracking-uri" not in out  # the old name is hidden


def test_shared_flags_have_one_name_and_one_meaning(options):
    def having(flag):
        return {c: o[flag] for c, o in options.items() if flag in o}

    # --model is always a model: a directory or an MLflow URI (train's field overrides are --model-overrides)
    assert set(having("--model")) == {"generate", "dub", "generate-batch", "dub-batch", "serve", "evaluate"}
    assert {a.help for a in having("--model").values()} == {flags.MODEL_HELP}
    assert all(a.required and a.default is None for a in having("--model").values())
    assert "--model-overrides" in options["train"]
    # one tracking-store flag: --mlflow-uri, default $MLFLOW_TRACKING_URI then the command's local store
    uri = having("--mlflow-uri")
    assert set(uri) == {"preprocess", "train", "generate", "dub", "generate-batch", "dub-batch", "serve", "evaluate",
                        "experiment"}  # fmt: skip
    prefix = flags.MLFLOW_URI_HELP.split("{")[0]
    assert all(a.help.startswith(prefix) and a.default is None for a in uri.values()), {
        c: a.help for c, a in uri.items()
    }
    assert not any(re.search(r"tracking", s) for o in options.values() for s in o)
    # train, evaluate and experiment share one local store (./runs/mlflow.db), so one UI shows them together
    assert {uri[c].help for c in ("train", "evaluate", "experiment")} == {
        flags.MLFLOW_URI_HELP.format(local=flags.LOCAL_STORE_HELP)
    }
    # lists are comma-separated and parsed by one function each
    assert {c: a.type for c, a in having("--mix").items()} == {"synth": flags.parse_mix, "train": flags.parse_mix}
    assert {c: a.type for c, a in having("--tasks").items()} == {"evaluate": flags.parse_tasks,
                                                                  "generate-batch": flags.parse_tasks}  # fmt: skip
    # Ray and device flags: the same words wherever they appear
    assert len({a.help for a in having("--ray-address").values()}) == 1 and len(having("--ray-address")) == 7
    assert len({a.help for a in having("--num-cpus").values()}) == 1
    assert all(a.help.startswith(DEVICE_HELP) or DEVICE_HELP in a.help for a in having("--device").values())


def test_old_spellings_still_work_for_one_release_and_say_so(capsys):
    args = build_parser("train").parse_args(["train", "--model", "depth=2", "--model-overrides", "width=64",
                                             "--mix", "1:1:0.5"])  # fmt: skip
    assert args.model_overrides == ["depth=2", "width=64"] and args.mix == (1.0, 1.0, 0.5)
    err = capsys.readouterr().err
    assert "--model is deprecated" in err and "use --model-overrides" in err and "write --mix 1,1,0.5" in err
    gen = build_parser("generate").parse_args(["generate", "--model", "m", "--tracking-uri", "sqlite:///x.db",
                                               "--video", "v.mp4", "--out", "o.wav"])  # fmt: skip
    assert gen.mlflow_uri == "sqlite:///x.db" and "use --mlflow-uri" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser("train").parse_args(["train", "--mix", "1,2"])
    assert "three non-negative weights" in capsys.readouterr().err


def test_mlflow_uri_defaults_to_the_environment_then_the_local_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert flags.mlflow_uri(argparse.Namespace(mlflow_uri=None)) is None  # the command's local store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert flags.mlflow_uri(argparse.Namespace(mlflow_uri=None)) == "http://mlflow:5000"
    assert flags.mlflow_uri(argparse.Namespace(mlflow_uri="sqlite:///a.db")) == "sqlite:///a.db"


def test_the_default_task_is_the_same_in_the_cli_the_api_and_the_web_page(options):
    from pipelines.serve.forms import GenerateForm

    # none of the three picks a task of its own: they all leave it to check_request (joint with a transcript)
    assert options["generate"]["--task"].default is None
    assert GenerateForm.model_fields["task"].default is None
    html = (ROOT / "pipelines" / "web" / "index.html").read_text()
    select = html[html.index('<select id="task"') : html.index("</select>")]
    assert re.findall(r'<option value="([^"]*)" selected', select) == [""]
    assert check_request(None, "Hello there.").task == "joint" and check_request(None, None).task == "v2s"
    assert check_request(None, "  ").task == "v2s"


def test_a_transcript_with_v2s_is_an_error_not_dropped(tmp_path, capsys):
    with pytest.raises(TranscriptError, match="task 'v2s' makes sound effects only and takes no transcript"):
        check_request("v2s", "Hello there.")
    # the CLI says so in one line, before it looks at the model or the video (neither exists)
    argv = ["generate", "--model", str(tmp_path / "none"), "--video", str(tmp_path / "none.mp4"), "--task", "v2s",
            "--transcript", "Hello there.", "--out", str(tmp_path / "o.wav")]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("vssflow generate: error")]
    assert len(lines) == 1 and "takes no transcript" in lines[0], lines
