"""Test session setup: everything offline, on CPU, small."""

import os

# Set before torch/ray/transformers are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The default MLflow store of train and evaluate is ./runs/mlflow.db: the tests' runs go to a store of their own, not
# the checkout's (a test of the default itself unsets this).
if "MLFLOW_TRACKING_URI" not in os.environ:
    import tempfile

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='vssflow-test-mlflow-')}/mlflow.db"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
