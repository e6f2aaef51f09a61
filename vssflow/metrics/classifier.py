"""A small sound-class classifier for the V2S class-accuracy and KL metrics, trained on the corpus' real sounds.

Features of an event window ([t - 20 ms, t + 300 ms) around an onset): mean, standard deviation and attack (first
50 ms) of the 64-band log-mel, 192 numbers, standardised; a softmax regression (weight decay) on top. Training
examples are the recordings the synthetic corpus uses for each class (:func:`vssflow.synth.assets.event_sound`,
Debian CC0/CC-BY/GPL samples), augmented with gain, onset jitter, noise and the tail of another class's event
(:func:`examples_from_assets`), plus a ``none`` class (noise floor or only an earlier event's tail), so silence is
not credited with any class; real corpus clips with known event times can be added (:func:`examples_from_clips`).

Saved as one ``.npz`` (weights, standardisation, class names, feature version); :func:`load_or_train` caches it
under ``~/.cache/vssflow``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vssflow.audio.mel import log_mel
from vssflow.constants import MEL_FPS, SAMPLE_RATE

FEATURE_VERSION = "melstats-v2"
NONE = "none"  # no event starts in the window
PRE_S, POST_S, ATTACK_S = 0.02, 0.30, 0.05


def window(wav: np.ndarray, t: float) -> np.ndarray:
    """The event window of ``wav`` starting PRE_S before ``t`` (zero padded at the clip's edges)."""
    n = int(round((PRE_S + POST_S) * SAMPLE_RATE))
    s = int(round((t - PRE_S) * SAMPLE_RATE))
    out = np.zeros(n, np.float32)
    a, b = max(0, s), min(len(wav), s + n)
    if b > a:
        out[a - s : b - s] = wav[a:b]
    return out


def features(windows: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) event windows -> (B, 192) features (log-mel mean, std, attack mean)."""
    out = []
    k = int(round(ATTACK_S * MEL_FPS))
    for w in windows:
        m = np.asarray(log_mel(np.asarray(w, np.float32)), np.float64)  # (T, 64)
        out.append(np.concatenate([m.mean(0), m.std(0), m[:k].mean(0)]))
    return np.stack(out)


@dataclass
class SoundClassifier:
    """Softmax regression on standardised window features."""

    classes: tuple[str, ...]
    weight: np.ndarray  # (192, K)
    bias: np.ndarray  # (K,)
    mean: np.ndarray  # (192,)
    std: np.ndarray  # (192,)
    feature_version: str = FEATURE_VERSION

    def predict_proba_windows(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) windows -> (B, K) class posteriors."""
        z = (features(windows) - self.mean) / self.std @ self.weight + self.bias
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def event_probs(self, wav: np.ndarray, event_times: Sequence[float]) -> np.ndarray:
        """(E, K) posteriors of the windows of ``wav`` at the (known) event times."""
        if not len(event_times):
            return np.zeros((0, len(self.classes)))
        return self.predict_proba_windows([window(wav, float(t)) for t in event_times])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the classifier atomically to ``path`` (.npz)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        os.close(fd)
        meta = json.dumps({"classes": list(self.classes), "feature_version": self.feature_version})
        np.savez(tmp, weight=self.weight, bias=self.bias, mean=self.mean, std=self.std, meta=np.array(meta))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SoundClassifier:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(tuple(meta["classes"]), z["weight"], z["bias"], z["mean"], z["std"], meta["feature_version"])


def examples_from_assets(*, per_class: int = 40, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Augmented event windows of every corpus class's real recording (synthesised fallback when not installed)."""
    from vssflow.synth import assets
    from vssflow.synth.sounds import CLASS_NAMES

    rng = np.random.default_rng(seed)
    sounds = {c: assets.event_sound(c).audio for c in CLASS_NAMES}
    wins, labels = [], []
    n = int(round(1.0 * SAMPLE_RATE))
    for c in CLASS_NAMES:
        for _ in range(per_class):
            clip = np.zeros(n, np.float32)
            onset = 0.4 + rng.uniform(-0.02, 0.02)
            if rng.uniform() < 0.5:  # the tail of an earlier event of another class
                other = sounds[CLASS_NAMES[rng.integers(len(CLASS_NAMES))]]
                s = int((0.4 - rng.uniform(0.1, 0.3)) * SAMPLE_RATE)
                clip[s : s + len(other)] += rng.uniform(0.2, 0.8) * other[: n - s]
            s = int(round(onset * SAMPLE_RATE))
            x = sounds[c][: n - s]
            clip[s : s + len(x)] += rng.uniform(0.2, 1.0) * x
            clip += rng.normal(0, 10 ** rng.uniform(-4, -2.3), n).astype(np.float32)
            wins.append(window(clip, 0.4))
            labels.append(c)
    for _ in range(per_class):  # "none": noise floor, or only the decaying tail of an earlier event
        clip = rng.normal(0, 10 ** rng.uniform(-5, -2.3), n).astype(np.float32)
        if rng.uniform() < 0.5:
            other = sounds[CLASS_NAMES[rng.integers(len(CLASS_NAMES))]]
            s = int((0.4 - rng.uniform(0.15, 0.35)) * SAMPLE_RATE)
            clip[s : s + len(other)] += rng.uniform(0.2, 0.8) * other[: n - s]
        wins.append(window(clip, 0.4))
        labels.append(NONE)
    return wins, labels


def examples_from_clips(wavs: Sequence[np.ndarray], events: Sequence[Sequence[tuple[float, str]]]):
    """Event windows of real clips at their known (time, class) events."""
    wins, labels = [], []
    for w, ev in zip(wavs, events, strict=True):
        for t, c in ev:
            wins.append(window(w, t))
            labels.append(c)
    return wins, labels


def train_classifier(
    windows: Sequence[np.ndarray], labels: Sequence[str], *, weight_decay: float = 1e-3, steps: int = 300, seed: int = 0
) -> SoundClassifier:
    """Fit the softmax regression (full-batch Adam) on event windows and their class names."""
    classes = tuple(sorted(set(labels)))
    x = features(windows)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).float()
    y = torch.tensor([classes.index(c) for c in labels])
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], len(classes), generator=g) * 0.01).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(xt @ w + b, y) + weight_decay * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return SoundClassifier(classes, w.detach().double().numpy(), b.detach().double().numpy(), mean, std)


def load_or_train(path: str | os.PathLike | None = None) -> SoundClassifier:
    """The classifier at ``path`` (default: the cache); trained on :func:`examples_from_assets` and saved if absent."""
    from vssflow.metrics.asr import cache_dir

    path = Path(path) if path else cache_dir() / f"sound-classifier-{FEATURE_VERSION}.npz"
    if path.is_file():
        clf = SoundClassifier.load(path)
        if clf.feature_version == FEATURE_VERSION:
            return clf
    clf = train_classifier(*examples_from_assets())
    clf.save(path)
    return clf


def class_accuracy(clf: SoundClassifier, wav: np.ndarray, events: Sequence[tuple[float, str]]) -> float:
    """Share of the known events whose window of ``wav`` is classified as the event's class (NaN: no events)."""
    if not len(events):
        return float("nan")
    p = clf.event_probs(wav, [t for t, _ in events])
    pred = [clf.classes[i] for i in p.argmax(1)]
    return float(np.mean([a == c for a, (_, c) in zip(pred, events, strict=True)]))
