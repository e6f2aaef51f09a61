"""Evaluation metrics of both tasks, offline (see docs/evaluation.md).

One module per family: ``asr`` (Whisper-base / pocketsphinx), ``wer`` (WER/CER), ``speaker`` (Resemblyzer
similarity), ``mcd`` (MCD-DTW), ``lipsync`` (LSE-C/LSE-D substitute), ``audio_embed`` (FD-WhisperBase, KL),
``onsets`` (onset P/R/F1, AV offset), ``classifier`` (corpus sound classes), ``duration``; ``suite`` runs them per
clip, ``references`` builds the ground truth, ``perturb`` validates every metric on deliberately broken audio.
"""
