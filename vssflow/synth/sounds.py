"""The sound-event classes of the V2S scenes: how each looks, which real recording it uses, and a synthesized fallback.

Each class has a distinct shape and colour (so a video encoder can tell them apart) and a distinct, short,
percussive sound whose onset is at sample 0 (so the event time in the manifest is the onset in the audio).
Real recordings come from Debian packages (see :mod:`vssflow.synth.assets` and ``docs/manifest.md``); when none is
installed the class falls back to :func:`synth_sound`, a small deterministic synthesizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfilt

from vssflow.constants import SAMPLE_RATE

EVENT_SECONDS = 0.35  # every event sound is cut (with a fade) to this length


@dataclass(frozen=True)
class Recording:
    """A candidate real recording for a class: Debian package, file path on disk, SPDX licence of that file."""

    package: str
    path: str
    licence: str


@dataclass(frozen=True)
class SoundClass:
    """A V2S object class. ``shape`` is one of circle, square, triangle, diamond, ring, bar, cross; colour is RGB."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    recordings: tuple[Recording, ...]


_SP = "/usr/share/sonic-pi/samples/"
_FD = "/usr/share/sounds/freedesktop/stereo/"
CLASSES: tuple[SoundClass, ...] = (
    SoundClass(
        "kick", "circle", (220, 40, 40), (Recording("sonic-pi-samples", _SP + "drum_heavy_kick.flac", "CC0-1.0"),)
    ),
    SoundClass(
        "snare", "square", (40, 190, 60), (Recording("sonic-pi-samples", _SP + "drum_snare_hard.flac", "CC0-1.0"),)
    ),
    SoundClass(
        "cowbell", "triangle", (235, 210, 40), (Recording("sonic-pi-samples", _SP + "drum_cowbell.flac", "CC0-1.0"),)
    ),
    SoundClass(
        "tom", "diamond", (200, 120, 40), (Recording("sonic-pi-samples", _SP + "drum_tom_hi_hard.flac", "CC0-1.0"),)
    ),
    SoundClass(
        "hihat", "ring", (60, 210, 230), (Recording("sonic-pi-samples", _SP + "drum_cymbal_closed.flac", "CC0-1.0"),)
    ),
    SoundClass(
        "key",
        "bar",
        (70, 90, 240),
        (Recording("bucklespring-data", "/usr/share/buckle/wav/1e-0.wav", "GPL-2.0-or-later"),),
    ),
    SoundClass("tabla", "cross", (230, 80, 210), (Recording("sonic-pi-samples", _SP + "tabla_na.flac", "CC0-1.0"),)),
    SoundClass(
        "bell",
        "star",
        (245, 245, 245),
        (
            Recording("sound-theme-freedesktop", _FD + "bell.oga", "CC-BY-3.0"),
            Recording("sonic-pi-samples", _SP + "elec_bell.flac", "CC0-1.0"),
        ),
    ),
)
CLASS_NAMES = tuple(c.name for c in CLASSES)


def class_by_name(name: str) -> SoundClass:
    for c in CLASSES:
        if c.name == name:
            return c
    raise KeyError(f"unknown sound class {name!r}; known: {', '.join(CLASS_NAMES)}")


def _env(n: int, decay_s: float) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    attack = np.minimum(1.0, t / 0.002)  # 2 ms attack: a sharp, detectable onset
    return attack * np.exp(-t / decay_s)


def synth_sound(name: str) -> np.ndarray:
    """A deterministic synthesized sound for class ``name``: (S,) float32 at 16 kHz, peak 0.9, onset at 0."""
    n = int(EVENT_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    noise = np.random.default_rng(abs(hash_name(name))).standard_normal(n)
    if name == "kick":
        f = 50 + 110 * np.exp(-t / 0.03)
        x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * _env(n, 0.12)
    elif name == "snare":
        x = (
            0.6 * sosfilt(butter(2, [1000, 6000], "bandpass", fs=SAMPLE_RATE, output="sos"), noise) * 3
            + 0.5 * np.sin(2 * np.pi * 190 * t)
        ) * _env(n, 0.06)
    elif name == "cowbell":
        x = (np.sign(np.sin(2 * np.pi * 540 * t)) + np.sign(np.sin(2 * np.pi * 800 * t))) * 0.4 * _env(n, 0.08)
    elif name == "tom":
        f = 170 + 60 * np.exp(-t / 0.05)
        x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * _env(n, 0.09)
    elif name == "hihat":
        x = sosfilt(butter(4, 6000, "highpass", fs=SAMPLE_RATE, output="sos"), noise) * _env(n, 0.03)
    elif name == "key":
        x = (noise * 0.5 + np.sin(2 * np.pi * 2300 * t)) * _env(n, 0.012)
    elif name == "tabla":
        x = (np.sin(2 * np.pi * 330 * t) + 0.5 * np.sin(2 * np.pi * 661 * t)) * _env(n, 0.15)
    else:  # bell and anything else: inharmonic partials
        x = sum(np.sin(2 * np.pi * f0 * t) / (k + 1) for k, f0 in enumerate((880, 2290, 3170))) * _env(n, 0.2)
    return normalise(fade_out(np.asarray(x, np.float32)))


def hash_name(name: str) -> int:
    """A stable (not per-process salted) integer hash of a string."""
    h = 2166136261
    for ch in name.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def fade_out(x: np.ndarray, seconds: float = 0.03) -> np.ndarray:
    n = min(len(x), int(seconds * SAMPLE_RATE))
    if n:
        x = x.copy()
        x[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return x


def normalise(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (peak / m)).astype(np.float32) if m > 0 else x.astype(np.float32)


def trim_onset(x: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Drop the leading near-silence so that the sound starts (within 1 ms) at sample 0."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m == 0:
        return x
    first = int(np.argmax(np.abs(x) >= threshold * m))
    return x[max(0, first - SAMPLE_RATE // 1000) :]
