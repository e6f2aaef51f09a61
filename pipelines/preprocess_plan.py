"""How a preprocessing job is spread over the cluster: a small pure function of the cluster's resources and the flags.

The encoders load their models once per actor and encode the frames of several clips per call
(:func:`vssflow.features.extract.encode_semantic`). Where the decoding runs depends on where the encoders do:

    CPUs:  one encoder actor per CPU of the cluster (``--encoder-actors N`` or ``MIN,MAX`` to autoscale), each
           *decoding* its clips too: on CPU the encoders are most of the work (85 % in ``bench_extract``), so a
           CPU is best spent doing one clip from file to features, and the decoded frames (tens of MB a clip)
           never travel between processes. 4 clips per call. Shards are written by long-lived writer actors
           (one per 8 encoder actors) that take no CPU of their own (milliseconds a shard; they must not wait
           behind encoders that hold every CPU).
    GPUs:  ``--encoder-gpus G`` (default: every GPU) shared by ``--encoder-actors N`` (default 4 per GPU): G / N
           of a GPU per actor, 8 clips per call, fed by decode tasks on the CPUs the actors leave (one CPU each;
           as many at once as fit).

Memory requests are what the stages were measured to use (``bench_preprocess`` reports Ray Data's memory
warnings; there are none with these): a worker that imports the decoders and torch, plus the frames it holds.
Memory stays bounded however long the manifest is: Ray Data streams, each actor holds at most a few batches of
input rows (``max_tasks_in_flight_per_actor``), and decoded frames exist only inside the process that encodes
them (CPU) or in the bounded queue in front of the actors (GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from vssflow.device import Device
from vssflow.errors import InputError

ACTORS_PER_GPU = 4  # decode tasks per GPU that keep one encoder busy (MobileNetV2 / CLIP-B frames are cheap)
GPU_CLIPS_PER_CALL = 8
CPU_CLIPS_PER_CALL = 4
MiB = 2**20
# Measured (bench_preprocess, Ray Data's per-worker USS): a decode worker (decord, torch imported by the mel and
# voice-activity code) ~600 MiB; an encoder actor with MobileNetV2, the face landmarker and the speaker encoder
# loaded ~900 MiB, up to 1.2 GiB with its clips over the 700 clips of the demo (Ray Data's warning, 2026-12-02);
# frames of a 2 s clip at the decode size (360 p short side at most) and 10 + 25 fps ~50 MiB.
# Ray Data warns when 1.25x the largest USS exceeds the request, so each request is that with headroom.
DECODE_TASK_MEMORY = 800 * MiB
ENCODER_ACTOR_MEMORY = 1400 * MiB  # + 4 clips of frames: 1656 MiB, 1.3x the demo's 1.2 GiB
CLIP_FRAMES_MEMORY = 64 * MiB  # per clip of a batch


@dataclass(frozen=True)
class EncoderPlan:
    """Resources of the preprocessing stages (what ``ray.data`` is asked for)."""

    min_actors: int  # encoder actor pool: fixed size when min_actors == max_actors, else autoscaled between them
    max_actors: int
    cpus_per_actor: float
    gpus_per_actor: float  # 0 on CPU; a fraction of a GPU when several actors share one
    decode_in_actors: bool  # True: each actor decodes its own clips (CPU); False: decode tasks feed the actors
    cpus_per_task: float  # decode tasks (always on CPUs; unused when decode_in_actors)
    decode_tasks: int  # decode tasks at once (0 when decode_in_actors)
    writer_cpus: float  # shard-writing tasks
    clips_per_call: int  # clips whose frames one encoder call batches
    actor_memory: int  # bytes requested per encoder actor
    task_memory: int  # bytes requested per decode task
    # batches sent to an actor at once: 1 when it decodes (its input is a few manifest rows, nothing to prefetch, and
    # a second batch queued at one actor would leave another idle at the end); None: Ray Data's default (prefetch)
    batches_in_flight: int | None = None
    # shard-writing tasks at once: each runs in a Ray worker that imports the feature code (seconds of CPU each);
    # one per 8 encoder actors keeps up (a 64-clip shard is written in well under a second)
    writers: int = 1

    @property
    def actors(self) -> int:
        """The pool's size (its largest, when it autoscales)."""
        return self.max_actors

    @property
    def encoder_gpus(self) -> float:
        return self.max_actors * self.gpus_per_actor

    def for_job(self, clips: int) -> EncoderPlan:
        """This plan for a job of ``clips`` clips: fewer clips per call when there are too few for a full batch per
        actor (Ray Data bundles rows into batches, so a short job would otherwise leave actors idle)."""
        per_call = max(1, min(self.clips_per_call, math.ceil(clips / self.max_actors)))
        return replace(self, clips_per_call=per_call)

    def describe(self, device) -> str:
        pool = f"{self.min_actors}" if self.min_actors == self.max_actors else f"{self.min_actors}-{self.max_actors}"
        where = "decoding and encoding" if self.decode_in_actors else "encoding"
        line = f"{where} on {pool} encoder actor(s) ({device}, {self.clips_per_call} clips per call)"
        if not self.decode_in_actors:
            line = f"decoding on {self.decode_tasks} CPU task(s) at once, " + line
        return line


