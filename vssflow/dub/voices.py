"""The voice of each cue: a speakers file (``--voices SPEAKERS.yaml``: NAME -> reference recording), else the
reference voice, else the model's default voice."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vssflow.errors import InputError, MissingFileError
from vssflow.text.subtitles import Cue

__all__ = ["read_voices", "voice_for"]


def read_voices(path: str | os.PathLike) -> dict[str, Path]:
    """A speakers file (YAML or JSON: ``NAME: path/of/recording.wav`` per line) -> {name: path}; relative paths are
    relative to the file. Raises a one-line InputError naming the file (or the missing recording) and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("speakers file not found; give a YAML file of NAME: recording.wav (--voices)",
                               source=str(path))  # fmt: skip
    try:
        import yaml
    except ModuleNotFoundError:
        raise InputError("reading a speakers file needs PyYAML: pip install pyyaml", source=str(path)) from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"not a YAML mapping of NAME: recording ({first}); write one 'NAME: file.wav' per line",
                         source=str(path)) from None  # fmt: skip
    if not isinstance(data, dict) or not data:
        raise InputError("expected a mapping of speaker names to recordings, e.g. 'ALICE: alice.wav'",
                         source=str(path))  # fmt: skip
    voices: dict[str, Path] = {}
    for name, rec in data.items():
        if not isinstance(rec, str) or not rec.strip():
            raise InputError(f"speaker {name!r}: expected the path of a recording, got {rec!r}", source=str(path))
        p = Path(rec).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise MissingFileError(f"speaker {name!r}: recording {rec!r} not found; fix the path in {path.name}",
                                   source=str(path))  # fmt: skip
        voices[str(name)] = p
    return voices


def voice_for(
    cue: Cue, voices: Mapping[str, object] | None, reference_voice: object | None, *, strict: bool = False
) -> tuple[str, object | None]:
    """The voice a cue speaks with: its speaker's recording from ``voices`` (names match case-insensitively), else
    ``reference_voice``, else None (the model's default voice). Returns (what to call it in the report, the voice).

    Raises:
        InputError with ``strict`` when the cue names a speaker ``voices`` lacks.
    """
    by_name = {k.lower(): (k, v) for k, v in (voices or {}).items()}
    if cue.speaker is not None and cue.speaker.lower() in by_name:
        name, v = by_name[cue.speaker.lower()]
        return f"speaker {name}", v
    if cue.speaker is not None and voices and strict:
        raise InputError(f"cue {cue.number}: speaker {cue.speaker!r} is not in the speakers file ({', '.join(voices)});"
                         " add it to --voices", source="--voices")  # fmt: skip
    if reference_voice is not None:
        return "reference voice", reference_voice
    return "default voice", None
