"""pipelines/deepspeed_config.py: the engines read a training job's settings through EngineSettings alone."""

import dataclasses
import typing

from pipelines.deepspeed_config import EngineSettings
from pipelines.train_loop import TrainJobConfig


def test_a_train_job_config_has_every_engine_setting_with_its_type():
    wanted = typing.get_type_hints(EngineSettings)
    have = {f.name: f.type for f in dataclasses.fields(TrainJobConfig)}
    assert wanted, "EngineSettings names no setting"
    missing = sorted(set(wanted) - set(have))
    assert not missing, f"TrainJobConfig lacks {missing}"
    hints = typing.get_type_hints(TrainJobConfig)
    assert {k: hints[k] for k in wanted} == wanted
