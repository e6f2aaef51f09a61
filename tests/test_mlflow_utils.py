"""pipelines/mlflow_utils.py on a real SQLite MLflow store: the registry (aliases, pinned requirements, signature),
artifacts beside the store, buffered metrics."""

from importlib import metadata

import numpy as np
import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines import mlflow_utils  # noqa: E402
from pipelines.mlflow_utils import run_metrics  # noqa: E402
from vssflow.generator import Generator  # noqa: E402
from vssflow.model import ModelConfig  # noqa: E402

TINY = ModelConfig(depth=1, width=32, heads=2, cross_dim=32, sem_dim=16, lip_dim=8, phoneme_dim=8, latent_dim=32)


def test_registration_moves_the_champion_alias_and_pins_the_requirements(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    uris = []
    for width in (32, 48):  # two trainings register two versions of one name
        model_dir = Generator(TINY.replace(width=width, latent_dim=32)).save_pretrained(tmp_path / f"m{width}")
        run_id = mlflow_utils.create_run(uri, run_name=f"train-{width}")
        uris.append(mlflow_utils.log_and_register_model(model_dir, run_id=run_id, tracking_uri=uri,
                                                        registered_name="tiny"))  # fmt: skip
    assert uris == ["models:/tiny/1", "models:/tiny/2"]
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("tiny", mlflow_utils.CHAMPION).version) == "2"
    assert {k: str(v) for k, v in client.get_registered_model("tiny").aliases.items()} == {"champion": "2"}
    # the alias URI loads the newest model; the version URI still loads the one it names
    assert mlflow_utils.load_registered_generator("models:/tiny@champion", tracking_uri=uri).config.width == 48
    assert mlflow_utils.download_registered_model_dir("models:/tiny/1", tracking_uri=uri).joinpath("config.json")
    # no stage was used (deprecated in MLflow): every version stays in "None"
    assert {v.current_stage for v in client.search_model_versions("name='tiny'")} == {"None"}

    # the logged model pins what it needs, at the versions it was trained with
    import mlflow

    req = mlflow.pyfunc.get_model_dependencies("models:/tiny/2")
    lines = [ln.strip() for ln in open(req).read().splitlines() if ln.strip() and not ln.startswith("#")]
    for name in ("vssflow", "torch", "numpy", "safetensors", "transformers"):
        assert f"{name}=={metadata.version(name)}" in lines, lines
    assert all("==" in ln for ln in lines if not ln.startswith(("mlflow", "cloudpickle"))), lines


def test_the_registered_model_has_a_signature_and_generates_through_pyfunc(tmp_path):
    """The logged model declares what it takes (a features .npz per clip, steps/cfg/seed with the model's own
    sampling defaults) and returns (a waveform per clip), and the generic pyfunc interface honours it."""
    import mlflow
    import numpy as np
    import pandas as pd
    from conftest_data import random_features

    from vssflow.data.features_file import features_to_npz

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_dir = Generator(TINY).save_pretrained(tmp_path / "m")
    run_id = mlflow_utils.create_run(uri, run_name="train")
    model_uri = mlflow_utils.log_and_register_model(model_dir, run_id=run_id, tracking_uri=uri, registered_name="s")
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(model_uri)
    sig = info.signature.to_dict()
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["features"]
    assert info.signature.inputs.to_dict()[0]["type"] == "binary", sig
    assert info.signature.outputs.to_dict()[0]["name"] == "audio", sig
    sampling = Generator.from_pretrained(model_dir).sampling
    assert {p.name: p.default for p in info.signature.params} == {"steps": sampling.steps,
                                                                   "cfg": sampling.cfg_scale, "seed": 0}  # fmt: skip

    clips = [random_features(16, duration=1.0, seed=1), random_features(16, duration=1.5, task="tts", seed=2)]
    model = mlflow.pyfunc.load_model(model_uri)
    waves = model.predict(pd.DataFrame({"features": [features_to_npz(c) for c in clips]}), params={"steps": 2})
    direct = Generator.from_pretrained(model_dir)
    for i, (wav, clip) in enumerate(zip(waves, clips, strict=True)):
        assert len(wav) == round(clip.duration_s * 16000)
        np.testing.assert_array_equal(wav, direct.generate(clip, steps=2, seed=i))
    with pytest.raises(mlflow.exceptions.MlflowException, match="features"):
        model.predict(pd.DataFrame({"video": [b"x"]}))  # the signature is enforced


def test_mlflow_artifacts_stay_beside_the_sqlite_store(tmp_path, monkeypatch):
    """Nothing lands in ./mlruns of the current directory (MLflow's default artifact root with a SQLite store)."""
    from collections import Counter

    from pipelines import mlflow_utils
    from pipelines.preprocess import PreprocessConfig, Summary, log_to_mlflow
    from vssflow.features.extract import ExtractConfig

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    summary = Summary(rows_in=2, skipped=0, written=2, quarantined=Counter(), shards=1, seconds=1.0)
    summary.out_dir = str(tmp_path / "out")
    cfg = PreprocessConfig(manifest="m.jsonl", out=str(tmp_path / "out"), mlflow_uri=uri)
    log_to_mlflow(cfg, summary, {"extract": ExtractConfig().to_dict(), "extractors": {}})
    logger = mlflow_utils.RunLogger(uri, run_name="t", system_metrics=False, flush_every=5)
    for step in range(7):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.log_audio(np.zeros(1600, np.float32), 16000, "clip", step=6)
    logger.end()
    assert not (cwd / "mlruns").exists() and list(cwd.iterdir()) == []
    assert any((tmp_path / "store" / "mlartifacts").rglob("preprocess_config.json"))
    assert any((tmp_path / "store" / "mlartifacts").rglob("clip.wav"))
    # buffered metrics: every step arrives (5 in one batch, the rest at end())
    assert [s for s, _ in run_metrics(logger.run_id, tracking_uri=uri)["loss"]] == list(range(7))
