"""Word and character error rates (jiwer) after one text normalisation shared by reference and hypothesis.

Both sides go through :func:`normalize_for_wer`: vssflow's English normaliser (numbers, abbreviations and unicode
folded the same way as for G2P), then lower case without punctuation. So "Dr. Smith paid $3." and "doctor smith
paid three dollars" score WER 0. An empty hypothesis scores WER = CER = 1 (everything deleted).
"""

from __future__ import annotations

import re

from vssflow.errors import AssetError, TranscriptError
from vssflow.text.normalize import normalize_text

_PUNCT = re.compile(r"[^a-z' ]+")


def normalize_for_wer(text: str | None) -> str:
    """Lower-case words separated by single spaces, no punctuation ("" when nothing pronounceable is left)."""
    if not text:
        return ""
    try:
        text = normalize_text(text)
    except TranscriptError:
        return ""
    text = _PUNCT.sub(" ", text.lower()).replace(" '", " ").replace("' ", " ")
    return " ".join(text.split())


def _jiwer():
    try:  # the assets extra, not a core dependency: imported when a score is asked for
        import jiwer
    except ImportError as e:
        raise AssetError(f"WER/CER need jiwer: pip install 'vssflow[assets]' ({e})") from None
    return jiwer


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (both normalised). Can exceed 1 (insertions)."""
    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        raise TranscriptError("empty reference transcript; WER is undefined", source="wer")
    if not hyp:
        return 1.0
    return float(_jiwer().wer(ref, hyp))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate (spaces count as characters), both sides normalised."""
    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        raise TranscriptError("empty reference transcript; CER is undefined", source="cer")
    if not hyp:
        return 1.0
    return float(_jiwer().cer(ref, hyp))
