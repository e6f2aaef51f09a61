"""``vssflow dub``: a whole video dubbed from its subtitles: speech for every cue, in its time, over generated sound.

    vssflow dub --model MODEL --video IN.mp4 --subtitles SUBS.srt|.vtt [--reference-voice REF.wav]
        [--voices SPEAKERS.yaml] [--sound on|off] [--strict] [--stems] [--asr auto|whisper|pocketsphinx|none]
        --out OUT.mp4

A thin command over :func:`vssflow.dub.dub`. Everything a user gives is checked before the model is loaded: the
output path, the video, the subtitles against the video's duration (:func:`vssflow.text.subtitles.read_subtitles`:
with ``--strict`` every problem is refused, by default what can be repaired is, and the report lists it), the
speakers file and every recording it names. Writes ``OUT`` (the video with the new soundtrack, or a .wav),
``OUT.timing.json`` (the timing report) and with ``--stems`` ``OUT.speech.wav``, ``OUT.sound.wav``,
``OUT.mix.wav``. ``--voices`` names the voice of each cue's speaker (``[ALICE] text``, WebVTT ``<v Alice>``); cues
without one (or naming a speaker the file lacks) speak with ``--reference-voice``, else the model's default voice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vssflow.commands.flags import add_mlflow_uri, add_model
from vssflow.constants import SAMPLE_RATE
from vssflow.device import DEVICE_HELP, resolve_device
from vssflow.errors import InputError, MissingFileError

__all__ = ["add_arguments", "run", "output_paths"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_mlflow_uri(p, local="none (only an MLflow URI given as --model needs one)", old="--tracking-uri")
    p.add_argument("--video", required=True, help="input video (mp4, webm, mov, mkv, ...); its own audio is not used")
    p.add_argument("--subtitles", required=True, help="what is said and when: an .srt or .vtt file (UTF-8)")
    p.add_argument("--reference-voice", help="recording of the voice of cues without a named speaker (wav/flac)")
    p.add_argument(
        "--voices", metavar="SPEAKERS.yaml",
        help="YAML of NAME: recording.wav, the voice of each named speaker ([ALICE] text, <v Alice>)",
    )  # fmt: skip
    p.add_argument("--sound", choices=("on", "off"), default="on", help="sound effects for the whole video (V2S)")
    p.add_argument(
        "--strict", action="store_true",
        help="refuse any problem in the subtitles or speakers (default: repair what can be, and report)",
    )  # fmt: skip
    p.add_argument("--stems", action="store_true", help="also write OUT.speech.wav, OUT.sound.wav and OUT.mix.wav")
    p.add_argument(
        "--asr", choices=("auto", "whisper", "pocketsphinx", "none"), default="auto",
        help="speech recognizer for each cue's WER in the report (auto: Whisper-base if installed)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same audio)")
    p.add_argument("--method", choices=("euler", "midpoint", "dopri5"), default=None, help="ODE solver")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (bf16 on a GPU)")
    p.add_argument("--out", required=True, help="output .mp4/.mov/.mkv/.webm (the video with the new audio) or .wav")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def output_paths(out: str | Path, *, stems: bool) -> dict[str, Path]:
    """Every file ``vssflow dub --out OUT`` writes: {"out", "report", and with stems "speech", "sound", "mix"}."""
    out = Path(out)
    paths = {"out": out, "report": out.with_name(f"{out.stem}.timing.json")}
    if stems:
        paths.update({k: out.with_name(f"{out.stem}.{k}.wav") for k in ("speech", "sound", "mix")})
    return paths


def _load_asr(kind: str):
    if kind == "none":
        return None, "not asked (--asr none)"
    from vssflow.errors import AssetError
    from vssflow.metrics.asr import load_asr

    try:
        asr = load_asr(kind)
    except AssetError as e:
        if kind != "auto":
            raise
        return None, f"no ASR installed ({e})"
    return asr, asr.name


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vssflow.audio.io import write_audio
    from vssflow.dub import DubConfig, dub, read_voices
    from vssflow.generator import Generator
    from vssflow.inference import is_model_uri
    from vssflow.media.mux import check_writable, mux_audio
    from vssflow.media.video import probe
    from vssflow.text.subtitles import read_subtitles

    out = Path(args.out)
    if out.suffix.lower() not in (".wav", *VIDEO_SUFFIXES):
        raise InputError("--out must end in .mp4/.mov/.m4v/.mkv/.webm (video) or .wav (audio)", source=str(out))
    paths = output_paths(out, stems=args.stems)
    for p in paths.values():
        check_writable(p)  # before any model, video or generation time is spent
    if is_model_uri(args.model):
        raise InputError("an MLflow model URI is resolved by the `vssflow` command (pip install 'vssflow[pipelines]'); "
                         "or give a model directory", source=args.model)  # fmt: skip
    if args.reference_voice and not Path(args.reference_voice).is_file():
        raise MissingFileError("reference voice not found (--reference-voice)", source=args.reference_voice)
    info = probe(args.video)
    subs = read_subtitles(args.subtitles, duration_s=float(info.duration), strict=args.strict)
    voices = read_voices(args.voices) if args.voices else None
    if voices and args.strict:
        from vssflow.dub import voice_for

        for cue in subs.cues:
            voice_for(cue, voices, args.reference_voice, strict=True)
    device = resolve_device(args.device)
    print(f"vssflow dub: {len(subs.cues)} cues ({', '.join(subs.speakers) or 'no named speakers'}) over "
          f"{info.duration:.2f} s of {args.video}, sound {args.sound} -> {out}")  # fmt: skip
    for fix in subs.fixes:
        print(f"vssflow dub: subtitles: {fix}")

    t0 = time.perf_counter()
    gen = Generator.from_pretrained(args.model, device=device.torch, dtype=device.dtype)
    config = DubConfig(sound=args.sound == "on", strict=args.strict, seed=args.seed, steps=args.steps, cfg=args.cfg,
                       method=args.method)  # fmt: skip
    gen.check(steps=args.steps, cfg=args.cfg, method=args.method)  # before any decoding
    asr, asr_note = _load_asr(args.asr)
    bar = tqdm(total=None, unit="step", desc="dubbing", file=sys.stderr,
               disable=args.no_progress or (args.method or gen.sampling.method) == "dopri5")  # fmt: skip

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    result = dub(gen, args.video, subs, voices=voices, reference_voice=args.reference_voice, config=config, asr=asr,
                 info=info, progress=progress)  # fmt: skip
    bar.close()
    written = [write_audio(out, result.mix) if out.suffix.lower() == ".wav" else mux_audio(args.video, result.mix, out)]
    if args.stems:
        written.append(write_audio(paths["speech"], result.speech))
        if result.sound is not None:
            written.append(write_audio(paths["sound"], result.sound))
        written.append(write_audio(paths["mix"], result.mix))
    report = {**result.report, "output": str(out), "model": str(args.model), "asr_note": asr_note,
              "strict": bool(args.strict)}  # fmt: skip
    paths["report"].write_text(json.dumps(report, indent=2))
    written.append(paths["report"])
    s = report["summary"]
    wer = "" if s["median_wer"] is None else f", median cue WER {s['median_wer']:.2f} ({report['asr']})"
    offset = "" if s["max_abs_offset_s"] is None else f", largest cue offset {s['max_abs_offset_s']:.3f} s"
    print(f"vssflow dub: {len(result.mix) / SAMPLE_RATE:.2f} s of audio in {time.perf_counter() - t0:.1f} s"
          f"{offset}{wer}; {s['silent_cues']} silent cues; wrote {', '.join(str(p) for p in written)}")  # fmt: skip
    return 0
