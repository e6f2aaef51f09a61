"""vssflow/text/subtitles.py: SRT and WebVTT cues, speakers, and one-line errors or recorded repairs for bad input."""

from __future__ import annotations

import pytest

from vssflow.text.subtitles import SubtitleError, format_time, parse_subtitles, read_subtitles

SRT = """1
00:00:01,000 --> 00:00:02,500
[ALICE] Hello <i>there</i>.

2
00:00:03,000 --> 00:00:05,250 X1:10 X2:20
{\\an8}Where is the
- blue door &amp; the key?

3
00:00:06,000 --> 00:00:07,000
[door slams]

4
00:01:02,5 --> 00:01:04,120
[BOB] Right here. (laughs)
"""

VTT = """WEBVTT - a header line
Kind: captions

NOTE a comment
that spans lines

intro
00:01.000 --> 00:02.500 align:start
<v.loud Alice>Hello there.</v>

00:00:03.000 --> 00:00:05.000
<v Bob>Where <c.y>is</c> it<00:00:04.000> now?

00:06.000 --> 00:07.000
Nobody named.
"""


def test_srt_cues_times_speakers_and_cleaned_text(tmp_path):
    path = tmp_path / "film.srt"
    path.write_bytes(("\ufeff" + SRT).replace("\n", "\r\n").encode())  # BOM and CRLF, as editors write them
    subs = read_subtitles(path)
    assert subs.format == "srt"
    got = [(c.number, c.start, c.end, c.speaker, c.text) for c in subs.cues]
    assert got == [
        (1, 1.0, 2.5, "ALICE", "Hello there."),
        (2, 3.0, 5.25, None, "Where is the blue door & the key?"),
        (4, 62.5, 64.12, "BOB", "Right here."),
    ]
    assert subs.fixes == ("cue 3: dropped, no spoken text (only '[door slams]')",)
    assert subs.speakers == ("ALICE", "BOB")
    assert [c.line for c in subs.cues] == [2, 6, 15]


def test_webvtt_cues_voices_and_blocks_that_are_not_cues(tmp_path):
    path = tmp_path / "film.vtt"
    path.write_text(VTT, encoding="utf-8")
    subs = read_subtitles(path, duration_s=10.0)
    assert subs.format == "vtt"
    got = [(c.number, c.start, c.end, c.speaker, c.text) for c in subs.cues]
    assert got == [(1, 1.0, 2.5, "Alice", "Hello there."), (2, 3.0, 5.0, "Bob", "Where is it now?"),
                   (3, 6.0, 7.0, None, "Nobody named.")]  # fmt: skip
    assert subs.fixes == ()
    # a .txt is recognised by its content
    other = tmp_path / "film.txt"
    other.write_text(VTT, encoding="utf-8")
    assert read_subtitles(other).format == "vtt"


def _srt(*cues: tuple[str, str, str]) -> str:
    return "\n".join(f"{i}\n{a} --> {b}\n{t}\n" for i, (a, b, t) in enumerate(cues, 1))


