"""The per-clip feature record: what extractors produce, what Parquet stores, what the model consumes.

Arrays are numpy, unbatched. A condition that is absent for this clip is ``None`` (the model substitutes a
learned "absent" value). Rates and sizes are in :mod:`vssflow.constants`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClipFeatures:
    """Features of one clip.

    Attributes:
        duration_s: clip length in seconds; the generated audio has exactly this length.
        task: "v2s", "tts" or "joint".
        sem: (T_sem, D_sem) float, semantic frame embeddings at SEM_FPS (10 fps).
        lip: (T_lip, LIP_SIZE, LIP_SIZE) uint8 mouth crops at LIP_FPS (25 fps), or (T_lip, D_lip) float
            features from a frozen sync encoder.
        sync: (T_sync, SYNC_SIZE, SYNC_SIZE) uint8 grayscale whole-frame thumbnails at SYNC_FPS (25 fps): the
            dense visual stream that tells *when* things happen (the role of the paper's Synchformer features).
        phonemes: (P,) integer ids in the versioned phoneme vocabulary, no padding (0 is reserved for "none").
        speaker: (SPEAKER_DIM,) float32, L2-normalised embedding of the reference voice.
        mel: (T_mel, N_MELS) float32 target log-mel at MEL_FPS (training and evaluation only).
        speech_span: (start, end) seconds of the clip where the words are (VisualTTS and joint); None = the whole
            clip. Training takes it from the manifest's timing or voice activity, inference from the user
            (``--speech-span``), a subtitle cue or the mouth activity of the lip stream. The model lays the
            phonemes over it (``ModelConfig.phoneme_layout``).
        phoneme_durations: (P,) float32 relative durations of ``phonemes`` (espeak-ng's timing of the transcript,
            any scale), for the duration-aware phoneme layout; None = equal durations.
        meta: free-form annotations (clip_id, transcript, events, ...); never read by the model.
    """

    duration_s: float
    task: str = "v2s"
    sem: np.ndarray | None = None
    lip: np.ndarray | None = None
    sync: np.ndarray | None = None
    phonemes: np.ndarray | None = None
    speaker: np.ndarray | None = None
    mel: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    speech_span: tuple[float, float] | None = None
    phoneme_durations: np.ndarray | None = None
