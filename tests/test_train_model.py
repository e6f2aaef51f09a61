"""pipelines/train_model.py: the job's model built, taken out of a real (DDP, one process) engine, saved as a model
directory that loads back, and sampled into a real MLflow store. LoRA fine-tuning is in test_lora.py."""

import json

import numpy as np
import pytest
import torch
from conftest_data import TOY_MODEL, tts_clip, v2s_clip

from pipelines.deepspeed_config import DDPEngine
from pipelines.train_config import RunContext, TrainJobConfig
from pipelines.train_data import encode_batch
from pipelines.train_model import build_model, log_samples, models_for_export, save_final
from vssflow.audio.codec import MelCodec
from vssflow.ema import EMA
from vssflow.generator import Generator
from vssflow.training import training_step


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_build_model_is_the_same_on_every_worker_and_starts_from_init(tmp_path):
    cfg = TrainJobConfig(model_overrides=TOY_MODEL, seed=3)
    first, again = build_model(cfg), build_model(cfg)
    assert _equal(first.state_dict(), again.state_dict())  # every worker, every attempt
    other = build_model(TrainJobConfig(model_overrides=TOY_MODEL, seed=4))
    assert not _equal(first.state_dict(), other.state_dict())
    with torch.no_grad():
        for p in first.parameters():
            p.add_(0.01)
    Generator(model=first, codec=MelCodec(components=TOY_MODEL["latent_dim"])).save_pretrained(tmp_path / "base")
    tuned = build_model(TrainJobConfig(model_overrides=TOY_MODEL, seed=9, init=str(tmp_path / "base")))
    assert _equal(tuned.state_dict(), first.state_dict())  # fine-tuning starts from the given model


def test_the_models_of_an_engine_are_saved_raw_and_ema_and_load_back(tmp_path):
    rng = np.random.default_rng(0)
    clips = [v2s_clip(rng, i, 1.2) for i in range(2)] + [tts_clip(rng, i, 1.2) for i in range(2)]
    codec = MelCodec(components=TOY_MODEL["latent_dim"]).fit(c.mel for c in clips)
    cfg = TrainJobConfig.from_dict(dict(model_overrides=TOY_MODEL, lr=1e-2, seed=1))
    model = build_model(cfg)
    engine = DDPEngine(model, cfg.engine_settings(), lambda step: 1.0)
    ema = EMA([(n, p) for n, p in model.named_parameters() if p.requires_grad], decay=0.5, warmup=0)
    gen = torch.Generator().manual_seed(0)
    for batch in (clips[:2], clips[2:]) * 2:
        loss, _ = training_step(model, encode_batch(batch, codec, cfg.model_config()), cfg.flow, gen)
        engine.backward(loss)
        engine.step()
        ema.update([(n, p) for n, p in model.named_parameters() if p.requires_grad])

    assert models_for_export(engine, ema, cfg, stage=0, rank=1) == (None, None)  # rank 0 exports
    raw, averaged = models_for_export(engine, ema, cfg, stage=0, rank=0)
    assert not raw.training and not averaged.training
    assert _equal(raw.state_dict(), {k: v.detach() for k, v in engine.module.state_dict().items()})
    assert not _equal(raw.state_dict(), averaged.state_dict())  # the EMA lags the last steps

    out, run_dir = tmp_path / "model", tmp_path / "run"
    run_dir.mkdir()
    run = RunContext(run_dir=str(run_dir), codec_dir="", lip_dim=0, out=str(out), extract={"encoder": "toy"},
                     mlflow_run_id="abc")  # fmt: skip
    save_final(raw, averaged, codec, cfg, run, "ddp", step=4)
    assert _equal(Generator.from_pretrained(out, use_ema=False).model.state_dict(), raw.state_dict())
    loaded = Generator.from_pretrained(out)
    assert _equal(loaded.model.state_dict(), averaged.state_dict()) and loaded.step == 4
    assert loaded.info["engine"] == "ddp" and loaded.info["extractors"] == {"encoder": "toy"}
    assert loaded.info["mlflow_run_id"] == "abc" and not (out / "lora").exists()
    assert json.loads((run_dir / "final.json").read_text()) == {"out": str(out), "engine": "ddp", "step": 4}


def test_log_samples_puts_a_wav_and_a_spectrogram_per_validation_clip_in_the_run(tmp_path):
    pytest.importorskip("mlflow")
    from pipelines.mlflow_utils import RunLogger, run_artifacts

    rng = np.random.default_rng(1)
    clips = [v2s_clip(rng, 0, 1.2), tts_clip(rng, 1, 1.2)]
    codec = MelCodec(components=TOY_MODEL["latent_dim"]).fit(c.mel for c in clips)
    cfg = TrainJobConfig.from_dict(dict(model_overrides=TOY_MODEL, eval_steps=2))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunLogger(uri, system_metrics=False)
    log_samples(tracker, build_model(cfg).eval(), codec, clips, cfg, step=7)
    tracker.end()
    arts = run_artifacts(tracker.run_id, tracking_uri=uri)
    for i, c in enumerate(clips):
        name = f"samples/step_000007/{i:02d}_{c.task}_{c.meta['clip_id']}"
        assert f"{name}.wav" in arts, arts
    assert sum(a.endswith(".png") for a in arts) == len(clips), arts
