"""Media input: decoding videos (frames at any rate, the audio track) with decord, ffmpeg where decord falls short."""

from vssflow.media.video import VideoInfo, frame_indices, probe, read_audio_track, read_frames

__all__ = ["VideoInfo", "frame_indices", "probe", "read_audio_track", "read_frames"]
