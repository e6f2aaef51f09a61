"""The model directory (vssflow/model_dir.py): what it holds, written in one atomic step, read back with its checks."""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vssflow.audio.codec import MelCodec
from vssflow.errors import AssetError, MissingFileError
from vssflow.model import ModelConfig, VSSFlowDiT
from vssflow.model_dir import FORMAT, FORMAT_VERSION, load_model_dir, read_model_config, save_model_dir
from vssflow.sampling import SamplingConfig

CFG = ModelConfig(depth=2, width=64, heads=4, cross_dim=64, sem_dim=32, lip_dim=16, max_seconds=4.0, latent_dim=64)


@functools.cache  # fitted once, in the parent: the forked writers of the kill test only save it
def _codec() -> MelCodec:
    return MelCodec(components=CFG.latent_dim).fit(
        [np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)]
    )


def _save(directory, model=None, *, ema_state=None, step=7, sampling=SamplingConfig(steps=9), **info):
    model = model or VSSFlowDiT(CFG)
    return save_model_dir(
        directory, model=model, config=CFG, codec=_codec(), sampling=sampling, step=step, info=info,
        ema_state=ema_state,
    )  # fmt: skip


def test_what_is_saved_is_read_back_raw_or_ema(tmp_path):
    torch.manual_seed(0)
    model = VSSFlowDiT(CFG)
    ema = {k: v + 0.01 for k, v in model.state_dict().items()}
    out = _save(tmp_path / "model", model, ema_state=ema, data_version="abc")
    assert sorted(p.name for p in out.iterdir()) == ["codec", "config.json", "ema.safetensors", "model.safetensors"]
    raw = load_model_dir(out, use_ema=False)
    assert raw.config == CFG and raw.step == 7 and raw.sampling == SamplingConfig(steps=9)
    assert raw.info == {"data_version": "abc", "weights": "model.safetensors"}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(raw.model.state_dict()[k], v, rtol=0, atol=0)
    ema_loaded = load_model_dir(out)  # EMA by default
    assert ema_loaded.info["weights"] == "ema.safetensors"
    for k, v in ema.items():
        torch.testing.assert_close(ema_loaded.model.state_dict()[k], v, rtol=0, atol=0)
    mel = torch.randn(1, 40, 64)
    torch.testing.assert_close(ema_loaded.codec.encode(mel), _codec().encode(mel))  # the fitted statistics


