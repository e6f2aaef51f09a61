"""All metrics of one clip in one place: :class:`Reference` (the ground truth) and :class:`MetricSuite`.

Per task (VSSFlow's two tasks and their mixture):

| task  | metrics |
|-------|---------|
| v2s   | onset P/R/F1 (+-1 video frame), AV offset (DeSync-like), class accuracy, KL (classifier posteriors), FD |
| tts   | WER, CER, speaker similarity, MCD-DTW, lip-sync proxy (LSE-C/LSE-D substitute), duration errors, FD |
| joint | all of the above on the mixture |
| all   | level difference to the ground truth (active-region RMS, dB), share of samples at full scale |

Per-clip values come from :meth:`MetricSuite.clip_metrics`; the set-level FD and the means with confidence
intervals (and medians) from :meth:`MetricSuite.aggregate`. Everything is lazy: a metric whose model is not needed
is not loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vssflow.constants import LIP_FPS, SAMPLE_RATE, SOUND_TASKS, SPEECH_TASKS
from vssflow.metrics import duration as dur
from vssflow.metrics.audio_embed import frechet_distance, kl_paired
from vssflow.metrics.lipsync import lipsync_scores, mouth_opening_from_crops
from vssflow.metrics.loudness import loudness_metrics
from vssflow.metrics.mcd import mcd
from vssflow.metrics.onsets import av_offset, onset_prf
from vssflow.metrics.wer import cer, normalize_for_wer, wer

# metric -> True when higher is better (used by reports, the validation and the experiments); the signed metrics of
# CLOSER_TO_ZERO are best at 0 and have no direction (their absolute values are in HIGHER_IS_BETTER)
HIGHER_IS_BETTER = {
    "wer": False, "cer": False, "spk_sim": True, "mcd": False, "lipsync_corr": True, "lipsync_conf": True,
    "lipsync_offset_abs_s": False, "duration_err_s": False, "speech_span_err_s": False, "onset_precision": True,
    "onset_recall": True, "onset_f1": True, "onset_f1_chance": True, "onset_f1_over_chance": True,
    "av_offset_abs_s": False, "av_sync_conf": True, "class_acc": True, "kl": False, "fd": False,
    "level_db_abs": False, "clip_fraction": False, "peak_guarded": False,
}  # fmt: skip
CLOSER_TO_ZERO = ("level_db_diff",)


def better(metric: str) -> str:
    """How a report reads ``metric``: "higher", "lower" or "closer to 0"."""
    if metric in CLOSER_TO_ZERO:
        return "closer to 0"
    return "higher" if HIGHER_IS_BETTER.get(metric, True) else "lower"


@dataclass
class Reference:
    """Ground truth of one clip.

    Attributes:
        clip_id, task, duration_s: as in the manifest / shards.
        wav: (N,) ground-truth audio at 16 kHz (the video's track, or vocoded from the shard's mel when no source).
        transcript: spoken text (speech tasks).
        speaker_ref: the reference voice (N_ref,) waveform or its (256,) embedding (speech tasks).
        events: known sound events [(onset seconds, class)] (sound tasks).
        mouth_opening: (T,) mouth opening at 25 fps (from crops or the synthetic face), for the lip-sync proxy.
        speaker_id: speaker name (used to build "wrong speaker" audio in the validation).
        speech_stem: (N,) the speech alone (joint clips of the synthetic corpus), else None.
    """

    clip_id: str
    task: str
    duration_s: float
    wav: np.ndarray
    transcript: str | None = None
    speaker_ref: np.ndarray | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    mouth_opening: np.ndarray | None = None
    speaker_id: str | None = None
    speech_stem: np.ndarray | None = None

    @staticmethod
    def opening_from_crops(lip: np.ndarray | None) -> np.ndarray | None:
        if lip is None or np.asarray(lip).ndim != 3 or len(lip) < 3:
            return None
        return mouth_opening_from_crops(lip)


def mean_ci(values: Sequence[float | None], *, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t interval at ``level``, n) over the finite values; NaN when there are none,
    a NaN half-width for one value. The one interval of reports and experiments: they average a few clips or seeds,
    where the normal approximation (z = 1.96) is too narrow (three values: t = 4.30)."""
    from scipy.stats import t as student_t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    if len(v) == 1:
        return float(v[0]), float("nan"), 1
    q = float(student_t.ppf(0.5 + level / 2, df=len(v) - 1))
    return float(v.mean()), float(q * v.std(ddof=1) / math.sqrt(len(v))), len(v)


