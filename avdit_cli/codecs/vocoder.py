"""Vocoders: log-mel (b, T, M) -> waveform (b, T * hop).

- :class:`HifiGan`: AudioLDM's HiFi-GAN ported to plain torch. It loads the files of
  ``cvssp/audioldm-s-full-v2/vocoder`` (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``)
  written by transformers' ``SpeechT5HifiGan``, with the same key names (``conv_pre``, ``upsampler.{i}``,
  ``resblocks.{j}.convs1.{k}`` / ``convs2.{k}``, ``conv_post``, ``mean``, ``scale``). Weight norm may be
  stored folded (``weight``) or split (``weight_g`` / ``weight_v``, or torch's parametrization names
  ``parametrizations.weight.original0/1``): it is folded on load.
- :class:`GriffinLimVocoder`: no weights: invert the mel filters (least squares) then Griffin-Lim, seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from avdit_cli.codecs.base import MelVocoder, as_btm
from avdit_cli.config import DataConfig
from avdit_cli.errors import WeightsError


# ----------------------------------------------------------------------------------------------------------
# HiFi-GAN
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HifiGanConfig:
    """The fields of transformers' ``SpeechT5HifiGanConfig`` the generator uses (AudioLDM's values)."""

    model_in_dim: int = 64
    sampling_rate: int = 16000
    upsample_initial_channel: int = 1024
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = False

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop

    @classmethod
    def from_json(cls, path: str | Path) -> "HifiGanConfig":
        data = json.loads(Path(path).read_text())
        kwargs = {}
        for name in cls.__dataclass_fields__:
            if name in data:
                value = data[name]
                if isinstance(value, list):
                    value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
                kwargs[name] = value
        return cls(**kwargs)


class ResBlock(nn.Module):
    """HiFi-GAN's residual block with dilated convolutions (transformers' ``HifiGanResidualBlock``)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t)
        for conv1, conv2 in zip(self.convs1, self.convs2):
            h = conv2(F.leaky_relu(conv1(F.leaky_relu(x, self.slope)), self.slope))
            x = x + h
        return x


