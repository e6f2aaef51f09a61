"""pipelines/train_config.py: the training job's typed, nested configuration and its compatibility with older JSON."""

import json
from dataclasses import asdict

import pytest

from pipelines.deepspeed_config import OptimConfig
from pipelines.train_config import TrainJobConfig
from vssflow.errors import InputError


def test_a_job_config_is_typed_and_nested_and_old_flat_json_still_loads():
    """TrainJobConfig's sections (optim, sampler, flow, validation) round-trip through JSON (run.json, MLflow params);
    a run.json of before the sections (flat keys, a flow dict) loads to the same config."""
    job = TrainJobConfig.from_dict({"lr": 2e-3, "batch_size": 3, "tts_weight": 0.5, "eval_every": 7,
                                    "flow": {"p_uncond": 0.2, "prior_weight": 0.5}, "seed": 4})  # fmt: skip
    assert job.optim.lr == 2e-3 and job.sampler.batch_size == 3 and job.sampler.tts_weight == 0.5
    assert job.validation.every == 7 and job.flow.p_uncond == 0.2 and job.flow.prior_weight == 0.5
    assert job.sampler.buffer_size == 128 and job.sampler_config().seed == 4
    again = TrainJobConfig.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again == job and set(job.to_dict()["optim"]) == set(asdict(OptimConfig()))
    old = {**{k: v for k, v in TrainJobConfig().to_dict().items() if k not in ("optim", "sampler", "validation")},
           "lr": 2e-3, "batch_size": 3, "tts_weight": 0.5, "eval_every": 7, "seed": 4,
           "flow": {"p_uncond": 0.2, "prior_weight": 0.5}}  # fmt: skip
    assert TrainJobConfig.from_dict(old) == job


def test_an_unknown_model_override_is_one_line_naming_the_flag():
    with pytest.raises(InputError, match="not ModelConfig fields") as e:
        TrainJobConfig(model_overrides={"dept": 2})
    assert "--model-overrides" in str(e.value) and "\n" not in str(e.value)