def test_read_model_config_reads_config_json_alone_without_the_weights(tmp_path):
    out = _save(tmp_path / "model", step=42)
    (out / "model.safetensors").write_bytes(b"not weights")  # read_model_config never opens it; a load does
    config = read_model_config(out)
    assert (config["format"], config["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert config["step"] == 42 and config["sampling"]["steps"] == 9 and ModelConfig.from_dict(config["model"]) == CFG
    assert set(config["sha256"]) == {"model.safetensors", "codec/codec.json", "codec/mel_codec_stats.safetensors"}
    with pytest.raises(AssetError, match="sha256"):
        load_model_dir(out)


def test_reading_config_json_does_not_import_the_generator():
    code = "import sys, vssflow.model_dir; print('vssflow.generator' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_directory_from_a_newer_format_is_refused_in_one_line(tmp_path):
    out = _save(tmp_path / "model")
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(config))
    for read in (read_model_config, load_model_dir):
        with pytest.raises(AssetError) as err:
            read(out)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg, msg
        assert f"format version {FORMAT_VERSION + 1} is newer" in msg and "upgrade vssflow" in msg, msg


def test_loading_errors_name_the_directory(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere"):
        load_model_dir(tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    with pytest.raises(AssetError, match="no config.json"):
        read_model_config(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(AssetError, match="format 'something-else' is not"):
        load_model_dir(tmp_path / "m")


@pytest.mark.parametrize("gone", ["model.safetensors", "codec"])
def test_a_file_missing_from_a_model_directory_is_a_one_line_error_naming_it(tmp_path, gone):
    import shutil

    model = VSSFlowDiT(CFG)
    _save(tmp_path / "m", model, ema_state=model.state_dict())
    target = tmp_path / "m" / gone
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingFileError) as e:
        load_model_dir(tmp_path / "m")
    assert "\n" not in str(e.value) and str(tmp_path / "m") in str(e.value) and "missing" in str(e.value)


def test_a_model_directory_without_its_optional_ema_loads_the_raw_weights(tmp_path):
    model = VSSFlowDiT(CFG)
    _save(tmp_path / "m", model, ema_state=model.state_dict())
    (tmp_path / "m" / "ema.safetensors").unlink()
    assert load_model_dir(tmp_path / "m").info["weights"] == "model.safetensors"


def _weights_of(directory) -> str:
    """Which of the two test models ("old"/"new") a directory loads as, by a weight only they differ in."""
    w = load_model_dir(directory, use_ema=False).model.state_dict()
    key = next(iter(w))
    return {float(_OLD[key].flatten()[0]): "old", float(_NEW[key].flatten()[0]): "new"}[float(w[key].flatten()[0])]


_OLD, _NEW = {}, {}


@pytest.mark.parametrize("layout", ["versioned", "legacy"])
def test_a_kill_at_any_step_of_a_save_leaves_the_previous_or_the_new_model(tmp_path, layout):
    """kill -9 before each filesystem step of save_model_dir (tests/faults.py), one run per step: the target loads
    every time, as the previous model until the switch and as the new one after it. "legacy" starts from a plain
    directory without checksums (written before versioned directories): it is swapped atomically too."""
    import shutil

    from faults import kill_at_every_step

    import vssflow.audio.codec as codec_module
    import vssflow.files as files_module
    import vssflow.model_dir as model_dir_module

    torch.manual_seed(1)
    old, new = VSSFlowDiT(CFG), VSSFlowDiT(CFG)
    _OLD.update(old.state_dict())
    _NEW.update(new.state_dict())
    root, pristine = tmp_path / "models", tmp_path / "pristine"
    target = root / "model"
    _save(pristine / "model", old)
    legacy = tmp_path / "legacy"
    shutil.copytree((pristine / "model").resolve(), legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    cfg.pop("sha256", None)
    (legacy / "config.json").write_text(json.dumps(cfg))

    def reset():
        shutil.rmtree(root, ignore_errors=True)
        if layout == "legacy":
            shutil.copytree(legacy, target)
        else:
            _save(target, old)

    def save():
        _save(target, new)

    extra = [(model_dir_module, "save_file"), (codec_module, "save_file"), (files_module, "_exchange")]
    seen = [_weights_of(target) for _ in kill_at_every_step(save, before=reset, extra=extra)]
    assert len(seen) >= 12 and seen[0] == "old" and seen[-1] == "new", seen
    switch = seen.index("new")
    assert seen == ["old"] * switch + ["new"] * (len(seen) - switch), seen  # never back to the old after the switch
    assert _weights_of(target) == "new" and target.is_symlink()
    # a save killed just before the switch leaves a whole unused version behind: the next save removes it
    next(kill_at_every_step(save, before=reset, extra=extra, first=switch))
    assert len([p for p in root.iterdir() if p.name.startswith((".model.v-", ".model.link-"))]) >= 2
    save()
    assert sorted(p.name for p in root.iterdir()) == [".model.lock", os.readlink(target), "model"]


def test_a_flipped_byte_in_a_weight_file_is_a_one_line_error_naming_it(tmp_path):
    model = VSSFlowDiT(CFG)
    out = _save(tmp_path / "model", model, ema_state=model.state_dict())
    for name in ("ema.safetensors", "codec/mel_codec_stats.safetensors"):
        path = out / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(AssetError, match="sha256") as err:
            load_model_dir(out)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    load_model_dir(out)  # restored: loads again


def test_a_model_directory_without_checksums_still_loads(tmp_path):
    out = _save(tmp_path / "model", step=5)
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg["sha256"]) == {"model.safetensors", "codec/codec.json", "codec/mel_codec_stats.safetensors"}
    del cfg["sha256"]
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())  # unchanged bytes
    assert load_model_dir(out).step == 5
