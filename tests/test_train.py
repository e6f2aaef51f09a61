"""Ray Train + DeepSpeed training (pipelines/train.py, pipelines/train_loop.py) on real toy shards, 2 Ray workers
(the shard set opened and fitted to, without Ray: tests/test_train_shards.py).

One Ray cluster for the module. The reference run (ZeRO-2, 24 steps) is shared: the fault test and the resume test
must end with the same step count, the same data order and the same final weights as this uninterrupted run.
Tolerance for "the same weights": max |difference| <= 1e-6 (the runs are deterministic: fixed data order, per-rank
torch.Generator state in every checkpoint, one intra-op thread; in practice the weights are bitwise equal).
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")
pytest.importorskip("mlflow")

from conftest_data import TOY_MODEL, make_toy_shards  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.mlflow_utils import load_registered_generator, run_artifacts, run_metrics  # noqa: E402
from pipelines.train import run_training  # noqa: E402
from pipelines.train_loop import TrainJobConfig  # noqa: E402
from vssflow.data.schema import SCHEMA_VERSION  # noqa: E402

STEPS = 24
TOL = 1e-6


@pytest.fixture(scope="module")
def ray_num_cpus() -> int:
    return 4  # two training workers beside the driver's tasks (the local_ray fixture of conftest.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(make_toy_shards(tmp_path_factory.mktemp("shards"), n_v2s=40, n_tts=40, n_val=1))


def _cfg(data, **kw):
    base = dict(data=data, model_overrides=TOY_MODEL, engine="zero2", max_steps=STEPS, checkpoint_every=6,
                eval_every=12, batch_size=4, lr=2e-3, warmup_steps=3, log_samples=True, max_failures=2)  # fmt: skip
    base.update(kw)
    return TrainJobConfig.from_dict(base)


def _samples(run_dir: Path) -> dict[int, list[dict]]:
    out = {}
    for rank in (0, 1):
        lines = (run_dir / f"samples_rank{rank}.jsonl").read_text().splitlines()
        out[rank] = [json.loads(x) for x in lines]
    return out


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    ema = {f"ema:{k}": v for k, v in load_file(model_dir / "ema.safetensors").items()}
    return {**load_file(model_dir / "model.safetensors"), **ema}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def reference(local_ray, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    res = run_training(_cfg(data), out=root / "model", run_dir=root / "run")
    return res


def test_training_reduces_loss_and_tracks_everything(reference):
    res = reference
    assert res.steps == STEPS and res.engine == "zero2"
    tags = MlflowClient(res.tracking_uri).get_run(res.mlflow_run_id).data.tags  # what the worker trained with
    assert (tags["device"], tags["param_dtype"], tags["bf16"]) == ("cpu", "float32", "false")
    m = run_metrics(res.mlflow_run_id, tracking_uri=res.tracking_uri)
    loss = [v for _, v in sorted(m["loss"])]
    assert len(loss) == STEPS
    first, last = np.mean(loss[:6]), np.mean(loss[-6:])
    assert last < 0.85 * first, (first, last)
    for key in ("grad_norm", "lr", "samples_per_s", "loss/v2s", "loss/tts", "loss/joint", "optimizer_state_mb"):
        assert key in m, key
    assert any(k.startswith("system/") for k in m)  # system metrics
    lrs = [v for _, v in sorted(m["lr"])]
    assert lrs[0] < lrs[3] and lrs[-1] < lrs[3]  # warm-up, then decay
    arts = run_artifacts(res.mlflow_run_id, tracking_uri=res.tracking_uri)
    assert any(a.endswith(".wav") for a in arts) and any(a.endswith(".png") for a in arts)
    assert any(a.startswith("samples/step_000012/") for a in arts)  # sampled at the interval, not only at the end
    # checkpoints through ray.train.report: DeepSpeed shards + EMA + per-rank data position and RNG
    ckpt = Path(res.checkpoint)
    assert (ckpt / "ema.pt").is_file() and (ckpt / "worker_0.pt").is_file() and (ckpt / "worker_1.pt").is_file()
    assert any((ckpt / "ds").iterdir())
    # the final model: save_pretrained directory + a registered MLflow model that loads back into a Generator
    assert (res.out / "config.json").is_file() and (res.out / "ema.safetensors").is_file()
    assert res.model_uri == "models:/vssflow/1"
    gen = load_registered_generator(res.model_uri, tracking_uri=res.tracking_uri)
    assert gen.step == STEPS and gen.config.width == TOY_MODEL["width"]
    # the codec carries each task's global variance from the training split; the sampler matches it (small presets)
    # (this set has no joint rows: joint clips are mixed while training, and without rows of their own none is matched)
    assert sorted(gen.codec.global_variance) == ["tts", "v2s"] and gen.sampling.gv_max_ratio == 3.0
    params = json.loads((res.run_dir / "run.json").read_text())
    assert params["data_version"].startswith(f"v{SCHEMA_VERSION}-")


def test_worker_killed_mid_run_recovers_to_the_same_result(reference, data, tmp_path):
    run_dir = tmp_path / "run"
    killed = {}

    def killer():
        # Wait for the second checkpoint (step 12), then SIGKILL rank 1's process: Ray Train replaces the worker
        # group and every worker resumes from the last reported checkpoint by itself.
        deadline = time.time() + 240
        while time.time() < deadline:
            ckpts = list(run_dir.glob("ray/*/step_000012/worker_1.pt"))
            pid_file = run_dir / "pids" / "rank1.pid"
            if ckpts and pid_file.is_file():
                time.sleep(0.5)
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = run_training(_cfg(data), out=tmp_path / "model", run_dir=run_dir, register_as=None)
    t.join(timeout=5)
    assert killed, "the worker was never killed"
    assert int((run_dir / "pids" / "rank1.pid").read_text()) != killed["pid"]  # a new process finished the run
    assert res.steps == reference.steps == STEPS
    assert _max_diff(_weights(res.out), _weights(reference.out)) <= TOL


def test_resume_keeps_the_data_position(reference, data, tmp_path):
    run_dir = tmp_path / "run"
    first = run_training(_cfg(data, stop_after=9), out=tmp_path / "model", run_dir=run_dir, register_as=None)
    assert first.steps == 9 and first.out is None  # interrupted: no final model yet
    res = run_training(_cfg(data, max_steps=0), out=None, resume=run_dir, register_as=None)
    assert res.steps == STEPS and res.run_dir == run_dir.resolve()
    # no clip seen twice within an epoch (per worker and across workers), and exactly the reference's data order
    seen = _samples(run_dir)
    for rank in (0, 1):
        steps = [r["step"] for r in seen[rank]]
        assert steps == sorted(steps) and len(steps) == len(set(steps)) == STEPS
    by_epoch: dict[int, list[str]] = {}
    for rank in (0, 1):
        for r in seen[rank]:
            by_epoch.setdefault(r["epoch"], []).extend(r["ids"])
    assert len(by_epoch) >= 2  # the run crossed epoch boundaries
    for ids in by_epoch.values():
        assert len(ids) == len(set(ids))
    assert seen == _samples(reference.run_dir)
    assert _max_diff(_weights(res.out), _weights(reference.out)) <= TOL


def test_zero2_shards_optimizer_state_across_workers(reference, data, tmp_path, capsys):
    # The DDP baseline goes through the `vssflow train` command line (plain DDP, said in the log and the result).
    from pipelines.cli import main

    model_flags = [x for k, v in TOY_MODEL.items() for x in ("--model-overrides", f"{k}={v}")]
    argv = ["train", "--data", data, "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"),
            "--deepspeed", "ddp", "--max-steps", "2", "--register-as", "", *model_flags]  # fmt: skip
    assert main(argv) == 0
    assert "2 steps with ddp" in capsys.readouterr().out
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    ddp = run_metrics(run["mlflow_run_id"], tracking_uri=run["tracking_uri"])["optimizer_state_mb"][-1][1]
    m = run_metrics(reference.mlflow_run_id, tracking_uri=reference.tracking_uri)
    zero2, zero2_max = m["optimizer_state_mb"][-1][1], m["optimizer_state_mb_max"][-1][1]
    assert 0.4 < zero2 / ddp < 0.6 and 0.4 < zero2_max / ddp < 0.6, (zero2, zero2_max, ddp)


def test_a_16_clip_set_trains_on_2_workers_with_batches_that_shrink_or_mix(local_ray, tmp_path, capsys):
    # 7 V2S + 7 TTS training clips (+1 val each) over 2 workers, batch size 4: no worker can fill a batch of a task
    # (the job used to stop inside Ray with "cannot form one batch of 4 clips of a task per worker").
    small = str(make_toy_shards(tmp_path / "shards", n_v2s=7, n_tts=7, n_val=1))
    cfg = _cfg(small, max_steps=6, checkpoint_every=6, eval_every=0, warmup_steps=1)
    res = run_training(cfg, out=tmp_path / "model", run_dir=tmp_path / "run", register_as=None, n_val_clips=0)
    assert res.steps == 6 and (res.out / "config.json").is_file()
    assert "may mix tasks" in capsys.readouterr().out  # said once, before Ray started
    seen = _samples(tmp_path / "run")
    for rank in (0, 1):
        assert [r["step"] for r in seen[rank]] == list(range(6))
        assert all(1 <= len(r["ids"]) <= 4 for r in seen[rank])
        by_epoch: dict[int, list[str]] = {}
        for r in seen[rank]:
            by_epoch.setdefault(r["epoch"], []).extend(r["ids"])
        assert all(len(ids) == len(set(ids)) for ids in by_epoch.values())  # no clip twice in an epoch
    tasks = {i.split("-")[0] for rank in (0, 1) for r in seen[rank] for i in r["ids"]}
    assert tasks == {"v2s", "tts"}


def test_too_few_clips_for_the_workers_is_refused_before_ray_starts(tmp_path):
    # In a fresh process: the refusal comes from the driver's check, with Ray never started.
    import subprocess
    import sys

    tiny = make_toy_shards(tmp_path / "shards", n_v2s=1, n_tts=1, n_val=1)
    code = (
        "import ray, sys\n"
        "from pipelines.train import run_training\n"
        "from pipelines.train_loop import TrainJobConfig\n"
        "from vssflow.errors import InputError\n"
        f"cfg = TrainJobConfig(data={str(tiny)!r}, workers=3)\n"
        "try:\n"
        f"    run_training(cfg, out={str(tmp_path / 'm')!r}, run_dir={str(tmp_path / 'r')!r}, register_as=None)\n"
        "except InputError as e:\n"
        "    print('REFUSED', e, '| ray started:', ray.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert "REFUSED" in out and "| ray started: False" in out, out
    assert "2 training clips" in out and "3 workers" in out and "--workers 2" in out


def test_a_train_run_prints_each_line_once_and_none_of_rays_noise(local_ray, data, tmp_path):
    """`vssflow train` in a fresh process, its console captured (issue 14, "logs a person reads"): each training line
    once (Ray Train's print patch printed them twice), no line more than 3 times (the demo's check), none of the
    placement-group cleaner's once-a-second State API warnings. The module's Ray runs beside it, as other jobs do."""
    import subprocess
    import sys

    from pipelines.demo import repeated_lines

    model_flags = [x for k, v in TOY_MODEL.items() for x in ("--model-overrides", f"{k}={v}")]
    argv = ["train", "--data", data, "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"),
            "--max-steps", "20", "--checkpoint-every", "10", "--eval-every", "0", "--register-as", "",
            *model_flags]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    lines = console.splitlines()
    for step in (10, 20):
        assert sum(f"vssflow train: step {step}/20 loss" in x for x in lines) == 1, console
    assert repeated_lines(lines) == {}
    assert "Failed to query Ray Train Controller" not in console and "multiple active Ray" not in console
    assert "Reporting training result" not in console and "Checkpoint successfully created" not in console


# ---- no Ray needed ----------------------------------------------------------------------------------------------


def test_a_cuda_job_asks_for_the_cuda_accelerator_and_bf16_and_a_cpu_job_for_cpu_fp32(capsys):
    """What a training job hands its workers follows from its device alone (no GPU needed to check it)."""
    import argparse

    import torch

    from pipelines.deepspeed_config import deepspeed_config_for
    from pipelines.train import WORKER_ENV, add_arguments, device_arg, training_device, worker_plan
    from vssflow.errors import InputError

    assert "DS_ACCELERATOR" not in WORKER_ENV  # never a fixed value: derived per job below
    gpu, cpu = TrainJobConfig(use_gpu=True, engine="zero2"), TrainJobConfig(use_gpu=False, engine="zero2")
    g, c = worker_plan(gpu), worker_plan(cpu)
    assert g["env_vars"]["DS_ACCELERATOR"] == "cuda" and g["use_gpu"] is True
    assert c["env_vars"]["DS_ACCELERATOR"] == "cpu" and c["use_gpu"] is False
    assert "cpu" not in g["env_vars"].values()  # nothing CPU-only reaches a GPU worker
    g_ds = deepspeed_config_for(gpu.engine_settings(), world=2)
    c_ds = deepspeed_config_for(cpu.engine_settings(), world=2)
    assert g_ds["bf16"] == {"enabled": True} and g_ds["fp16"] == {"enabled": False}
    assert c_ds["bf16"] == {"enabled": False} and c_ds["fp16"] == {"enabled": False}  # fp32 on CPU
    assert gpu.device.dtype == torch.bfloat16 and cpu.device.dtype == torch.float32

    # --device: auto follows this machine for a local Ray; on a cluster "cuda" is taken as given; cuda:N is refused
    assert training_device("auto", None).is_cuda == torch.cuda.is_available()
    assert training_device("cuda", "ray://head:10001").is_cuda
    assert not training_device("cpu", "ray://head:10001").is_cuda
    with pytest.raises(InputError, match=r"--device: cuda:1: Ray gives each actor and worker its own GPU"):
        training_device("cuda:1", None)
    with pytest.raises(InputError, match="expected auto, cpu, cuda"):
        training_device("gpu", None)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert device_arg(parser.parse_args([])) == "auto" and capsys.readouterr().err == ""
    assert device_arg(parser.parse_args(["--device", "cpu"])) == "cpu"
    assert device_arg(parser.parse_args(["--gpu"])) == "cuda"  # the deprecated alias, one line
    assert capsys.readouterr().err.splitlines() == [
        "vssflow train: --gpu is deprecated and will be removed; use --device cuda"
    ]


def test_the_makefile_exports_the_cpu_accelerator_only_for_cpu_targets():
    lines = (Path(__file__).parents[1] / "Makefile").read_text().splitlines()
    assert not [x for x in lines if x.replace(" ", "").startswith("exportDS_ACCELERATOR")]  # not global
    scoped = [x for x in lines if "DS_ACCELERATOR" in x and not x.startswith("#")]
    assert scoped == ["test demo bench: export DS_ACCELERATOR := cpu"]


def test_a_training_run_that_fails_ends_failed_not_running(local_ray, data, tmp_path):
    """The workers fail at start (the run directory's codec statistics are gone; every worker loads them) and no
    retry is allowed: the MLflow run (a real SQLite store) ends FAILED, not RUNNING."""
    from mlflow.tracking import MlflowClient

    from vssflow.audio.codec import MelCodec

    run_dir = tmp_path / "run"
    MelCodec().save(run_dir / "codec")
    (run_dir / "codec" / "mel_codec_stats.safetensors").unlink()
    cfg = _cfg(data, max_failures=0, max_steps=4, log_samples=False)
    with pytest.raises(Exception, match="statistics missing"):
        run_training(cfg, out=tmp_path / "model", run_dir=run_dir, register_as=None, n_val_clips=0)
    state = json.loads((run_dir / "run.json").read_text())
    assert MlflowClient(state["tracking_uri"]).get_run(state["mlflow_run_id"]).info.status == "FAILED"
    assert not (tmp_path / "model").exists()


@pytest.mark.gpu
def test_gpu_training_runs_in_bf16_with_deepspeed(data, tmp_path):
    """On a CUDA machine: one GPU worker, ZeRO-2, bf16 (the config's GPU path); skipped without a GPU."""
    ray.init(address="local", include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        cfg = _cfg(data, workers=1, use_gpu=True, max_steps=4, checkpoint_every=4, eval_every=0, log_samples=False)
        res = run_training(cfg, out=tmp_path / "model", run_dir=tmp_path / "run", register_as=None, n_val_clips=0)
    finally:
        ray.shutdown()
    assert res.steps == 4 and res.engine == "zero2"
    # the worker's parameters on the GPU in bf16 (DeepSpeed's bf16 mode; its optimizer keeps fp32 master weights)
    tags = MlflowClient(res.tracking_uri).get_run(res.mlflow_run_id).data.tags
    assert (tags["device"], tags["param_dtype"], tags["bf16"]) == ("cuda", "bfloat16", "true")
    loss = [v for _, v in run_metrics(res.mlflow_run_id, tracking_uri=res.tracking_uri)["loss"]]
    assert len(loss) == 4 and np.isfinite(loss).all()