def _one_line_error(text: str, **kw) -> str:
    with pytest.raises(SubtitleError) as e:
        parse_subtitles(text, source="subs.srt", **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("subs.srt: ")
    return msg


OVERLAP_SAME = _srt(("00:00:01,000", "00:00:03,000", "[A] One two."), ("00:00:02,500", "00:00:04,000", "[a] Three."))
OVERLAP_OTHER = _srt(("00:00:01,000", "00:00:03,000", "[A] One two."), ("00:00:02,000", "00:00:04,000", "[B] Three."))
PAST_END = _srt(("00:00:01,000", "00:00:03,000", "Inside."), ("00:00:08,000", "00:00:12,000", "Runs past."),
                ("00:00:11,000", "00:00:12,000", "After."))  # fmt: skip
EMPTY = _srt(("00:00:01,000", "00:00:02,000", "Said."), ("00:00:03,000", "00:00:04,000", "<i> </i> ..."))


@pytest.mark.parametrize(
    "text, kw, expected",
    [
        (OVERLAP_SAME, {}, "cue 2 (line 6): starts at 00:00:02,500, 0.50 s before cue 1 ends"),
        (OVERLAP_OTHER, {}, "cue 2 (line 6): starts at 00:00:02,000, 1.00 s before cue 1 ends"),
        (PAST_END, {"duration_s": 10.0}, "cue 2 (line 6): ends at 00:00:12,000, after the video's end (00:00:10,000)"),
        (EMPTY, {}, "cue 2 (line 6): no spoken text; write what is said or delete the cue"),
    ],
)
def test_strict_refuses_what_the_default_repairs(text, kw, expected):
    msg = _one_line_error(text, strict=True, **kw)
    assert expected in msg
    assert parse_subtitles(text, source="subs.srt", strict=False, **kw).fixes  # the default repairs and says so


def test_repairs_merge_cut_clip_and_drop_and_are_recorded():
    same = parse_subtitles(OVERLAP_SAME)
    assert [(c.start, c.end, c.text) for c in same.cues] == [(1.0, 4.0, "One two. Three.")]
    assert same.fixes == ("cue 2: overlapped cue 1 by 0.50 s; merged into cue 1 (00:00:01,000 --> 00:00:04,000)",)
    other = parse_subtitles(OVERLAP_OTHER)
    assert [(c.start, c.end, c.speaker) for c in other.cues] == [(1.0, 2.0, "A"), (2.0, 4.0, "B")]
    assert other.fixes == ("cue 1: overlapped cue 2 by 1.00 s; cut to end at 00:00:02,000",)
    past = parse_subtitles(PAST_END, duration_s=10.0)
    assert [(c.number, c.start, c.end) for c in past.cues] == [(1, 1.0, 3.0), (2, 8.0, 10.0)]
    assert past.fixes == ("cue 2: ended at 00:00:12,000, after the video's end; cut to 00:00:10,000",
                          "cue 3: starts at 00:00:11,000, after the video's end (00:00:10,000); dropped")  # fmt: skip
    empty = parse_subtitles(EMPTY)
    assert [c.text for c in empty.cues] == ["Said."] and empty.fixes == ("cue 2: dropped, no spoken text",)
    # a cut that would leave less than a word merges instead
    tight = _srt(("00:00:01,000", "00:00:03,000", "[A] One."), ("00:00:01,100", "00:00:02,000", "[B] Two."))
    assert [(c.start, c.end, c.text) for c in parse_subtitles(tight).cues] == [(1.0, 3.0, "One. Two.")]
    # within one frame of the end is rounding, cut silently
    edge = parse_subtitles(_srt(("00:00:01,000", "00:00:10,030", "Edge.")), duration_s=10.0, strict=True)
    assert edge.cues[0].end == 10.0 and edge.fixes == ()


@pytest.mark.parametrize("strict", [False, True])
def test_what_cannot_be_repaired_is_refused_in_one_line_naming_the_cue(strict):
    backwards = _srt(("00:00:01,000", "00:00:02,000", "Fine."), ("00:00:05,000", "00:00:03,000", "Backwards."))
    msg = _one_line_error(backwards, strict=strict)
    assert "cue 2 (line 6): ends (00:00:03,000) before it starts (00:00:05,000); fix its times" in msg
    bad_timing = "1\n00:00:01,000 -> 00:00:02,000\nHi.\n"
    assert "cue 1 (line 2): '00:00:01,000 -> 00:00:02,000' is not a timing line; write it as" in _one_line_error(
        bad_timing, strict=strict
    )
    no_timing = "1\n00:00:01,000 --> 00:00:02,000\nHi.\n\n2\nHello.\n"
    assert "cue 2 (line 5): no timing line 'START --> END'" in _one_line_error(no_timing, strict=strict)
    assert "no cues found" in _one_line_error("just some text\n", strict=strict)
    assert "no cue with spoken text is left" in _one_line_error(_srt(("00:00:01,000", "00:00:02,000", "[music]")))


def test_non_utf8_names_the_cue_line_and_the_fix(tmp_path):
    path = tmp_path / "latin.srt"
    path.write_bytes(_srt(("00:00:01,000", "00:00:02,000", "Fine."), ("00:00:03,000", "00:00:04,000", "Café!"))
                     .encode("latin-1"))  # fmt: skip
    with pytest.raises(SubtitleError) as e:
        read_subtitles(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: cue 2, line 7: not UTF-8 (byte 0xe9); save the file as UTF-8 (e.g. `iconv")


def test_missing_file_and_vtt_without_header(tmp_path):
    from vssflow.errors import MissingFileError

    with pytest.raises(MissingFileError, match="subtitle file not found"):
        read_subtitles(tmp_path / "nope.srt")
    bad = tmp_path / "bad.vtt"
    bad.write_text("00:01.000 --> 00:02.000\nHi.\n")
    with pytest.raises(SubtitleError, match="a WebVTT file starts with 'WEBVTT'"):
        read_subtitles(bad)


def test_format_time_round_trips():
    for s in (0.0, 1.5, 62.125, 3723.004):
        text = f"1\n{format_time(s)} --> {format_time(s + 1)}\nx y\n"
        assert parse_subtitles(text).cues[0].start == pytest.approx(s, abs=1e-9)


def test_a_cue_naming_two_speakers_is_spoken_by_the_first_or_refused_with_strict():
    text = _srt(("00:00:01,000", "00:00:03,000", "[ALICE] Hi.\n[BOB] Hello."))
    subs = parse_subtitles(text)
    assert [(c.speaker, c.text) for c in subs.cues] == [("ALICE", "Hi. Hello.")]
    assert subs.fixes == ("cue 1: names speakers ALICE, BOB; spoken by ALICE",)
    assert "cue 1 (line 2): names 2 speakers (ALICE, BOB); split it into one cue per speaker" in _one_line_error(
        text, strict=True
    )
