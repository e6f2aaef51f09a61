"""The timing report of a dub: per cue the asked span, the speech measured on the output (by energy,
:func:`vssflow.features.span.span_from_voice_activity`), its offset, the model's own span before the gate, and the
cue's WER when an ASR is given."""

from __future__ import annotations

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.dub.plan import DubPlan
from vssflow.text.subtitles import Subtitles

__all__ = ["timing_report"]

Span = tuple[float, float]


def _measured(wav: np.ndarray, offset_s: float) -> Span | None:
    from vssflow.features.span import span_from_voice_activity

    span = span_from_voice_activity(wav)
    return None if span is None else (round(offset_s + span[0], 3), round(offset_s + span[1], 3))


def timing_report(video, subtitles: Subtitles, plan: DubPlan, chosen, speech, raw, asr, n_total) -> dict:
    cues = []
    n = len(plan.cues)
    for k, cw in enumerate(plan.cues):
        c = cw.cue
        # this cue's part of the speech stem: from the previous cue's end to the next cue's start, within its window
        lo = max(cw.window[0], plan.cues[k - 1].cue.end if k else 0.0)
        hi = min(cw.window[1], plan.cues[k + 1].cue.start if k + 1 < n else plan.duration_s)
        a, b = int(round(lo * SAMPLE_RATE)), int(round(hi * SAMPLE_RATE))
        measured = _measured(speech[a:b], a / SAMPLE_RATE)
        entry = {
            "number": c.number,
            "speaker": c.speaker,
            "voice": chosen[k][0],
            "text": c.text,
            "asked": [round(c.start, 3), round(c.end, 3)],
            "window": [round(cw.window[0], 3), round(cw.window[1], 3)],
            "model_windows": cw.model_windows,
            "measured": None if measured is None else list(measured),
            "offset_s": None
            if measured is None
            else {"start": round(measured[0] - c.start, 3), "end": round(measured[1] - c.end, 3)},  # fmt: skip
            "model_span": _span_list(_measured(raw[k][0], cw.window[0])),
            "model_outside_db": _outside_db(raw[k][0], cw.span),
        }
        if asr is not None:  # the cue's speech with the silence of its window around it (no neighbour's speech)
            from vssflow.metrics.wer import wer

            heard = asr.transcribe(raw[k][1])
            entry["heard"] = heard
            entry["wer"] = round(wer(c.text, heard), 4)
        cues.append(entry)
    offsets = [abs(v) for e in cues if e["offset_s"] for v in e["offset_s"].values()]
    wers = [e["wer"] for e in cues if "wer" in e]
    return {
        "video": str(video),
        "subtitles": subtitles.source,
        "duration_s": round(plan.duration_s, 3),
        "samples": n_total,
        "asr": None if asr is None else getattr(asr, "name", type(asr).__name__),
        "cues": cues,
        "summary": {
            "cues": len(cues),
            "speakers": list(subtitles.speakers),
            "silent_cues": sum(1 for e in cues if e["measured"] is None),
            "max_abs_offset_s": round(max(offsets), 3) if offsets else None,
            "median_wer": round(float(np.median(wers)), 4) if wers else None,
        },
    }


def _outside_db(wav: np.ndarray, span: Span) -> float | None:
    """Mean power of the model's own output in its window outside the cue's span, relative to inside it (dB): how
    much the model says outside the span it was given, before the gate (None when the window is all cue)."""
    a, b = int(round(span[0] * SAMPLE_RATE)), int(round(span[1] * SAMPLE_RATE))
    outside = np.concatenate([wav[:a], wav[b:]]).astype(np.float64)
    inside = wav[a:b].astype(np.float64)
    if len(outside) < SAMPLE_RATE // 50 or not len(inside):
        return None
    return round(float(10 * np.log10((np.mean(outside**2) + 1e-12) / (np.mean(inside**2) + 1e-12))), 2)


def _span_list(span: Span | None) -> list[float] | None:
    return None if span is None else [span[0], span[1]]
