"""``--device`` of the Ray jobs (train, preprocess, evaluate, generate-batch, serve), over :mod:`vssflow.device`.

A Ray job's models run in actors or workers that Ray places, often on other machines than the driver: ``auto``
asks the *cluster* for GPUs (``ray.cluster_resources()``), not the driver, and the actor that loads a model asks
Ray for a GPU (``num_gpus``) and then uses ``cuda``, the device Ray made visible to it (``CUDA_VISIBLE_DEVICES``).
So ``cuda:N`` is refused here: Ray chooses the GPU.
"""

from __future__ import annotations

from vssflow.device import Device, resolve_device
from vssflow.errors import InputError


def resolve_ray_device(spec: str | Device, *, cluster_gpus: float | None = None, source: str = "--device") -> Device:
    """``auto|cpu|cuda`` -> the Device each actor of a Ray job uses.

    Args:
        spec: the user's ``--device``.
        cluster_gpus: GPUs of the Ray cluster; None asks the running Ray (``ray.cluster_resources()``).
        source: the option named in errors.

    Raises:
        InputError: ``cuda:N``, or ``cuda`` on a cluster without GPUs.
    """
    if isinstance(spec, Device):
        return spec
    if spec.strip().lower().startswith("cuda:"):
        raise InputError(f"{spec}: Ray gives each actor and worker its own GPU; use --device cuda", source=source)
    if cluster_gpus is None:
        import ray

        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    return resolve_device(spec, cuda_available=cluster_gpus > 0, source=source)


def actor_gpus(device: Device, share: float = 1.0) -> float:
    """``num_gpus`` of one model actor: ``share`` of a GPU on cuda (fractions let several actors share one), 0 on
    the CPU."""
    if not device.is_cuda:
        return 0.0
    if not share > 0:
        raise InputError(f"{share:g}: a GPU share must be > 0 (e.g. 0.25: four actors per GPU)", source="num_gpus")
    return float(share)


def load_actor_generator(model: str, device: str, *, threads: int):
    """The generator of one Ray actor: ``threads`` torch threads, ``device`` resolved inside the actor (there "cuda"
    is the GPU Ray gave it) and the dtype that goes with it (bf16 on a GPU)."""
    import torch

    from vssflow.generator import Generator

    torch.set_num_threads(max(1, int(threads)))
    d = resolve_device(device)
    return Generator.from_pretrained(model, device=d.torch, dtype=d.dtype)


def map_on_actors(items: list[dict], actor, config, *, batch_size: int):
    """Run ``items`` through a pool of ``config.actors`` model actors (``actor(config)`` each, ``config.actor_cpus``
    CPUs and a GPU on cuda), starting a local Ray unless one is up. Returns (config with its device resolved, an
    iterator over the result rows as plain Python values). The batch jobs (generate-batch, dub-batch) share it."""
    from dataclasses import replace

    import ray

    from pipelines.ray_runtime import start_ray

    start_ray()  # a local Ray, unless the caller (run, a test) has one
    device = resolve_ray_device(config.device)
    config = replace(config, device=str(device))
    ds = ray.data.from_items(items).map_batches(
        actor,
        fn_constructor_args=(config,),
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=config.actor_cpus,
        num_gpus=actor_gpus(device),
    )
    rows = ({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in ds.iter_rows())
    return config, rows
