"""How a preprocessing job is spread over the cluster: a small pure function of the cluster's resources and the flags.

Decoding (probe, frames, audio, mel, phonemes) always runs as CPU tasks. The encoders run in a pool of actors that
load the models once; on a GPU cluster each actor holds a *fraction* of a GPU (``num_gpus``), so one GPU serves
several actors, each fed by the decode tasks, and every actor call encodes the frames of several clips in one batch
(:func:`vssflow.features.extract.encode_clips`).

    GPUs:  --encoder-gpus G (default: every GPU of the cluster) shared by --actors N (default 4 per GPU):
           G / N of a GPU per actor (at most one GPU each); 8 clips per encoder call
    CPUs:  --actors N (default 1), no GPU; one clip per call (CPU encoders gain nothing from larger batches)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from vssflow.device import Device
from vssflow.errors import InputError

ACTORS_PER_GPU = 4  # decode tasks per GPU that keep one encoder busy (MobileNetV2 / CLIP-B frames are cheap)
GPU_CLIPS_PER_CALL = 8
CPU_CLIPS_PER_CALL = 1


@dataclass(frozen=True)
class EncoderPlan:
    """Resources of the preprocessing stages (what ``ray.data`` is asked for)."""

    actors: int  # encoder actor pool size
    cpus_per_actor: float
    gpus_per_actor: float  # 0 on CPU; a fraction of a GPU when several actors share one
    cpus_per_task: float  # decode tasks (always on CPUs)
    clips_per_call: int  # clips whose frames one encoder call batches

    @property
    def encoder_gpus(self) -> float:
        return self.actors * self.gpus_per_actor


def encoder_plan(
    cluster: Mapping[str, float],
    *,
    device: Device,
    actors: int | None = None,
    encoder_gpus: float | None = None,
    clips_per_call: int | None = None,
) -> EncoderPlan:
    """The plan of a preprocessing job.

    Args:
        cluster: the Ray cluster's resources (``ray.cluster_resources()``: "CPU", "GPU").
        device: where the encoders run (``--device``, resolved against the cluster).
        actors: ``--actors`` (None: 1 on CPU, 4 per encoder GPU on cuda).
        encoder_gpus: ``--encoder-gpus``: GPUs the encoder pool takes in all (None: all of the cluster's; cuda only).
        clips_per_call: ``--encode-batch`` (None: 8 on cuda, 1 on CPU).

    Raises:
        InputError: a flag the cluster cannot satisfy, naming the flag and the fix.
    """
    cpus, gpus = float(cluster.get("CPU", 1.0)), float(cluster.get("GPU", 0.0))
    if actors is not None and actors < 1:
        raise InputError(f"{actors}: the encoder pool needs at least one actor", source="--actors")
    if clips_per_call is not None and clips_per_call < 1:
        raise InputError(f"{clips_per_call}: at least one clip per encoder call", source="--encode-batch")
    if not device.is_cuda:
        if encoder_gpus:
            raise InputError(
                f"{encoder_gpus:g} GPUs for the encoders on {device}: add --device cuda", source="--encoder-gpus"
            )
        n = actors or 1
        task_cpus, actor_cpus = _cpu_shares(cpus, n)
        return EncoderPlan(n, actor_cpus, 0.0, task_cpus, clips_per_call or CPU_CLIPS_PER_CALL)
    share = gpus if encoder_gpus is None else float(encoder_gpus)
    if not 0 < share <= gpus:
        raise InputError(f"{share:g}: the cluster has {gpus:g} GPUs; use a number in (0, {gpus:g}]",
                         source="--encoder-gpus")  # fmt: skip
    n = actors or max(1, math.ceil(share * ACTORS_PER_GPU))
    if share / n > 1:
        raise InputError(f"{n} actors for {share:g} GPUs: an actor holds at most one GPU; use --actors "
                         f"{math.ceil(share)} or more", source="--actors")  # fmt: skip
    task_cpus, actor_cpus = _cpu_shares(cpus, n)
    return EncoderPlan(n, actor_cpus, share / n, task_cpus, clips_per_call or GPU_CLIPS_PER_CALL)


def _cpu_shares(total_cpus: float, actors: int) -> tuple[float, float]:
    """(cpus per decode task, cpus per actor): one CPU each when the cluster has room, else they share."""
    if total_cpus >= actors + 1:
        return 1.0, 1.0
    share = total_cpus / (actors + 1)
    return share, share
