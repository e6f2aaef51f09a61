"""Deliberately broken audio for validating the metrics, and the separation check.

Every metric is first run on the ground truth and on these versions of it; a metric is trusted only if it scores
the ground truth clearly better than the breakages it is meant to catch (:data:`EXPECTED`):

* ``silence``: a -80 dBFS noise floor;
* ``shift200``: the ground truth delayed by 200 ms;
* ``wrong_speaker`` (speech): the transcript spoken by another espeak-ng voice, at the same start;
* ``wrong_words`` (speech): another sentence in the clip's own voice, at the same start;
* ``wrong_sound`` (sound): other classes' recordings at the same event times.

Timing metrics are *meant* to ignore voice and words, and WER/speaker metrics to ignore a 200 ms shift; the table
lists only the separations each metric is designed for, and the report shows every cell anyway.
"""

from __future__ import annotations

import numpy as np

from vssflow.constants import SAMPLE_RATE, SOUND_TASKS, SPEECH_TASKS
from vssflow.metrics.duration import frame_db
from vssflow.metrics.suite import HIGHER_IS_BETTER, Reference, shift, silence_like

PERTURBATIONS = ("silence", "shift200", "wrong_speaker", "wrong_words", "wrong_sound")

# metric -> the perturbations it must separate from the ground truth
EXPECTED: dict[str, tuple[str, ...]] = {
    "wer": ("silence", "wrong_words"),
    "cer": ("silence", "wrong_words"),
    "spk_sim": ("silence", "wrong_speaker"),
    "mcd": ("silence", "wrong_speaker", "wrong_words"),
    "lipsync_corr": ("silence", "shift200"),
    "lipsync_offset_abs_s": ("silence", "shift200"),
    "speech_span_err_s": ("silence",),
    "onset_f1": ("silence", "shift200"),
    "av_offset_abs_s": ("silence", "shift200"),
    "class_acc": ("silence", "wrong_sound"),
    "kl": ("silence", "wrong_sound"),
    "fd": ("silence", "wrong_sound"),
    "level_db_abs": ("silence",),
}
MARGIN = {"wer": 0.2, "cer": 0.1, "spk_sim": 0.05, "mcd": 1.0, "lipsync_corr": 0.1, "lipsync_offset_abs_s": 0.08,
          "speech_span_err_s": 0.2, "onset_f1": 0.2, "av_offset_abs_s": 0.08, "class_acc": 0.2, "kl": 0.1,
          "fd": 1e-6, "level_db_abs": 3.0}  # fmt: skip


def _speech_start(wav: np.ndarray) -> float:
    db = frame_db(wav)
    active = np.flatnonzero(db > db.max() - 30.0)
    return float(active[0] * 0.01) if len(active) else 0.0


def _place(x: np.ndarray, n: int, start: float, peak: float) -> np.ndarray:
    out = np.zeros(n, np.float32)
    s = int(round(start * SAMPLE_RATE))
    k = max(0, min(len(x), n - s))
    out[s : s + k] = x[:k] * peak / max(1e-6, float(np.abs(x).max()))
    return out


def _voice_index(speaker_id: str | None) -> int | None:
    if speaker_id and speaker_id.startswith("espeak-"):
        try:
            return int(speaker_id.split("-")[1])
        except ValueError:
            return None
    return None


