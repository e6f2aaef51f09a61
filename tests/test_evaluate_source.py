"""pipelines/evaluate_source.py: which clips an evaluation takes from shards or a manifest, and their ground truth.

Real shards (make_toy_shards) and a real manifest file; a manifest clip's conditions (manifest_clip, through
vssflow.inference.prepare) are checked end to end in test_evaluate.py.
"""

from dataclasses import replace

import numpy as np
import pytest
from conftest_data import SENTENCES, make_toy_shards

from pipelines.evaluate_config import EvalConfig
from pipelines.evaluate_source import ClipSource, ground_truth_mel
from vssflow.audio.mel import log_mel
from vssflow.data.manifest import ManifestRow, write_manifest
from vssflow.errors import MissingFileError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # v2s-0000..0002 and tts-0000..0001 are "train", v2s-0003 and tts-0002 "val"
    return make_toy_shards(tmp_path_factory.mktemp("shards"), n_v2s=3, n_tts=2, n_val=1)


def _ids(source: ClipSource) -> list[str]:
    return [str(source.load(i)[0].meta["clip_id"]) for i in range(len(source))]


def test_shard_clips_come_from_the_split_and_each_task_falls_back_to_every_split_when_it_has_none(shards):
    val = ClipSource(EvalConfig(model="m", data=str(shards), out="o", tasks=("v2s", "tts"), split="val"))
    assert [val.task(i) for i in range(len(val))] == ["v2s", "tts"] and _ids(val) == ["v2s-0003", "tts-0002"]
    # no "test" clips: every split, up to max_clips per task, in shard order
    test = ClipSource(EvalConfig(model="m", data=str(shards), out="o", tasks=("v2s", "tts"), max_clips=2))
    assert _ids(test) == ["v2s-0000", "v2s-0001", "tts-0000", "tts-0001"]
    per_task = ClipSource(EvalConfig(model="m", data=str(shards), out="o", tasks=("v2s", "tts"),
                                     max_clips={"v2s": 3, "tts": 1}))  # fmt: skip
    assert _ids(per_task) == ["v2s-0000", "v2s-0001", "v2s-0002", "tts-0000"]
    assert ClipSource(EvalConfig(model="m", data=str(shards), out="o", tasks=("tts",), split=None)).items[-1].index == 2
    assert test.train_sentences() == {SENTENCES[0], SENTENCES[1]}  # tts-0002 is a val clip
    assert "Griffin-Lim" in test.ground_truth_source and test.clip_facts("v2s-0000")["split"] is None


def test_a_shard_clips_ground_truth_is_its_target_mel_and_a_manifest_clips_the_mel_of_its_audio(shards):
    source = ClipSource(EvalConfig(model="m", data=str(shards), out="o", tasks=("tts",), split="val"))
    feats, ref = source.load(0)
    assert ref.clip_id == "tts-0002" and ref.task == "tts" and ref.transcript == SENTENCES[2]
    assert len(ref.wav) == int(feats.duration_s * 16000)  # the target mel vocoded, cut to the clip
    mel = ground_truth_mel(feats, ref)
    assert mel.dtype == np.float32 and np.array_equal(mel, np.asarray(feats.mel, np.float32))
    # a manifest clip's conditions carry no mel: the ground truth's is the mel of its audio
    np.testing.assert_array_equal(ground_truth_mel(replace(feats, mel=None), ref), np.asarray(log_mel(ref.wav)))
    assert ground_truth_mel(replace(feats, mel=None), ref).shape[1] == mel.shape[1] == 64


def test_manifest_clips_are_chosen_by_split_and_the_manifest_says_who_speaks_and_which_voices_are_held_out(tmp_path):
    for name in ("a.mp4", "b.mp4"):  # reading a manifest checks the paths; only ClipSource.load opens the videos
        (tmp_path / name).write_bytes(b"")
    rows = [
        ManifestRow("tts-test", "a.mp4", "tts", transcript="Open the blue door.", speaker_id="s1", split="test",
                    extra={"held_out_voice": "yes"}),  # a CSV cell
        ManifestRow("tts-train", "a.mp4", "tts", transcript="The red ball bounces!", speaker_id="s2",
                    extra={"held_out_voice": False}),
        ManifestRow("v2s-b", "b.mp4", "v2s", split="train"),
        ManifestRow("v2s-a", "b.mp4", "v2s", split="train"),
    ]  # fmt: skip
    manifest = write_manifest(rows, tmp_path / "manifest.jsonl")
    source = ClipSource(EvalConfig(model="m", data=str(manifest), out="o", max_clips=2, tasks=("v2s", "tts")))
    # up to 2 clips per task of the test split; v2s has none there: every split, ordered by split and clip_id
    assert source.is_manifest and [r.clip_id for r in source.items] == ["v2s-a", "v2s-b", "tts-test"]
    assert source.clip_facts("tts-test") == {"split": "test", "speaker_id": "s1", "held_out_voice": True}
    assert source.clip_facts("tts-train")["held_out_voice"] is False
    assert source.clip_facts("v2s-a")["held_out_voice"] is None and source.clip_facts("nope")["split"] is None
    assert source.train_sentences() == {"the red ball bounces"}  # normalised as for WER
    assert source.ground_truth_source.startswith("source audio")


def test_missing_evaluation_data_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(MissingFileError, match=f"^{tmp_path / 'nope'}: evaluation data not found; pass a shard"):
        ClipSource(EvalConfig(model="m", data=str(tmp_path / "nope"), out="o"))
