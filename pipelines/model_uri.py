"""A ``--model`` of any command -> a local model directory: a directory as it is, an MLflow URI downloaded."""

from __future__ import annotations

from pathlib import Path

from vssflow.errors import AssetError, InputError
from vssflow.inference import is_model_uri


def resolve_model_dir(spec: str, *, tracking_uri: str | None = None) -> Path:
    """A local model directory for ``spec``: a directory as is, or the download of an MLflow URI
    (``models:/name/version``, ``models:/name/stage``, ``runs:/<id>/model``) from ``tracking_uri``."""
    if not is_model_uri(spec):
        return Path(spec)
    try:
        import mlflow  # noqa: F401 - the pipelines extra, needed for any URI
    except ModuleNotFoundError as e:
        raise AssetError(f"{spec}: MLflow model URIs need {e.name}: pip install 'vssflow[pipelines]'") from e
    if not tracking_uri:
        raise InputError(f"{spec}: an MLflow URI needs a tracking URI (--mlflow-uri or $MLFLOW_TRACKING_URI)")
    from mlflow.exceptions import MlflowException

    from pipelines.mlflow_utils import download_registered_model_dir

    try:
        return download_registered_model_dir(spec, tracking_uri=tracking_uri)
    except FileNotFoundError as e:
        raise InputError(str(e).splitlines()[0]) from e
    except MlflowException as e:  # an unknown name, version, alias or run (a traceback before)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{spec}: {first} in the MLflow store {tracking_uri}; check the name and alias or version "
            "(mlflow ui lists them), or pass the store that holds it with --mlflow-uri"
        ) from e
