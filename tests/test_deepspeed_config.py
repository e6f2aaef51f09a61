"""pipelines/deepspeed_config.py: the engines read a training job's settings through EngineSettings alone."""

from pipelines.deepspeed_config import EngineSettings, OptimConfig
from pipelines.train_loop import TrainJobConfig


def test_the_engines_read_the_jobs_engine_optimiser_and_batch_settings():
    job = TrainJobConfig.from_dict({"engine": "zero3", "lr": 3e-4, "grad_accum": 2, "batch_size": 6, "max_steps": 9})
    es = job.engine_settings()
    assert isinstance(es, EngineSettings) and isinstance(es.optim, OptimConfig)
    assert (es.engine, es.optim.lr, es.optim.grad_accum, es.batch_size, es.max_steps) == ("zero3", 3e-4, 2, 6, 9)
    assert es.optim is job.optim and es.use_gpu is False


def test_deepspeed_config_is_bf16_on_gpu_and_fp32_on_cpu():
    from pipelines.deepspeed_config import build_deepspeed_config

    common = dict(micro_batch_per_gpu=4, grad_accum=2, world_size=2, lr=1e-3, weight_decay=0.01, grad_clip=1.0)
    cpu = build_deepspeed_config(stage=2, use_gpu=False, **common)
    gpu = build_deepspeed_config(stage=2, use_gpu=True, **common)
    assert cpu["bf16"] == {"enabled": False} and cpu["fp16"] == {"enabled": False}  # fp32 on CPU
    assert gpu["bf16"] == {"enabled": True} and gpu["fp16"] == {"enabled": False}
    for c in (cpu, gpu):
        assert c["train_batch_size"] == 4 * 2 * 2 and c["gradient_accumulation_steps"] == 2
        assert c["gradient_clipping"] == 1.0 and c["zero_optimization"]["stage"] == 2
        assert c["optimizer"]["type"] == "AdamW" and c["optimizer"]["params"]["torch_adam"]
    # the flat gradient buffer only where it pays (GPU memory); on CPU it is one more copy per step
    assert gpu["zero_optimization"]["contiguous_gradients"] and not cpu["zero_optimization"]["contiguous_gradients"]
    z3 = build_deepspeed_config(stage=3, use_gpu=True, **common)["zero_optimization"]
    assert z3["stage3_gather_16bit_weights_on_model_save"]
