"""The plan of a dub: where each cue is generated (one window of the video per cue, aligned to it). A pure function
of the cues, the video's duration and the model window; :mod:`vssflow.dub` says why it is laid out this way."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vssflow.constants import LATENT_HZ
from vssflow.errors import InputError
from vssflow.text.subtitles import Cue

__all__ = ["GRID_S", "CueWindow", "DubPlan", "plan_dub"]

GRID_S = 1.0 / LATENT_HZ  # 40 ms: one latent frame, one lip/sync frame
Span = tuple[float, float]


@dataclass(frozen=True)
class CueWindow:
    """Where one cue is generated.

    Attributes:
        cue: the cue.
        window: (start, end) seconds of the video generated for it, on the 40 ms grid, containing the cue.
        span: the cue's span in seconds from the window's start: the speech span of the window's generation.
        model_windows: model windows the window takes (1 unless the cue is longer than the model window).
    """

    cue: Cue
    window: Span
    span: Span
    model_windows: int = 1


@dataclass(frozen=True)
class DubPlan:
    """Every generation of a dub: one window per cue, and the sound's windows over the whole video."""

    duration_s: float
    cues: tuple[CueWindow, ...]
    sound_windows: tuple[Span, ...] = ()


def _snap_down(t: float) -> float:
    return math.floor(t / GRID_S + 1e-6) * GRID_S


def _snap_up(t: float) -> float:
    return math.ceil(t / GRID_S - 1e-6) * GRID_S


def plan_dub(
    cues: Sequence[Cue],
    duration_s: float,
    *,
    window_s: float,
    context_s: float = 0.3,
    sound_windows: Sequence[Span] = (),
    windows_of: Callable[[float], int] | None = None,
) -> DubPlan:
    """The windows of a dub (see the module docstring): each cue with up to ``context_s`` of video on each side,
    shortened to the model window ``window_s`` when it would exceed it, on the 40 ms grid, within the video.

    Args:
        cues: sorted, non-overlapping cues inside the video (:func:`vssflow.text.subtitles.read_subtitles`).
        duration_s: the video's duration.
        window_s: the model window in seconds.
        context_s: video before and after each cue.
        sound_windows: the sound pass's windows (recorded in the plan).
        windows_of: model windows a span of that many seconds takes (default: ceil over ``window_s``).
    """
    d = float(duration_s)
    planned = []
    for cue in cues:
        if not (0.0 <= cue.start < cue.end <= d + 1e-6):
            raise InputError(f"cue {cue.number}: {cue.start:.3f}-{cue.end:.3f} s is not inside the video (0 to "
                             f"{d:.3f} s); read the subtitles with the video's duration")  # fmt: skip
        length = cue.end - cue.start
        ctx = context_s
        if length + 2 * (context_s + GRID_S) > window_s >= length + 2 * GRID_S:  # fit it: less context
            ctx = (window_s - length) / 2 - GRID_S  # snapping adds at most a frame a side
        # (a cue longer than the model window keeps its context: it is crossfaded over model windows anyway)
        w0 = max(0.0, _snap_down(cue.start - ctx))
        w1 = min(d, _snap_up(cue.end + ctx))
        w0, w1 = round(w0, 6), round(w1, 6)
        n = windows_of(w1 - w0) if windows_of else max(1, math.ceil((w1 - w0) / window_s - 1e-6))
        planned.append(CueWindow(cue=cue, window=(w0, w1), span=(cue.start - w0, cue.end - w0), model_windows=n))
    return DubPlan(duration_s=d, cues=tuple(planned), sound_windows=tuple(sound_windows))
