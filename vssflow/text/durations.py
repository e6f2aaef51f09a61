"""Relative phoneme durations of a transcript, for the duration-aware phoneme layout.

espeak-ng computes a duration for every phoneme of any text (its synthesis events carry exact sample positions,
see :mod:`vssflow.synth.espeak`). We speak the normalised transcript once with a neutral voice, map each event to the
vocabulary's canonical phones, and align that sequence with the G2P symbols (word boundaries and punctuation take
no time). The result is relative: the layout scales it to the clip's speech span, so the voice and rate used here
do not matter, only the proportions (a stressed vowel is longer than a stop).

When espeak-ng cannot speak (no library), a fixed table gives vowels twice a consonant's share. Training clips with
their own phoneme timing (the synthetic corpus's espeak events, a forced alignment) take their durations from it
(:func:`durations_from_timing`), so the layout follows the actual speech; inference uses the neutral rendering.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence

import numpy as np

from vssflow.text.vocab import PAD, PUNCTUATION, UNK, WORD_BOUNDARY, canonical_phones

__all__ = [
    "align_durations",
    "durations_from_timing",
    "matched_share",
    "phoneme_durations",
    "table_durations",
    "timed_phones",
]

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
    """Relative duration of each G2P symbol of ``text``, from espeak-ng's neutral rendering of it.

    Args:
        text: the transcript the symbols were made from (normalised or not).
        symbols: the P vocabulary symbols (``PhonemeSequence.symbols``).

    Returns:
        (P,) float32 >= 0, seconds of espeak-ng's neutral rendering (any scale is fine for the layout): 0 for word
        boundaries and punctuation; a phoneme espeak did not say (a G2P that differs) gets the median duration.
    """
    spoken = _espeak_phones(str(text).strip()) if str(text).strip() else None
    return align_durations(symbols, spoken) if spoken else table_durations(symbols)


def durations_from_timing(symbols: Sequence[str], timing: Sequence) -> np.ndarray:
    """Relative duration of each G2P symbol from the speech's own phoneme timing (a manifest's ``phonemes``:
    ``[label, start, end]`` lists or objects with ``label/start/end``, IPA labels), aligned like
    :func:`phoneme_durations`. Training uses it when the clip has timing: the layout then follows the real speech."""
    phones = timed_phones(timing)
    return align_durations(symbols, phones) if phones else table_durations(symbols)


def timed_phones(timing: Sequence) -> list[tuple[str, float]]:
    """(canonical phone, seconds) of a speech's own phoneme timing (as :func:`durations_from_timing` takes it): IPA
    labels, or a forced aligner's ARPAbet, split into the vocabulary's phones, each with its share of the time."""
    from vssflow.data.manifest import timed_triples
    from vssflow.text.g2p import _ARPABET

    phones: list[tuple[str, float]] = []
    for label, start, end in timed_triples(timing):
        base = label.rstrip("012")
        if base in _ARPABET:  # a forced aligner's ARPAbet (pocketsphinx): to IPA as the cmudict backend does
            label = "ə" if base == "AH" and label.endswith("0") else _ARPABET[base]
        parts = canonical_phones(label)
        for part in parts:
            phones.append((part, max(end - start, 0.0) / max(len(parts), 1)))
    return phones


def align_durations(symbols: Sequence[str], spoken: Sequence[tuple[str, float]]) -> np.ndarray:
    """Durations of ``spoken`` (phone, seconds) carried onto the matching G2P ``symbols`` (difflib alignment); 0
    for boundaries/punctuation, the median duration for a sounding symbol with no match (half for ``<unk>``)."""
    symbols = list(symbols)
    sounding, matched = _match(symbols, spoken)
    out = np.zeros(len(symbols), np.float32)
    fill = float(np.nanmedian(matched)) if np.isfinite(matched).any() else 0.08
    for k, i in enumerate(sounding):
        out[i] = matched[k] if np.isfinite(matched[k]) else (fill if symbols[i] != UNK else 0.5 * fill)
    return out


def matched_share(symbols: Sequence[str], spoken: Sequence[tuple[str, float]]) -> float:
    """The share of the sounding G2P ``symbols`` that :func:`align_durations` finds in ``spoken`` (1 when a voice
    says the phonemes the model is given; an accent that says others leaves some without a duration of their own)."""
    _, matched = _match(list(symbols), spoken)
    return float(np.isfinite(matched).mean()) if len(matched) else 1.0


def _match(symbols: list[str], spoken: Sequence[tuple[str, float]]) -> tuple[list[int], np.ndarray]:
    """(indices of the sounding symbols, the seconds of the spoken phone each is aligned with, NaN for none)."""
    sounding = [i for i, s in enumerate(symbols) if s not in _SILENT]
    matcher = difflib.SequenceMatcher(a=[symbols[i] for i in sounding], b=[p for p, _ in spoken], autojunk=False)
    matched = np.full(len(sounding), np.nan)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            matched[block.a + k] = spoken[block.b + k][1]
    return sounding, matched
