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


@pytest.fixture(scope="module")
def ray_num_cpus() -> int:
    """Logical CPUs of the module's local Ray; a module that needs more overrides this fixture (test_train: 4)."""
    return 2


@pytest.fixture(scope="module")
def local_ray(ray_num_cpus):
    """A private local Ray for the module's tests (no dashboard, workers' output not printed), shut down after them.

    A Ray already running in this process (another fixture's, or a test's own cluster) is used as it is and left
    running. Never ``ray stop``: other sessions on the machine run their own Ray. Tests that need special resources
    (several nodes, GPUs, an environment the workers must inherit) start their own cluster instead.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=ray_num_cpus, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A local directory holding a 2-layer, 32-wide CLIP vision model (the preprocessing tests' encoder)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tinyclip")
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(cfg).save_pretrained(d)
    return str(d)
