"""The manifest format (JSONL and CSV), path checks, validation errors (the dataset adapters: test_adapters)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from vssflow.data.manifest import (
    FROM_VIDEO,
    Event,
    ManifestRow,
    TimedLabel,
    read_manifest,
    write_manifest,
)
from vssflow.errors import EmptyFileError, ManifestError, MissingFileError, PathEscapeError


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sample_rows(d: Path) -> list[ManifestRow]:
    touch(d / "clips" / "a.mp4")
    touch(d / "clips" / "b.mp4")
    touch(d / "refs" / "spk.wav")
    touch(d / "clips" / "b.speech.wav")
    touch(d / "clips" / "b.sound.wav")
    return [
        ManifestRow(
            clip_id="a",
            video=str(d / "clips" / "a.mp4"),
            task="v2s",
            end=2.0,
            split="val",
            licence="CC0-1.0",
            source="test",
            events=(Event(0.4, "kick"), Event(1.2, "snare")),
        ),
        ManifestRow(
            clip_id="b",
            video=str(d / "clips" / "b.mp4"),
            task="joint",
            audio=FROM_VIDEO,
            start=0.5,
            end=3.25,
            transcript='She said "hi, there", twice.',
            speaker_id="spk",
            reference_audio=str(d / "refs" / "spk.wav"),
            split="test",
            licence="CC-BY-SA-3.0",
            source="test",
            events=(Event(1.0, "bell"),),
            phonemes=(TimedLabel("ʃ", 0.1, 0.2), TimedLabel("iː", 0.2, 0.35)),
            words=(TimedLabel("She", 0.1, 0.35),),
            stems={"speech": str(d / "clips" / "b.speech.wav"), "sound": str(d / "clips" / "b.sound.wav")},
            extra={"label": "x", "mouth_box": [1.0, 2.0, 3.0, 4.0]},
        ),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip(tmp_path, suffix):
    rows = sample_rows(tmp_path)
    path = write_manifest(rows, tmp_path / f"manifest{suffix}")
    back = read_manifest(path)
    assert back == rows
    text = path.read_text()
    assert str(tmp_path) not in text  # paths under the manifest dir are written relative
    assert "clips/a.mp4" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_csv_and_jsonl_agree_and_relocate(tmp_path):
    rows = sample_rows(tmp_path / "d")
    write_manifest(rows, tmp_path / "d" / "m.jsonl")
    write_manifest(rows, tmp_path / "d" / "m.csv")
    os.rename(tmp_path / "d", tmp_path / "moved")  # relative paths follow the directory
    a, b = read_manifest(tmp_path / "moved" / "m.jsonl"), read_manifest(tmp_path / "moved" / "m.csv")
    assert a == b
    assert a[1].stems["speech"] == str(tmp_path / "moved" / "clips" / "b.speech.wav")


def write_lines(path: Path, recs) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return path


def test_path_escape_is_refused(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    touch(tmp_path / "outside.mp4")
    for video in ("../outside.mp4", str(tmp_path / "outside.mp4"), "clips/../../outside.mp4"):
        m = write_lines(d / "m.jsonl", [{"clip_id": "a", "video": video, "task": "v2s"}])
        with pytest.raises(PathEscapeError, match=r"m\.jsonl:1: video"):
            read_manifest(m)
    (d / "link.mp4").symlink_to(tmp_path / "outside.mp4")  # a symlink out is an escape too
    m = write_lines(d / "m.jsonl", [{"clip_id": "a", "video": "link.mp4", "task": "v2s"}])
    with pytest.raises(PathEscapeError):
        read_manifest(m)
    # the reference audio and stems are checked as well
    m = write_lines(d / "m.jsonl", [{"clip_id": "a", "video": "a.mp4", "task": "joint", "transcript": "hi",
                                     "stems": {"speech": "../x.wav"}}])  # fmt: skip
    with pytest.raises(PathEscapeError, match="stems.speech"):
        read_manifest(m)
    # ...and allowed when the root is allowed explicitly
    m = write_lines(d / "m.jsonl", [{"clip_id": "a", "video": "../outside.mp4", "task": "v2s"}])
    assert read_manifest(m, allowed_roots=[tmp_path])[0].video == str(tmp_path / "outside.mp4")


def test_a_symlink_then_dotdot_resolves_to_the_real_path_not_the_lexical_one(tmp_path):
    # root/lnk -> root/a/b: "lnk/../../secret.mp4" is root/secret.mp4 on disk (inside: allowed) but lexically
    # root/../secret.mp4 (outside). The path checked is the path returned and opened.
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "lnk").symlink_to(root / "a" / "b")
    touch(tmp_path / "secret.mp4")
    touch(root / "secret.mp4")
    m = write_lines(root / "m.jsonl", [{"clip_id": "a", "video": "lnk/../../secret.mp4", "task": "v2s"}])
    assert read_manifest(m)[0].video == str(root / "secret.mp4")
    m = write_lines(root / "m.jsonl", [{"clip_id": "a", "video": "lnk/../../../secret.mp4", "task": "v2s"}])
    with pytest.raises(PathEscapeError, match=r"m\.jsonl:1: video"):  # really outside: refused
        read_manifest(m)


@pytest.mark.parametrize(
    "rec, line, field",
    [
        ({"clip_id": "a", "video": "a.mp4", "task": "sing"}, 2, "task"),
        ({"clip_id": "a", "video": "a.mp4", "task": "tts"}, 2, "transcript"),
        ({"clip_id": "a", "task": "v2s"}, 2, "video"),
        ({"clip_id": "a", "video": "a.mp4", "task": "v2s", "start": 2, "end": 1}, 2, "end"),
        ({"clip_id": "a", "video": "a.mp4", "task": "v2s", "start": "soon"}, 2, "start"),
        ({"clip_id": "a", "video": "a.mp4", "task": "v2s", "split": "dev"}, 2, "split"),
        ({"clip_id": "a", "video": "a.mp4", "task": "v2s", "events": [{"time": 1}]}, 2, "events"),
        ({"clip_id": "a", "video": "a.mp4", "task": "v2s", "phonemes": [["a", 1]]}, 2, "phonemes"),
        ({"clip_id": "z", "video": "a.mp4", "task": "v2s"}, 2, "clip_id"),  # duplicate of line 1
        ("{not json", 2, "JSON"),
    ],
)
def test_validation_names_line_and_field(tmp_path, rec, line, field):
    first = {"clip_id": "z", "video": "z.mp4", "task": "v2s"}
    m = write_lines(tmp_path / "m.jsonl", [first, rec])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:?\S*{line}\b.*{field}|line {line}.*{field}") as e:
        read_manifest(m)
    assert "\n" not in str(e.value)


def test_csv_errors_name_the_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,task,transcript\na,a.mp4,v2s,\nb,b.mp4,tts,\n")
    with pytest.raises(ManifestError, match=r"m\.csv:3: transcript"):
        read_manifest(m)
    m.write_text("video,task\na.mp4,v2s\n")
    with pytest.raises(ManifestError, match="header"):
        read_manifest(m)


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(MissingFileError):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n# only a comment\n")
    with pytest.raises(EmptyFileError):
        read_manifest(tmp_path / "e.jsonl")


def test_defaults_and_unknown_columns_survive(tmp_path):
    m = write_lines(tmp_path / "m.jsonl", [{"clip_id": "a", "video": "a.mp4", "task": "v2s", "my_tag": [1, 2]}])
    (row,) = read_manifest(m)
    assert row.audio == FROM_VIDEO and row.start == 0.0 and row.end is None and row.split == "train"
    assert row.extra == {"my_tag": [1, 2]}
    write_manifest([replace(row, split="val")], tmp_path / "n.csv")
    assert read_manifest(tmp_path / "n.csv")[0].extra == {"my_tag": [1, 2]}


def test_synth_corpus_manifest_is_readable_by_the_same_reader(tmp_path):
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    report = write_corpus(CorpusConfig(out=str(tmp_path), clips=3, seed=0, duration=(2.0, 2.0), workers=1))
    rows = read_manifest(report.manifest)
    assert len(rows) == 3 and all(Path(r.video).is_file() for r in rows)
    write_manifest(rows, tmp_path / "copy.csv")
    assert read_manifest(tmp_path / "copy.csv") == rows
