"""Speaker similarity: cosine between the GE2E (Resemblyzer) embeddings of generated speech and the reference voice.

Uses :mod:`vssflow.features.speaker` (the same encoder preprocessing uses for the speaker condition). Audio that
cannot be embedded (silent, shorter than 1 s) scores 0: it carries no trace of the speaker. Same speaker: about
0.8-0.9; different espeak/real speakers: about 0.4-0.6 (see docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np

from vssflow.errors import ReferenceVoiceError
from vssflow.features.speaker import SpeakerEncoder, load_speaker_encoder

_ENCODERS: dict[str, SpeakerEncoder] = {}


def speaker_encoder(spec: str = "resemblyzer") -> SpeakerEncoder:
    """The speaker encoder (loaded once per process)."""
    if spec not in _ENCODERS:
        _ENCODERS[spec] = load_speaker_encoder(spec)
    return _ENCODERS[spec]


def embed_or_none(wav: np.ndarray, encoder: SpeakerEncoder | None = None) -> np.ndarray | None:
    """(D,) unit embedding of ``wav`` (N,) 16 kHz, or None when it is silent or shorter than 1 s."""
    enc = encoder or speaker_encoder()
    try:
        return enc.embed(np.asarray(wav, np.float32))
    except ReferenceVoiceError:
        return None


def speaker_similarity(wav: np.ndarray, reference: np.ndarray, *, encoder: SpeakerEncoder | None = None) -> float:
    """Cosine similarity in [-1, 1] between the speaker of ``wav`` and ``reference``.

    Args:
        wav: (N,) generated speech, 16 kHz.
        reference: (N_ref,) reference voice waveform, or its (D,) embedding (e.g. the shard's ``speaker_emb``).

    Returns:
        cosine similarity; 0.0 when ``wav`` cannot be embedded (silent or < 1 s).
    """
    enc = encoder or speaker_encoder()
    reference = np.asarray(reference, np.float32)
    ref = reference if reference.shape == (enc.dim,) else embed_or_none(reference, enc)
    e = embed_or_none(wav, enc)
    if e is None or ref is None:
        return 0.0
    return float(np.dot(e, ref) / (np.linalg.norm(e) * np.linalg.norm(ref) + 1e-9))
