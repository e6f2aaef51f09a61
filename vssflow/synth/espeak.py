"""espeak-ng speech with exact phoneme and word timings, through libespeak-ng and ctypes.

The synth callback receives the 22.05 kHz waveform together with phoneme and word events whose ``sample`` field is
the position in that same waveform, so the timings are exact by construction (no aligner needed). The result is
resampled to 16 kHz (:data:`vssflow.constants.SAMPLE_RATE`) and the event positions are scaled with it.

libespeak-ng keeps global state, and an utterance depends slightly on what the engine spoke before (noise, pause
lengths, a sample or two of timing). To make speech a function of (text, voice) alone, the engine is initialised
once per process and never speaks there: each utterance is spoken in a forked child of that pristine state, which
sends the samples and events back through a pipe (about 5 ms per utterance). A child that has not answered within
:data:`CHILD_TIMEOUT_S` (forked from a process whose other threads held a lock it needs) is killed and the utterance
is spoken again in a new child once, then an :class:`AssetError` says so: never a silent hang.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import select
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import AssetError, TranscriptError

ESPEAK_RATE = 22_050  # Hz, the native rate of espeak-ng voices
CHILD_TIMEOUT_S = 60.0  # an utterance takes ~5 ms; a minute covers a heavily loaded machine

# espeak_EVENT_TYPE
_EV_WORD, _EV_PHONEME, _EV_END, _EV_MSG_TERMINATED = 1, 7, 5, 6
# espeak_Initialize options / output modes / synth flags / parameters (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA, _INIT_DONT_EXIT = 0x0001, 0x0002, 0x8000
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng voice name (with variant), speaking rate (words/min) and pitch (0-100)."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50
    pitch_range: int = 50


@dataclass(frozen=True)
class Timed:
    """A timed unit of speech (a phoneme in IPA, or a word) at 16 kHz: [start, end) in seconds."""

    label: str
    start: float
    end: float


@dataclass(frozen=True)
class Speech:
    """Synthesized speech.

    Attributes:
        audio: (S,) float32 in [-1, 1] at ``SAMPLE_RATE`` (16 kHz).
        phonemes: IPA phonemes with start/end times (pauses are not listed).
        words: words with start/end times; ``label`` is the word as written in the text.
    """

    audio: np.ndarray
    phonemes: tuple[Timed, ...]
    words: tuple[Timed, ...]

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class _Engine:
    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise AssetError(f"libespeak-ng not found ({e}); install it: apt-get install libespeak-ng1") from None
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        self.lib.espeak_Terminate.restype = ctypes.c_int
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []  # (type, sample, text_position, label)
        self._cb = _CALLBACK(self._callback)  # keep a reference: the C side holds only the pointer
        self.lock = threading.Lock()
        options = _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, options)
        if rate <= 0:
            raise AssetError(
                "espeak_Initialize failed; check that espeak-ng-data is installed (apt-get install espeak-ng)"
            )
        self.rate = rate
        self.lib.espeak_SetSynthCallback(self._cb)
        # load the English dictionary once, here, so that forked children do not each load it (~0.1 s); the
        # pristine state then always includes it, so it stays deterministic
        self.lib.espeak_SetVoiceByName(b"en")

    def _callback(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while True:
            ev = events[i]
            if ev.type == 0:  # espeakEVENT_LIST_TERMINATED
                break
            if ev.type == _EV_PHONEME:
                label = ev.id.string.decode("utf-8", errors="replace")
                self._events.append((ev.type, ev.sample, ev.text_position, label))
            elif ev.type == _EV_WORD:
                self._events.append((ev.type, ev.sample, ev.text_position, str(ev.length)))
            i += 1
        return 0

    def synth(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int, int, str]]]:
        with self.lock:
            return self._synth(text, voice)

    def _synth(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int, int, str]]]:
        self.libc.srand(1)  # espeak-ng draws noise from libc rand()
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise TranscriptError(f"espeak-ng has no voice {voice.name!r}; list voices with `espeak-ng --voices`")
        self.lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
        self.lib.espeak_SetParameter(_RANGE, int(voice.pitch_range), 0)
        self.lib.espeak_SetParameter(_WORDGAP, 0, 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        err = self.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise TranscriptError(f"espeak_Synth failed with code {err} for {text!r}")
        # (synchronous mode: espeak_Synth returns when done; espeak_Synchronize would block after a re-init)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._events)

    def synth_isolated(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int, int, str]]]:
        """:meth:`synth` in a forked child, so this process's engine stays pristine (see the module docstring)."""
        if not hasattr(os, "fork"):
            return self.synth(text, voice)
        for attempt in (1, 2):
            data, status = self._speak_in_child(text, voice)
            if data is not None:
                break
            if attempt == 2:
                raise AssetError(
                    f"espeak-ng did not answer within {CHILD_TIMEOUT_S:.0f} s for {text!r} (twice); "
                    "is this process forking while another thread holds a lock?"
                )
        if not data or os.waitstatus_to_exitcode(status) != 0:
            raise AssetError(f"espeak-ng failed in a child process for {text!r} (exit status {status})")
        result = pickle.loads(data)
        if isinstance(result, TranscriptError):
            raise result
        return result

    def _speak_in_child(self, text: str, voice: Voice) -> tuple[bytes | None, int]:
        """(pickled result, wait status) from a forked child; (None, 0) when it timed out (it is killed)."""
        with self.lock:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: speak, send, exit without running any Python cleanup
                code = 0
                try:
                    os.close(r)
                    try:
                        result = self._synth(text, voice)  # the lock is held (and copied) here
                    except TranscriptError as e:
                        result = e
                    data = pickle.dumps(result)
                    with os.fdopen(w, "wb") as f:
                        f.write(data)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            os.close(w)
            chunks, deadline = [], time.monotonic() + CHILD_TIMEOUT_S
            with os.fdopen(r, "rb", buffering=0) as f:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([f], [], [], left)[0]:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        return None, 0
                    chunk = f.read(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
            _, status = os.waitpid(pid, 0)
        return b"".join(chunks), status


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    # One engine per process: two threads initialising at once would each register a callback, and the engine
    # whose callback lost would "speak" into nothing (empty audio).
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
    return _ENGINE


def available() -> bool:
    """True when libespeak-ng can be loaded and initialised in this process."""
    try:
        _engine()
        return True
    except AssetError:
        return False


def synthesize(text: str, voice: Voice = Voice()) -> Speech:
    """Speak ``text`` with ``voice``; return 16 kHz audio with exact phoneme and word timings.

    Raises:
        TranscriptError: empty text, unknown voice, or nothing was spoken.
        AssetError: libespeak-ng is not installed.
    """
    if not text or not text.strip():
        raise TranscriptError("empty transcript; give at least one word to speak")
    eng = _engine()
    raw, events = eng.synth_isolated(text, voice)
    if raw.size == 0:
        raise TranscriptError(f"espeak-ng produced no audio for {text!r}; use words it can pronounce")
    audio = resample_poly(raw.astype(np.float32) / 32768.0, SAMPLE_RATE // 50, eng.rate // 50).astype(np.float32)
    scale = SAMPLE_RATE / eng.rate
    total = len(audio) / SAMPLE_RATE
    phon = [(s * scale / SAMPLE_RATE, lab) for t, s, _, lab in events if t == _EV_PHONEME]
    phonemes: list[Timed] = []
    for k, (start, lab) in enumerate(phon):
        end = phon[k + 1][0] if k + 1 < len(phon) else total
        if lab.strip() and lab not in ("_", "_:", "_!"):  # pauses are silence, not phonemes
            phonemes.append(Timed(lab, round(start, 4), round(min(end, total), 4)))
    # word events come a little before the word's first phoneme; snap each word to its own phonemes
    wrd = [(s * scale / SAMPLE_RATE, pos, int(lab)) for t, s, pos, lab in events if t == _EV_WORD]
    words: list[Timed] = []
    for k, (start, pos, length) in enumerate(wrd):
        nxt = wrd[k + 1][0] if k + 1 < len(wrd) else total + 1.0
        nxt_first = [p.start for p in phonemes if p.start >= nxt - 1e-4]
        limit = min(nxt_first) if nxt_first else total + 1.0
        own = [p for p in phonemes if start - 1e-4 <= p.start < limit]
        if own:
            start, end = own[0].start, own[-1].end
        else:
            end = min(nxt, total)
        label = text[pos - 1 : pos - 1 + length].strip(" .,;:!?\"'")  # text_position is 1-based characters
        if label:
            words.append(Timed(label, round(start, 4), round(end, 4)))
    return Speech(audio=audio, phonemes=tuple(phonemes), words=tuple(words))
