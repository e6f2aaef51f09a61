"""pipelines/quarantine.py without Ray: the lenient manifest reader quarantines bad rows with their reason."""

import json

from pipelines.quarantine import read_manifest_lenient


def test_a_row_escaping_through_an_in_root_symlink_is_quarantined_and_the_rest_resolve_to_real_paths(tmp_path):
    # root/lnk -> root/a/b. "lnk/../../secret.mp4" really is root/secret.mp4 (kept, as that real path; the lexical
    # normalisation said root/../secret.mp4, outside the root); "lnk/../../../secret.mp4" really is outside.
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "lnk").symlink_to(root / "a" / "b")
    for p in (tmp_path / "secret.mp4", root / "secret.mp4"):
        p.write_bytes(b"x")
    rows = [
        {"clip_id": "in", "video": "lnk/../../secret.mp4", "task": "v2s"},
        {"clip_id": "out", "video": "lnk/../../../secret.mp4", "task": "v2s"},
        {"clip_id": "ref", "video": "secret.mp4", "task": "tts", "transcript": "hi",
         "reference_audio": "lnk/../../../secret.mp4"},
    ]  # fmt: skip
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    good, bad = read_manifest_lenient(manifest)
    assert [(r.clip_id, r.video) for r in good] == [("in", str(root / "secret.mp4"))]
    assert sorted((b["clip_id"], b["reason"], b["stage"]) for b in bad) == [
        ("out", "path_escape", "manifest"),
        ("ref", "path_escape", "manifest"),
    ]
    messages = {b["clip_id"]: b["message"] for b in bad}
    assert "video" in messages["out"] and "reference_audio" in messages["ref"] and "allowed roots" in messages["out"]
