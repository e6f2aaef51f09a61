"""Relative phoneme durations of a transcript, for the duration-aware phoneme layout.

espeak-ng computes a duration for every phoneme of any text (its synthesis events carry exact sample positions,
see :mod:`vssflow.synth.espeak`). We speak the normalised transcript once with a neutral voice, map each event to the
vocabulary's canonical phones, and align that sequence with the G2P symbols (word boundaries and punctuation take
no time). The result is relative: the layout scales it to the clip's speech span, so the voice and rate used here
do not matter, only the proportions (a stressed vowel is longer than a stop).

When espeak-ng cannot speak (no library), a fixed table gives vowels twice a consonant's share.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence

import numpy as np

from vssflow.text.vocab import PAD, PUNCTUATION, UNK, WORD_BOUNDARY, canonical_phones

__all__ = ["phoneme_durations", "table_durations"]

_SILENT = {PAD, WORD_BOUNDARY, *PUNCTUATION}
_VOWEL_CHARS = set("aeiouæɑɒɔəɚɛɜɝɪʊʌɐᵻɨøœyɯɤ")


def table_durations(symbols: Sequence[str]) -> np.ndarray:
    """(P,) float32 durations from a fixed table: 0 for boundaries/punctuation, 2 for vowels, 1 otherwise."""
    out = [0.0 if s in _SILENT else (2.0 if s and s[0] in _VOWEL_CHARS else 1.0) for s in symbols]
    return np.asarray(out, np.float32)


@functools.lru_cache(maxsize=4096)
def _espeak_phones(text: str) -> tuple[tuple[str, float], ...] | None:
    """(canonical phone, seconds) of espeak-ng's rendering of ``text``, or None when espeak-ng is unavailable."""
    from vssflow.synth import espeak

    if not espeak.available():
        return None
    speech = espeak.synthesize(text, espeak.Voice("en-us", rate=170, pitch=50))
    phones: list[tuple[str, float]] = []
    for p in speech.phonemes:
        parts = canonical_phones(p.label)
        for part in parts:  # a cluster espeak emits as one event shares its time equally
            phones.append((part, max(p.end - p.start, 0.0) / len(parts)))
    return tuple(phones)


def phoneme_durations(text: str, symbols: Sequence[str]) -> np.ndarray:
    """Relative duration of each G2P symbol of ``text``.

    Args:
        text: the transcript the symbols were made from (normalised or not).
        symbols: the P vocabulary symbols (``PhonemeSequence.symbols``).

    Returns:
        (P,) float32 >= 0, seconds of espeak-ng's neutral rendering (any scale is fine for the layout): 0 for word
        boundaries and punctuation; a phoneme espeak did not say (a G2P that differs) gets the median duration.
    """
    symbols = list(symbols)
    spoken = _espeak_phones(str(text).strip()) if str(text).strip() else None
    if not spoken:
        return table_durations(symbols)
    sounding = [i for i, s in enumerate(symbols) if s not in _SILENT]
    out = np.zeros(len(symbols), np.float32)
    said = [p for p, _ in spoken]
    matcher = difflib.SequenceMatcher(a=[symbols[i] for i in sounding], b=said, autojunk=False)
    matched = np.full(len(sounding), np.nan)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            matched[block.a + k] = spoken[block.b + k][1]
    fill = float(np.nanmedian(matched)) if np.isfinite(matched).any() else 0.08
    for k, i in enumerate(sounding):
        out[i] = matched[k] if np.isfinite(matched[k]) else (fill if symbols[i] != UNK else 0.5 * fill)
    return out
