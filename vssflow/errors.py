"""Exception types of vssflow.

Every error a user can cause carries a one-line message that names the input and says what to do.
Batch jobs catch :class:`InputError` to quarantine a row (``stage`` and ``reason`` go to the quarantine table).
"""


class VssflowError(Exception):
    """Base of every error raised on purpose by vssflow."""


class InputError(VssflowError, ValueError):
    """Bad user input. ``reason`` is a short machine-readable tag used in quarantine tables."""

    reason = "bad_input"

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        super().__init__(message if source is None else f"{source}: {message}")


class MissingFileError(InputError, FileNotFoundError):
    reason = "missing_file"


class EmptyFileError(InputError):
    reason = "empty_file"


class BadVideoError(InputError):
    """Not a video, truncated or undecodable."""

    reason = "bad_video"


class NoAudioTrackError(InputError):
    reason = "no_audio_track"


class ClipTooLongError(InputError):
    reason = "clip_too_long"


class ProbeTimeoutError(InputError):
    """ffprobe did not finish reading a file's header in time (a hostile or damaged file, or an overloaded host)."""

    reason = "probe_timeout"


class TranscriptError(InputError):
    """Empty transcript, nothing pronounceable, or an unsupported script."""

    reason = "bad_transcript"


class ReferenceVoiceError(InputError):
    """Reference voice missing, too short or unreadable."""

    reason = "bad_reference_voice"


class SampleRateError(InputError):
    reason = "bad_sample_rate"


class FeatureShapeError(InputError):
    """A feature array with the wrong shape, rate or dtype for the model config."""

    reason = "bad_feature_shape"


class ManifestError(InputError):
    reason = "bad_manifest"


class PathEscapeError(InputError):
    """A path that resolves outside the allowed roots."""

    reason = "path_escape"


class AssetError(VssflowError):
    """A pretrained asset (weights file, package) is missing or fails its checksum."""
