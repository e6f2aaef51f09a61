"""Audio: file I/O, the paper's log-mel, latent codecs (mel grouping or an AudioLDM VAE) and vocoders."""

from vssflow.audio.codec import LatentCodec, MelCodec, load_codec
from vssflow.audio.io import audio_duration, read_audio, write_audio
from vssflow.audio.mel import MelConfig, MelSpectrogram, log_mel, mel_filterbank, num_mel_frames
from vssflow.audio.vae import AutoencoderKLCodec
from vssflow.audio.vocoder import GriffinLimConfig, GriffinLimVocoder, HiFiGanVocoder, Vocoder, load_vocoder

__all__ = [
    "AutoencoderKLCodec",
    "GriffinLimConfig",
    "GriffinLimVocoder",
    "HiFiGanVocoder",
    "LatentCodec",
    "MelCodec",
    "MelConfig",
    "MelSpectrogram",
    "Vocoder",
    "audio_duration",
    "load_codec",
    "load_vocoder",
    "log_mel",
    "mel_filterbank",
    "num_mel_frames",
    "read_audio",
    "write_audio",
]
