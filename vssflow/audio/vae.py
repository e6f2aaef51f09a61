"""AudioLDM-style mel VAE (diffusers ``AutoencoderKL``) as a :class:`LatentCodec`, frozen.

log-mel (B, T, 64) -> image (B, 1, T, 64) -> VAE latent (B, 8, T/4, 16) -> (B, T/4, 8 * 16 = 128), as in VSSFlow
(which reshapes the latent to [B, 128, 250] for 10 s). Encoding is deterministic by default (posterior mean);
``sample=True`` draws from the posterior as the paper's training code does. The latent is multiplied by ``scale``
(the paper uses 1.0, i.e. no scaling). AudioLDM's VAE was trained on mels of peak-0.5 waveforms: compute mels
with ``MelConfig(peak_normalize=0.5)`` when using a pretrained AudioLDM VAE.

Shape letters: B batch, T mel frames, M mel bins, N = T / 4 latent frames, c VAE channels, f = M / 4 latent bins.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from einops import rearrange

from vssflow.audio.latent import LatentCodec, check_mel, pad_mel, read_codec_json
from vssflow.constants import MEL_PER_LATENT, N_MELS
from vssflow.errors import AssetError, FeatureShapeError

__all__ = ["AutoencoderKLCodec"]

VAE_SUBDIR = "vae"


def _import_autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise AssetError(
            "the AutoencoderKL codec needs diffusers; install it with `pip install diffusers==0.42.1`"
        ) from err
    return AutoencoderKL


class AutoencoderKLCodec(LatentCodec):
    """Frozen AudioLDM-style ``AutoencoderKL`` codec: (B, T, 64) log-mel <-> (B, T/4, 128) latent."""

    kind = "autoencoder_kl"

    def __init__(self, vae, *, sample: bool = False, scale: float = 1.0, generator: torch.Generator | None = None):
        """Args: vae: a diffusers AutoencoderKL with 1 in/out channel and 4x downsampling; sample: draw from the
        posterior instead of taking its mean; scale: latent multiplier (paper: 1.0); generator: RNG for sampling."""
        cfg = vae.config
        down = 2 ** (len(cfg.block_out_channels) - 1)
        if cfg.in_channels != 1 or cfg.out_channels != 1:
            raise AssetError(f"AutoencoderKL must take 1-channel mels, got in={cfg.in_channels} out={cfg.out_channels}")
        if down != MEL_PER_LATENT or N_MELS % down:
            raise AssetError(f"AutoencoderKL downsamples by {down}; the 25 Hz latent grid needs {MEL_PER_LATENT}")
        self.vae = vae.eval().requires_grad_(False)
        self.sample = bool(sample)
        self.scale = float(scale)
        self.generator = generator
        self.latent_channels = int(cfg.latent_channels)
        self.latent_dim = self.latent_channels * (N_MELS // down)

    @classmethod
    def from_vae_dir(cls, vae_dir: str | os.PathLike, **options) -> AutoencoderKLCodec:
        """Loads a diffusers AutoencoderKL saved with ``save_pretrained`` (e.g. AudioLDM's ``vae/`` folder)."""
        vae_dir = Path(vae_dir)
        if not (vae_dir / "config.json").is_file():
            raise AssetError(f"{vae_dir}: no AutoencoderKL config.json here; pass the VAE folder of the checkpoint")
        autoencoder_kl = _import_autoencoder_kl()
        try:
            vae = autoencoder_kl.from_pretrained(str(vae_dir), local_files_only=True)
        except (OSError, ValueError) as err:
            raise AssetError(f"{vae_dir}: cannot load AutoencoderKL ({str(err).splitlines()[0]})") from err
        return cls(vae.float(), **options)

    @classmethod
    def load(cls, directory: str | os.PathLike, **options) -> AutoencoderKLCodec:
        """Rebuilds a codec written by :meth:`save` (``options`` override the saved sample/scale)."""
        directory = Path(directory)
        meta = read_codec_json(directory)
        kwargs = {"sample": bool(meta.get("sample", False)), "scale": float(meta.get("scale", 1.0)), **options}
        return cls.from_vae_dir(directory / meta.get("vae", VAE_SUBDIR), **kwargs)

    def save(self, directory: str | os.PathLike) -> Path:
        """Copies the VAE weights into ``directory/vae`` so the model directory is self-contained."""
        directory = Path(directory)
        self.vae.save_pretrained(str(directory / VAE_SUBDIR))
        self._write_json(directory, {"vae": VAE_SUBDIR, "sample": self.sample, "scale": self.scale})
        return directory

    def to(self, device: str | torch.device) -> AutoencoderKLCodec:
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T, 64) log-mel -> (B, ceil(T / 4), latent_dim)."""
        check_mel(mel, N_MELS)
        mel = pad_mel(mel.float(), MEL_PER_LATENT)  # (B, 4N, M)
        image = rearrange(mel, "b t m -> b 1 t m").to(self.vae.device)  # (B, 1, 4N, M)
        posterior = self.vae.encode(image).latent_dist
        z = posterior.sample(generator=self.generator) if self.sample else posterior.mean  # (B, c, N, f)
        return rearrange(z, "b c n f -> b n (c f)") * self.scale  # (B, N, C)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, N, latent_dim) -> (B, 4N, 64) log-mel."""
        if latent.dim() != 3 or latent.shape[-1] != self.latent_dim:
            raise FeatureShapeError(
                f"latent must have shape (B, N, {self.latent_dim}), got {tuple(latent.shape)}", source="latent"
            )
        z = rearrange(latent.float() / self.scale, "b n (c f) -> b c n f", c=self.latent_channels)  # (B, c, N, f)
        image = self.vae.decode(z.to(self.vae.device)).sample  # (B, 1, 4N, M)
        return rearrange(image, "b 1 t m -> b t m")
