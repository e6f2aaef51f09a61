"""Dub a whole video from its subtitles: speech for every cue, in its time, over generated sound.

    subs = read_subtitles("film.srt", duration_s=probe("film.mp4").duration)
    result = dub(gen, "film.mp4", subs, voices={"ALICE": "alice.wav"}, reference_voice="narrator.wav")
    result.mix, result.speech, result.sound, result.report          # (L,) float32 at 16 kHz, and a JSON-able dict

How (the plan, :func:`plan_dub`, is a pure function of the cues, the video's duration and the model window):

* **Speech, one generation per cue.** Each cue gets its own window of the video: the cue plus ``context_s`` of
  video before and after it (the training clips had 0.2-0.3 s of silence around their speech), snapped to the
  40 ms grid the lip, sync and latent frames share. The window is generated as VisualTTS with the cue's text laid
  over the cue's span inside the window (``ClipFeatures.speech_span``,
  :func:`vssflow.model.conditions.layout_phonemes`), the lip and sync streams and the semantic frames of that part
  of the video in context, and the cue's voice. A cue that does not fit the model window with its context gets
  less context; a cue longer than the model window itself is the one case where a cue spans several model windows:
  :meth:`Generator.generate` crossfades them (the report says so: ``model_windows`` > 1). The generated window is
  gated to the cue's span (a 10 ms fade inside it), so the speech stem is exactly silent outside cues, and added to
  the speech stem at its place.
* **Sound, one V2S pass over the whole video** (:meth:`Generator.generate`'s overlapping windows, crossfaded),
  lowered by ``duck_db`` under the cues, and mixed with the speech.

Why speech and sound are generated apart and mixed rather than as the joint task where a cue and sound overlap:
a cue then stays one generation in one window aligned to it, whatever the sound's window joins (a joint window
would have to be aligned to both the cues and the sound track, and the sound between two close cues would come
from two different generations); the speech stem is exact (silent outside cues by construction) and the stems are
the parts of the mix, which a joint generation cannot be split into; the model's TTS is more intelligible than its
joint task (README: WER 0.92 vs 1.08), and a dub must not say a cue worse than generating that cue alone; and it
costs one TTS window per cue plus one V2S pass, about what the joint task would cost with V2S between the cues.

The timing report measures each cue's speech on the output (the speech stem, by energy:
:func:`vssflow.features.span.span_from_voice_activity`), its offset from the asked span, the model's own span
before the gate (speech it made outside the cue shows there), and the cue's WER when an ASR is given.
"""

from vssflow.dub.plan import GRID_S, CueWindow, DubPlan, plan_dub
from vssflow.dub.report import timing_report
from vssflow.dub.run import DubConfig, DubResult, dub
from vssflow.dub.voices import read_voices, voice_for

__all__ = ["DubConfig", "CueWindow", "DubPlan", "DubResult", "GRID_S", "plan_dub", "dub", "read_voices", "voice_for",
           "timing_report"]  # fmt: skip
