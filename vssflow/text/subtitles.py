"""Subtitle files (SRT and WebVTT) -> timed cues of speech: what is said, when, and by whom.

    subs = read_subtitles("film.srt", duration_s=62.0)          # strict=False: fixes what it can, says what
    for cue in subs.cues:
        print(cue.number, cue.start, cue.end, cue.speaker, cue.text)
    subs.fixes                                                  # ("cue 4: overlapped cue 5 by 0.30 s; ...", ...)

A cue may name its speaker: a leading ``[ALICE] text`` (SRT or WebVTT) or WebVTT's voice span ``<v Alice>text``.
Formatting is removed from the spoken text: tags (``<i>``, ``<b>``, ``<c.x>``, ``<00:00:01.000>``), SSA overrides
(``{\\an8}``), HTML entities, dialogue dashes, and descriptions in brackets or parentheses (``[door slams]``,
``(laughs)``); a cue with nothing left to say is not speech and is dropped (noted in ``fixes``).

Bad input gets a one-line :class:`SubtitleError` naming the file, the cue number (SRT's own number, WebVTT's
position) and its line, and the fix. What cannot be repaired is refused whatever ``strict``: a file that is not
UTF-8, a timing line that does not parse, a cue that ends before it starts. With ``strict=True`` everything else
is refused too; with ``strict=False`` (the default) it is repaired and recorded in :attr:`Subtitles.fixes`:

* overlapping cues of the same speaker (or both unnamed) are merged into one; of different speakers the earlier
  is cut where the later starts (merged instead when less than :data:`MIN_CUE_S` would be left);
* a cue running past the video's end is cut to it; a cue starting after the end is dropped;
* a cue with no spoken text is dropped; a cue naming two speakers keeps the first.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from vssflow.errors import InputError, MissingFileError

__all__ = ["Cue", "Subtitles", "SubtitleError", "read_subtitles", "parse_subtitles", "format_time", "MIN_CUE_S"]

MIN_CUE_S = 0.2  # a cue shorter than this cannot hold a word: cut overlaps merge instead of leaving less
END_SLACK_S = 0.04  # one video frame: a cue ending this little past the video is cut silently (rounding)

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_ARROW = re.compile(r"-{1,2}>")
_SPEAKER = re.compile(r"^\s*\[([^\]]+)\]\s*(?=\S)")  # "[ALICE] text" (a bracket alone is a description)
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]+)>")  # WebVTT "<v Alice>" / "<v.loud Alice>"
_TAG = re.compile(r"</?[a-zA-Z][^>]*>|<\d[\d:.]*>|\{\\[^}]*\}")  # html-ish tags, vtt timestamps, SSA overrides
_DESCRIPTION = re.compile(r"\[[^\]]*\]|\([^)]*\)|♪[^♪]*♪|♪")


class SubtitleError(InputError):
    """A subtitle file that cannot be read as timed cues (or, with ``strict``, needs repairs)."""

    reason = "bad_subtitles"


@dataclass(frozen=True)
class Cue:
    """One cue of speech.

    Attributes:
        number: the cue's number in error messages and reports (SRT's own number; WebVTT: its position, from 1).
        start, end: seconds from the start of the video, start < end.
        text: what is said (formatting and descriptions removed), never empty.
        speaker: the named speaker as written (``[ALICE]`` -> "ALICE"), or None.
        line: the line of the file where the cue's timing is (1-based).
    """

    number: int
    start: float
    end: float
    text: str
    speaker: str | None = None
    line: int = 0

    @property
    def span(self) -> tuple[float, float]:
        return self.start, self.end


@dataclass(frozen=True)
class Subtitles:
    """The cues of a subtitle file, sorted by start, not overlapping, within the video when its duration is known.

    Attributes:
        cues: the cues.
        fixes: one line per repair made (empty with ``strict`` or for a clean file), for the report.
        format: "srt" or "vtt".
        source: the file's name (or the ``source`` given to :func:`parse_subtitles`).
    """

    cues: tuple[Cue, ...]
    fixes: tuple[str, ...] = ()
    format: str = "srt"
    source: str = "subtitles"

    @property
    def speakers(self) -> tuple[str, ...]:
        """Named speakers in order of first appearance."""
        seen: dict[str, None] = {}
        for c in self.cues:
            if c.speaker is not None:
                seen.setdefault(c.speaker, None)
        return tuple(seen)


def format_time(seconds: float, *, sep: str = ",") -> str:
    """Seconds -> ``HH:MM:SS,mmm`` (SRT; ``sep="."`` for WebVTT)."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def read_subtitles(path: str | os.PathLike, *, duration_s: float | None = None, strict: bool = False) -> Subtitles:
    """Read an SRT (``.srt``) or WebVTT (``.vtt``) file; other names are recognised by their content.

    Args:
        path: the subtitle file, UTF-8 (a byte-order mark is allowed).
        duration_s: the video's duration; cues are checked (and with ``strict=False`` cut) against it.
        strict: refuse every problem instead of repairing it (see the module docstring).

    Raises:
        SubtitleError / MissingFileError, one line naming the file, the cue and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("subtitle file not found; give an .srt or .vtt file (--subtitles)", source=str(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        cue = _cue_at_line(data[: e.start].decode("utf-8", errors="replace"), line)
        raise SubtitleError(
            f"{cue}line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix or '.srt'}`)",
            source=str(path),
        ) from None
    fmt = {".srt": "srt", ".vtt": "vtt"}.get(path.suffix.lower())
    return parse_subtitles(text, fmt=fmt, source=str(path), duration_s=duration_s, strict=strict)


def parse_subtitles(
    text: str,
    *,
    fmt: str | None = None,
    source: str = "subtitles",
    duration_s: float | None = None,
    strict: bool = False,
) -> Subtitles:
    """Parse subtitle text (see :func:`read_subtitles`). ``fmt``: "srt", "vtt" or None (from the content)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if fmt is None:
        fmt = "vtt" if text.lstrip().startswith("WEBVTT") else "srt"
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"fmt: expected 'srt', 'vtt' or None, got {fmt!r}")
    if fmt == "vtt" and not text.lstrip().startswith("WEBVTT"):
        raise SubtitleError("line 1: a WebVTT file starts with 'WEBVTT'; add that line or name the file .srt",
                            source=source)  # fmt: skip
    raw = _blocks(text, fmt, source)
    if not raw:
        raise SubtitleError("no cues found; a cue is a timing line 'START --> END' followed by its text",
                            source=source)  # fmt: skip
    fixes: list[str] = []
    cues: list[Cue] = []
    for cue, speakers, said in raw:
        where = f"cue {cue.number} (line {cue.line})"
        if not cue.text:
            what = "no spoken text" if not said else f"no spoken text (only {said!r})"
            if strict and not said:
                raise SubtitleError(f"{where}: {what}; write what is said or delete the cue", source=source)
            fixes.append(f"cue {cue.number}: dropped, {what}")
            continue
        if len(set(speakers)) > 1:
            if strict:
                raise SubtitleError(f"{where}: names {len(set(speakers))} speakers ({', '.join(speakers)}); split it "
                                    "into one cue per speaker", source=source)  # fmt: skip
            fixes.append(f"cue {cue.number}: names speakers {', '.join(speakers)}; spoken by {speakers[0]}")
        cues.append(cue)
    cues = sorted(cues, key=lambda c: (c.start, c.number))
    if duration_s is not None:  # first: a cue dropped past the end overlaps nothing
        cues = _fit_to_video(cues, float(duration_s), source, strict, fixes)
    cues = _resolve_overlaps(cues, source, strict, fixes)
    if not cues:
        raise SubtitleError("no cue with spoken text is left" + (f" ({'; '.join(fixes)})" if fixes else "") +
                            "; give cues with what is said", source=source)  # fmt: skip
    return Subtitles(cues=tuple(cues), fixes=tuple(fixes), format=fmt, source=source)


