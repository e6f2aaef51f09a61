"""pipelines/demo.py: the console check `make demo` ends with (no line repeated more than 3 times)."""

from pipelines.demo import MAX_REPEATS, repeat_check, repeated_lines

CLEANER = "\x1b[36m(PlacementGroupCleaner pid=9237)\x1b[0m Failed to query Ray Train Controller actor state."


def test_a_line_seen_more_than_three_times_is_named_with_its_count():
    lines = [CLEANER + "\n"] * 5 + ["step 1\n", "step 2\n", "step 2\n", "\n", "\n", "\n", "\n"] + [" step 3 \n"] * 3
    assert MAX_REPEATS == 3
    # colour codes and blanks removed; blank lines and lines seen 3 times or fewer are not repeats
    assert repeated_lines(lines) == {"(PlacementGroupCleaner pid=9237) Failed to query Ray Train Controller actor "
                                     "state.": 5}  # fmt: skip
    problem = repeat_check(lines)
    assert problem.startswith("1 console line(s) repeated more than 3 times, the most 5 times: '(PlacementGroup")
    assert "\n" not in problem


def test_a_console_without_repeats_passes():
    assert repeated_lines(["a\n", "a\n", "a\n", "b\n"]) == {} and repeat_check(["a\n", "b\n"]) is None


def test_the_summary_gives_known_word_and_new_word_sentences_their_own_wer(tmp_path):
    """A demo's TTS line splits unseen sentences into those of training words and those with a word never heard."""
    import json

    from pipelines.demo import _quality_summary

    def agg(wer):
        return {"wer": {"mean": wer, "ci95": 0.1, "n": 3, "median": wer}}

    words = {"known": {"generated": agg(0.4), "gt_vocoded": agg(0.05)},
             "new": {"generated": agg(0.9), "gt_vocoded": agg(0.1)}}  # fmt: skip
    report = {"metrics": {"tts": {"wer": {"mean": 0.65, "n": 6}, "level_db_diff": {"median": -0.5}}},
              "metrics_gt_vocoded": {"tts": {"wer": {"mean": 0.07}}},
              "speech": {"tts": {"by_words": words}}}  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    [line] = _quality_summary(tmp_path / "report.json")
    assert "WER 0.65 vs 0.07" in line
    assert "known-word sentences WER 0.40 vs 0.05 (3)" in line and "new-word sentences WER 0.90 vs 0.10 (3)" in line
    del words["new"]  # every test sentence of known words: no split to show
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert "known-word" not in _quality_summary(tmp_path / "report.json")[0]


def test_the_demo_preprocesses_the_training_split_and_only_the_held_out_clips_it_evaluates(tmp_path):
    import json

    from pipelines.demo import VAL_CLIPS, _clips_used

    rows = [{"clip_id": f"{split}-{task}-{i:02d}", "task": task, "split": split, "video": f"clips/{i}.mp4"}
            for split, n in (("train", 12), ("val", 10), ("test", 30)) for task in ("v2s", "tts", "joint")
            for i in range(n)]  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    used = _clips_used(manifest, "v2s=20,tts=4")
    kept = [json.loads(line) for line in used.read_text().splitlines()]
    assert used.parent == manifest.parent  # the clips' relative paths still resolve
    count = {(s, t): sum(r["split"] == s and r["task"] == t for r in kept) for s in ("train", "val", "test")
             for t in ("v2s", "tts", "joint")}  # fmt: skip
    assert count == {**{("train", t): 12 for t in ("v2s", "tts", "joint")},
                     **{("val", t): VAL_CLIPS for t in ("v2s", "tts", "joint")},
                     ("test", "v2s"): 20, ("test", "tts"): 4, ("test", "joint"): 16}  # fmt: skip
    # the test clips kept are the first by clip id: the ones the evaluation takes
    assert sorted(r["clip_id"] for r in kept if r["split"] == "test" and r["task"] == "tts") == [
        f"test-tts-{i:02d}" for i in range(4)]  # fmt: skip
    ids = {r["clip_id"] for r in kept}
    assert kept == [r for r in reversed(rows) if r["clip_id"] in ids]  # in the manifest's order
