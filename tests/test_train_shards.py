"""The shard set a training job trains on (pipelines/train_shards.py), on the driver and without Ray: opened and
checked, the config fitted to it. The job itself on Ray Train + DeepSpeed is tests/test_train.py."""

from dataclasses import replace
from pathlib import Path

import pytest
from conftest_data import TOY_SEM_DIM, make_tiny_serving_model, make_toy_shards

from pipelines.train_config import TrainJobConfig
from pipelines.train_shards import fit_batches_to_data, fit_model_to_data, open_shards
from vssflow.errors import FeatureShapeError, InputError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(make_toy_shards(tmp_path_factory.mktemp("shards"), n_v2s=4, n_tts=4, n_val=1))


def test_batches_fit_the_data_before_the_job():
    cfg = TrainJobConfig.from_dict(dict(data="d", workers=2, batch_size=4))
    assert not fit_batches_to_data(cfg, {"v2s": 40, "tts": 40}).sampler.keep_tail  # enough for full batches
    assert fit_batches_to_data(cfg, {"v2s": 7, "tts": 7}).sampler.keep_tail
    assert fit_batches_to_data(cfg, {"v2s": 40, "tts": 3}).sampler.keep_tail  # one task short is enough to shrink
    speech_off = replace(cfg, sampler=replace(cfg.sampler, tts_weight=0, joint_weight=0))
    assert not fit_batches_to_data(speech_off, {"v2s": 40, "tts": 3}).sampler.keep_tail
    with pytest.raises(InputError, match="0 training clips"):  # speech only asked for, none there
        fit_batches_to_data(replace(cfg, sampler=replace(cfg.sampler, v2s_weight=0, joint_weight=0)), {"v2s": 40})
    with pytest.raises(InputError, match="--workers 1"):
        fit_batches_to_data(cfg, {"tts": 1})


def test_training_names_a_corrupt_shard_before_ray_starts(data, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(data, copy, symlinks=True)
    paths = open_shards(copy).files
    raw = bytearray(Path(paths[0]).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    Path(paths[0]).write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupt shard") as err:
        open_shards(copy)
    assert str(err.value).startswith(f"{paths[0]}: ") and "\n" not in str(err.value)


def test_the_model_takes_the_condition_sizes_of_the_shards_unless_fine_tuning(data, tmp_path, capsys):
    """The shards' semantic width (a toy encoder's, not MobileNetV2's 1280) sets the model's, said in one line; a
    model given with --init cannot change its sizes, so there it is refused in one line naming a shard."""
    shards = open_shards(data)
    cfg = TrainJobConfig.from_dict(dict(data=data))
    assert cfg.model_config().sem_dim != TOY_SEM_DIM
    fitted = fit_model_to_data(cfg, shards)
    assert fitted.model_config().sem_dim == TOY_SEM_DIM and fitted.model_config().lip_input == "crops"
    assert "model condition sizes set from the shards: {'sem_dim': " in capsys.readouterr().out
    assert fit_model_to_data(fitted, shards) is fitted  # already fitted: unchanged
    base = make_tiny_serving_model(tmp_path / "base", model_overrides={"sem_dim": TOY_SEM_DIM + 16})
    with pytest.raises(FeatureShapeError, match="the model in --init has") as err:
        fit_model_to_data(replace(cfg, init=str(base)), shards)
    assert "\n" not in str(err.value) and str(shards.files[0]) in str(err.value)
