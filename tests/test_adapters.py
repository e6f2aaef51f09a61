"""The dataset adapters (vssflow.data.adapters): VGGSound, Chem, GRID and LRS2 layouts -> manifest rows, on fixture
trees laid out as each dataset ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from vssflow.data import adapters
from vssflow.data.manifest import TimedLabel, read_manifest, write_manifest
from vssflow.errors import ManifestError, MissingFileError


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


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
