"""Find the real recordings the embedded corpus uses, on disk, from Debian packages; fall back when absent.

* Event sounds: per class, the first installed :class:`~vssflow.synth.sounds.Recording`, else the synthesized sound.
* Real speech: Allison Smith's prompts from ``asterisk-core-sounds-en-wav`` (8 kHz wav, CC-BY-SA-3.0) with their
  transcripts from ``asterisk-core-sounds-en`` (``core-sounds-en.txt.gz``). Only clean sentences are used: no digits,
  no bracketed notes, 3 or more words.

Everything is cached per process (the corpus writer calls these once per worker).
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from vssflow.constants import SAMPLE_RATE
from vssflow.synth.sounds import EVENT_SECONDS, class_by_name, fade_out, normalise, synth_sound, trim_onset

ASTERISK_DIRS = (
    "/usr/share/asterisk/sounds/en_US_f_Allison",
    "/usr/share/asterisk/sounds/en",
    "/usr/share/asterisk/sounds/en_US",
)
ASTERISK_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
ASTERISK_LICENCE = "CC-BY-SA-3.0"
# Debian packages the corpus uses when installed (.ci installs them); all optional.
DEBIAN_PACKAGES = (
    "sonic-pi-samples",
    "bucklespring-data",
    "sound-theme-freedesktop",
    "asterisk-core-sounds-en-wav",
    "asterisk-core-sounds-en",
)


@dataclass(frozen=True)
class EventSound:
    """The sound of one class as used in the corpus: (S,) float32 16 kHz, onset at sample 0."""

    name: str
    audio: np.ndarray
    licence: str
    source: str  # "debian:<package>:<path>" or "synth"


def load_audio(path: str | os.PathLike, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any libsndfile format (wav, flac, ogg/oga), mix to mono, resample to ``rate``: (S,) float32."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != rate:
        g = gcd(int(sr), rate)
        x = resample_poly(x, rate // g, int(sr) // g).astype(np.float32)
    return x


@functools.cache
def event_sound(name: str, *, allow_real: bool = True) -> EventSound:
    """The sound of class ``name``: the first installed real recording, else the synthesized fallback."""
    cls = class_by_name(name)
    if allow_real:
        for rec in cls.recordings:
            if os.path.isfile(rec.path):
                try:
                    x = trim_onset(load_audio(rec.path))
                except (RuntimeError, sf.LibsndfileError):
                    continue
                x = x[: int(EVENT_SECONDS * SAMPLE_RATE)]
                if x.size >= SAMPLE_RATE // 50:
                    return EventSound(name, normalise(fade_out(x)), rec.licence, f"debian:{rec.package}:{rec.path}")
    return EventSound(name, synth_sound(name), "CC0-1.0", "synth")


@dataclass(frozen=True)
class Prompt:
    """One real recorded utterance with its transcript."""

    name: str
    path: str
    transcript: str
    duration: float


_CLEAN = re.compile(r"^[A-Za-z][A-Za-z ,.'?!-]*$")


def asterisk_prompts() -> tuple[Prompt, ...]:
    """Clean real-speech prompts (transcript + wav) from the asterisk packages, sorted by name; () when absent."""
    return _prompts(ASTERISK_TEXT, ASTERISK_DIRS)


@functools.lru_cache(maxsize=4)
def _prompts(text_path: str, dirs: tuple[str, ...]) -> tuple[Prompt, ...]:
    if not os.path.isfile(text_path):
        return ()
    wav_dir = next((Path(d) for d in dirs if Path(d).is_dir() and any(Path(d).glob("*.wav"))), None)
    if wav_dir is None:
        return ()
    out = []
    with gzip.open(text_path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if ":" not in line or line.startswith(";"):
                continue
            name, text = line.split(":", 1)
            text = " ".join(text.split())
            if not _CLEAN.match(text) or len(text.split()) < 3:
                continue
            wav = wav_dir / f"{name.strip()}.wav"
            if not wav.is_file():
                continue
            info = sf.info(str(wav))
            out.append(Prompt(name.strip(), str(wav), text, info.frames / info.samplerate))
    return tuple(sorted(out, key=lambda p: p.name))


def have_real_speech() -> bool:
    return len(asterisk_prompts()) > 0


def trim_silence(x: np.ndarray, *, threshold_db: float = -40.0, pad_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing silence (below ``threshold_db`` of the peak), keeping ``pad_s`` around speech."""
    if x.size == 0:
        return x
    hop = SAMPLE_RATE // 100
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > threshold_db)[0]
    if loud.size == 0:
        return x
    pad = int(pad_s * SAMPLE_RATE)
    return x[max(0, loud[0] * hop - pad) : min(len(x), (loud[-1] + 1) * hop + pad)]


# ------------------------------------------------------------------------------------------------- alignment
_DECODER = None


def pocketsphinx_available() -> bool:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


def align_speech(audio: np.ndarray, transcript: str) -> tuple[list, list] | None:
    """Forced alignment with pocketsphinx (when installed): (words, phones) as ``(label, start, end)`` in seconds.

    Phones are ARPAbet (``AA``, ``P``, ...), 10 ms resolution. Returns None when pocketsphinx is missing or the
    text cannot be aligned (e.g. a word not in its dictionary). ``audio`` is (S,) float32 at 16 kHz.
    """
    global _DECODER
    if not pocketsphinx_available():
        return None
    from pocketsphinx import Decoder

    words_in = re.sub(r"[^a-z' ]", " ", transcript.lower()).split()
    if not words_in:
        return None
    try:
        if _DECODER is None:
            _DECODER = Decoder(lm=None, loglevel="FATAL", samprate=SAMPLE_RATE)
        d = _DECODER
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
        d.set_align_text(" ".join(words_in))
        for _ in range(2):  # first pass: word alignment; second: phones within words
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            if _ == 0:
                d.set_alignment()
        words, phones = [], []
        for w in d.get_alignment():
            name = w.name.split("(")[0]
            if name.startswith("<") or name in ("</s>", "[noise]"):
                continue
            words.append((name, w.start / 100.0, (w.start + w.duration) / 100.0))
            for ph in w:
                phones.append((ph.name, ph.start / 100.0, (ph.start + ph.duration) / 100.0))
    except (RuntimeError, ValueError, KeyError):
        return None
    return (words, phones) if words else None
