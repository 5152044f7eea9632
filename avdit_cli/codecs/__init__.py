"""Codecs: video frames <-> video latents, waveform -> log-mel -> audio latents, and log-mel -> waveform.

``build_codecs(cfg, device, dtype)`` picks them from the config. Pretrained ones are found through
:mod:`avdit_cli.hub` in the local cache only (never downloading implicitly); a missing one is a one-line
:class:`~avdit_cli.errors.WeightsError` that names the ``avdit download`` command which fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from avdit_cli.codecs.base import LatentCodec, MelVocoder
from avdit_cli.codecs.mel import MelFrontEnd
from avdit_cli.config import AudioCodec, Config, VideoCodec, Vocoder

__all__ = ["Codecs", "LatentCodec", "MelFrontEnd", "MelVocoder", "build_codecs", "default_dtype"]


@dataclass
class Codecs:
    video: LatentCodec  # frames (n, 3, H, W) in [-1, 1] <-> (n, c, H/k, W/k)
    mel: MelFrontEnd  # waveform (b, samples) -> log-mel (b, 1, T, M)
    audio: LatentCodec  # log-mel (b, 1, T, M) <-> (b, c, T/k, M/k)
    vocoder: MelVocoder  # log-mel -> waveform (b, T * hop)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Where each pretrained codec came from (repo, revision, snapshot commit), for manifests and checkpoints.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Plain data (JSON-safe) naming each codec, its factor, scale and source: what a latent cache records."""

        def latent(codec: LatentCodec, key: str) -> dict[str, Any]:
            return {"kind": type(codec).__name__, "in_channels": codec.in_channels,
                    "latent_channels": codec.latent_channels, "factor": codec.factor, "scale": codec.scale,
                    **self.sources.get(key, {})}

        m = self.mel
        return {
            "video": latent(self.video, "video"),
            "audio": latent(self.audio, "audio"),
            "mel": {"sample_rate": m.sample_rate, "n_fft": m.n_fft, "hop_length": m.hop_length,
                    "n_mels": m.n_mels, "pad": m.pad},
            "vocoder": {"kind": type(self.vocoder).__name__, "sample_rate": self.vocoder.sample_rate,
                        "hop_length": self.vocoder.hop_length, **self.sources.get("vocoder", {})},
        }


def _source(local: Any) -> dict[str, Any]:
    e = local.entry
    return {"repo": e.repo_id, "subfolder": e.subfolder, "revision": e.revision, "commit": local.commit}


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a GPU that supports it, float32 elsewhere (bf16 on CPU is slow)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def build_codecs(cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Codecs:
    """The codecs a config names, on ``device``; the VAEs compute in ``dtype`` (default: :func:`default_dtype`).

    The mel front end and the vocoders always compute in float32.
    """
    from avdit_cli import hub

    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    d = cfg.data
    sources: dict[str, dict[str, Any]] = {}

    video: LatentCodec
    if d.video_codec is VideoCodec.SD_VAE:
        from avdit_cli.codecs.video_vae import SDVideoVAE

        local = hub.require_local(hub.lookup("video-vae", d.video_vae_repo), cfg.name)
        video = SDVideoVAE(local.folder, device, dtype)
        sources["video"] = _source(local)
    else:
        from avdit_cli.codecs.pixels import PixelVideoCodec

        video = PixelVideoCodec(d.pixel_downsample, device)

    audio: LatentCodec
    if d.audio_codec is AudioCodec.AUDIOLDM_VAE:
        from avdit_cli.codecs.audio_vae import AudioLDMVAE

        local = hub.require_local(hub.lookup("audio-vae", d.audio_vae_repo), cfg.name)
        audio = AudioLDMVAE(local.folder, device, dtype)
        sources["audio"] = _source(local)
    else:
        from avdit_cli.codecs.pixels import PixelMelCodec

        audio = PixelMelCodec(d.audio_pixel_downsample, device)

    vocoder: MelVocoder
    if d.vocoder is Vocoder.HIFIGAN:
        from avdit_cli.codecs.vocoder import HifiGanVocoder, load_hifigan

        local = hub.require_local(hub.lookup("vocoder", d.audio_vae_repo), cfg.name)
        vocoder = HifiGanVocoder(load_hifigan(local.folder), device)
        sources["vocoder"] = _source(local)
    else:
        from avdit_cli.codecs.vocoder import GriffinLimVocoder

        vocoder = GriffinLimVocoder.from_config(d, seed=cfg.sample.seed, device=device)

    return Codecs(video=video, mel=MelFrontEnd.from_config(d).to(device), audio=audio, vocoder=vocoder,
                  device=device, sources=sources)
