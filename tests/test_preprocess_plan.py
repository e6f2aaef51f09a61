"""pipelines.preprocess_plan: the stages' sizing is a pure function of the cluster's resources and the flags."""

import pytest

from pipelines.preprocess_plan import (
    ACTORS_PER_GPU,
    CLIP_FRAMES_MEMORY,
    CPU_CLIPS_PER_CALL,
    DECODE_TASK_MEMORY,
    ENCODER_ACTOR_MEMORY,
    encoder_plan,
    parse_actors,
)
from vssflow.device import Device
from vssflow.errors import InputError

CUDA, CPU = Device("cuda"), Device("cpu")


def test_gpu_cluster_shares_each_gpu_between_several_actors_fed_by_decode_tasks():
    plan = encoder_plan({"CPU": 32, "GPU": 2}, device=CUDA)
    assert plan.actors == 2 * ACTORS_PER_GPU and plan.gpus_per_actor == pytest.approx(1 / ACTORS_PER_GPU)
    assert plan.encoder_gpus == pytest.approx(2) and plan.clips_per_call == 8 and not plan.decode_in_actors
    assert plan.cpus_per_task == 1.0 and plan.cpus_per_actor == 1.0  # decoding stays on CPUs
    assert plan.decode_tasks == 32 - 8  # every CPU the actors leave decodes
    assert plan.batches_in_flight is None  # Ray Data's prefetching of the decoded frames
    assert plan.task_memory == DECODE_TASK_MEMORY and plan.actor_memory == ENCODER_ACTOR_MEMORY + 8 * CLIP_FRAMES_MEMORY

    one = encoder_plan({"CPU": 32, "GPU": 8}, device=CUDA, encoder_gpus=1, actors=3, clips_per_call=16)
    assert (one.actors, one.clips_per_call) == (3, 16) and one.gpus_per_actor == pytest.approx(1 / 3)
    half = encoder_plan({"CPU": 2, "GPU": 1}, device=CUDA, encoder_gpus=0.5)
    assert half.actors == 2 and half.gpus_per_actor == pytest.approx(0.25)
    assert half.cpus_per_task == pytest.approx(2 / 3) == half.cpus_per_actor  # 2 actors + decode tasks share 2 CPUs
    assert half.decode_tasks == 1


def test_cpu_cluster_gets_one_decoding_encoder_actor_per_cpu():
    for cpus in (1, 2, 16):
        plan = encoder_plan({"CPU": cpus, "GPU": 4}, device=CPU)
        assert (plan.min_actors, plan.max_actors, plan.cpus_per_actor, plan.gpus_per_actor) == (cpus, cpus, 1.0, 0.0)
        assert plan.decode_in_actors and plan.decode_tasks == 0
        assert plan.batches_in_flight == 1  # no actor holds a batch another could be working on
        assert plan.writers == (1 if cpus <= 8 else 2)  # one writer actor per 8 encoders
        # the actors hold every CPU: writing a shard (milliseconds) must not wait for one
        assert plan.writer_cpus == 0.0
        assert plan.clips_per_call == CPU_CLIPS_PER_CALL > 1  # frames of several clips per encoder call
        assert plan.actor_memory == ENCODER_ACTOR_MEMORY + CPU_CLIPS_PER_CALL * CLIP_FRAMES_MEMORY
    assert encoder_plan({"CPU": 2.5}, device=CPU).actors == 2
    small = encoder_plan({"CPU": 0.5}, device=CPU)  # less than a CPU: one actor on what there is
    assert small.actors == 1 and small.cpus_per_actor == pytest.approx(0.5)
    crowded = encoder_plan({"CPU": 2}, device=CPU, actors=3)
    assert crowded.actors == 3 and crowded.cpus_per_actor == pytest.approx(2 / 3)


def test_a_short_job_gives_every_actor_clips():
    plan = encoder_plan({"CPU": 4}, device=CPU)
    assert plan.for_job(1000).clips_per_call == CPU_CLIPS_PER_CALL
    assert plan.for_job(6).clips_per_call == 2 and plan.for_job(3).clips_per_call == 1  # 4 actors, all busy
    assert plan.for_job(6).actor_memory == plan.actor_memory  # (the request stays that of a full batch)


def test_encoder_actors_autoscale_between_min_and_max():
    plan = encoder_plan({"CPU": 2}, device=CPU, actors=(1, 8))
    assert (plan.min_actors, plan.max_actors, plan.cpus_per_actor) == (1, 8, 1.0)  # more as the cluster grows
    assert "1-8 encoder actor(s)" in plan.describe("cpu")
    gpu = encoder_plan({"CPU": 16, "GPU": 2}, device=CUDA, actors=(2, 8))
    assert (gpu.min_actors, gpu.max_actors) == (2, 8) and gpu.gpus_per_actor == pytest.approx(2 / 8)  # max fits
    assert parse_actors("4") == 4 and parse_actors("1,8") == (1, 8) and parse_actors(None) is None


@pytest.mark.parametrize(
    "cluster, kw, match",
    [({"CPU": 8, "GPU": 1}, {"encoder_gpus": 2}, "--encoder-gpus: 2: the cluster has 1 GPUs"),
     ({"CPU": 8, "GPU": 4}, {"encoder_gpus": 4, "actors": 2},
      "--encoder-actors: 2 actors for 4 GPUs: .* use --encoder-actors 4"),
     ({"CPU": 8}, {"device": CPU, "encoder_gpus": 1}, "--encoder-gpus: 1 GPUs for the encoders on cpu: add --device"),
     ({"CPU": 8, "GPU": 1}, {"actors": 0}, "--encoder-actors: 0"),
     ({"CPU": 8}, {"device": CPU, "actors": (4, 2)}, "--encoder-actors: 4,2: .*MIN <= MAX"),
     ({"CPU": 8, "GPU": 1}, {"clips_per_call": 0}, "--encode-batch: 0")],
)  # fmt: skip
def test_flags_the_cluster_cannot_satisfy_fail_in_one_line(cluster, kw, match):
    kw = {"device": CUDA, **kw}
    with pytest.raises(InputError, match=match) as e:
        encoder_plan(cluster, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["four", "1,2,3", "1,"])
def test_a_malformed_encoder_actors_flag_fails_in_one_line(text):
    with pytest.raises(InputError, match=f"--encoder-actors: '{text}': give a number") as e:
        parse_actors(text)
    assert "\n" not in str(e.value)
