"""The codec interface: data <-> latents, and mel -> waveform.

A :class:`LatentCodec` maps data (video frames (n, 3, H, W) in [-1, 1], or log-mel images (b, 1, T, M)) to
*scaled* latents (n, c, H/k, W/k) and back. The scale (e.g. SD's 0.18215) is applied exactly once, inside
``encode``, and undone inside ``decode``, so everything between the two (the diffusion model, the cache)
only ever sees scaled latents. Latents come back as float32 whatever the codec's compute dtype.

:class:`AutoencoderKLCodec` wraps a diffusers ``AutoencoderKL`` (the SD VAE for frames, the AudioLDM VAE for
mels): deterministic encode (the posterior mean) unless a ``torch.Generator`` asks for a sample, batched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from avdit_cli.errors import ConfigError, WeightsError


class LatentCodec(ABC):
    """Data (n, c_in, H, W) <-> scaled latents (n, latent_channels, H / factor, W / factor)."""

    in_channels: int
    latent_channels: int
    factor: int  # spatial down-sampling of each of the last two axes
    scale: float  # latents = raw latents * scale (applied in encode, undone in decode)
    # The range every latent lies in, where the codec bounds it (pixels: yes; a VAE: no). Samplers may clamp
    # their x_0 predictions to it (`sample.clip_denoised`).
    latent_range: tuple[float, float] | None = None
    device: torch.device
    dtype: torch.dtype  # compute dtype

    @abstractmethod
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, c_in, H, W) -> (n, latent_channels, H/k, W/k), scaled, float32."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (n, latent_channels, h, w) -> data (n, c_in, h*k, w*k), float32."""

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The latent shape for a data shape (..., c_in, H, W)."""
        *lead, c, h, w = shape
        if c != self.in_channels:
            raise ConfigError(f"{type(self).__name__}: expected {self.in_channels} input channels, got {c}")
        if h % self.factor or w % self.factor:
            raise ConfigError(f"{type(self).__name__}: size {h}x{w} is not a multiple of its factor {self.factor}")
        return (*lead, self.latent_channels, h // self.factor, w // self.factor)


class MelVocoder(ABC):
    """Log-mel (b, 1, T, M) or (b, T, M) -> waveform (b, T * hop_length), float32."""

    sample_rate: int
    hop_length: int

    @abstractmethod
    def __call__(self, mel: torch.Tensor) -> torch.Tensor: ...


def as_btm(mel: torch.Tensor) -> torch.Tensor:
    """Accept (b, 1, T, M) or (b, T, M); return (b, T, M)."""
    if mel.dim() == 4:
        if mel.shape[1] != 1:
            raise ConfigError(f"expected a mel image (b, 1, T, M), got shape {tuple(mel.shape)}")
        return mel[:, 0]
    if mel.dim() != 3:
        raise ConfigError(f"expected a mel (b, T, M) or (b, 1, T, M), got shape {tuple(mel.shape)}")
    return mel


class AutoencoderKLCodec(LatentCodec):
    """A diffusers ``AutoencoderKL`` loaded from a local folder (config.json + weights)."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 8) -> None:
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(f"cannot load the VAE in {folder} ({first}); run `avdit download` again") from err
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        cfg = self.vae.config
        self.in_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scale = float(cfg.scaling_factor)  # from the checkpoint's config, never hard-coded
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.latent_shape(tuple(x.shape))  # checks channels and divisibility
        out = []
        for chunk in x.split(self.batch_size):  # (n', c, H, W)
            dist = self.vae.encode(chunk.to(self.device, self.dtype)).latent_dist
            # The posterior mean keeps preprocessing deterministic; a generator asks for a sample instead.
            z = dist.mean if generator is None else dist.sample(generator=generator)
            out.append(z.float() * self.scale)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in z.split(self.batch_size):  # (n', c, h, w)
            x = self.vae.decode((chunk / self.scale).to(self.device, self.dtype)).sample
            out.append(x.float())
        return torch.cat(out)
