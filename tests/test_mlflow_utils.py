"""The model registry (pipelines/mlflow_utils.py) on a real SQLite MLflow store: aliases and pinned requirements."""

from importlib import metadata

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines import mlflow_utils  # noqa: E402
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
