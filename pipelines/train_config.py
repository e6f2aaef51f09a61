"""The training job's configuration: :class:`TrainJobConfig` (typed sections: optimiser, sampler, flow, validation)
and :class:`RunContext`, what the driver resolved for one run. Both go to every Ray Train worker as they are.

STYLE.md rule 5: frozen dataclasses, defaults that train the tiny preset on CPU, overrides applied once at the entry
point (``vssflow train`` builds one from its flags; ``--resume`` reads the one in run.json with
:meth:`TrainJobConfig.from_dict`, which also takes the flat keys of run.json files of before the sections).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from pipelines.deepspeed_config import EngineSettings, OptimConfig
from vssflow.data.sampler import SamplerConfig
from vssflow.device import Device
from vssflow.errors import InputError
from vssflow.model.config import PRESETS, ModelConfig
from vssflow.training import FlowConfig


@dataclass(frozen=True)
class ValidationConfig:
    """Audio samples of the fixed validation clips during training, and the guidance saved with the model."""

    every: int = 250  # every N steps (0 = only at the end)
    steps: int = 8  # ODE steps of validation sampling
    cfg_scale: float | None = None  # also the model's saved default guidance; None = the model's (sampling_config)
    cfg_rescale: float | None = None  # guidance rescaling saved with the model; None = the preset's (paper: 0)


# Global-variance compensation saved with the small presets' models (the paper preset: off), in its "level" mode
# (SamplingConfig.gv_mode: one gain per clip, the loudness of the compensated spectrum). On the demo's corpus
# (data-predicting tiny model, 2000 steps, no guidance, 10 held-out clips per task): TTS level -3.6 -> -0.3 dB with
# WER 0.52 -> 0.55 (compensating the latent itself: -0.5 dB but WER 0.80); V2S -3.7 -> -2.4 dB at ratio 2, -2.1 at 3,
# -2.1 at 5; class accuracy and onset F1 unchanged.
GV_MAX_RATIO = 3.0
# rows per worker for batching; at 32 the workers agreed on no V2S batch in 1000 steps (the sampler's own default: 64)
BUFFER_SIZE = 128
# The sections of a job and the old flat keys each takes (a run.json or a caller of before the sections still loads).
_SECTIONS = {
    "optim": (OptimConfig, {f.name: f.name for f in fields(OptimConfig)}),
    "sampler": (
        SamplerConfig,
        {k: k for k in ("batch_size", "v2s_weight", "tts_weight", "joint_weight", "buffer_size", "keep_tail")},
    ),
    "flow": (FlowConfig, {}),
    "validation": (
        ValidationConfig,
        {"eval_every": "every", "eval_steps": "steps", "eval_cfg_scale": "cfg_scale", "cfg_rescale": "cfg_rescale"},
    ),
}


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything a training run needs; resolved once at the entry point, logged to MLflow as params.

    Typed sections: ``optim`` (AdamW, schedule, clipping, EMA: :class:`OptimConfig`), ``sampler`` (batches:
    :class:`~vssflow.data.sampler.SamplerConfig`; its ``seed`` and ``phoneme_layout`` are the job's, set by
    :meth:`sampler_config`), ``flow`` (:class:`~vssflow.training.FlowConfig`), ``validation``; ``model_overrides``
    are ModelConfig fields replaced on top of the preset (checked against ModelConfig). :meth:`from_dict` reads the
    nested form :meth:`to_dict` writes and the flat keys of older run.json files.

    Defaults: the tiny preset on 2 CPU workers for a few dozen steps.
    """

    data: str = ""  # directory of Parquet shards
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields replaced on top of the preset
    workers: int = 2
    use_gpu: bool = False
    engine: str = "zero2"  # zero0..zero3 (DeepSpeed) or ddp (plain PyTorch DDP)
    max_steps: int = 40  # optimizer steps (the lr schedule spans these)
    stop_after: int = 0  # end early at this step as if interrupted (0 = run to max_steps); for resume tests
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(buffer_size=BUFFER_SIZE))
    flow: FlowConfig = field(default_factory=FlowConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 2
    log_every: int = 1
    metrics_flush_every: int = 10  # MLflow: per-step metrics written in one batch every N steps (and at checkpoints)
    init: str = ""  # fine-tune from this model directory
    lora_rank: int = 0  # > 0: train LoRA adapters on the attention projections only
    lora_alpha: float = 8.0
    threads: int = 0  # torch intra-op threads per worker; 0: the node's CPUs shared among its workers
    cache_mb: float = 1024.0  # shard sets up to this size are cached in the Ray object store (no re-read per epoch)
    worker_cache_mb: float = 128.0  # shard sets up to this size: each worker keeps its decoded split after epoch 0
    log_samples: bool = False  # write the ids of every consumed clip to <run_dir>/samples_rank<r>.jsonl

    def __post_init__(self) -> None:
        known = {f.name for f in fields(ModelConfig)}
        if unknown := sorted(set(self.model_overrides) - known):
            raise InputError(f"{unknown}: not ModelConfig fields; use some of {sorted(known)}",
                             source="--model-overrides")  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> TrainJobConfig:
        """The config of ``d``: the nested form of :meth:`to_dict`, or the flat keys of before the sections (``lr``,
        ``batch_size``, ``eval_every``, ...; a ``flow`` dict), or both."""
        d = dict(d)
        sections = {}
        for name, (kind, flat) in _SECTIONS.items():
            part = d.pop(name, None)
            part = dict(part) if isinstance(part, dict) else ({} if part is None else asdict(part))
            for old, new in flat.items():
                if old in d:
                    part.setdefault(new, d.pop(old))
            if name == "sampler":
                part = {"buffer_size": BUFFER_SIZE, **part}
            sections[name] = kind(**part)
        return cls(**d, **sections)

    @property
    def device(self) -> Device:
        """Where each worker trains (``use_gpu``: the GPU Ray Train gave it, bf16): :mod:`vssflow.device`."""
        return Device("cuda" if self.use_gpu else "cpu")

    def model_config(self) -> ModelConfig:
        """The preset (or, when fine-tuning, the ``init`` model's own config) with ``model_overrides`` applied."""
        if self.init:
            from vssflow.model_dir import read_model_config

            return ModelConfig.from_dict(read_model_config(self.init)["model"]).replace(**self.model_overrides)
        return PRESETS[self.preset].replace(**self.model_overrides)

    def sampling_config(self):
        """The sampling defaults saved with the model: plain guidance for the paper preset (the paper), rescaled
        guidance (:func:`vssflow.flow.rescale_guidance`) for the small presets, whose plain CFG overshoots the level;
        a velocity model with a phoneme prior starts from N(mu, 0.5^2 I) (Grad-TTS's temperature; on the demo's
        corpus TTS WER 0.91 against 1.08 at 1, V2S class accuracy and onsets unchanged, level -1.1 against -4.0 dB),
        a data-predicting one from mu itself (noise 0: the sample is then one deterministic refinement of the prior's
        estimate, the same for every seed; on a 700-clip corpus, 2000 steps, 40 held-out clips per task, noise
        0 / 0.5 / 1 gave TTS WER 0.65 / 0.75 / 0.91 on unseen sentences, joint 0.78 / 0.87 / 0.97, V2S class
        accuracy 0.81 / 0.79 / 0.78 and onset F1 0.80 / 0.77 / 0.72: the DiT's own detail, drawn from the source
        noise, is what it memorised of the training clips); and the
        small presets compensate the global variance of their samples (``GV_MAX_RATIO``), the paper preset does not.
        Guidance: the paper's 3 for a velocity model, none (1) for a data-predicting one (the small presets: on the
        demo's corpus, 10 unseen sentences, TTS WER 0.52 at 1 against 0.66 at 3 with a speech prior, 0.73 / 0.76
        with a video-seeing one; V2S class accuracy 0.53 both, onset F1 0.71 / 0.73; and one network call a step)."""
        from vssflow.sampling import SamplingConfig

        v = self.validation
        rescale = v.cfg_rescale if v.cfg_rescale is not None else (0.0 if self.preset == "paper" else 1.0)
        model = self.model_config()
        velocity = model.prediction == "velocity"
        noise = (0.5 if velocity else 0.0) if model.prior_layers else 1.0
        gv = 1.0 if self.preset == "paper" else GV_MAX_RATIO
        scale = v.cfg_scale if v.cfg_scale is not None else (3.0 if velocity else 1.0)
        return SamplingConfig(cfg_scale=scale, cfg_rescale=rescale, noise_scale=noise, gv_max_ratio=gv)

    def sampler_config(self) -> SamplerConfig:
        """``sampler`` with the job's seed and the model's phoneme layout."""
        return replace(self.sampler, seed=self.seed, phoneme_layout=self.model_config().phoneme_layout)

    def engine_settings(self) -> EngineSettings:
        """What the engines read (:mod:`pipelines.deepspeed_config`)."""
        return EngineSettings(engine=self.engine, optim=self.optim, batch_size=self.sampler.batch_size,
                              max_steps=self.max_steps, use_gpu=self.use_gpu)  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunContext:
    """What the driver resolved for one run and hands every worker with the job's config (was the ``_run`` dict)."""

    run_dir: str
    codec_dir: str
    lip_dim: int
    out: str | None = None  # the model directory rank 0 writes at the end
    worker_cache: bool = False  # small shard sets: workers keep their split after epoch 0
    extract: dict = field(default_factory=dict)  # the shards' preprocessing config, recorded in the model
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    val_clips: list = field(default_factory=list)  # ClipFeatures sampled for MLflow during training
    resume_checkpoint: str | None = None  # a checkpoint directory to resume from (``--resume``)
    storage_filesystem: object = None  # pyarrow filesystem of resume_checkpoint (None: local)
