"""The DiT configuration: one frozen dataclass whose defaults are the tiny CPU preset, plus named presets.

Placement of each condition (the paper's ablation, Table "cross-attn vs self-attn"):

* ``"cross"``: the condition becomes cross-attention tokens (keys/values, width ``cross_dim``);
* ``"context"``: the condition is resampled to the 25 Hz latent grid and concatenated with the noisy latent along
  channels before the input projection ("in-context", mixed by self-attention).

The speaker embedding is always one cross-attention token. The paper's final model puts semantics in cross-attention
and lip + phonemes in context (the defaults here).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vssflow.constants import LIP_SIZE, MAX_SECONDS, MEL_PER_LATENT, N_MELS, SPEAKER_DIM, latent_frames

PLACEMENTS = ("cross", "context")
FULL_LATENT = MEL_PER_LATENT * N_MELS  # 256: four grouped mel frames, no projection
TIME_CONDITIONING = ("token", "adaln")
FINAL_NORMS = ("layer", "rms")
LIP_INPUTS = ("crops", "features")
PHONEME_LAYOUTS = ("clip", "span", "duration")
PRIOR_INPUTS = ("phonemes", "all", "split")
PREDICTIONS = ("velocity", "data")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of the VSSFlow DiT. Defaults build the tiny preset (trains in minutes on 2 CPU cores).

    Attributes:
        depth: number of DiT blocks.
        width: hidden size of the latent token stream.
        heads: attention heads (self and cross); head size = width // heads.
        cross_dim: width of the cross-attention tokens (semantic frames, speaker, and any condition placed there).
        cross_kv_heads: key/value heads of cross-attention (grouped-query attention); None = ``heads``.
        ff_mult: SwiGLU inner size = ff_mult * width.
        latent_dim: channels of the audio latent (codec: 4 mel frames x 64 bins = 256, or that many principal
            components of them). Never more than ``width``: the output layer maps width -> latent_dim, so a wider
            latent leaves latent_dim - width directions of every sample at their initial noise (checked).
        sem_dim: semantic frame embedding size (MobileNetV2 pooled = 1280, CLIP ViT-B/16 = 768).
        speaker_dim: speaker embedding size.
        lip_input: "crops" = (T, 32, 32) uint8 mouth crops encoded by a small trainable CNN inside the model;
            "features" = (T, lip_feature_dim) float features of a frozen encoder, projected by an MLP.
        lip_feature_dim: size of frozen lip features (only used when lip_input == "features").
        lip_dim: width of the encoded lip stream.
        cnn_channels: channels of the three stride-2 convolutions of the trainable lip and sync encoders (32x32
            frames); a third of the tiny preset's training step went to them at (16, 32, 32).
        sync_dim: width of the encoded sync stream (25 fps frame thumbnails through a trainable CNN, the role of
            the paper's Synchformer features); 0 = the model has no sync input (models saved before it existed).
        phoneme_vocab: size of the phoneme id vocabulary (id 0 = none / padding).
        phoneme_dim: phoneme embedding size.
        sem_placement, phoneme_placement, lip_placement, sync_placement: "cross" or "context" (module docstring).
        phoneme_layout: where in-context phonemes go on the latent grid: "clip" (the paper: stretched uniformly
            over the whole clip), "span" (uniformly over the clip's speech span) or "duration" (over the span, each
            phoneme in proportion to its espeak-ng duration for the transcript).
        time_conditioning: "token" (a prepended time token, as the paper's Stable-Audio backbone; the paper preset)
            or "adaln" (adaLN-Zero, as DiT; the small presets: at equal steps the tiny model's flow loss was lower,
            TTS 0.61 vs 0.64 and V2S 0.45 vs 0.51 after 1100 steps of batch 8).
        final_norm: the norm before the output layer: "rms" (RMSNorm) or "layer" (LayerNorm). LayerNorm removes
            each token's mean, so its output spans width - 1 directions and the head reaches only that many latent
            directions per frame; RMSNorm keeps all ``width`` (the small presets, whose latent is as wide as them).
        prior_layers: residual convolution blocks of the phoneme prior (0 = none: the paper). The prior maps each
            latent frame's phoneme (after the layout) and the speaker to a direct estimate mu of the speech latent,
            trained by regression on the TTS clips, and the flow starts from N(mu, I) instead of N(0, I) (the encoder
            prior of Grad-TTS). At the tiny scale the DiT alone never learned which sound a phoneme makes (its
            conditional mean was unintelligible after 5000 steps); a 3-block prior alone learned it in 1500 steps.
        prior_dim: width of the phoneme prior's convolutions (a probe of the prior alone on the demo's corpus: WER
            0.65 at width 192, 0.47 at 256 on unseen sentences; the tiny preset's prior is 256 wide).
        prior_inputs: what the prior sees: "phonemes" (phonemes + speaker; it estimates speech, trained on TTS clips,
            and only clips with phonemes start from it) or "all" (also the semantic and sync streams; it estimates
            every clip's soundtrack, trained on every clip: the small presets; after 2000 steps on the demo's corpus
            V2S class accuracy 0.49 and onset F1 0.79, against 0.29 / 0.56 with a speech-only prior) or "split" (a
            second, video-blind prior gives the TTS clips' estimate, the video-seeing one the V2S and joint clips';
            measured, not the default: with a data head, no guidance, 2000 steps, 10 held-out clips per task, TTS WER
            0.73 / joint 1.21 / V2S class 0.48, against 0.73 / 0.84 / 0.50 for "all" and 0.55 / 1.33 / 0.37 for
            "phonemes": a speech-only prior generalises best to unseen sentences, and joint clips need the prior that
            also learned from speech).
        prior_dropout: dropout on the input of each of the prior's convolution blocks while training (0 = none).
        prediction: what the output layer predicts: "velocity" (v = x1 - x0, the paper) or "data" (the clean latent
            x1, as a residual on the prior's mu when there is one; the velocity is then (x1_hat - x_t) / (1 - t), with
            1 - t clamped at ``flow.T_CLAMP``). With "data" an untrained or uncertain DiT leaves mu as it is, where a
            velocity DiT has to cancel the source noise itself and its errors land in the sample: on the demo's
            corpus the velocity model's 16-step samples scored TTS WER 1.0 where its own mu alone scored 0.81. Same
            harness (2000 steps of batch 8, 10 held-out clips per task), data vs velocity: TTS WER 0.76 vs 0.89 on
            unseen sentences, joint 0.74 vs 0.98, V2S class accuracy 0.53 vs 0.49, onset F1 0.73 vs 0.77. The small
            presets predict data; the paper preset the velocity.
        rope: fraction of each head's dims that get rotary position embedding (paper: 0.5 = 32 of 64).
        time_freq_dim: size of the sinusoidal timestep features before the time MLP.
        max_seconds: longest clip the model sees at once (longer audio is generated in windows).
    """

    depth: int = 4
    width: int = 128
    heads: int = 4
    cross_dim: int = 128
    cross_kv_heads: int | None = None
    ff_mult: float = 4.0
    latent_dim: int = 128
    sem_dim: int = 1280
    speaker_dim: int = SPEAKER_DIM
    lip_input: str = "crops"
    lip_feature_dim: int = 1024
    lip_dim: int = 32
    cnn_channels: tuple[int, int, int] = (8, 16, 32)
    sync_dim: int = 32
    phoneme_vocab: int = 256
    phoneme_dim: int = 32
    sem_placement: str = "cross"
    phoneme_placement: str = "context"
    lip_placement: str = "context"
    sync_placement: str = "context"
    phoneme_layout: str = "duration"
    time_conditioning: str = "adaln"
    final_norm: str = "rms"
    prior_layers: int = 4
    prior_dim: int = 256
    prior_inputs: str = "all"
    prior_dropout: float = 0.0
    prediction: str = "data"
    rope: float = 0.5
    time_freq_dim: int = 256
    max_seconds: float = MAX_SECONDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "cnn_channels", tuple(int(c) for c in self.cnn_channels))  # JSON gives a list
        if len(self.cnn_channels) != 3 or min(self.cnn_channels) < 1:
            raise ValueError(f"ModelConfig.cnn_channels={self.cnn_channels}; expected three positive channel counts")
        for name in ("sem_placement", "phoneme_placement", "lip_placement", "sync_placement"):
            if getattr(self, name) not in PLACEMENTS:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {PLACEMENTS}")
        if self.time_conditioning not in TIME_CONDITIONING:
            raise ValueError(
                f"ModelConfig.time_conditioning={self.time_conditioning!r}; expected one of {TIME_CONDITIONING}"
            )
        if self.phoneme_layout not in PHONEME_LAYOUTS:
            raise ValueError(f"ModelConfig.phoneme_layout={self.phoneme_layout!r}; expected one of {PHONEME_LAYOUTS}")
        if self.lip_input not in LIP_INPUTS:
            raise ValueError(f"ModelConfig.lip_input={self.lip_input!r}; expected one of {LIP_INPUTS}")
        if self.final_norm not in FINAL_NORMS:
            raise ValueError(f"ModelConfig.final_norm={self.final_norm!r}; expected one of {FINAL_NORMS}")
        reach = self.width - (self.final_norm == "layer")  # directions the output layer can reach per frame
        if self.latent_dim > reach:
            raise ValueError(
                f"ModelConfig: latent_dim {self.latent_dim} > width {self.width}"
                + (" - 1 (LayerNorm before the head)" if self.final_norm == "layer" else "")
                + f": the output layer could reach only {reach} of the latent's {self.latent_dim} directions and the "
                f"rest of every sample would stay noise; use a wider model or a latent of <= {reach} channels "
                "(MelCodec(components=...))"
            )
        if self.width % self.heads:
            raise ValueError(f"ModelConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"ModelConfig: heads {self.heads} is not divisible by cross_kv_heads {self.kv_heads}")
        if not 0.0 <= self.rope <= 1.0:
            raise ValueError(f"ModelConfig.rope={self.rope}; expected a fraction in [0, 1]")
        if self.prior_inputs not in PRIOR_INPUTS:
            raise ValueError(f"ModelConfig.prior_inputs={self.prior_inputs!r}; expected one of {PRIOR_INPUTS}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"ModelConfig.prediction={self.prediction!r}; expected one of {PREDICTIONS}")
        if not 0.0 <= self.prior_dropout < 1.0:
            raise ValueError(f"ModelConfig.prior_dropout={self.prior_dropout}; expected a probability in [0, 1)")
        if self.prior_layers < 0 or (self.prior_layers and self.prior_dim < 1):
            raise ValueError("ModelConfig: prior_layers must be >= 0 and prior_dim >= 1")
        if self.prior_layers and self.phoneme_placement != "context":
            raise ValueError(
                "ModelConfig: the phoneme prior (prior_layers > 0) needs phonemes on the latent grid "
                "(phoneme_placement='context'); set prior_layers=0 for cross-attention phonemes"
            )
        if self.depth < 1 or self.max_seconds <= 0:
            raise ValueError("ModelConfig: depth must be >= 1 and max_seconds > 0")

    # ---- derived sizes -------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads of cross-attention."""
        return self.cross_kv_heads or self.heads

    @property
    def rope_dim(self) -> int:
        """Rotary dims per head (even)."""
        return 2 * int(self.head_dim * self.rope // 2)

    @property
    def ff_inner(self) -> int:
        return int(math.ceil(self.ff_mult * self.width))

    @property
    def max_frames(self) -> int:
        """Latent frames of the longest clip (250 for 10 s)."""
        return latent_frames(self.max_seconds)

    @property
    def lip_frame_shape(self) -> tuple[int, ...]:
        """Shape of one lip frame: (32, 32) crops or (lip_feature_dim,) features."""
        return (LIP_SIZE, LIP_SIZE) if self.lip_input == "crops" else (self.lip_feature_dim,)

    @property
    def context_dim(self) -> int:
        """In-context input channels: noisy latent + every condition placed in context."""
        return (
            self.latent_dim
            + (self.lip_dim if self.lip_placement == "context" else 0)
            + (self.sync_dim if self.sync_placement == "context" else 0)
            + (self.phoneme_dim if self.phoneme_placement == "context" else 0)
            + (self.cross_dim if self.sem_placement == "context" else 0)
            + (self.latent_dim if self.prior_layers else 0)
        )

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Rebuild from ``to_dict()`` output (config.json); an unknown key is an error, a missing one a default
        (except ``sync_dim``, ``phoneme_layout``, ``cnn_channels``, ``final_norm``, ``prior_layers`` and
        ``prediction``: a config written before the sync stream existed describes a model without it, one written
        before phoneme layouts existed spread phonemes over the clip, one written before the CNN width / final norm
        were settings had (16, 32, 32) / LayerNorm, one written before the phoneme prior existed has none, one
        written before ``prediction`` predicted the velocity)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        old = {
            "sync_dim": 0, "phoneme_layout": "clip", "cnn_channels": (16, 32, 32), "final_norm": "layer",
            "prior_layers": 0, "prediction": "velocity",
        }  # fmt: skip
        return cls(**{**old, **d})

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# ---- presets ---------------------------------------------------------------------------------------------------
# The tiny preset is 128 wide: its latent is the 128 principal components of the 256 grouped mel channels
# (MelCodec(components=128), 99+ % of the variance), so the output layer reaches every latent direction.
TINY = ModelConfig()
SMALL = ModelConfig(
    depth=8, width=384, heads=6, cross_dim=256, lip_dim=64, sync_dim=64, latent_dim=FULL_LATENT,
    cnn_channels=(16, 32, 32), prior_dim=256,
)  # fmt: skip
# The paper's backbone size (10 blocks, 24 heads x 64, GQA cross-attention with 12 kv heads of width 768, SwiGLU 4x);
# the condition front-ends follow our features (MobileNetV2 semantics, mouth crops, sync thumbnails), not the
# paper's frozen encoders (CLIP, AV-HuBERT, Synchformer); the sync stream is as wide as the paper's (768).
PAPER = ModelConfig(
    depth=10, width=1536, heads=24, cross_dim=768, cross_kv_heads=12, lip_dim=1024, sync_dim=768,
    latent_dim=FULL_LATENT, phoneme_layout="clip", cnn_channels=(16, 32, 32), time_conditioning="token",
    final_norm="layer", prior_layers=0, prediction="velocity",
)  # fmt: skip

PRESETS: dict[str, ModelConfig] = {"tiny": TINY, "small": SMALL, "paper": PAPER}
