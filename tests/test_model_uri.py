"""A --model of any command -> a local model directory (pipelines/model_uri.py), on a real SQLite MLflow store: a
directory as it is, a registered model downloaded, a URI the store does not hold refused in one line."""

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from pipelines import mlflow_utils  # noqa: E402
from pipelines.model_uri import resolve_model_dir  # noqa: E402
from vssflow.errors import InputError  # noqa: E402
from vssflow.generator import Generator  # noqa: E402
from vssflow.model import ModelConfig  # noqa: E402

TINY = ModelConfig(depth=1, width=32, heads=2, cross_dim=32, sem_dim=16, lip_dim=8, phoneme_dim=8, latent_dim=32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-uri")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model_dir = Generator(TINY).save_pretrained(root / "m")
    run_id = mlflow_utils.create_run(uri, run_name="train")
    mlflow_utils.log_and_register_model(model_dir, run_id=run_id, tracking_uri=uri, registered_name="tiny")
    return {"uri": uri, "model_dir": model_dir}


def test_a_directory_is_used_as_it_is_and_needs_no_store(tmp_path):
    assert resolve_model_dir(str(tmp_path / "models" / "tiny")) == tmp_path / "models" / "tiny"


def test_a_registered_model_is_downloaded_by_alias_and_by_version(store):
    want = json.loads((Path(store["model_dir"]) / "config.json").read_text())
    for spec in ("models:/tiny@champion", "models:/tiny/1"):
        got = resolve_model_dir(spec, tracking_uri=store["uri"])
        assert got.is_dir() and got != Path(store["model_dir"])
        assert json.loads((got / "config.json").read_text()) == want and (got / "model.safetensors").is_file()


@pytest.mark.parametrize("spec", ["models:/nope@champion", "models:/tiny@nope", "models:/tiny/7"])
def test_a_uri_the_store_does_not_hold_is_refused_in_one_line(store, spec):
    with pytest.raises(InputError) as e:
        resolve_model_dir(spec, tracking_uri=store["uri"])
    msg = str(e.value)
    assert msg.startswith(f"{spec}: ") and store["uri"] in msg and "--mlflow-uri" in msg and "\n" not in msg, msg


def test_a_uri_without_a_store_says_which_flag_names_one():
    with pytest.raises(InputError, match=r"models:/tiny/1: .*--mlflow-uri or \$MLFLOW_TRACKING_URI"):
        resolve_model_dir("models:/tiny/1", tracking_uri=None)
