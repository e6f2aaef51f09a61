"""pipelines/deepspeed_config.py: the engines read a training job's settings through EngineSettings alone."""

from pipelines.deepspeed_config import EngineSettings, OptimConfig
from pipelines.train_loop import TrainJobConfig


def test_the_engines_read_the_jobs_engine_optimiser_and_batch_settings():
    job = TrainJobConfig.from_dict({"engine": "zero3", "lr": 3e-4, "grad_accum": 2, "batch_size": 6, "max_steps": 9})
    es = job.engine_settings()
    assert isinstance(es, EngineSettings) and isinstance(es.optim, OptimConfig)
    assert (es.engine, es.optim.lr, es.optim.grad_accum, es.batch_size, es.max_steps) == ("zero3", 3e-4, 2, 6, 9)
    assert es.optim is job.optim and es.use_gpu is False
