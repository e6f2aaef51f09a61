"""Transcripts -> phoneme ids: English normalisation, a fixed versioned vocabulary and G2P backends."""

from vssflow.text.g2p import BACKENDS, G2P, PhonemeSequence, phonemize
from vssflow.text.normalize import normalize_text
from vssflow.text.vocab import PHONEME_VOCAB_VERSION, VOCAB_SIZE, decode, encode

# ``vssflow.text.g2p(text, backend=..., source=...)``: the same function as ``phonemize`` (the submodule of the same
# name stays importable as ``from vssflow.text.g2p import G2P``).
g2p = phonemize

__all__ = [
    "BACKENDS",
    "G2P",
    "PhonemeSequence",
    "phonemize",
    "g2p",
    "normalize_text",
    "PHONEME_VOCAB_VERSION",
    "VOCAB_SIZE",
    "encode",
    "decode",
]
