"""Seen vs unseen: is a test sentence also in the training split, is a test voice one the model never heard?

A VisualTTS score means little when the test sentences were all trained on (the model may have memorised them) or
when every test voice was a training voice. :func:`speech_breakdown` reports, per speech task, the share of test
sentences whose normalised transcript (:func:`~vssflow.metrics.wer.normalize_for_wer`) is also a training
transcript, and WER/CER separately for seen vs unseen sentences, for sentences of known words vs sentences with a
word no training transcript has, and for held-out vs training voices (the manifest's ``extra["held_out_voice"]``,
where the corpus marks it).

The word split tells two tests apart. An unseen sentence of known words (GRID's closed vocabulary) asks whether the
model can recombine what it heard; a sentence with a new word asks it to say a word it never heard, which a small
model trained on a few hundred clips cannot (open vocabulary, as LRS3).
"""

from __future__ import annotations

from collections.abc import Iterable

from vssflow.constants import SPEECH_TASKS
from vssflow.metrics.suite import mean_ci, median
from vssflow.metrics.wer import normalize_for_wer

SPEECH_METRICS = ("wer", "cer")
VARIANTS = ("generated", "gt_vocoded", "gt_raw")  # report keys: the clip's own values, then report["clips"][i][v]


def sentence_key(text: str | None) -> str:
    """The form two transcripts are compared in ("" for none): normalised as for WER."""
    return normalize_for_wer(text) if text else ""


def sentence_set(transcripts: Iterable[str | None]) -> set[str]:
    """The distinct non-empty :func:`sentence_key` of ``transcripts``."""
    return {k for k in (sentence_key(t) for t in transcripts) if k}


def sentence_words(text: str | None) -> list[str]:
    """The words of ``text`` as :func:`sentence_key` normalises them ([] for none)."""
    return sentence_key(text).split()


def new_words(text: str | None, vocabulary: set[str]) -> list[str]:
    """The words of ``text`` that are not in ``vocabulary`` (the words of the training transcripts), in order."""
    return [w for w in sentence_words(text) if w not in vocabulary]


def _agg(clips: list[dict], variant: str) -> dict:
    out = {}
    for k in SPEECH_METRICS:
        values = [(c if variant == "generated" else c.get(variant) or {}).get(k) for c in clips]
        values = [float(v) for v in values if v is not None]
        mean, half, n = mean_ci(values)
        out[k] = {"mean": mean, "ci95": half, "n": n, "median": median(values)}
    return out


def speech_breakdown(clips: list[dict], train_sentences: set[str]) -> dict[str, dict]:
    """Per speech task: how many test sentences were seen in training, and WER/CER by seen/unseen and by voice.

    Args:
        clips: report clip entries: "task", "transcript", optional "held_out_voice" (bool or None), the generated
            metrics at the top level and the other variants' metrics under "gt_vocoded" / "gt_raw".
        train_sentences: :func:`sentence_set` of the training split's transcripts.

    Returns:
        {task: {"sentences": n test clips with a transcript, "seen_in_train": how many of those are training
        sentences, "fraction_seen": their share (NaN when none), "train_sentences": len(train_sentences),
        "by_sentence": {"seen" | "unseen": {variant: {metric: {mean, ci95, n, median}}}},
        "by_words": {"known" | "new": ...} (every word in a training transcript, or not), "new_words": how many
        test sentences have a new word, "by_voice": {"held_out" | "training": ...} (only when some clip says
        whether its voice is held out)}}
    """
    out = {}
    vocabulary = {w for t in train_sentences for w in t.split()}
    for task in SPEECH_TASKS:
        sel = [c for c in clips if c.get("task") == task and sentence_key(c.get("transcript"))]
        if not sel:
            continue
        seen = [c for c in sel if sentence_key(c["transcript"]) in train_sentences]
        groups = {"by_sentence": {"seen": seen, "unseen": [c for c in sel if c not in seen]}}
        new = [c for c in sel if new_words(c["transcript"], vocabulary)]
        groups["by_words"] = {"known": [c for c in sel if c not in new], "new": new}
        if any(c.get("held_out_voice") is not None for c in sel):
            groups["by_voice"] = {
                "held_out": [c for c in sel if c.get("held_out_voice") is True],
                "training": [c for c in sel if c.get("held_out_voice") is False],
            }
        entry = {
            "sentences": len(sel),
            "seen_in_train": len(seen),
            "fraction_seen": len(seen) / len(sel),
            "train_sentences": len(train_sentences),
            "new_words": len(new),
        }
        for name, parts in groups.items():
            entry[name] = {p: {v: _agg(cs, v) for v in VARIANTS} for p, cs in parts.items() if cs}
        out[task] = entry
    return out
