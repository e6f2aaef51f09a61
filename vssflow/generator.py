"""The one ``generate()`` every front end calls (CLI, Serve, batch jobs, evaluation).

A generator is saved to and loaded from a self-describing model directory (:mod:`vssflow.model_dir`:
:meth:`Generator.save_pretrained`, :meth:`Generator.from_pretrained`).

Shape legend: B batch, N latent frames (25 Hz), C latent channels, T_mel mel frames (100 fps), L samples (16 kHz).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vssflow import flow
from vssflow.audio.codec import LatentCodec, MelCodec
from vssflow.audio.vocoder import Vocoder, load_vocoder
from vssflow.constants import LATENT_HZ, MEL_FPS, SAMPLE_RATE, latent_frames
from vssflow.errors import AssetError, InputError
from vssflow.model import ConditionDrop, Conditions, ModelConfig, VSSFlowDiT, collate
from vssflow.model_dir import load_model_dir, save_model_dir
from vssflow.postfilter import peak_guard, postfilter
from vssflow.sampling import SamplingConfig
from vssflow.types import ClipFeatures
from vssflow.windows import slice_features, window_starts


class Generator:
    """VSSFlow generator: DiT + latent codec + vocoder.

    Args:
        model_config: the DiT configuration (see :data:`vssflow.model.PRESETS`).
        codec: latent codec; default an unfitted :class:`MelCodec` (fit its statistics before training).
        vocoder: mel -> waveform; default Griffin-Lim.
        device: "cpu" or "cuda".
        dtype: compute dtype of the DiT (torch.bfloat16 on GPU; float32 on CPU).
        sampling: default sampling options.
    """

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        *,
        codec: LatentCodec | None = None,
        vocoder: Vocoder | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        sampling: SamplingConfig = SamplingConfig(),
        model: VSSFlowDiT | None = None,
    ):
        self.config = model_config or (model.cfg if model is not None else ModelConfig())
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = (model or VSSFlowDiT(self.config)).to(self.device, dtype).eval()
        self.codec = (codec or MelCodec.for_latent_dim(self.config.latent_dim)).to(self.device)
        if self.codec.latent_dim != self.config.latent_dim:
            raise AssetError(
                f"codec has {self.codec.latent_dim} latent channels but the model expects {self.config.latent_dim}; "
                "build the model with latent_dim=codec.latent_dim"
            )
        self.vocoder = (vocoder or load_vocoder(None)).to(self.device)
        self.sampling = sampling
        self.peak_guarded = 0  # clips the last guard against clipping scaled down (see peak_guard)
        self.step = 0
        self.info: dict[str, Any] = {}
        self._extractors = None  # loaded on first use (the extractors property)
        self._flow = None  # the compiled network (compile()); None = eager

    def compile(self, *, mode: str | None = None) -> Generator:
        """Run the DiT of every later generation through ``torch.compile`` at fixed bucket shapes
        (:class:`vssflow.compiled.CompiledFlow`): the first call at each (batch, length bucket) compiles (seconds to
        a minute), later ones at that shape are faster on a GPU. The output equals eager generation up to float
        rounding. Needs a C++ compiler on the CPU (and Triton on a GPU). Returns self."""
        from vssflow.compiled import CompiledFlow

        self._flow = CompiledFlow(self.model, mode=mode)
        return self

    @property
    def compiled(self) -> bool:
        """Whether generation runs the compiled network (:meth:`compile`)."""
        return self._flow is not None

    # ---- generation ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        features: ClipFeatures | Sequence[ClipFeatures],
        *,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | Sequence[int] = 0,
        method: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Generate the soundtrack of one clip (or a batch of clips).

        Args:
            features: conditions of the clip(s); ``duration_s`` sets the output length. Clips longer than the model
                window are generated in overlapping windows and crossfaded.
            steps, cfg, method: sampling options (defaults from ``self.sampling``); cfg is the guidance scale.
            seed: one seed, or one per clip. A clip's audio depends only on its features, options and seed, not on
                the other clips of the batch.
            progress: called as ``progress(done, total)`` after each solver step, counted over the whole call (every
                clip and every window of a long clip); not called by the adaptive dopri5.

        Returns:
            float32 waveform (L,) at 16 kHz with L = round(duration_s * 16000), or a list of them for a batch.
        """
        single = isinstance(features, ClipFeatures)
        clips = [features] if single else list(features)
        if not clips:
            return []
        seeds = [int(seed)] * len(clips) if isinstance(seed, int | np.integer) else [int(s) for s in seed]
        if len(seeds) != len(clips):
            raise InputError(f"seed: got {len(seeds)} seeds for {len(clips)} clips; give one seed or one per clip")
        steps, cfg, method = self.check(steps=steps, cfg=cfg, method=method)
        wavs: list[np.ndarray | None] = [None] * len(clips)
        short = [i for i, c in enumerate(clips) if latent_frames(c.duration_s) <= self.config.max_frames]
        long = [i for i in range(len(clips)) if i not in short]
        if progress is not None:  # one integration for the short clips, one per window of each long clip
            runs = (1 if short else 0) + sum(len(self.windows(clips[i].duration_s)) for i in long)
            progress = _over_the_call(progress, runs * steps * (2 if method == "midpoint" else 1))
        if short:
            out = self._generate_batch(
                [clips[i] for i in short], [seeds[i] for i in short], steps, cfg, method, progress
            )
            for i, w in zip(short, out, strict=True):
                wavs[i] = w
        for i in long:
            wavs[i] = self._generate_long(clips[i], seeds[i], steps, cfg, method, progress)
        return wavs[0] if single else wavs

    def generate_for_video(
        self,
        video: str | os.PathLike,
        *,
        task: str,
        transcript: str | None = None,
        reference_voice: str | os.PathLike | np.ndarray | None = None,
        speech_span: str | Sequence[float] | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 0,
        method: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """The soundtrack of a video, of any length, with or without an audio track of its own: its conditions by
        :func:`vssflow.inference.prepare` with this model's extractors (:attr:`extractors`), then :meth:`generate`.

        Args:
            video: the video file.
            task, transcript, reference_voice, speech_span: see :func:`vssflow.inference.prepare`.
            steps, cfg, seed, method, progress: see :meth:`generate`.

        Returns:
            float32 waveform (L,) at 16 kHz, as long as the video.

        Raises:
            InputError subclasses (bad video, transcript, reference voice, span or sampling option), one line each;
            the request and the options are checked before any decoding.
        """
        from vssflow.inference import prepare

        self.check(steps=steps, cfg=cfg, method=method)
        features = prepare(
            video, task=task, transcript=transcript, reference_voice=reference_voice, speech_span=speech_span,
            extractors=self.extractors,
        )  # fmt: skip
        return self.generate(features, steps=steps, cfg=cfg, seed=seed, method=method, progress=progress)

    @property
    def extractors(self):
        """The feature extractors this model was trained with (:func:`vssflow.inference.load_extractors_for`),
        loaded on first use and kept."""
        if self._extractors is None:
            from vssflow.inference import load_extractors_for

            self._extractors = load_extractors_for(self, device=str(self.device))
        return self._extractors

    def check(
        self,
        features: ClipFeatures | Sequence[ClipFeatures] | None = None,
        *,
        steps: int | None = None,
        cfg: float | None = None,
        method: str | None = None,
    ) -> tuple[int, float, str]:
        """Check sampling options, and clips when given, against this model before any work is done.

        Args:
            features: clip(s) whose conditions must fit the model (shapes, rates, task, phoneme ids); a clip longer
                than the model window is checked on its first window.
            steps, cfg, method: sampling options; None = this model's default (``self.sampling``).

        Returns:
            (steps, cfg, method) as :meth:`generate` will use them.

        Raises:
            InputError (FeatureShapeError, ...), one line naming the option or the feature.
        """
        steps = self.sampling.steps if steps is None else int(steps)
        cfg = self.sampling.cfg_scale if cfg is None else float(cfg)
        method = method or self.sampling.method
        if steps < 1 or steps > 1000:
            raise InputError(f"steps: expected 1..1000 solver steps, got {steps}")
        if not (math.isfinite(cfg) and 0.0 <= cfg <= 20.0):
            raise InputError(f"cfg: expected a guidance scale in [0, 20], got {cfg}")
        if method not in flow.METHODS:
            raise InputError(f"method: expected one of {flow.METHODS}, got {method!r}")
        clips = [] if features is None else [features] if isinstance(features, ClipFeatures) else list(features)
        for clip in clips:
            if latent_frames(clip.duration_s) > self.config.max_frames:
                clip = slice_features(clip, 0.0, self.config.max_frames / LATENT_HZ, layout=self.config.phoneme_layout)
            collate([clip], self.config)
        return steps, cfg, method

    def windows(self, duration_s: float) -> list[tuple[float, float]]:
        """The (start, end) seconds of the windows :meth:`generate` cuts a clip of ``duration_s`` into: one for a
        clip within the model window, else windows of the model's length overlapping by
        ``sampling.window_overlap_s`` (at most a quarter of the window), crossfaded over the overlap."""
        win = self.config.max_frames / LATENT_HZ  # the model window in seconds, on the latent grid
        if latent_frames(duration_s) <= self.config.max_frames:
            return [(0.0, float(duration_s))]
        starts = window_starts(duration_s, win, self._overlap())
        return [(s, min(s + win, duration_s)) for s in starts]

    def _overlap(self) -> float:
        return min(self.sampling.window_overlap_s, self.config.max_frames / LATENT_HZ / 4)

    def sample_latents(
        self,
        clips: Sequence[ClipFeatures],
        seeds: Sequence[int],
        *,
        steps: int,
        cfg: float,
        method: str = "euler",
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Integrate the flow for a batch of clips that fit the model window.

        Returns:
            (x1 (B, N, C) latents, n_frames (B,), nfe).
        """
        cond = collate(clips, self.config).to(self.device)
        b, n = cond.batch_size, cond.n_latent
        # Per-clip noise from its own seed, drawn at its own length: padding does not change a clip's noise. The
        # solver's state stays fp32 whatever the compute dtype (bf16 on a GPU): the network runs in self.dtype,
        # its velocity is added to an fp32 x (16-32 bf16 additions would round x at every step).
        x0 = torch.zeros(b, n, self.config.latent_dim, device=self.device, dtype=torch.float32)
        for i, s in enumerate(seeds):
            g = torch.Generator(device="cpu").manual_seed(int(s))
            ni = int(cond.n_frames[i])
            x0[i, :ni] = torch.randn(ni, self.config.latent_dim, generator=g).to(self.device)
        x0 = x0 * self.sampling.noise_scale
        conditions = self.model.preprocess_conditions(cond)
        if conditions.prior is not None:  # a model with a phoneme prior starts its flow from N(mu, I)
            x0 = x0 + conditions.prior.float() * cond.frame_mask[..., None].float()
        net = self._flow or self.model.predict_flow
        if cfg != 1.0:
            uncond = self.model.preprocess_conditions(cond, ConditionDrop.all(b, self.device))
            both = Conditions.cat([conditions, uncond])

            def joint_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return net(x.to(self.dtype), t, both).float()

        def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return net(x.to(self.dtype), t, conditions).float()

        rescale = self.sampling.cfg_rescale
        velocity = cond_fn if cfg == 1.0 else flow.cfg_velocity_batched(joint_fn, cond_fn, cfg, rescale=rescale)
        calls = [0]
        total = steps * (2 if method == "midpoint" else 1)

        def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = velocity(x, t)
            calls[0] += 1
            if progress is not None and method != "dopri5":
                progress(min(calls[0], total), total)
            return v

        x1, nfe = flow.sample(counted, x0, steps=steps, method=method, mask=cond.frame_mask)
        return x1.float(), cond.n_frames, nfe

    def postfilter(
        self, x1: torch.Tensor, n_frames: torch.Tensor, tasks: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`vssflow.postfilter.postfilter` with this generator's codec and sampling options: sampled latents
        (B, N, C) -> (latents, gain (B,)), the gain being what :meth:`decode` adds to each clip's log-mel."""
        return postfilter(x1, n_frames, tasks, codec=self.codec, sampling=self.sampling)

    def decode(
        self, x1: torch.Tensor, n_frames: torch.Tensor, durations: Sequence[float], gain: torch.Tensor | None = None
    ) -> list[np.ndarray]:
        """Latents (B, N, C) -> waveforms, each trimmed to its clip's duration; ``gain`` (B,) is added to each
        clip's log-mel first (:meth:`postfilter`).

        Clips with the same number of latent frames are decoded and vocoded as one tensor batch, without the
        padding of longer clips: a clip's audio does not depend on the other clips of the batch.
        """
        lengths: dict[int, list[int]] = {}
        for i, n in enumerate(n_frames.tolist()):
            lengths.setdefault(int(n), []).append(i)
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(durations)
        for n, idx in lengths.items():
            mel = self.codec.decode(x1[idx, :n])  # (b, 4n, 64)
            if gain is not None:
                mel = mel + gain[idx].to(mel)[:, None, None]
            wav = self.vocoder(mel).float().cpu().numpy()  # (b, 4n * 160)
            for j, i in enumerate(idx):
                n_samples = int(round(durations[i] * SAMPLE_RATE))
                w = wav[j, :n_samples]
                if w.shape[0] < n_samples:  # duration not on the 40 ms grid: decode repeats the last latent frame
                    w = np.pad(w, (0, n_samples - w.shape[0]))
                w = np.ascontiguousarray(w, dtype=np.float32)
                out[i] = peak_guard(w)
                self.peak_guarded += int(out[i] is not w)
        return out

    @torch.no_grad()
    def reconstruct(self, mel: np.ndarray | torch.Tensor, duration_s: float | None = None) -> np.ndarray:
        """A log-mel through this generator's codec and vocoder (the same :meth:`decode` as generation): what the
        model's output would sound like if the DiT predicted the latents exactly, its ceiling.

        Args:
            mel: (T_mel, 64) log-mel at 100 fps (a clip's ``mel`` feature, or ``log_mel`` of its audio).
            duration_s: output length in seconds (default T_mel / 100).

        Returns:
            float32 waveform (L,) at 16 kHz, L = round(duration_s * 16000).
        """
        m = torch.as_tensor(mel, dtype=torch.float32, device=self.device)[None]  # (1, T_mel, 64)
        x1 = self.codec.encode(m)  # (1, N, C)
        duration = m.shape[1] / MEL_FPS if duration_s is None else float(duration_s)
        return self.decode(x1, torch.tensor([x1.shape[1]]), [duration])[0]

    def _generate_batch(self, clips, seeds, steps, cfg, method, progress) -> list[np.ndarray]:
        x1, n_frames, _ = self.sample_latents(clips, seeds, steps=steps, cfg=cfg, method=method, progress=progress)
        x1, gain = self.postfilter(x1, n_frames, [c.task for c in clips])
        return self.decode(x1, n_frames, [c.duration_s for c in clips], gain)

    def _generate_long(self, clip: ClipFeatures, seed: int, steps, cfg, method, progress) -> np.ndarray:
        """Overlapping windows of the model's length (:meth:`windows`), crossfaded linearly over the overlap."""
        windows = self.windows(clip.duration_s)
        n_total = int(round(clip.duration_s * SAMPLE_RATE))
        out = np.zeros(n_total, dtype=np.float32)
        weight = np.zeros(n_total, dtype=np.float32)
        fade = int(round(self._overlap() * SAMPLE_RATE))
        for k, (start, end) in enumerate(windows):
            part = slice_features(clip, start, end, layout=self.config.phoneme_layout)
            wav = self._generate_batch([part], [seed + k], steps, cfg, method, progress)[0]
            a = int(round(start * SAMPLE_RATE))
            wav = wav[: n_total - a]
            ramp = np.ones(len(wav), dtype=np.float32)
            if k > 0 and fade:
                ramp[:fade] = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)[: len(wav)]
            if k < len(windows) - 1 and fade:
                ramp[-fade:] = np.minimum(ramp[-fade:], np.linspace(1.0, 0.0, fade, dtype=np.float32))
            out[a : a + len(wav)] += ramp * wav
            weight[a : a + len(wav)] += ramp
        return out / np.maximum(weight, 1e-6)

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | os.PathLike, *, ema_state: dict[str, torch.Tensor] | None = None, **info: Any
    ) -> Path:
        """Write the model directory in one atomic step (:func:`vssflow.model_dir.save_model_dir`): ``directory``
        becomes a symlink to a new hidden version beside it, fsynced before the switch; a kill at any moment leaves
        the previous model or the new one. ``config.json`` records the sha256 of every other file, checked at load.

        Args:
            directory: target; replaced if it exists.
            ema_state: EMA weights to store next to the raw weights (same keys as ``model.state_dict()``).
            info: extra JSON-serialisable facts to record (e.g. data version, extractor names, MLflow run id).
        """
        return save_model_dir(
            directory, model=self.model, config=self.config, codec=self.codec, sampling=self.sampling,
            step=self.step, info={**self.info, **info}, ema_state=ema_state,
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        use_ema: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        vocoder: str | os.PathLike | Vocoder | None = None,
    ) -> Generator:
        """Load a model directory written by :meth:`save_pretrained` (:func:`vssflow.model_dir.load_model_dir`).

        Args:
            use_ema: load the EMA weights when the directory has them.
            vocoder: None (Griffin-Lim), a HiFi-GAN directory, or a Vocoder instance.
        """
        saved = load_model_dir(directory, use_ema=use_ema)
        voc = vocoder if isinstance(vocoder, Vocoder) else load_vocoder(vocoder)
        gen = cls(
            saved.config,
            codec=saved.codec,
            vocoder=voc,
            device=device,
            dtype=dtype,
            sampling=saved.sampling,
            model=saved.model,
        )
        gen.step = saved.step
        gen.info = dict(saved.info)
        return gen


def _over_the_call(progress: Callable[[int, int], None], total: int) -> Callable[[int, int], None]:
    """``progress(done, total)`` of one integration -> ``progress(done, total)`` over every integration of a call."""
    base = [0]

    def step(done: int, run_total: int) -> None:
        progress(min(base[0] + done, total), total)
        if done == run_total:  # the integration's last step: the next one counts on from here
            base[0] += run_total

    return step
