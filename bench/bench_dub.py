"""Dubbing time per minute of video, against the sum of its parts generated one by one (issue 18).

On the 35 s two-speaker video of the tests (``tests/conftest_media.dub_video``: 7 cues between sound scenes):
    dub    = wall time of vssflow.dub.dub (the video's features once, every cue window, the V2S pass, gate, duck, mix,
             timing report without ASR)
    parts  = the same work as single calls: prepare() once + Generator.generate of each cue window alone + the V2S
             pass alone
    overhead = dub / parts - 1   (goal <= 0.10: the planner and the mixing add little; batching the cue windows
                                 may make it negative)
The model: ``--model DIR`` (e.g. runs/demo/model), else an untrained ``tiny`` preset with the default extractors
(timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: an untrained tiny preset)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest_media import dub_video

    from vssflow.dub import DubConfig, dub
    from vssflow.dub.run import _cue_features
    from vssflow.generator import Generator
    from vssflow.inference import prepare
    from vssflow.media.video import probe
    from vssflow.model import PRESETS
    from vssflow.text.subtitles import read_subtitles

    with tempfile.TemporaryDirectory() as tmp:
        video = dub_video(Path(tmp) / "video")
        if args.model:
            gen = Generator.from_pretrained(args.model)
        else:
            gen = Generator.from_pretrained(Generator(PRESETS["tiny"]).save_pretrained(Path(tmp) / "tiny"))
        info = probe(video["video"])
        subs = read_subtitles(video["srt"], duration_s=info.duration)
        _ = gen.extractors  # loaded once, outside both timings
        t_dub, result = _median_time(lambda: dub(gen, video["video"], subs, voices=video["refs"], info=info,
                                                 config=DubConfig(seed=0)), args.repeats)  # fmt: skip

        def parts():
            streams = prepare(video["video"], task="tts", transcript=subs.cues[0].text, extractors=gen.extractors,
                              info=info)  # fmt: skip
            from vssflow.audio.io import read_audio
            from vssflow.features.extract import phonemize_clip

            voice = {n: gen.extractors.speaker.embed(read_audio(r)) for n, r in video["refs"].items()}
            for k, cw in enumerate(result.plan.cues):
                ph = phonemize_clip({"clip_id": "c", "transcript": cw.cue.text}, gen.extractors.g2p)
                clip = _cue_features(streams, cw, ph["phonemes"], ph["phoneme_durations"], voice[cw.cue.speaker])
                gen.generate(clip, seed=1 + k)
            import dataclasses

            v2s = dataclasses.replace(streams, task="v2s", lip=None, phonemes=None, phoneme_durations=None,
                                      speaker=None, speech_span=None)  # fmt: skip
            gen.generate(v2s, seed=0)

        t_parts, _ = _median_time(parts, args.repeats)
    minutes = info.duration / 60
    row = {"video_s": round(info.duration, 2), "cues": len(subs.cues), "dub_s": round(t_dub, 2),
           "parts_s": round(t_parts, 2), "dub_s_per_min": round(t_dub / minutes, 1),
           "overhead": round(t_dub / t_parts - 1, 3), "model": args.model or "tiny (untrained)",
           "timing_s": result.report["timing_s"]}  # fmt: skip
    print(
        f"dub of {row['video_s']} s ({row['cues']} cues): {row['dub_s']} s = {row['dub_s_per_min']} s per minute "
        f"of video; its parts one by one {row['parts_s']} s; overhead {100 * row['overhead']:+.1f} % (goal <= 10 %)"
    )
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