class MetricSuite:
    """The evaluation models, loaded on first use, and the per-clip metrics.

    Args:
        asr: "auto" / "whisper" / "pocketsphinx", or a loaded ASR object.
        embedding: "whisper-base" or "torchscript:/path" (see :mod:`vssflow.metrics.audio_embed`), or an object.
        classifier: path of a saved sound classifier (default: cached, trained on the corpus sounds if absent).
        threads: CPU threads of the Whisper runtime.
    """

    def __init__(self, *, asr="auto", embedding="whisper-base", classifier: str | None = None, threads: int = 1):
        self._asr_spec, self._emb_spec, self._clf_spec, self.threads = asr, embedding, classifier, threads
        self._asr = asr if not isinstance(asr, str) else None
        self._emb = embedding if not isinstance(embedding, str) else None
        self._clf = None

    @property
    def asr(self):
        if self._asr is None:
            from vssflow.metrics.asr import load_asr

            self._asr = load_asr(self._asr_spec, threads=self.threads)
        return self._asr

    @property
    def embedding(self):
        if self._emb is None:
            from vssflow.metrics.audio_embed import load_audio_embedding

            shared = self.asr if self._emb_spec in ("whisper-base", "whisper") and hasattr(self.asr, "encode") else None
            self._emb = load_audio_embedding(self._emb_spec, asr=shared)
        return self._emb

    @property
    def classifier(self):
        if self._clf is None:
            from vssflow.metrics.classifier import load_or_train

            self._clf = load_or_train(self._clf_spec)
        return self._clf

    def describe(self) -> dict:
        """What measured what (goes into every report)."""
        return {
            "asr": getattr(self.asr, "name", str(self._asr_spec)),
            "fd_embedding": f"FD-{self.embedding.name}",
            "kl_posteriors": "corpus sound-class classifier (KL(real || generated) of its posteriors per clip)",
            "speaker": "Resemblyzer GE2E (vssflow.features.speaker)",
            "lipsync": "mouth-opening/speech-energy correlation (LSE-C/LSE-D substitute, not SyncNet)",
            "classifier": f"softmax regression on log-mel stats ({self.classifier.feature_version}), "
            f"classes {list(self.classifier.classes)}",
        }

    # ---- per clip ----------------------------------------------------------------------------------------------
    def clip_metrics(self, wav: np.ndarray, ref: Reference, *, with_embedding: bool = True) -> dict:
        """Every metric of ``ref.task`` for generated (or test) audio ``wav`` (N,) 16 kHz.

        Returns:
            {metric: float} plus "embedding" (D,) and "class_probs" (K,) arrays when applicable, and
            "hypothesis" (the ASR text) for speech tasks.
        """
        wav = np.asarray(wav, np.float32).reshape(-1)
        out: dict = loudness_metrics(wav, ref.wav)
        if ref.task in SPEECH_TASKS and ref.transcript:
            hyp = self.asr.transcribe(wav)
            out["hypothesis"] = hyp
            if normalize_for_wer(ref.transcript):
                out["wer"] = wer(ref.transcript, hyp)
                out["cer"] = cer(ref.transcript, hyp)
        if ref.task in SPEECH_TASKS:
            if ref.speaker_ref is not None:
                from vssflow.metrics.speaker import speaker_similarity

                out["spk_sim"] = speaker_similarity(wav, ref.speaker_ref)
            out["mcd"] = mcd(wav, ref.wav)
            if ref.mouth_opening is not None:
                out.update(lipsync_scores(ref.mouth_opening, wav, fps=LIP_FPS))
            out.update(dur.duration_error(wav, ref.wav, expected_s=ref.duration_s))
        if ref.task in SOUND_TASKS and ref.events:
            times = [t for t, _ in ref.events]
            out.update(onset_prf(wav, times))
            out.update(av_offset(wav, times))
            from vssflow.metrics.classifier import class_accuracy

            out["class_acc"] = class_accuracy(self.classifier, wav, ref.events)
            out["class_probs"] = self.classifier.event_probs(wav, times).mean(0)
        if with_embedding:
            out["embedding"] = self.embedding.embed([wav])[0]
        return out

    # ---- over a set ----------------------------------------------------------------------------------------
    @staticmethod
    def aggregate(gen: list[dict], real: list[dict] | None = None) -> dict:
        """Means with 95 % intervals and medians of every scalar metric; FD and paired KL when ``real`` (same clips)
        is given.

        Args:
            gen: clip_metrics of the generated audio, one per clip.
            real: clip_metrics of the ground-truth audio of the same clips (for FD / KL), or None.
        """
        keys = sorted({k for m in gen for k, v in m.items() if isinstance(v, float | int) and not isinstance(v, bool)})
        out = {}
        for k in keys:
            values = [m.get(k, float("nan")) for m in gen]
            mean, half, n = mean_ci(values)
            out[k] = {"mean": mean, "ci95": half, "n": n, "median": median(values)}
        if real is not None:
            pairs = [(r, g) for r, g in zip(real, gen, strict=True) if "embedding" in r and "embedding" in g]
            if len(pairs) >= 2:
                real_e = np.stack([r["embedding"] for r, _ in pairs])
                fd = frechet_distance(real_e, np.stack([g["embedding"] for _, g in pairs]))
                out["fd"] = {"mean": fd, "ci95": float("nan"), "n": len(pairs)}
            kl_pairs = [(r, g) for r, g in zip(real, gen, strict=True) if "class_probs" in r and "class_probs" in g]
            if kl_pairs:
                p_real = np.stack([r["class_probs"] for r, _ in kl_pairs])
                kl = kl_paired(p_real, np.stack([g["class_probs"] for _, g in kl_pairs]))
                mean, half, n = mean_ci(kl.tolist())
                out["kl"] = {"mean": mean, "ci95": half, "n": n}
        return out


def median(values: Sequence[float]) -> float:
    """Median of the finite values (NaN when none)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else float("nan")


def silence_like(wav: np.ndarray) -> np.ndarray:
    """Digital near-silence of the same length (a faint noise floor, -80 dBFS)."""
    return np.random.default_rng(0).normal(0, 1e-4, len(wav)).astype(np.float32)


def shift(wav: np.ndarray, seconds: float = 0.2) -> np.ndarray:
    """``wav`` delayed by ``seconds`` (zeros in front, the end cut): same length."""
    k = int(round(seconds * SAMPLE_RATE))
    return np.concatenate([np.zeros(k, np.float32), np.asarray(wav, np.float32)[: len(wav) - k]])
