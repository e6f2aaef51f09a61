"""pipelines/evaluate_config.py: one evaluation's configuration, whose defaults are a quick CPU evaluation."""

import argparse
import dataclasses
import json

import pytest

from pipelines.evaluate_config import SPEECH_SPANS, EvalConfig
from vssflow.constants import TASKS


def test_the_defaults_are_a_quick_cpu_evaluation_of_every_task_and_the_config_is_frozen():
    cfg = EvalConfig(model="m", data="d", out="o")
    assert (cfg.tasks, cfg.split, cfg.max_clips, cfg.steps, cfg.device) == (TASKS, "test", 16, 16, "cpu")
    assert cfg.cfg is None and cfg.speech_span == SPEECH_SPANS[0] == "data"  # the model's guidance, the data's span
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 2
    # the report's "config" section and the MLflow run's params: plain JSON, nothing stringified on the way
    assert json.loads(json.dumps(dataclasses.asdict(cfg))) == {**dataclasses.asdict(cfg), "tasks": list(TASKS)}


def test_every_flag_of_vssflow_evaluate_defaults_to_the_config_but_the_device():
    """The defaults live in one place: ``vssflow evaluate``'s flags take EvalConfig's (--device: auto at the CLI)."""
    from pipelines.evaluate import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = vars(p.parse_args(["--model", "m", "--data", "d", "--out", "o"]))
    d = dataclasses.asdict(EvalConfig(model="m", data="d", out="o"))
    shared = sorted(set(args) & set(d))
    assert {"split", "max_clips", "steps", "cfg", "validate", "asr", "speech_span", "actors"} <= set(shared)
    assert {k: args[k] for k in shared if k != "device"} == {k: d[k] for k in shared if k != "device"}
    assert args["device"] == "auto" and d["device"] == "cpu"


def test_the_automatic_actor_count_uses_every_cpu_but_not_for_a_handful_of_clips():
    """--actors 0: one single-threaded actor per CPU (or GPU) of the cluster, no more than one per 8 clips."""
    from pipelines.evaluate import eval_actors

    assert EvalConfig(model="m", data="d", out="o").actors == 0
    assert eval_actors(0, 48, {"CPU": 2.0}) == 2  # the demo on 2 cores: both busy
    assert eval_actors(0, 48, {"CPU": 16.0}) == 6  # 8 clips per actor at least: each loads every model
    assert eval_actors(0, 6, {"CPU": 16.0}) == 1
    assert eval_actors(0, 500, {"CPU": 64.0, "GPU": 4.0}) == 4  # one per GPU
    assert eval_actors(3, 6, {"CPU": 1.0}) == 3  # what the user asked for


def test_max_clips_is_one_count_or_one_per_task_and_a_bad_one_is_a_one_line_error():
    from pipelines.evaluate import add_arguments
    from pipelines.evaluate_config import clips_of, parse_max_clips
    from vssflow.errors import InputError

    assert parse_max_clips("24") == 24 and clips_of(24, "tts") == 24
    per_task = parse_max_clips("v2s=48, joint=24")
    assert per_task == {"v2s": 48, "joint": 24} and [clips_of(per_task, t) for t in TASKS] == [48, 16, 24]
    for bad in ("0", "v2s=0", "speech=4", "v2s:4", "many"):
        with pytest.raises(InputError, match="--max-clips: .*give N or TASK=N"):
            parse_max_clips(bad)
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--model", "m", "--data", "d", "--out", "o", "--max-clips", "v2s=8"]).max_clips == {"v2s": 8}
