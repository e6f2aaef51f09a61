"""pipelines.devices: --device of the Ray jobs (auto asks the cluster; actors ask Ray for their GPU share)."""

import argparse
import importlib

import pytest

from pipelines.devices import actor_gpus, resolve_ray_device
from vssflow.device import Device
from vssflow.errors import InputError


def test_auto_follows_the_clusters_gpus_not_the_drivers():
    assert resolve_ray_device("auto", cluster_gpus=8) == Device("cuda")
    assert resolve_ray_device("auto", cluster_gpus=0) == Device("cpu")
    assert resolve_ray_device("cuda", cluster_gpus=0.5) == Device("cuda")
    with pytest.raises(InputError, match="--device: cuda: no CUDA device is available here"):
        resolve_ray_device("cuda", cluster_gpus=0)
    with pytest.raises(InputError, match="Ray gives each actor and worker its own GPU; use --device cuda"):
        resolve_ray_device("cuda:0", cluster_gpus=8)


def test_actor_gpus_are_a_share_on_cuda_and_none_on_cpu():
    assert actor_gpus(Device("cuda")) == 1.0 and actor_gpus(Device("cuda"), 0.25) == 0.25
    assert actor_gpus(Device("cpu"), 0.25) == 0.0
    with pytest.raises(InputError, match="must be > 0"):
        actor_gpus(Device("cuda"), 0.0)


@pytest.mark.parametrize(
    "module",
    ["pipelines.train", "pipelines.preprocess", "pipelines.evaluate", "pipelines.generate_batch",
     "vssflow.commands.generate"],
)  # fmt: skip
def test_every_command_that_runs_a_model_takes_device_auto_by_default(module):
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    action = next(a for a in parser._actions if "--device" in a.option_strings)
    assert action.default == "auto" and "cuda" in action.help