class HifiGan(nn.Module):
    def __init__(self, config: HifiGanConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(config.model_in_dim, c0, kernel_size=7, padding=3)
        self.upsampler = nn.ModuleList(
            nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), kernel_size=k, stride=r, padding=(k - r) // 2)
            for i, (r, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            ResBlock(c0 // 2 ** (i + 1), k, tuple(d), config.leaky_relu_slope)
            for i in range(len(self.upsampler))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(c0 // 2 ** len(self.upsampler), 1, kernel_size=7, padding=3)
        self.register_buffer("mean", torch.zeros(config.model_in_dim))
        self.register_buffer("scale", torch.ones(config.model_in_dim))

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(b, T, M) log-mel -> (b, T * hop) waveform in [-1, 1]."""
        frames = mel.shape[1]
        if self.config.normalize_before:
            mel = (mel - self.mean) / self.scale
        x = self.conv_pre(rearrange(mel, "b t m -> b m t"))  # (b, c0, T)
        for i, up in enumerate(self.upsampler):
            x = up(F.leaky_relu(x, self.config.leaky_relu_slope))  # (b, c0 / 2^(i+1), t * rate)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels  # multi-receptive-field fusion
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope 0.01 here, as the original
        # Transposed convolutions whose (kernel - stride) is odd add a sample or two: keep exactly T * hop.
        return x[:, 0, : frames * self.hop_length]


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace (g, v) pairs by ``weight = g * v / ||v||`` (norm over all axes but the first, torch's dim=0)."""
    out: dict[str, torch.Tensor] = {}
    pairs = {".weight_g": ".weight_v", ".parametrizations.weight.original0": ".parametrizations.weight.original1"}
    for key, value in state.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(g_suffix):
                stem = key[: -len(g_suffix)]
                v = state[stem + v_suffix]
                norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
                out[stem + ".weight"] = value * v / norm
                break
            if key.endswith(v_suffix):
                break  # folded with its g
        else:
            out[key] = value
    return out


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a .bin / .pt read with ``weights_only=True`` (no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not a state dict")
    return state


def load_hifigan(folder: str | Path) -> HifiGan:
    """AudioLDM's vocoder from its folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``)."""
    folder = Path(folder)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if not (folder / "config.json").is_file() or weights is None:
        raise WeightsError(f"{folder} has no vocoder config.json and weights; run `avdit download --only vocoder`")
    model = HifiGan(HifiGanConfig.from_json(folder / "config.json"))
    state = fold_weight_norm(load_state_file(weights))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise WeightsError(f"vocoder weights in {weights} do not fit its config ({detail})")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


class HifiGanVocoder(MelVocoder):
    """:class:`HifiGan` behind the vocoder interface. Runs in float32: bf16 rounding is audible in waveforms."""

    def __init__(self, model: HifiGan, device: torch.device | str = "cpu", batch_size: int = 16) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32)
        self.sample_rate = model.config.sampling_rate
        self.hop_length = model.hop_length
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        mel = as_btm(mel)
        return torch.cat([self.model(chunk.to(self.device, torch.float32)) for chunk in mel.split(self.batch_size)])


# ----------------------------------------------------------------------------------------------------------
# Griffin-Lim
# ----------------------------------------------------------------------------------------------------------
LOG_FLOOR = math.log(1e-5)  # the mel front end's log-clamp


class GriffinLimVocoder(MelVocoder):
    """Weight-free: ``exp`` of the log-mel -> linear magnitude by least squares -> Griffin-Lim phase, seeded.

    Inverts :class:`~avdit_cli.codecs.mel.MelFrontEnd` (same STFT and filters). Griffin-Lim's istft centres
    frame t at t*hop, the front end at t*hop + hop/2, so the output is shifted by hop/2 to line up.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, win_length: int = 1024, hop_length: int = 160,
                 n_mels: int = 64, f_min: float = 0.0, f_max: float = 8000.0, n_iter: int = 32, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.sample_rate, self.hop_length, self.seed = sample_rate, hop_length, seed
        self.device = torch.device(device)
        # The mel -> linear least squares is underdetermined (64 mels, 513 bins): CUDA's lstsq (gels) only
        # solves tall systems, so it stays on the CPU with gelsd (minimum-norm solution, copes with rank loss).
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sample_rate, f_min=f_min, f_max=f_max,
            norm="slaney", mel_scale="slaney", driver="gelsd")
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=n_fft, n_iter=n_iter, win_length=win_length, hop_length=hop_length, power=1.0,
            rand_init=True).to(self.device)

    @classmethod
    def from_config(cls, data: DataConfig, seed: int = 0, device: torch.device | str = "cpu") -> "GriffinLimVocoder":
        return cls(data.sample_rate, data.n_fft, data.win_length, data.hop_length, data.n_mels, data.f_min,
                   data.f_max, seed=seed, device=device)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        mel = as_btm(mel).to("cpu", torch.float32)  # (b, T, M)
        frames = mel.shape[1]
        length = frames * self.hop_length
        # A generated mel can leave the range real audio has; clamp before exp so it cannot overflow to inf/NaN
        # (log(1e-5) is the front end's floor; e^8 is far above any full-scale signal's mel magnitude).
        mel = torch.nan_to_num(mel, nan=LOG_FLOOR).clamp(LOG_FLOOR, 8.0)
        mag = self.inverse_mel(rearrange(mel.exp(), "b t m -> b m t")).to(self.device)  # (b, n_fft/2 + 1, T)
        devices = [self.device] if self.device.type == "cuda" else []
        # torchaudio draws the initial phase from the global RNG: fork it so the result depends on `seed` only.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(self.seed)
            self.griffin_lim.length = length - self.hop_length // 2
            wave = self.griffin_lim(mag)  # (b, length - hop/2)
        return F.pad(wave, (self.hop_length // 2, 0))  # (b, T * hop)
