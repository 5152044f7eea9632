"""AudioCLIP's audio head (ESResNeXt-FBSP) for the ``mm-diffusion`` protocol's FAD: ``AudioCLIP-Full-Training.pt``.

The file (AndreyGuzhov/AudioCLIP, release v0.1) is a whole AudioCLIP state dict: CLIP's image and text towers
plus the audio head under ``audio.``. Only the audio head is built and loaded here; the rest is not needed.
This is our own implementation of that head, with the module names of the original so that every ``audio.*``
key maps to the parameter of the same name.

Front end (the learnable "frequency B-spline" STFT, ``LinearFBSP``): a float waveform is cast to float32 and
mapped from the int16 range to [-1, 1] (``scale(x, -32768, 32767, -1, 1)``); framed with win 1654 / hop 561,
zero-padded at both ends to whole frames, multiplied by a periodic Blackman-Harris window, zero-padded to
n_fft 2048; then projected on 1025 learned complex kernels ``sqrt(fb) * |sinc(fb t / m)|^m * exp(-i fc t)``,
``t = pi linspace(-1, 1, 2048)``, divided by sqrt(2048) (normalized). The first 1023 frequency rows are split
into three bands of 341 that act as the three input channels; power ``re^2 + im^2`` (zeros -> 1e-18) in dB
(``10 log10``).

Network: a ResNeXt-50 32x4d (Bottleneck blocks [3, 4, 6, 3], stride on the 3x3 conv) on that (3, 341, frames)
image, with an attention branch after each stage (``att1``..``att4``: adaptive max pool to the stage's output
size, depthwise conv, pointwise conv, BatchNorm, sigmoid; the stage output is multiplied by it) and one after
global average pooling (``att5``); then ``fc`` 2048 -> 1024. The output is AudioCLIP's raw audio embedding
(before the L2 normalisation), which is what MM-Diffusion's FAD uses.

Two quirks of MM-Diffusion's evaluator are properties of how it *calls* this head, kept by the extractor:
it passes waveforms in [-1, 1] where the head expects int16-range values, so the head sees ``x / 32767.5 +
1 / 65535`` (and the float32 sum ``x + 32768`` quantises x to steps of 2^-8); and it never puts AudioCLIP in
eval mode, so every BatchNorm normalises with the statistics of the batch (8 clips) it is given.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics.feature_cache import sha256_file
from avdit_cli.metrics.i3d_400 import check_keys, read_state_dict

SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 561
WIN_LENGTH = 1654
WINDOW = "blackmanharris"
EMBED_DIM = 1024
LAYERS = (3, 4, 6, 3)
BANDS = 3  # the frequency rows are split into 3 bands = the network's 3 input channels
LOG10_EPS = 1e-18
FBSP_EPS = 1e-8
EXPANSION = 4
PREFIX = "audio."  # where the head's keys live in AudioCLIP-Full-Training.pt
# What MM-Diffusion's evaluator batches (BATCH_SIZE in mm_diffusion/evaluator.py): with batch statistics
# this is part of the protocol.
EVALUATOR_BATCH = 8


@dataclass(frozen=True)
class AudioHeadWidths:
    """Widths of the head; the published ResNeXt-50 32x4d by default (tests use tiny ones, same key names)."""

    base: int = 64  # stem channels = planes of the first stage
    groups: int = 32
    width_per_group: int = 4
    embed_dim: int = EMBED_DIM

    @property
    def published(self) -> bool:
        return self == AudioHeadWidths()

    def planes(self, stage: int) -> int:
        return self.base * 2**stage

    def width(self, stage: int) -> int:
        """Channels inside a Bottleneck of `stage` (torchvision's formula)."""
        return int(self.planes(stage) * (self.width_per_group / 64.0)) * self.groups


# ------------------------------------------------------------------------------------------------ front end
def int16_scale(audio: torch.Tensor) -> torch.Tensor:
    """The head's first step: cast to float32, then map [-32768, 32767] to [-1, 1] (AudioCLIP's
    ``scale(x, -32768.0, 32767, -1.0, 1.0)``, same constants and order of operations). Given [-1, 1] input, as
    MM-Diffusion gives it, the result is about ``x / 32767.5 + 1 / 65535``, with x rounded to a multiple of
    2^-8 by the float32 sum ``x + 32768``."""
    x = audio.to(torch.float32)
    old_min, old_max, new_min, new_max = -32768.0, 32767, -1.0, 1.0
    return (((x - old_min) * (new_max - new_min)) / (old_max - old_min)) + new_min


def frame_signal(signal: torch.Tensor, frame_length: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """(n, s) -> windowed frames (n, frames, frame_length); zeros pad the signal to whole frames, the smaller
    half in front (AudioCLIP's ``utils.transforms.frame_signal``)."""
    length = signal.shape[-1]
    frames = 1 if length <= frame_length else 1 + math.ceil((length - frame_length) / hop_length)
    total = (frames - 1) * hop_length + frame_length
    if total > length:
        extra = total - length
        signal = F.pad(signal, (extra // 2, extra - extra // 2))
    return signal.unfold(-1, frame_length, hop_length) * window


class LinearFBSP(nn.Module):
    """Learned complex kernels over n_fft samples: ``m``, ``fb``, ``fc`` per output frequency (published names)."""

    def __init__(self, out_features: int, normalized: bool = True) -> None:
        super().__init__()
        self.out_features, self.normalized = out_features, normalized
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        # The original builds it with bias=False as an *empty* parameter; a (out, 2) one would be added.
        self.bias = nn.Parameter(torch.zeros(0))

    @staticmethod
    def _complex_power(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        """base^exponent for complex numbers stored as (..., 2), in the original's order of operations."""
        magnitudes = (base[..., 0] ** 2 + base[..., 1] ** 2) ** 0.5
        phases = base[..., 1].atan2(base[..., 0])
        real, imag = exponent[..., 0], exponent[..., 1]
        mag_out = (magnitudes**2) ** (0.5 * real) * torch.exp(-imag * phases)
        angle = real * phases + 0.5 * imag * (magnitudes**2).log()
        return mag_out.unsqueeze(-1) * torch.stack((angle.cos(), angle.sin()), dim=-1)

    def kernels(self, in_features: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The complex weights (out, in, 2)."""
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device).reshape(1, -1, 1) + FBSP_EPS
        m, fb, fc = (p.reshape(-1, 1, 1) for p in (self.m, self.fb, self.fc))
        kernel = torch.cat((torch.cos(fc * t), -torch.sin(fc * t)), dim=-1)  # (out, in, 2)
        arg = fb * t / (m + FBSP_EPS)
        win = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)  # sinc, (out, in, 1)
        win = self._complex_power(torch.cat((win, torch.zeros_like(win)), dim=-1),
                                  torch.cat((m, torch.zeros_like(m)), dim=-1))  # (out, in, 2)
        weights = fb.sqrt() * torch.cat((win[..., :1] * kernel[..., :1] - win[..., 1:] * kernel[..., 1:],
                                         win[..., :1] * kernel[..., 1:] + win[..., 1:] * kernel[..., :1]), dim=-1)
        return weights / in_features**0.5 if self.normalized else weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real frames (..., in) -> complex spectrum (..., out, 2)."""
        w = self.kernels(x.shape[-1], x.dtype, x.device)
        out = torch.stack((F.linear(x, w[..., 0]), F.linear(x, w[..., 1])), dim=-1)
        return out + self.bias if self.bias.numel() == self.out_features * 2 else out


# -------------------------------------------------------------------------------------------------- network
class Norm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the batch's statistics when ``batch_stats`` is set (the evaluator's
    AudioCLIP is in training mode), without updating the running ones (the loaded weights stay as loaded)."""

    batch_stats = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, planes: int, width: int, groups: int, stride: int, downsample: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, width, 1), Norm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride, groups), Norm2d(width)
        self.conv3, self.bn3 = _conv(width, planes * EXPANSION, 1), Norm2d(planes * EXPANSION)
        self.downsample = (nn.Sequential(_conv(c_in, planes * EXPANSION, 1, stride), Norm2d(planes * EXPANSION))
                           if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


class Attention2d(nn.Module):
    """sigmoid(bn(pointwise(depthwise(adaptive_max_pool(x, size))))): a gate for a stage's output."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__()
        self.conv_depth = nn.Conv2d(c_in, c_in, kernel, padding=padding, groups=c_in)
        self.conv_point = nn.Conv2d(c_in, c_out, 1)
        self.bn = Norm2d(c_out)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(F.adaptive_max_pool2d(x, size)))))


# (kernel, padding) of att1..att5, as published.
_ATTENTION_SHAPES = (((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 5), (1, 2)))


class AudioCLIPAudioHead(nn.Module):
    """Waveforms (b, s) or (b, 1, s) as MM-Diffusion passes them -> raw audio embeddings (b, embed_dim)."""

    def __init__(self, widths: AudioHeadWidths | None = None) -> None:
        super().__init__()
        self.widths = w = widths or AudioHeadWidths()
        self.fbsp = LinearFBSP(N_FFT // 2 + 1)
        window = scipy.signal.get_window(WINDOW, WIN_LENGTH, fftbins=True)
        self.register_buffer("window", torch.from_numpy(window).float())
        self.conv1 = nn.Conv2d(BANDS, w.base, 7, stride=2, padding=3, bias=False)
        self.bn1 = Norm2d(w.base)
        c = w.base
        stage_out = []
        for stage, blocks in enumerate(LAYERS):
            planes, stride = w.planes(stage), 1 if stage == 0 else 2
            layer = [Bottleneck(c, planes, w.width(stage), w.groups, stride, downsample=True)]
            c = planes * EXPANSION
            layer += [Bottleneck(c, planes, w.width(stage), w.groups, 1, downsample=False) for _ in range(blocks - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
            stage_out.append(c)
        gate_io = [(w.base, stage_out[0]), (stage_out[0], stage_out[1]), (stage_out[1], stage_out[2]),
                   (stage_out[2], stage_out[3]), (stage_out[3], stage_out[3])]
        for i, ((c_in, c_out), (kernel, padding)) in enumerate(zip(gate_io, _ATTENTION_SHAPES, strict=True)):
            self.add_module(f"att{i + 1}", Attention2d(c_in, c_out, kernel, padding))
        self.fc = nn.Linear(stage_out[3], w.embed_dim)

    def use_batch_statistics(self, on: bool) -> None:
        """Normalise every BatchNorm with the batch's statistics (the evaluator's training-mode AudioCLIP)."""
        for module in self.modules():
            if isinstance(module, Norm2d):
                module.batch_stats = on

    def log_power(self, audio: torch.Tensor) -> torch.Tensor:
        """(b, s) or (b, 1, s) waveform -> dB power image (b, 3, 341, frames), float32."""
        if audio.ndim == 3 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.ndim != 2:
            raise DataError(f"AudioCLIP expects mono waveforms (b, s) or (b, 1, s), got {tuple(audio.shape)}")
        frames = frame_signal(int16_scale(audio), WIN_LENGTH, HOP_LENGTH, self.window)  # (b, frames, 1654)
        pad = N_FFT - WIN_LENGTH
        frames = F.pad(frames, (pad // 2, pad - pad // 2))  # (b, frames, 2048)
        spec = self.fbsp(frames)  # (b, frames, 1025, 2)
        band = spec.shape[-2] // BANDS
        spec = rearrange(spec[..., : BANDS * band, :], "b t (c f) z -> b c f t z", c=BANDS)  # (b, 3, 341, t, 2)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        power = torch.where(power > 0.0, power, torch.full_like(power, LOG10_EPS))
        return torch.log10(power).mul(10.0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(self.log_power(audio)))), 3, stride=2, padding=1)
        for stage in range(1, 5):
            gate_input = x
            x = getattr(self, f"layer{stage}")(x)
            x = x * getattr(self, f"att{stage}")(gate_input, tuple(x.shape[-2:]))
        pooled = F.adaptive_avg_pool2d(x, 1)
        pooled = pooled * self.att5(x, (1, 1))
        return self.fc(torch.flatten(pooled, 1))


# ---------------------------------------------------------------------------------------------- weights
# Top-level names of AudioCLIP's other parts (CLIP's towers, the logit scales), left unread.
OTHER_PARTS = ("visual", "transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection",
               "logit_scale", "logit_scale_ai", "logit_scale_at")


def expected_keys(widths: AudioHeadWidths) -> dict[str, tuple[int, ...]]:
    """Every ``audio.*`` key of a published-layout file with its shape (``num_batches_tracked`` included)."""
    with torch.device("meta"):
        return {PREFIX + k: tuple(v.shape) for k, v in AudioCLIPAudioHead(widths).state_dict().items()}


def _widths_from(state: dict[str, torch.Tensor]) -> AudioHeadWidths:
    def shape(key: str, ndim: int) -> tuple[int, ...]:
        tensor = state.get(PREFIX + key)
        if tensor is None or tensor.ndim != ndim:
            raise WeightsError(f"not an AudioCLIP audio head: {PREFIX + key} is missing or has the wrong rank; "
                               "download AudioCLIP-Full-Training.pt again with `avdit download --only eval-paper`")
        return tuple(tensor.shape)

    base = shape("conv1.weight", 4)[0]
    width, per_group = shape("layer1.0.conv2.weight", 4)[:2]
    groups = width // per_group if per_group else 0
    if groups < 1 or width % per_group:
        raise WeightsError(f"{PREFIX}layer1.0.conv2.weight has shape {shape('layer1.0.conv2.weight', 4)}, which is "
                           "not a grouped 3x3 conv; is this AudioCLIP-Full-Training.pt?")
    return AudioHeadWidths(base=base, groups=groups, width_per_group=round(per_group * 64 / base),
                           embed_dim=shape("fc.weight", 2)[0])


@dataclass(frozen=True)
class AudioHeadLoad:
    """What :func:`load_audioclip_audio` read: the head, and the parts of the file it left alone."""

    head: AudioCLIPAudioHead
    ignored: dict[str, int]  # top-level name -> tensors not read (CLIP's towers, :data:`OTHER_PARTS`)
    window_from_file: bool


def load_audioclip_audio(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> AudioHeadLoad:
    """The audio head of ``AudioCLIP-Full-Training.pt`` (or a file in its layout), in eval mode.

    Every ``audio.*`` key is mapped to the parameter or buffer of the same name; a missing, unexpected or
    mis-shaped one is a :class:`WeightsError` naming it. Optional: ``num_batches_tracked`` (ignored),
    ``audio.window`` (recomputed when absent; it is the periodic Blackman-Harris window either way) and
    ``audio.fbsp.bias`` (empty when the head was built without a bias, as published). Keys outside ``audio.``
    (AudioCLIP's other parts, :data:`OTHER_PARTS`) cannot change the head: they are counted, not read.
    """
    file = Path(path)
    tensors = read_state_dict(file, "AudioCLIP-Full-Training.pt")
    audio = {k: v for k, v in tensors.items() if k.startswith(PREFIX)}
    if not audio:
        raise WeightsError(f"{file} has no {PREFIX}* keys: it is not an AudioCLIP checkpoint; download "
                           "AudioCLIP-Full-Training.pt with `avdit download --only eval-paper`")
    others: dict[str, int] = {}  # CLIP's towers (and anything else outside the head): counted, not read
    for key in tensors:
        if not key.startswith(PREFIX):
            top = key.split(".", 1)[0]
            others[top] = others.get(top, 0) + 1
    widths = _widths_from(audio)
    head = AudioCLIPAudioHead(widths)
    expected = expected_keys(widths)
    optional = {k for k in expected if k.endswith("num_batches_tracked")} | {PREFIX + "window", PREFIX + "fbsp.bias"}
    bias = audio.pop(PREFIX + "fbsp.bias", None)
    if bias is not None and bias.numel() not in (0, head.fbsp.out_features * 2):
        raise WeightsError(f"{file} does not fit the AudioCLIP audio head: {PREFIX}fbsp.bias has shape "
                           f"{tuple(bias.shape)}, expected empty or ({head.fbsp.out_features}, 2)")
    check_keys(audio, {k: s for k, s in expected.items() if k != PREFIX + "fbsp.bias"}, optional, file,
               f"the AudioCLIP audio head ({'published' if widths.published else 'custom'} widths)")
    state = {k[len(PREFIX):]: v for k, v in audio.items() if not k.endswith("num_batches_tracked")}
    state.setdefault("window", head.window)
    state["fbsp.bias"] = bias.reshape(-1, 2) if bias is not None and bias.numel() else torch.zeros(0)
    head.fbsp.bias = nn.Parameter(torch.zeros_like(state["fbsp.bias"]))  # shape of the file's bias
    missing, unexpected = head.load_state_dict(state, strict=False)
    leftover = [k for k in missing if not k.endswith("num_batches_tracked")]
    if leftover or unexpected:  # cannot happen after check_keys; kept so a future edit cannot load half a head
        raise WeightsError(f"{file}: could not load {', '.join(leftover + list(unexpected))}")
    return AudioHeadLoad(head.to(device).eval(), others, window_from_file=PREFIX + "window" in audio)


# ---------------------------------------------------------------------------------------------- extractor
class AudioCLIPAudioFeatures:
    """Callable: waveforms (b, s) in [-1, 1] at 44.1 kHz -> raw AudioCLIP audio embeddings (b, 1024), float32.

    With ``batch_statistics`` (the evaluator's behaviour), the rows of one call are one BatchNorm batch: call
    it with exactly the evaluator's batches (:data:`EVALUATOR_BATCH` clips in draw order).
    """

    name = "audioclip-esresnext-fbsp-audio"

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu",
                 batch_statistics: bool = True) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        loaded = load_audioclip_audio(self.path, self.device)
        self.head, self.ignored, self.window_from_file = loaded.head, loaded.ignored, loaded.window_from_file
        self.batch_statistics = batch_statistics
        self.head.use_batch_statistics(batch_statistics)
        self.sha256 = sha256_file(self.path)

    @property
    def protocol(self) -> dict[str, Any]:
        return {"extractor": self.name, "weights_sha256": self.sha256, "layer": "audio head fc (raw, not normalised)",
                "widths": "published" if self.head.widths.published else "custom (not the published network)",
                "batchnorm": (f"batch statistics of each batch of {EVALUATOR_BATCH} clips (training mode)"
                              if self.batch_statistics else "running statistics (eval mode)"),
                "input": "float waveform in [-1, 1] where the head expects int16 values (not rescaled)",
                "sample_rate": SAMPLE_RATE, "feature_dim": self.head.widths.embed_dim}

    @torch.no_grad()
    def __call__(self, waveforms: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(np.asarray(waveforms))
        if x.ndim != 2:
            raise DataError(f"AudioCLIP features need waveforms (b, s), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return np.zeros((0, self.head.widths.embed_dim), dtype=np.float32)
        if self.batch_statistics and x.shape[0] == 1:
            raise DataError("a batch of 1 clip has no batch statistics; pass the evaluator's batches")
        return self.head(x.to(self.device)).float().cpu().numpy()
