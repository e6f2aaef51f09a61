"""The manifest format (JSONL and CSV), path checks, validation errors, and the dataset adapters on fixture trees."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from vssflow.data import adapters
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


# ------------------------------------------------------------------------------------------------- adapters
def test_vggsound(tmp_path):
    root = tmp_path / "vggsound"
    (root).mkdir()
    csv_path = root / "vggsound.csv"
    csv_path.write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        "--0PQM4-hqg,30,waterfall burbling,train\n"
        "--aaILOrkII,200,playing bass guitar,train\n"
        "missingclip,5,dog barking,train\n"
    )
    touch(root / "video" / "---g-f_I2yQ_000001.mp4")
    touch(root / "video" / "sub" / "--0PQM4-hqg_30.mp4")
    touch(root / "video" / "--aaILOrkII.mp4")  # a whole video: the 10 s window is selected
    res = adapters.vggsound(csv_path, root / "video")
    assert [r.clip_id for r in res.rows] == ["vggsound----g-f_I2yQ_000001", "vggsound---0PQM4-hqg_000030",
                                             "vggsound---aaILOrkII_000200"]  # fmt: skip
    assert [r.split for r in res.rows] == ["test", "train", "train"]
    assert res.rows[1].extra["label"] == "waterfall burbling" and res.rows[1].task == "v2s"
    assert (res.rows[0].start, res.rows[0].end) == (0.0, 10.0) and (res.rows[2].start, res.rows[2].end) == (200, 210)
    assert res.missing == ["missingclip_5"]
    m = write_manifest(res.rows, root / "manifest.jsonl")
    assert read_manifest(m) == res.rows
    bad = root / "bad.csv"
    bad.write_text("abc,notanumber,x,train\n")
    with pytest.raises(ManifestError, match="line 1"):
        adapters.vggsound(bad, root / "video")


def test_chem_speaker_dirs(tmp_path):
    root = tmp_path / "chem"
    for spk, clip, text in [("teacher", "c001", "The atom has a nucleus."), ("teacher", "c002", "Electrons move.")]:
        touch(root / spk / f"{clip}.mp4")
        (root / spk / f"{clip}.txt").write_text(text + "\n")
    touch(root / "teacher" / "c003.mp4")  # no transcript
    touch(root / "guest" / "g1.avi")
    (root / "guest" / "g1.lab").write_text("hello  world")
    (root / "test.txt").write_text("teacher/c002\n")
    res = adapters.chem(root)
    by_id = {r.clip_id: r for r in res.rows}
    assert set(by_id) == {"chem-teacher-c001", "chem-teacher-c002", "chem-guest-g1"}
    assert by_id["chem-teacher-c002"].split == "test"
    assert by_id["chem-guest-g1"].transcript == "hello world" and by_id["chem-guest-g1"].speaker_id == "chem-guest"
    assert res.missing == ["teacher/c003 (transcript)"]
    assert read_manifest(write_manifest(res.rows, root / "m.csv")) == res.rows


def test_grid(tmp_path):
    root = tmp_path / "grid"
    align = "0 23750 sil\n23750 29500 bin\n29500 34000 blue\n34000 35500 at\n35500 41000 f\n41000 47000 two\n" \
            "47000 53000 now\n53000 74500 sil\n"  # fmt: skip
    touch(root / "s1" / "bbaf2n.mpg")
    (root / "align").mkdir()
    (root / "align" / "bbaf2n.align").write_text(align)
    touch(root / "s12" / "video" / "lgaz8p.mpg")
    touch(root / "s12" / "align" / "lgaz8p.align").write_text("0 1000 sil\n1000 26000 lay\n")
    touch(root / "s2" / "prac5s.mpg")  # no alignment
    res = adapters.grid(root)
    assert [r.clip_id for r in res.rows] == ["grid-s1-bbaf2n", "grid-s12-lgaz8p"]
    r = res.rows[0]
    assert r.transcript == "bin blue at f two now" and r.speaker_id == "grid-s1"
    assert r.words[0] == TimedLabel("bin", 0.95, 1.18) and r.words[-1].end == pytest.approx(2.12)
    assert res.missing == ["s2/prac5s (align)"]
    touch(root / "s3" / "x.mpg")
    touch(root / "s3" / "x.align").write_text("0 10 sil extra\n")
    with pytest.raises(ManifestError, match="line 1"):
        adapters.grid(root)


def test_lrs2(tmp_path):
    root = tmp_path / "lrs2"
    touch(root / "main" / "6330311066473698535" / "00011.mp4")
    (root / "main" / "6330311066473698535" / "00011.txt").write_text(
        "Text:  WHEN YOU'RE COOKING CHIPS AT HOME\nConf:  4\n"
    )
    touch(root / "main" / "6330311066473698535" / "00018.mp4")
    (root / "main" / "6330311066473698535" / "00018.txt").write_text("Text:  IT'S A GOOD IDEA\nConf:  3\n")
    touch(root / "pretrain" / "5535415699068794046" / "00001.mp4")
    (root / "pretrain" / "5535415699068794046" / "00001.txt").write_text(
        "Text:  AND HE PLAYS\nConf:  3\n\nWORD START END ASDSCORE\nAND 0.10 0.25 1.2\nHE 0.25 0.40 2.0\n"
        "PLAYS 0.40 0.90 3.1\n"
    )
    (root / "train.txt").write_text("6330311066473698535/00011\n")
    (root / "test.txt").write_text("6330311066473698535/00018 NF\n")
    (root / "val.txt").write_text("6330311066473698535/99999\n")
    (root / "pretrain.txt").write_text("5535415699068794046/00001\n")
    res = adapters.lrs2(root)
    by_id = {r.clip_id: r for r in res.rows}
    assert set(by_id) == {"lrs2-pretrain-5535415699068794046-00001", "lrs2-train-6330311066473698535-00011",
                          "lrs2-test-6330311066473698535-00018"}  # fmt: skip
    t = by_id["lrs2-test-6330311066473698535-00018"]
    assert t.split == "test" and t.transcript == "IT'S A GOOD IDEA" and t.words is None
    p = by_id["lrs2-pretrain-5535415699068794046-00001"]
    assert p.split == "train" and [w.label for w in p.words] == ["AND", "HE", "PLAYS"] and p.words[2].end == 0.9
    assert res.missing == ["val:6330311066473698535/99999"]
    assert read_manifest(write_manifest(res.rows, root / "manifest.jsonl")) == res.rows
    with pytest.raises(MissingFileError):
        adapters.lrs2(tmp_path / "empty_dir_that_is_missing")


def test_synth_corpus_manifest_is_readable_by_the_same_reader(tmp_path):
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    report = write_corpus(CorpusConfig(out=str(tmp_path), clips=3, seed=0, duration=(2.0, 2.0), workers=1))
    rows = read_manifest(report.manifest)
    assert len(rows) == 3 and all(Path(r.video).is_file() for r in rows)
    write_manifest(rows, tmp_path / "copy.csv")
    assert read_manifest(tmp_path / "copy.csv") == rows
