"""Sampling options: the defaults of :meth:`vssflow.generator.Generator.generate`, saved with each model.

A model directory's ``config.json`` records them (its ``sampling`` key); ``Generator.from_pretrained`` rebuilds them
here, so a bad value in a file is refused at load with the same one-line error as in code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vssflow.errors import InputError

GV_MODES = ("level", "latent")


@dataclass(frozen=True)
class SamplingConfig:
    """Defaults for :meth:`Generator.generate` (overridable per call).

    Attributes:
        steps: solver steps (Euler / midpoint) or the first step 1/steps (dopri5).
        cfg_scale: classifier-free guidance scale (paper: 3; 1 = no guidance, one network call per step).
        method: "euler", "midpoint" or "dopri5".
        window_overlap_s: overlap of consecutive windows when a clip is longer than the model window.
        cfg_rescale: weight of guidance rescaling (:func:`vssflow.flow.rescale_guidance`; 0 = the paper's plain
            guidance, which overshoots the level at scale 3).
        noise_scale: standard deviation of the noise the flow starts from (1 = as trained; below 1 a model with a
            phoneme prior starts nearer its estimate mu, Grad-TTS's temperature: it samples with 1 / 1.5).
        gv_max_ratio: global-variance compensation of each generated clip's latent toward the codec's natural
            variance for the clip's task (:func:`vssflow.audio.codec.match_global_variance`), by at most this
            factor; 1 = off (the paper; also any codec without the statistics).
        gv_mode: what of the compensation reaches the sample: "level" (the default: only the loudness the
            compensated spectrum would have, as one gain on the clip's log-mel: the spectral shape stays the model's)
            or "latent" (the compensated latent itself). On the demo's corpus (10 unseen sentences, no guidance)
            "latent" brought the TTS level from -3.6 to -0.5 dB but its WER from 0.52 to 0.80: it also amplifies
            the model's spectral errors.
    """

    steps: int = 16
    cfg_scale: float = 3.0
    method: str = "euler"
    window_overlap_s: float = 1.0
    cfg_rescale: float = 0.0
    noise_scale: float = 1.0
    gv_max_ratio: float = 1.0
    gv_mode: str = "level"

    def __post_init__(self) -> None:
        if self.gv_mode not in GV_MODES:
            raise InputError(f"gv_mode: expected one of {GV_MODES}, got {self.gv_mode!r}")
        if not (math.isfinite(self.gv_max_ratio) and 1.0 <= self.gv_max_ratio <= 10.0):
            raise InputError(f"gv_max_ratio: expected a factor in [1, 10] (1 = off), got {self.gv_max_ratio}")
        if not (math.isfinite(self.noise_scale) and 0.0 <= self.noise_scale <= 2.0):
            raise InputError(f"noise_scale: expected a noise standard deviation in [0, 2], got {self.noise_scale}")
