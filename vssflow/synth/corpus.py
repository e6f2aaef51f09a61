"""The embedded audio-visual corpus: deterministic V2S, VisualTTS and joint clips written as real .mp4 + manifest.

``write_corpus(CorpusConfig(out=DIR, clips=N, seed=S))`` writes ``DIR/clips/*.mp4`` (h264 + AAC, ``size``² at
``fps``, 16 kHz mono audio), per-source stems of joint clips, reference utterances of every speaker under
``DIR/refs/``, and ``DIR/manifest.jsonl`` (see ``docs/manifest.md``). Clip ``i`` depends only on ``(seed, i)``, so
the corpus is identical whatever the number of worker processes. Every file is written under a temporary name and
renamed when complete; the manifest is written last.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from vssflow.constants import SAMPLE_RATE, SPEECH_TASKS, TASKS
from vssflow.data.manifest import Event, ManifestRow, TimedLabel, write_manifest
from vssflow.errors import AssetError, InputError
from vssflow.synth import assets, espeak, scenes
from vssflow.synth.sentences import REFERENCE_SENTENCES, SPEAKERS, TEXTS, clip_sentence, num_sentences, sentence_split
from vssflow.synth.sounds import CLASSES

SYNTH_LICENCE = "CC0-1.0"  # what vssflow renders and espeak-ng speaks for the corpus
REAL_SPEAKER = "asterisk-allison"
HELD_OUT_SHARE = 0.5  # share of the val/test espeak clips spoken by a held-out voice (when some are held out)
LEAD_S = (0.2, 0.3)  # silence before the speech (>= 5 video frames: the mouth is seen closed first)
TAIL_S = (0.2, 0.3)  # silence after it (>= 0.2 s: a 200 ms shift, the metric validation's, cuts no word)


@dataclass(frozen=True)
class CorpusConfig:
    """What to write. ``mix`` is the share of v2s, tts and joint clips; ``real_speech`` the share of tts clips
    spoken by the real (asterisk) speaker when that package is installed.

    ``text`` is where clip sentences come from: "phrases" (default; a grammar of short natural sentences that
    Whisper, the evaluation's ASR, reads reliably), "grid" (the GRID grammar, 61,440 sentences, for the paper's
    benchmark layout) or "sentences" (the 32 fixed sentences of earlier corpora); see
    :mod:`vssflow.synth.sentences`. A tts/joint clip's ``split`` follows its sentence
    (:func:`~vssflow.synth.sentences.sentence_split` with the ``split`` fractions), so no sentence is in two
    splits; v2s clips draw their split at random. The last ``held_out_voices`` of the ``n_speakers`` espeak
    voices speak only val/test clips (:data:`HELD_OUT_SHARE` of them); the others speak in every split.
    """

    out: str = "corpus"
    clips: int = 12
    seed: int = 0
    duration: tuple[float, float] = (2.0, 4.0)
    mix: tuple[float, float, float] = (0.4, 0.4, 0.2)
    real_speech: float = 0.25
    real_sounds: bool = True
    size: int = 128
    fps: int = 25
    n_speakers: int = len(SPEAKERS)
    refs_per_speaker: int = 2
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    text: str = "phrases"
    held_out_voices: int = 2
    workers: int = 2
    crf: int = 20


# ------------------------------------------------------------------------------------------------- helpers
def task_plan(n: int, mix: tuple[float, float, float], seed: int) -> list[str]:
    """Exactly ``round(mix * n)`` clips per task (largest remainder), in a seeded random order."""
    w = np.asarray(mix, np.float64)
    if w.shape != (3,) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"--mix {mix}: give three non-negative weights for v2s,tts,joint")
    w = w / w.sum() * n
    counts = np.floor(w).astype(int)
    for k in np.argsort(-(w - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    plan = [t for t, c in zip(TASKS, counts, strict=True) for _ in range(c)]
    return [plan[i] for i in np.random.default_rng([seed, 1_000_003]).permutation(n)]


def _atomic_wav(path: Path, audio: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, *, crf: int = 20) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 and ``audio`` (S,) float32 16 kHz into an h264/AAC mp4, atomically.

    Encodes in-process with PyAV (libavcodec's libx264 + aac) when it is installed, which saves the ~0.15 s start
    of an ffmpeg process per clip; otherwise pipes raw frames and a wav into an ffmpeg subprocess.
    """
    tmp = path.parent / f".{path.name}.tmp"
    try:
        try:
            import av  # noqa: F401
        except ImportError:
            _write_mp4_ffmpeg(tmp, frames, audio, fps, crf)
        else:
            _write_mp4_pyav(tmp, frames, audio, fps, crf)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_mp4_pyav(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, crf: int) -> None:
    import av

    t, h, w, _ = frames.shape
    options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "g": str(fps)}
    with av.open(str(path), "w", format="mp4") as box:
        vs = box.add_stream("libx264", rate=fps, options=options)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.thread_count = 1
        aus = box.add_stream("aac", rate=SAMPLE_RATE, layout="mono", options={"aac_coder": "fast"})
        aus.bit_rate = 64_000
        for i in range(t):
            for pkt in vs.encode(av.VideoFrame.from_ndarray(frames[i], format="rgb24")):
                box.mux(pkt)
        for pkt in vs.encode():
            box.mux(pkt)
        x = np.clip(audio, -1, 1).astype(np.float32)[None]  # (1, S) planar mono
        for s in range(0, x.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s : s + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = SAMPLE_RATE, s
            for pkt in aus.encode(af):
                box.mux(pkt)
        for pkt in aus.encode():
            box.mux(pkt)


def _write_mp4_ffmpeg(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, crf: int) -> None:
    t, h, w, _ = frames.shape
    fd, tmp_wav = tempfile.mkstemp(suffix=".wav", dir=path.parent, prefix=".a-")
    os.close(fd)
    try:
        sf.write(tmp_wav, np.clip(audio, -1, 1), SAMPLE_RATE, subtype="FLOAT", format="WAV")
        cmd = [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-nostdin", "-threads", "1",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
            "-i", tmp_wav,
            "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-g", str(fps),
            "-x264-params", "threads=1",
            "-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k", "-ar", str(SAMPLE_RATE), "-ac", "1",
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            "-f", "mp4", str(path),
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
        except FileNotFoundError:
            raise AssetError("ffmpeg not found; install it (apt-get install ffmpeg) or PyAV (pip install av)") from None
        if proc.returncode != 0:
            raise AssetError(
                f"ffmpeg failed writing {path.name}: {proc.stderr.decode(errors='replace').strip()[-300:]}"
            )
    finally:
        if os.path.exists(tmp_wav):
            os.unlink(tmp_wav)


def _split(rng: np.random.Generator, split: tuple[float, float, float]) -> str:
    return str(rng.choice(["train", "val", "test"], p=np.asarray(split) / sum(split)))


def _duration(rng, cfg: CorpusConfig) -> tuple[float, int]:
    lo, hi = cfg.duration
    n = max(1, int(round(float(rng.uniform(lo, hi)) * cfg.fps)))
    return n / cfg.fps, n


def _speech_duration(cfg: CorpusConfig, need: float) -> tuple[float, int]:
    """The clip length for speech that needs ``need`` s with its lead and tail: ``need`` clamped to the range."""
    lo, hi = cfg.duration
    n = max(1, int(round(min(max(need, lo), hi) * cfg.fps)))
    return n / cfg.fps, n


def voice_sets(cfg: CorpusConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(seen, held_out) indices into :data:`SPEAKERS`: the last ``cfg.held_out_voices`` of the ``cfg.n_speakers``
    voices are held out (val/test only), the rest speak in every split."""
    n, h = cfg.n_speakers, cfg.held_out_voices
    return tuple(range(n - h)), tuple(range(n - h, n))


# ------------------------------------------------------------------------------------------------- speech
@dataclass(frozen=True)
class _Utt:
    audio: np.ndarray
    transcript: str
    speaker: str
    phonemes: tuple[TimedLabel, ...] | None
    words: tuple[TimedLabel, ...] | None
    licence: str
    source: str
    face: int  # face identity index (one per speaker)
    split: str  # the split of the transcript (sentence_split)
    held_out: bool  # spoken by a held-out voice


def _speak(rng: np.random.Generator, cfg: CorpusConfig, max_s: float, min_s: float, real: bool) -> _Utt:
    if real:
        prompts = [p for p in _clip_prompts() if p.duration <= max_s]
        filling = [p for p in prompts if p.duration >= min_s]  # prompts that fill the shortest clip, where any do
        prompts = filling or prompts
        if prompts:
            p = prompts[int(rng.integers(len(prompts)))]
            x = assets.trim_silence(assets.load_audio(p.path))
            ph = wd = None
            aligned = assets.align_speech(x, p.transcript)  # pocketsphinx, when installed
            if aligned is not None:
                wd = tuple(TimedLabel(*w) for w in aligned[0])
                ph = tuple(TimedLabel(*q) for q in aligned[1] if q[0] != "SIL")
            src = f"asterisk:{p.name}" + ("; aligned:pocketsphinx" if aligned else "")
            split = sentence_split(p.transcript, cfg.split)
            return _Utt(x, p.transcript, REAL_SPEAKER, ph, wd, assets.ASTERISK_LICENCE, src, len(SPEAKERS), split,
                        False)  # fmt: skip
    seen, held = voice_sets(cfg)
    # One draw picks the voice within its set, another whether a val/test clip gets a held-out voice: the voice
    # then depends on the sentence's split only through the set, and retries below do not favour fast voices.
    u_voice, u_held = (float(v) for v in rng.uniform(size=2))

    def voice_for(split: str) -> int:
        pool = held if held and split != "train" and u_held < HELD_OUT_SHARE else seen
        return pool[int(u_voice * len(pool))]

    best = None
    for _ in range(12):
        text = clip_sentence(cfg.text, int(rng.integers(num_sentences(cfg.text))))
        spk = voice_for(sentence_split(text, cfg.split))
        sp = espeak.synthesize(text, SPEAKERS[spk])
        if best is None or sp.duration < best[2].duration:
            best = (text, spk, sp)
        if sp.duration <= max_s:
            break
    text, spk, sp = best
    for _ in range(3):  # too long: keep the words that fit (a new text, so its split and maybe its voice change)
        if sp.duration <= max_s:
            break
        words = [w.label for w in sp.words if w.end <= max_s - 0.05]
        text = " ".join(words) or text.split()[0]
        spk = spk if spk in seen or sentence_split(text, cfg.split) != "train" else voice_for("train")
        sp = espeak.synthesize(text, SPEAKERS[spk])
    ph = tuple(TimedLabel(p.label, p.start, p.end) for p in sp.phonemes)
    wd = tuple(TimedLabel(w.label, w.start, w.end) for w in sp.words)
    voice = SPEAKERS[spk]
    return _Utt(sp.audio, text, f"espeak-{spk:02d}", ph, wd, SYNTH_LICENCE, f"espeak-ng:{voice.name}", spk,
                sentence_split(text, cfg.split), spk in held)  # fmt: skip


def _clip_prompts() -> list[assets.Prompt]:
    refs = set(p.name for p in _ref_prompts())
    return [p for p in assets.asterisk_prompts() if p.name not in refs and p.duration >= 1.0]


def _ref_prompts() -> list[assets.Prompt]:
    """The real speaker's reference utterances: a fixed set never used as clip speech."""
    ok = [p for p in assets.asterisk_prompts() if 1.5 <= p.duration <= 4.0]
    return ok[:: max(1, len(ok) // 3)][:3]


def write_references(cfg: CorpusConfig, out: Path) -> dict[str, list[str]]:
    """Write each speaker's reference utterances to ``out/refs``; return speaker_id -> list of relative paths."""
    ref_dir = out / "refs"
    ref_dir.mkdir(parents=True, exist_ok=True)
    refs: dict[str, list[str]] = {}
    for spk in range(cfg.n_speakers):
        sid = f"espeak-{spk:02d}"
        for k in range(cfg.refs_per_speaker):
            text = REFERENCE_SENTENCES[(spk + k) % len(REFERENCE_SENTENCES)]
            path = ref_dir / f"{sid}_ref{k}.wav"
            _atomic_wav(path, espeak.synthesize(text, SPEAKERS[spk]).audio)
            refs.setdefault(sid, []).append(f"refs/{path.name}")
    if cfg.real_speech > 0:
        for k, p in enumerate(_ref_prompts()):
            path = ref_dir / f"{REAL_SPEAKER}_ref{k}.wav"
            _atomic_wav(path, assets.trim_silence(assets.load_audio(p.path)))
            refs.setdefault(REAL_SPEAKER, []).append(f"refs/{path.name}")
    return refs


# ------------------------------------------------------------------------------------------------- one clip
def make_clip(cfg: CorpusConfig, index: int, task: str, out: Path, refs: dict[str, list[str]]) -> ManifestRow:
    """Render, mix and write clip ``index`` of ``task``; return its manifest row (paths relative to ``out``)."""
    rng = np.random.default_rng([cfg.seed, index])
    clip_id = f"s{cfg.seed}-{index:05d}-{task}"
    size, fps = cfg.size, cfg.fps
    licences, sources, extra = set(), [], {"synth_seed": cfg.seed, "synth_index": index}
    utt, lead = None, 0.0
    if task in SPEECH_TASKS:
        # the clip is lead + speech + tail (clamped to the duration range), so the speech fills most of it
        real = task == "tts" and REAL_SPEAKER in refs and rng.uniform() < cfg.real_speech
        lead, tail = float(rng.uniform(*LEAD_S)), float(rng.uniform(*TAIL_S))
        lo, hi = cfg.duration
        utt = _speak(rng, cfg, hi - lead - tail, lo - lead - tail, real)
        need = lead + len(utt.audio) / SAMPLE_RATE + tail
        if need < lo:  # the shortest clip is longer than the speech needs: spread the extra silence around it
            lead += float(rng.uniform()) * (lo - need)
        duration, n = _speech_duration(cfg, need)
        licences.add(utt.licence)
        sources.append(utt.source)
        extra["held_out_voice"] = utt.held_out
    else:
        duration, n = _duration(rng, cfg)
    n_samples = n * SAMPLE_RATE // fps
    if task == "v2s":
        box = scenes.Box(4, 4, size - 4, size - 8)
    elif task == "joint":
        box = scenes.Box(size // 2 + 4, 4, size - 4, size - 8)
    else:
        box = None
    frames = np.repeat(scenes.background(rng, size, box)[None], n, axis=0)  # (T, H, W, 3)
    speech = np.zeros(n_samples, np.float32)
    sound = np.zeros(n_samples, np.float32)
    events: list[Event] = []
    if utt is not None:
        s = int(round(lead * SAMPLE_RATE))
        k = min(len(utt.audio), n_samples - s)
        speech[s : s + k] = utt.audio[:k] * float(rng.uniform(0.6, 0.9)) / max(1e-6, float(np.abs(utt.audio).max()))
        if utt.phonemes is not None:
            opening = scenes.mouth_from_phonemes(utt.phonemes, n, fps, offset=lead)
        else:
            opening = scenes.mouth_from_envelope(speech, n, fps)
        center, scale = ((0.5, 0.5), 0.62) if task == "tts" else ((0.26, 0.55), 0.45)
        ident = scenes.face_identity(utt.face)
        mouth_box = scenes.draw_face_frames(frames, opening, center=center, scale=scale, identity=ident)
        extra["mouth_box"] = list(mouth_box)
        extra["speech_start"] = round(lead, 4)
        timed = utt.phonemes or utt.words
        end = timed[-1].end if timed else len(utt.audio) / SAMPLE_RATE
        extra["speech_end"] = round(min(lead + end, duration), 4)
    if box is not None:
        k_obj = int(rng.integers(1, 4)) if task == "v2s" else int(rng.integers(1, 3))
        classes = [CLASSES[j] for j in rng.choice(len(CLASSES), size=k_obj, replace=False)]
        snd = {c.name: assets.event_sound(c.name, allow_real=cfg.real_sounds) for c in classes}
        waves = {k: v.audio for k, v in snd.items()}
        clear = lambda imps: scenes.onsets_clear(imps, waves, fps, n_samples)  # noqa: E731
        tracks, impacts = scenes.simulate(rng, n, box, classes, accept=clear)
        scenes.draw_tracks(frames, tracks)
        sound = scenes.place_events(n_samples, impacts, fps, waves)
        events = [Event(round(i.frame / fps, 4), i.cls) for i in impacts]
        for c in classes:
            licences.add(snd[c.name].licence)
            sources.append(f"sound:{c.name}={snd[c.name].source}")
        sound *= float(rng.uniform(0.5, 0.8)) / max(1.0, float(np.abs(sound).max()))
    mix = speech + sound
    mix += np.random.default_rng([cfg.seed, index, 7]).normal(0, 3e-4, n_samples).astype(np.float32)  # room tone
    peak = float(np.abs(mix).max())
    if peak > 0.95:
        mix, speech, sound = mix * (0.95 / peak), speech * (0.95 / peak), sound * (0.95 / peak)
    clips = out / "clips"
    write_mp4(clips / f"{clip_id}.mp4", frames, mix, fps, crf=cfg.crf)
    stems = None
    if task == "joint":
        stems = {}
        for name, x in (("speech", speech), ("sound", sound)):
            _atomic_wav(clips / f"{clip_id}.{name}.wav", x)
            stems[name] = f"clips/{clip_id}.{name}.wav"
    reference = None
    if utt is not None:
        choices = refs.get(utt.speaker, [])
        reference = choices[int(rng.integers(len(choices)))] if choices else None

    def shift(seq):  # speech times -> clip times
        if seq is None:
            return None
        return tuple(TimedLabel(p.label, round(p.start + lead, 4), round(p.end + lead, 4)) for p in seq)

    return ManifestRow(
        clip_id=clip_id,
        video=f"clips/{clip_id}.mp4",
        task=task,
        start=0.0,
        end=round(duration, 4),
        transcript=None if utt is None else utt.transcript,
        speaker_id=None if utt is None else utt.speaker,
        reference_audio=reference,
        split=_split(rng, cfg.split) if utt is None else utt.split,
        licence=" AND ".join(sorted(licences)) or SYNTH_LICENCE,
        source="vssflow-synth; " + "; ".join(sources) if sources else "vssflow-synth",
        events=tuple(events),
        phonemes=None if utt is None else shift(utt.phonemes),
        words=None if utt is None else shift(utt.words),
        stems=stems,
        extra=extra,
    )


def _worker(job):
    cfg, index, task, out, refs = job
    return make_clip(cfg, index, task, Path(out), refs)


# ------------------------------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class CorpusReport:
    manifest: Path
    rows: list[ManifestRow]
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return len(self.rows) / max(self.seconds, 1e-9)


def write_corpus(cfg: CorpusConfig, *, progress=None) -> CorpusReport:
    """Write the corpus described by ``cfg``; return the manifest path, the rows and the wall time."""
    if cfg.clips < 1:
        raise InputError(f"--clips {cfg.clips}: give at least 1")
    lo, hi = cfg.duration
    if not (0.5 <= lo <= hi <= 10.0):
        raise InputError(f"--duration {lo}..{hi}: give 0.5 <= min <= max <= 10 seconds")
    if cfg.text not in TEXTS:
        raise InputError(f"--text {cfg.text}: give one of {', '.join(TEXTS)}")
    if not 0 <= cfg.held_out_voices < cfg.n_speakers <= len(SPEAKERS):
        raise InputError(f"--held-out-voices {cfg.held_out_voices}: give 0 to {cfg.n_speakers - 1} "
                         f"(of {cfg.n_speakers} espeak voices; at most {len(SPEAKERS)})")  # fmt: skip
    t0 = time.perf_counter()
    out = Path(cfg.out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    plan = task_plan(cfg.clips, cfg.mix, cfg.seed)
    use_real = cfg.real_speech > 0 and assets.have_real_speech()
    speaks = any(t != "v2s" for t in plan)
    refs = write_references(cfg if use_real else _no_real(cfg), out) if speaks else {}
    jobs = [(cfg, i, task, str(out), refs) for i, task in enumerate(plan)]
    rows: list[ManifestRow] = []
    if cfg.workers <= 1 or len(jobs) == 1:
        for j in jobs:
            rows.append(_worker(j))
            if progress:
                progress(len(rows), len(jobs))
    else:
        # spawn, not fork: this process may have threads (a progress bar, a library's thread pool, a caller's own
        # threads) holding locks at fork time - espeak's engine lock, OpenMP's, an allocator's - and a forked child
        # inherits them held and hangs. Spawned workers start clean and load their own pristine espeak engine.
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(cfg.workers, len(jobs))) as pool:
            for row in pool.imap(_worker, jobs, chunksize=1):
                rows.append(row)
                if progress:
                    progress(len(rows), len(jobs))
    manifest = write_manifest(rows, out / "manifest.jsonl")
    from vssflow.data.manifest import read_manifest

    return CorpusReport(manifest, read_manifest(manifest), time.perf_counter() - t0)


def _no_real(cfg: CorpusConfig) -> CorpusConfig:
    from dataclasses import replace

    return replace(cfg, real_speech=0.0)
