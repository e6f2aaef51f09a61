"""Does dubbing say a cue worse than generating that cue alone? WER per cue (Whisper-base), with a trained model.

    python -m bench.dub_wer --model runs/demo/model --out /tmp/dub_wer --clips 40

Builds a video of ``--clips`` corpus clips (``tests/conftest_media.dub_video``: two espeak voices alternating with
sound scenes; half the clips speak), dubs it from its subtitles, and for every cue compares:
    dub_speech  the cue on the dub's speech stem (its window, gated to the cue)
    dub_mix     the dub's mix over the cue's window (the sound under the speech)
    alone       the same window cut out of the video (ffmpeg, lossless) and generated as its own clip with the same
                transcript, voice, speech span and seed, gated to the cue as the dub is
    truth       the corpus's own speech (espeak-ng), gated the same way: the ASR's ceiling on these voices
WER above 1 (insertions) is clipped at 1 for the clipped means; medians are not. Writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KEYS = ("dub_speech", "dub_mix", "alone", "truth")


def _gated(wav: np.ndarray, n: int, a: int, b: int) -> np.ndarray:
    """``wav``'s samples [a, b) in n samples of silence: a cue in its window, as the dub's speech stem has it."""
    g = np.zeros(n, np.float32)
    g[a:b] = wav[a:b]
    return g


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--seed", type=int, default=11, help="corpus seed of the video")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest_media import dub_video

    from vssflow.audio.io import read_audio
    from vssflow.constants import SAMPLE_RATE as SR
    from vssflow.dub import DubConfig, dub
    from vssflow.generator import Generator
    from vssflow.media.video import probe
    from vssflow.metrics.asr import load_asr
    from vssflow.metrics.wer import wer
    from vssflow.text.subtitles import read_subtitles

    out = Path(args.out)
    d = dub_video(out, clips=args.clips, seed=args.seed)
    gen = Generator.from_pretrained(args.model)
    asr = load_asr("whisper")
    info = probe(d["video"])
    subs = read_subtitles(d["srt"], duration_s=info.duration)
    t0 = time.perf_counter()
    res = dub(gen, d["video"], subs, voices=d["refs"], asr=asr, info=info, config=DubConfig(seed=0))
    t_dub = time.perf_counter() - t0
    truth = read_audio(d["audio"])
    rows = []
    for k, (cw, entry) in enumerate(zip(res.plan.cues, res.report["cues"], strict=True)):
        c = cw.cue
        w0, w1 = int(round(cw.window[0] * SR)), int(round(cw.window[1] * SR))
        a, b = int(round(cw.span[0] * SR)), int(round(cw.span[1] * SR))
        n = w1 - w0

        clip = out / f"cue{c.number}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{cw.window[0]:.3f}", "-i", str(d["video"]),
                        "-t", f"{cw.window[1] - cw.window[0]:.3f}", "-an", "-c:v", "libx264", "-preset", "ultrafast",
                        "-qp", "0", str(clip)], check=True)  # fmt: skip
        alone = gen.generate_for_video(clip, task="tts", transcript=c.text, reference_voice=d["refs"][c.speaker],
                                       speech_span=cw.span, seed=1 + k)  # fmt: skip
        rows.append({"cue": c.number, "text": c.text, "dub_speech": entry["wer"],
                     "dub_mix": wer(c.text, asr.transcribe(res.mix[w0:w1])),
                     "alone": wer(c.text, asr.transcribe(_gated(alone, n, a, b))),
                     "truth": wer(c.text, asr.transcribe(_gated(truth[w0:w1], n, a, b))),
                     "offset_s": entry["offset_s"], "model_outside_db": entry["model_outside_db"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    summary = {"cues": len(rows), "video_s": round(d["duration"], 2), "dub_s": round(t_dub, 1),
               "max_abs_offset_s": res.report["summary"]["max_abs_offset_s"],
               "median_model_outside_db": float(np.median([r["model_outside_db"] for r in rows]))}  # fmt: skip
    for key in KEYS:
        summary[f"median_{key}"] = round(float(np.median([r[key] for r in rows])), 3)
        summary[f"clipped_mean_{key}"] = round(float(np.mean([min(r[key], 1.0) for r in rows])), 3)
    print("SUMMARY", json.dumps(summary))
    (out / "report.json").write_text(json.dumps({"summary": summary, "rows": rows, "report": res.report}, indent=1))
    return summary


if __name__ == "__main__":
    main()