def perturb(ref: Reference, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The broken versions of ``ref.wav`` that apply to its task ({name: (N,) float32}).

    Speech breakages need an espeak-ng speaker (``speaker_id`` "espeak-NN") and are skipped otherwise; in joint
    clips the sound-effect part (ground truth minus the speech stem) is kept under the new speech.
    """
    from vssflow.synth import espeak
    from vssflow.synth.sentences import SENTENCES, SPEAKERS

    wav = np.asarray(ref.wav, np.float32)
    n = len(wav)
    rng = np.random.default_rng(seed)
    out = {"silence": silence_like(wav), "shift200": shift(wav, 0.2)}
    k = _voice_index(ref.speaker_id)
    if ref.task in SPEECH_TASKS and ref.transcript and k is not None and espeak.available():
        speech = ref.speech_stem if ref.speech_stem is not None else wav
        rest = wav - speech if ref.speech_stem is not None else np.zeros_like(wav)
        start, peak = _speech_start(speech), float(np.abs(speech).max())
        other_voice = SPEAKERS[(k + 1 + int(rng.integers(len(SPEAKERS) - 1))) % len(SPEAKERS)]
        texts = [s for s in SENTENCES if s.lower() != ref.transcript.lower()]
        other_text = texts[int(rng.integers(len(texts)))]
        out["wrong_speaker"] = rest + _place(espeak.synthesize(ref.transcript, other_voice).audio, n, start, peak)
        out["wrong_words"] = rest + _place(espeak.synthesize(other_text, SPEAKERS[k]).audio, n, start, peak)
    if ref.task in SOUND_TASKS and ref.events:
        from vssflow.synth import assets
        from vssflow.synth.sounds import CLASS_NAMES

        sound = wav - ref.speech_stem if ref.speech_stem is not None else wav
        speech = wav - sound
        new = np.zeros(n, np.float32)
        for t, c in ref.events:
            other = CLASS_NAMES[(CLASS_NAMES.index(c) + 1 + int(rng.integers(len(CLASS_NAMES) - 1))) % len(CLASS_NAMES)]
            x = assets.event_sound(other).audio
            s = int(round(t * SAMPLE_RATE))
            k2 = max(0, min(len(x), n - s))
            new[s : s + k2] += x[:k2]
        new *= float(np.abs(sound).max()) / max(1e-6, float(np.abs(new).max()))
        out["wrong_sound"] = speech + new
    return out


def separation_table(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, dict]]:
    """Which expected separations hold.

    Args:
        scores: {variant ("ground_truth" or a perturbation): {metric: mean value over clips}}.

    Returns:
        {metric: {perturbation: {"gt": v, "broken": v, "expected": bool, "separates": bool}}} for every metric and
        perturbation present; ``separates`` means the ground truth is better by at least the metric's margin.
    """
    gt = scores.get("ground_truth", {})
    table: dict[str, dict[str, dict]] = {}
    for metric, g in gt.items():
        if metric not in HIGHER_IS_BETTER or g is None or not np.isfinite(g):
            continue
        for p in PERTURBATIONS:
            b = scores.get(p, {}).get(metric)
            if b is None or not np.isfinite(b):
                continue
            better = (g - b) if HIGHER_IS_BETTER[metric] else (b - g)
            table.setdefault(metric, {})[p] = {
                "gt": float(g),
                "broken": float(b),
                "expected": p in EXPECTED.get(metric, ()),
                "separates": bool(better >= MARGIN.get(metric, 1e-9)),
            }
    return table


def validate_metrics(refs: list[Reference], suite) -> dict:
    """Run ``suite`` on the ground truth and on every breakage of ``refs``.

    Returns:
        {"scores": {variant: {metric: mean}}, "table": separation_table(...), "clips": [clip ids],
         "failed": ["metric/perturbation" expected but not separated]}
    """
    per_variant: dict[str, list[tuple[dict, dict]]] = {}
    for ref in refs:
        gt = suite.clip_metrics(ref.wav, ref)
        per_variant.setdefault("ground_truth", []).append((gt, gt))
        for name, wav in perturb(ref).items():
            per_variant.setdefault(name, []).append((suite.clip_metrics(wav, ref), gt))
    scores = {}
    for name, pairs in per_variant.items():
        agg = suite.aggregate([g for g, _ in pairs], [r for _, r in pairs])
        scores[name] = {k: v["mean"] for k, v in agg.items()}
    table = separation_table(scores)
    failed = [f"{m}/{p}" for m, row in table.items() for p, c in row.items() if c["expected"] and not c["separates"]]
    return {"scores": scores, "table": table, "clips": [r.clip_id for r in refs], "failed": failed}
