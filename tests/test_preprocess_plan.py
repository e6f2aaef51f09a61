"""pipelines.preprocess_plan: the encoder pool's GPU/CPU sizing is a pure function of the cluster and the flags."""

import pytest

from pipelines.preprocess_plan import ACTORS_PER_GPU, encoder_plan
from vssflow.device import Device
from vssflow.errors import InputError

CUDA, CPU = Device("cuda"), Device("cpu")


def test_gpu_cluster_shares_each_gpu_between_several_actors():
    plan = encoder_plan({"CPU": 32, "GPU": 2}, device=CUDA)
    assert plan.actors == 2 * ACTORS_PER_GPU and plan.gpus_per_actor == pytest.approx(1 / ACTORS_PER_GPU)
    assert plan.encoder_gpus == pytest.approx(2) and plan.clips_per_call == 8
    assert plan.cpus_per_task == 1.0 and plan.cpus_per_actor == 1.0  # decoding stays on CPUs

    one = encoder_plan({"CPU": 32, "GPU": 8}, device=CUDA, encoder_gpus=1, actors=3, clips_per_call=16)
    assert (one.actors, one.clips_per_call) == (3, 16) and one.gpus_per_actor == pytest.approx(1 / 3)
    half = encoder_plan({"CPU": 2, "GPU": 1}, device=CUDA, encoder_gpus=0.5)
    assert half.actors == 2 and half.gpus_per_actor == pytest.approx(0.25)
    assert half.cpus_per_task == pytest.approx(2 / 3) == half.cpus_per_actor  # 2 actors + decode tasks share 2 CPUs


def test_cpu_cluster_keeps_one_actor_and_no_gpu():
    plan = encoder_plan({"CPU": 2, "GPU": 4}, device=CPU)
    assert (plan.actors, plan.gpus_per_actor, plan.clips_per_call) == (1, 0.0, 1)
    assert plan.cpus_per_task == 1.0 and plan.cpus_per_actor == 1.0
    crowded = encoder_plan({"CPU": 2}, device=CPU, actors=3)
    assert crowded.cpus_per_actor == pytest.approx(0.5) == crowded.cpus_per_task


@pytest.mark.parametrize(
    "cluster, kw, match",
    [({"CPU": 8, "GPU": 1}, {"encoder_gpus": 2}, "--encoder-gpus: 2: the cluster has 1 GPUs"),
     ({"CPU": 8, "GPU": 4}, {"encoder_gpus": 4, "actors": 2}, "--actors: 2 actors for 4 GPUs: .* use --actors 4"),
     ({"CPU": 8}, {"device": CPU, "encoder_gpus": 1}, "--encoder-gpus: 1 GPUs for the encoders on cpu: add --device"),
     ({"CPU": 8, "GPU": 1}, {"actors": 0}, "--actors: 0"),
     ({"CPU": 8, "GPU": 1}, {"clips_per_call": 0}, "--encode-batch: 0")],
)  # fmt: skip
def test_flags_the_cluster_cannot_satisfy_fail_in_one_line(cluster, kw, match):
    kw = {"device": CUDA, **kw}
    with pytest.raises(InputError, match=match) as e:
        encoder_plan(cluster, **kw)
    assert "\n" not in str(e.value)