# ---- parsing ------------------------------------------------------------------------------------------------------


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def _cue_at_line(text_before: str, line: int) -> str:
    """'cue N, ' for the cue a line falls in (counting timing lines before it), '' before the first."""
    n = sum(1 for ln in text_before.split("\n") if _ARROW.search(ln))
    return f"cue {n}, " if n else ""


def _blocks(text: str, fmt: str, source: str) -> list[tuple[Cue, list[str], str]]:
    """The file's cues in file order: (cue with cleaned text, speakers named, descriptions removed)."""
    lines = text.split("\n")
    out: list[tuple[Cue, list[str], str]] = []
    if not any(_ARROW.search(ln) for ln in lines):  # not a subtitle file at all
        return out
    i, position = 0, 0
    if fmt == "vtt":  # the header runs to the first blank line
        while i < len(lines) and lines[i].strip():
            i += 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block_start = i
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        if fmt == "vtt" and re.match(r"^(NOTE|STYLE|REGION)\b", block[0]):
            continue
        t = next((k for k, ln in enumerate(block) if _ARROW.search(ln)), None)
        position += 1
        number = position
        if fmt == "srt" and block[0].strip().isdigit():
            number = int(block[0].strip())
        if t is None or t > 1:
            raise SubtitleError(f"cue {number} (line {block_start + 1}): no timing line 'START --> END' where "
                                f"expected (got {block[0].strip()[:40]!r}); write e.g. "
                                f"{format_time(1, sep=',' if fmt == 'srt' else '.')} --> "
                                f"{format_time(2.5, sep=',' if fmt == 'srt' else '.')}",
                                source=source)  # fmt: skip
        line = block_start + t + 1
        m = _TIMING.match(block[t])
        if m is None:
            sep = "," if fmt == "srt" else "."
            raise SubtitleError(f"cue {number} (line {line}): {block[t].strip()[:60]!r} is not a timing line; write "
                                f"it as {format_time(62, sep=sep)} --> {format_time(64.5, sep=sep)}",
                                source=source)  # fmt: skip
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        if end <= start:
            raise SubtitleError(f"cue {number} (line {line}): ends ({format_time(end)}) "
                                f"{'before' if end < start else 'when'} it starts ({format_time(start)}); fix its "
                                "times so that END > START", source=source)  # fmt: skip
        text_, speakers, said = _clean(block[t + 1 :])
        cue = Cue(number=number, start=start, end=end, text=text_, speaker=speakers[0] if speakers else None,
                  line=line)  # fmt: skip
        out.append((cue, speakers, said))
    return out


