"""The mel front end with AudioLDM's parameters: waveform (b, samples) -> log-mel image (b, 1, T, M).

16 kHz, STFT n_fft 1024 / Hann window 1024 / hop 160, 64 slaney-scale, slaney-normalised mel filters from 0
to 8 kHz, magnitude (power 1), then ``log(clamp(x, 1e-5))``.

Padding as AudioLDM (and HiFi-GAN) do: reflect-pad (n_fft - hop) / 2 samples on each side, then frame without
centring. That gives exactly samples / hop frames: 25,600 samples -> 160 frames (torch's ``center=True``
would give 161). Frame t then covers samples [t*hop - 432, t*hop + 592), centred on t*hop + hop/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from avdit_cli.config import DataConfig
from avdit_cli.errors import ConfigError

LOG_CLAMP = 1e-5


class MelFrontEnd(nn.Module):
    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, win_length: int = 1024, hop_length: int = 160,
                 n_mels: int = 64, f_min: float = 0.0, f_max: float = 8000.0) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ConfigError(f"data.n_fft - data.hop_length must be even for whole-frame padding "
                              f"(got {n_fft} - {hop_length})")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.pad = (n_fft - hop_length) // 2
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=1.0, center=False)
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=n_mels, sample_rate=sample_rate, f_min=f_min, f_max=f_max, n_stft=n_fft // 2 + 1,
            norm="slaney", mel_scale="slaney")

    @classmethod
    def from_config(cls, data: DataConfig) -> "MelFrontEnd":
        return cls(data.sample_rate, data.n_fft, data.win_length, data.hop_length, data.n_mels, data.f_min,
                   data.f_max)

    def frames(self, samples: int) -> int:
        return (samples + 2 * self.pad - self.n_fft) // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(b, samples) float waveform -> (b, 1, T, M) log-mel, T = samples // hop."""
        if wave.dim() != 2:
            raise ConfigError(f"expected a waveform batch (b, samples), got shape {tuple(wave.shape)}")
        # The STFT stays in float32 even under autocast: log of tiny magnitudes is sensitive to rounding.
        x = F.pad(wave.float()[:, None], (self.pad, self.pad), mode="reflect")[:, 0]  # (b, samples + 2 pad)
        mag = self.spectrogram(x)  # (b, n_fft/2 + 1, T)
        mel = self.mel_scale(mag)  # (b, M, T)
        logmel = torch.log(torch.clamp(mel, min=LOG_CLAMP))
        return rearrange(logmel, "b m t -> b 1 t m")
