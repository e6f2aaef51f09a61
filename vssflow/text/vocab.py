"""The fixed, versioned phoneme vocabulary shared by every G2P backend and the model.

Ids (stored as int16, all < 256, the size of the model's phoneme embedding table):

* 0 ``<pad>``: "no phoneme" (padding, and the value of an absent transcript);
* 1 ``|``: word boundary (between two words; never at the start or end);
* 2 ``<unk>``: a sound that maps to nothing below (counted, never fatal);
* 3-6 ``, . ? !``: punctuation, kept because pauses and intonation are audible;
* 7.. phonemes of English in IPA, consonants then vowels then diphthongs.

Decisions (changing any of them, or the symbol list, needs a new ``PHONEME_VOCAB_VERSION``):

* **Stress is dropped** (``ˈ ˌ``): espeak and gruut place it differently, and the acoustic model hears stress in the
  target audio anyway; keeping it would double the vowel inventory for little gain.
* **Length marks are dropped** (``ː ˑ``): in English, vowel length goes with vowel quality (``iː``/``ɪ``), and gruut
  does not write it at all, so ``ɑː`` and ``ɑ`` are one phoneme.
* **Tie bars are dropped** (``d͡ʒ`` -> ``dʒ``); affricates and diphthongs are single symbols.
* **Rhotic and syllabic clusters are split**: espeak's ``ɑːɹ``, ``ɛɹ``, ``aɪɚ``, ``əl`` become ``ɑ ɹ``, ``ɛ ɹ``,
  ``aɪ ɚ``, ``ə l`` (as gruut writes them); a syllabic consonant ``n̩`` becomes ``ə n``.
* **Lexical-set merges** so that both backends agree on en-us: ``ɜ ɝ`` -> ``ɚ`` (NURSE), ``ᵻ ɨ`` -> ``ɪ``,
  ``r`` -> ``ɹ``, ``g`` -> ``ɡ``, ``ɫ`` -> ``l``, ``iə`` -> ``ɪə``. Accent-specific symbols that carry
  information (``ɒ əʊ ɐ ɾ ʔ x``) keep their own ids.
* **Unknown symbols**: after the rules above, a phone is split greedily into the longest known symbols; a character
  that is still unknown goes to its closest English phoneme from a fixed table (``c`` -> ``k``, ``ʁ`` -> ``ɹ``, ...),
  other diacritics are stripped, and anything left becomes ``<unk>``. Encoding never raises.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "PHONEME_VOCAB_VERSION",
    "SYMBOLS",
    "PAD_ID",
    "WORD_BOUNDARY",
    "WORD_BOUNDARY_ID",
    "UNK_ID",
    "FIRST_PHONEME_ID",
    "PUNCTUATION",
    "VOCAB_SIZE",
    "vocab_hash",
    "canonical_phones",
    "encode",
    "decode",
]

PHONEME_VOCAB_VERSION = "ipa-en-1"

PAD = "<pad>"
WORD_BOUNDARY = "|"
UNK = "<unk>"
PUNCTUATION = (",", ".", "?", "!")

_CONSONANTS = (
    "p b t d k ɡ f v θ ð s z ʃ ʒ h tʃ dʒ m n ŋ l ɹ w j "  # English
    "ɾ ʔ x ç ʍ ɬ"  # flap, glottal stop, loch, hue, which (some accents), Welsh ll
).split()
_VOWELS = "i ɪ e ɛ æ a ɑ ɒ ɔ o ʊ u ʌ ə ɚ ɐ y ø".split()
_DIPHTHONGS = "eɪ aɪ ɔɪ aʊ oʊ əʊ ɪə eə ʊə".split()

SYMBOLS: tuple[str, ...] = (PAD, WORD_BOUNDARY, UNK, *PUNCTUATION, *_CONSONANTS, *_VOWELS, *_DIPHTHONGS)
PAD_ID = 0
WORD_BOUNDARY_ID = 1
UNK_ID = 2
FIRST_PHONEME_ID = 3 + len(PUNCTUATION)  # ids below are pad, boundary, unk, punctuation
VOCAB_SIZE = len(SYMBOLS)
assert VOCAB_SIZE < 256 and len(set(SYMBOLS)) == VOCAB_SIZE

_ID = {s: i for i, s in enumerate(SYMBOLS)}
_PHONEMES = frozenset(_CONSONANTS + _VOWELS + _DIPHTHONGS)
_MAX_LEN = max(len(s) for s in _PHONEMES)

# Marks removed before lookup: stress, length, tie bars, syllable breaks.
_STRIP = str.maketrans("", "", "ˈˌːˑ\u0361\u035c‿.")
_SYLLABIC = "\u0329"  # combining vertical line below: n̩ l̩ m̩
# Whole-phone rewrites applied after stripping (merges that make backends agree).
_REWRITE = {
    "ɜ": "ɚ",
    "ɝ": "ɚ",
    "ɜɹ": "ɚ",
    "ɚɹ": "ɚ",
    "ᵻ": "ɪ",
    "ɨ": "ɪ",
    "r": "ɹ",
    "g": "ɡ",
    "ɫ": "l",
    "iə": "ɪə",
    "oɹ": "ɔɹ",
}
# Closest English phoneme for a character that is not in the vocabulary.
_CLOSEST = {
    "c": "k",
    "q": "k",
    "ɟ": "ɡ",
    "ɣ": "ɡ",
    "ɢ": "ɡ",
    "χ": "x",
    "ħ": "h",
    "ɦ": "h",
    "ʕ": "h",
    "ʜ": "h",
    "β": "v",
    "ɸ": "f",
    "ʋ": "v",
    "ʁ": "ɹ",
    "ʀ": "ɹ",
    "ɻ": "ɹ",
    "ɽ": "ɾ",
    "ɭ": "l",
    "ʎ": "l",
    "ʟ": "l",
    "ɲ": "n",
    "ɳ": "n",
    "ɴ": "ŋ",
    "ɱ": "m",
    "ʈ": "t",
    "ɖ": "d",
    "ɕ": "ʃ",
    "ʂ": "ʃ",
    "ʑ": "ʒ",
    "ʐ": "ʒ",
    "ɥ": "w",
    "ɘ": "ə",
    "ɵ": "ə",
    "ɞ": "ə",
    "ɤ": "ʌ",
    "ɯ": "u",
    "ʉ": "u",
    "ʏ": "ɪ",
    "œ": "ɛ",
    "ɶ": "a",
}


def vocab_hash() -> str:
    """sha256 (first 16 hex digits) of the symbol list; a changed vocabulary changes this hash."""
    return hashlib.sha256("\n".join(SYMBOLS).encode("utf-8")).hexdigest()[:16]


def _segment(phone: str) -> list[str]:
    """Split a stripped phone string into the longest known symbols; unknown characters via ``_CLOSEST``."""
    out: list[str] = []
    i = 0
    while i < len(phone):
        for n in range(min(_MAX_LEN, len(phone) - i), 0, -1):
            piece = phone[i : i + n]
            if piece in _PHONEMES:
                out.append(piece)
                i += n
                break
        else:
            ch = phone[i]
            i += 1
            if unicodedata.combining(ch):
                continue  # stray diacritic (nasalisation, aspiration, ...): drop it
            base = _REWRITE.get(ch) or _CLOSEST.get(ch)
            if base is None:
                decomposed = unicodedata.normalize("NFD", ch)[0]  # "ä" -> "a"
                base = decomposed if decomposed in _PHONEMES else UNK
            out.append(base)
    return out


def canonical_phones(phone: str) -> list[str]:
    """Map one phone as written by a G2P backend to vocabulary symbols (see the module docstring).

    ``"ˈɑːɹ"`` -> ``["ɑ", "ɹ"]``, ``"d͡ʒ"`` -> ``["dʒ"]``, ``"n̩"`` -> ``["ə", "n"]``, ``"ʁ"`` -> ``["ɹ"]``,
    ``"☃"`` -> ``["<unk>"]``; ``"ˈ"`` -> ``[]``.
    """
    if phone in _ID:
        return [phone]
    phone = unicodedata.normalize("NFD", phone).translate(_STRIP)
    phone = unicodedata.normalize("NFC", phone)
    if not phone:
        return []
    out: list[str] = []
    if _SYLLABIC in phone:  # "n̩" -> schwa + consonant
        out.append("ə")
        phone = phone.replace(_SYLLABIC, "")
    phone = _REWRITE.get(phone, phone)
    out.extend(_segment(phone))
    return out


def encode(symbols: Iterable[str]) -> np.ndarray:
    """Encode a list of backend phones (and ``|``/punctuation tokens) into vocabulary ids.

    Args:
        symbols: phones as written by a backend; each may map to zero, one or several ids.

    Returns:
        (P,) int16 ids, all in ``[1, VOCAB_SIZE)``. Unknown sounds become ``UNK_ID``; never raises.
    """
    ids: list[int] = []
    for s in symbols:
        ids.extend(_ID[c] for c in canonical_phones(s))
    return np.asarray(ids, dtype=np.int16)


def decode(ids: Sequence[int] | np.ndarray) -> list[str]:
    """Map ids back to vocabulary symbols; ``PAD_ID`` entries are skipped, out-of-range ids become ``<unk>``."""
    return [SYMBOLS[i] if 0 <= i < VOCAB_SIZE else UNK for i in (int(x) for x in ids) if i != PAD_ID]