def parse_actors(text: str | int | tuple[int, int] | None) -> int | tuple[int, int] | None:
    """``--encoder-actors``: "N" (a pool of N) or "MIN,MAX" (autoscaled between them); None: the plan decides."""
    if text is None or isinstance(text, int | tuple):
        return text
    parts = str(text).split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2):
        raise InputError(f"{text!r}: give a number of actors (4) or a range MIN,MAX (1,8)", source="--encoder-actors")
    return nums[0] if len(nums) == 1 else (nums[0], nums[1])


def encoder_plan(
    cluster: Mapping[str, float],
    *,
    device: Device,
    actors: int | tuple[int, int] | None = None,
    encoder_gpus: float | None = None,
    clips_per_call: int | None = None,
) -> EncoderPlan:
    """The plan of a preprocessing job.

    Args:
        cluster: the Ray cluster's resources (``ray.cluster_resources()``: "CPU", "GPU").
        device: where the encoders run (``--device``, resolved against the cluster).
        actors: ``--encoder-actors``: N, or (MIN, MAX) to autoscale (None: one per CPU on CPU, 4 per encoder GPU
            on cuda).
        encoder_gpus: ``--encoder-gpus``: GPUs the encoder pool takes in all (None: all of the cluster's; cuda only).
        clips_per_call: ``--encode-batch`` (None: 8 on cuda, 4 on CPU).

    Raises:
        InputError: a flag the cluster cannot satisfy, naming the flag and the fix.
    """
    cpus, gpus = float(cluster.get("CPU", 1.0)), float(cluster.get("GPU", 0.0))
    lo, hi = (actors, actors) if not isinstance(actors, tuple) else actors
    if lo is not None and (lo < 1 or hi < lo):
        raise InputError(f"{_show(actors)}: the encoder pool needs at least one actor (and MIN <= MAX)",
                         source="--encoder-actors")  # fmt: skip
    if clips_per_call is not None and clips_per_call < 1:
        raise InputError(f"{clips_per_call}: at least one clip per encoder call", source="--encode-batch")
    if not device.is_cuda:
        if encoder_gpus:
            raise InputError(
                f"{encoder_gpus:g} GPUs for the encoders on {device}: add --device cuda", source="--encoder-gpus"
            )
        if lo is None:
            lo = hi = max(1, math.floor(cpus))
        # every actor of the initial pool fits (sharing CPUs when asked for more than there are); an autoscaled
        # pool's further actors take 1 CPU each, as the cluster grows
        actor_cpus = 1.0 if cpus >= lo else cpus / lo
        n = clips_per_call or CPU_CLIPS_PER_CALL
        return EncoderPlan(lo, hi, actor_cpus, 0.0, True, 0.0, 0, 0.0, n,
                           ENCODER_ACTOR_MEMORY + n * CLIP_FRAMES_MEMORY, DECODE_TASK_MEMORY, 1,
                           _writers(hi))  # fmt: skip
    share = gpus if encoder_gpus is None else float(encoder_gpus)
    if not 0 < share <= gpus:
        raise InputError(f"{share:g}: the cluster has {gpus:g} GPUs; use a number in (0, {gpus:g}]",
                         source="--encoder-gpus")  # fmt: skip
    if lo is None:
        lo = hi = max(1, math.ceil(share * ACTORS_PER_GPU))
    if share / hi > 1:
        raise InputError(f"{_show(actors)} actors for {share:g} GPUs: an actor holds at most one GPU; use "
                         f"--encoder-actors {math.ceil(share)} or more", source="--encoder-actors")  # fmt: skip
    task_cpus, actor_cpus = _cpu_shares(cpus, hi)
    tasks = max(1, math.floor((cpus - hi * actor_cpus) / task_cpus + 1e-9))
    n = clips_per_call or GPU_CLIPS_PER_CALL
    # the GPU actor holds the frames of its batch (on the host, then on the GPU); the decode task those of its block
    return EncoderPlan(lo, hi, actor_cpus, share / hi, False, task_cpus, tasks, task_cpus, n,
                       ENCODER_ACTOR_MEMORY + n * CLIP_FRAMES_MEMORY, DECODE_TASK_MEMORY, None,
                       _writers(hi))  # fmt: skip


def _writers(actors: int) -> int:
    return max(1, math.ceil(actors / 8))


def _show(actors) -> str:
    return ",".join(map(str, actors)) if isinstance(actors, tuple) else str(actors)


def _cpu_shares(total_cpus: float, actors: int) -> tuple[float, float]:
    """(cpus per decode task, cpus per actor): one CPU each when the cluster has room, else they share."""
    if total_cpus >= actors + 1:
        return 1.0, 1.0
    share = total_cpus / (actors + 1)
    return share, share