def _clean(lines: list[str]) -> tuple[str, list[str], str]:
    """Cue text lines -> (spoken text, speakers named, the descriptions removed)."""
    speakers: list[str] = []
    words: list[str] = []
    removed: list[str] = []
    for ln in lines:
        for name in _VOICE.findall(ln):
            speakers.append(name.strip())
        ln = _TAG.sub("", ln)
        ln = html.unescape(ln)
        ln = re.sub(r"^\s*-\s*", "", ln)  # dialogue dash
        m = _SPEAKER.match(ln)
        if m:
            speakers.append(m.group(1).strip())
            ln = ln[m.end() :]
        removed += [d.strip() for d in _DESCRIPTION.findall(ln)]
        ln = _DESCRIPTION.sub(" ", ln)
        if ln.strip():
            words.append(ln.strip())
    text = re.sub(r"\s+", " ", " ".join(words)).strip()
    if not re.search(r"\w", text):  # punctuation alone is nothing to say
        text = ""
    return text, speakers, " ".join(removed)


# ---- repairs ------------------------------------------------------------------------------------------------------


def _resolve_overlaps(cues: list[Cue], source: str, strict: bool, fixes: list[str]) -> list[Cue]:
    out: list[Cue] = []
    for cue in cues:
        prev = out[-1] if out else None
        if prev is None or cue.start >= prev.end:
            out.append(cue)
            continue
        overlap = prev.end - cue.start
        if strict:
            raise SubtitleError(
                f"cue {cue.number} (line {cue.line}): starts at {format_time(cue.start)}, {overlap:.2f} s before cue "
                f"{prev.number} ends ({format_time(prev.end)}); make them not overlap (or run without --strict to "
                "merge or cut them)",
                source=source,
            )
        same = (prev.speaker or "").lower() == (cue.speaker or "").lower()
        if not same and cue.start - prev.start >= MIN_CUE_S:
            out[-1] = replace(prev, end=cue.start)
            fixes.append(f"cue {prev.number}: overlapped cue {cue.number} by {overlap:.2f} s; cut to end at "
                         f"{format_time(cue.start)}")  # fmt: skip
            out.append(cue)
        else:
            out[-1] = replace(prev, end=max(prev.end, cue.end), text=f"{prev.text} {cue.text}")
            fixes.append(f"cue {cue.number}: overlapped cue {prev.number} by {overlap:.2f} s; merged into cue "
                         f"{prev.number} ({format_time(prev.start)} --> {format_time(out[-1].end)})")  # fmt: skip
    return out


def _fit_to_video(cues: list[Cue], duration: float, source: str, strict: bool, fixes: list[str]) -> list[Cue]:
    out: list[Cue] = []
    for cue in cues:
        if cue.end <= duration + END_SLACK_S:
            out.append(replace(cue, end=min(cue.end, duration)))
            continue
        past = cue.start >= duration - MIN_CUE_S
        if strict:
            what = "starts" if past else "ends"
            raise SubtitleError(
                f"cue {cue.number} (line {cue.line}): {what} at {format_time(cue.start if past else cue.end)}, after "
                f"the video's end ({format_time(duration)}); fix its times or use the subtitles of this video",
                source=source,
            )
        if past:
            fixes.append(f"cue {cue.number}: starts at {format_time(cue.start)}, after the video's end "
                         f"({format_time(duration)}); dropped")  # fmt: skip
        else:
            out.append(replace(cue, end=duration))
            fixes.append(f"cue {cue.number}: ended at {format_time(cue.end)}, after the video's end; cut to "
                         f"{format_time(duration)}")  # fmt: skip
    return out
