"""``vssflow generate``: audio (.wav) or the input video with a new soundtrack (.mp4) for one video.

    vssflow generate --model MODEL_DIR_OR_MLFLOW_URI --video IN.mp4 [--transcript TEXT | --transcript-file F]
        [--reference-voice REF.wav] [--speech-span START,END] [--task v2s|tts|joint] [--steps N --cfg S --seed K]
        [--stems] --out OUT

A thin command over the library's front end: :func:`vssflow.inference.check_request` (once, before the model is
loaded), :func:`vssflow.inference.prepare` (video -> conditions, no audio track needed, any length) and
:meth:`vssflow.generator.Generator.generate` (windows for a long video). A model given as an MLflow URI
(``models:/name/version``, ``runs:/id/path``) is resolved to a local directory by the ``vssflow`` command above
the library (``pipelines/cli.py``) before :func:`run` is called: the library itself never depends on MLflow.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vssflow.commands.flags import add_mlflow_uri, add_model
from vssflow.constants import DEFAULT_TASK, SAMPLE_RATE, TASKS
from vssflow.device import DEVICE_HELP, resolve_device
from vssflow.errors import InputError, MissingFileError

__all__ = ["add_arguments", "run"]


# -------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_mlflow_uri(p, local="none (only an MLflow URI given as --model needs one)", old="--tracking-uri")
    p.add_argument("--video", required=True, help="input video (mp4, webm, mov, mkv, ...)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--transcript", help="what is said (tts and joint)")
    text.add_argument("--transcript-file", help="UTF-8 text file with the transcript")
    p.add_argument("--reference-voice", help="recording of the voice to speak with (wav/flac, >= 1 s)")
    p.add_argument(
        "--speech-span", metavar="START,END",
        help="seconds of the video where the words are (tts, joint); default: where the mouth moves, else the whole "
        "video",
    )  # fmt: skip
    p.add_argument("--task", choices=TASKS, default=None, help=f"default: {DEFAULT_TASK}")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same audio)")
    p.add_argument("--method", choices=("euler", "midpoint", "dopri5"), default=None, help="ODE solver")
    p.add_argument("--stems", action="store_true", help="joint: also write OUT.speech.wav and OUT.sound.wav")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (bf16 on a GPU)")
    p.add_argument("--compile", action="store_true",
                   help="run the DiT through torch.compile at bucket shapes (faster on a GPU after a compile of "
                        "seconds to a minute per shape; needs a C++ compiler on the CPU)")  # fmt: skip
    p.add_argument("--out", required=True, help="output .wav, or .mp4/.mov/.mkv/.webm: the video with the new audio")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _StepProgress:
    """tqdm over the solver steps :meth:`Generator.generate` reports (every window and every --stems generation)."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="step", desc="sampling", disable=not enabled, file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar.total:
            self.bar.n = self.bar.total
        self.bar.close()


def _stem_path(out: Path, name: str) -> Path:
    return out.with_name(f"{out.stem}.{name}.wav")


def run(args: argparse.Namespace) -> int:
    from vssflow.audio.io import write_audio
    from vssflow.generator import Generator
    from vssflow.inference import check_request, is_model_uri, prepare, stem_plan
    from vssflow.media.mux import check_writable, mux_audio
    from vssflow.media.video import probe

    out = Path(args.out)
    if out.suffix.lower() not in (".wav", ".mp4", ".mov", ".m4v", ".mkv", ".webm"):
        raise InputError("--out must end in .wav (audio) or .mp4/.mov/.m4v/.mkv/.webm (video)", source=str(out))
    check_writable(out)  # before any model, video or generation time is spent
    device = resolve_device(args.device)
    transcript = args.transcript
    if args.transcript_file:
        path = Path(args.transcript_file)
        if not path.is_file():
            raise MissingFileError("transcript file not found", source=str(path))
        transcript = path.read_text(encoding="utf-8").strip()
    request = check_request(args.task, transcript, speech_span=args.speech_span)
    task = request.task
    if args.stems and task != "joint":
        raise InputError(f"--stems needs --task joint (got {task!r})")
    if is_model_uri(args.model):
        raise InputError(
            "an MLflow model URI is resolved by the `vssflow` command (pip install 'vssflow[pipelines]'); "
            "or give a model directory",
            source=args.model,
        )
    info = probe(args.video)
    print(f"vssflow generate: {task} for {args.video} ({info.duration:.2f} s, {info.width}x{info.height}) -> {out}")

    t0 = time.perf_counter()
    gen = Generator.from_pretrained(args.model, device=device.torch, dtype=device.dtype)
    if args.compile:
        gen.compile()
    steps, cfg, method = gen.check(steps=args.steps, cfg=args.cfg, method=args.method)  # before any decoding
    features = prepare(args.video, request=request, reference_voice=args.reference_voice, extractors=gen.extractors,
                       info=info)  # fmt: skip
    t_feat = time.perf_counter() - t0
    if features.phonemes is not None:
        span = features.speech_span
        where = "the whole video" if span is None else f"{span[0]:.2f}-{span[1]:.2f} s"
        print(f"vssflow generate: phonemes over {where} ({features.meta['speech_span_source']})")
    plan = stem_plan(features, stems=args.stems)
    bar = _StepProgress(enabled=not args.no_progress and method != "dopri5")
    t1 = time.perf_counter()
    wavs = gen.generate([f for _, f in plan], steps=steps, cfg=cfg, seed=args.seed, method=method, progress=bar)
    bar.close()
    t_gen = time.perf_counter() - t1
    by_name = {name: w for (name, _), w in zip(plan, wavs, strict=True)}
    mix = by_name["mix"]
    written = []
    if out.suffix.lower() == ".wav":
        written.append(write_audio(out, mix))
    else:
        written.append(mux_audio(args.video, mix, out))
    for name in ("speech", "sound"):
        if name in by_name:
            written.append(write_audio(_stem_path(out, name), by_name[name]))
    print(
        f"vssflow generate: {len(mix) / SAMPLE_RATE:.2f} s of audio (seed {args.seed}); features {t_feat:.1f} s, "
        f"sampling {t_gen:.1f} s; wrote {', '.join(str(p) for p in written)}"
    )
    return 0
