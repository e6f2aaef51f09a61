"""Transcripts -> phoneme ids: English normalisation, a fixed versioned vocabulary and G2P backends."""

from vssflow.text.g2p import BACKENDS, G2P, PhonemeSequence, phonemize
from vssflow.text.normalize import normalize_text
from vssflow.text.vocab import PHONEME_VOCAB_VERSION, VOCAB_SIZE, decode, encode

__all__ = [
    "BACKENDS",
    "G2P",
    "PhonemeSequence",
    "phonemize",
    "normalize_text",
    "PHONEME_VOCAB_VERSION",
    "VOCAB_SIZE",
    "encode",
    "decode",
]
