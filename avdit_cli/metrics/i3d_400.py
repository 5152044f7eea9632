"""InceptionI3d logits (Kinetics-400) for the ``mm-diffusion`` protocol's FVD and KVD: ``i3d_pretrained_400.pt``.

The file is VideoGPT's conversion of DeepMind's tf-hub ``i3d-kinetics-400`` into the PyTorch InceptionI3d of
piergiaj/pytorch-i3d; TATS, cd-fvd and MM-Diffusion load it with ``load_state_dict(strict=True)`` and call the
network in eval mode for its 400 logits. This module is our own implementation of that network (same module
names, so the published keys map one to one) and of the preprocessing MM-Diffusion applies before it.

Network (input (b, 3, f, 224, 224) in [-1, 1]): every conv is a ``Unit3D`` (Conv3d without bias, BatchNorm3d
with eps 1e-5, ReLU) padded TF-"SAME" style at run time (for a dimension of size s, kernel k and stride r the
total padding is ``max(k - r, 0)`` when ``s % r == 0`` else ``max(k - s % r, 0)``, the smaller half in front);
max pools pad the same way with zeros. Stem ``Conv3d_1a_7x7`` (stride 2) -> ``MaxPool3d_2a_3x3`` (1,3,3)/(1,2,2)
-> ``Conv3d_2b_1x1`` -> ``Conv3d_2c_3x3`` -> ``MaxPool3d_3a_3x3`` -> ``Mixed_3b, 3c`` -> ``MaxPool3d_4a_3x3`` (3,3,3)/2
-> ``Mixed_4b..4f`` -> ``MaxPool3d_5a_2x2`` (2,2,2)/2 -> ``Mixed_5b, 5c`` -> AvgPool3d (2,7,7)/1 -> ``logits``
(1x1x1 conv with bias, no norm, no ReLU) -> squeeze space, mean over time -> (b, 400). An Inception module
concatenates ``b0`` (1x1), ``b1a``->``b1b`` (1x1, 3x3x3), ``b2a``->``b2b`` (1x1, 3x3x3) and a 3x3x3 max pool ->
``b3b`` (1x1). The dropout before the logits is inactive in eval mode and left out.

Keys (the converter writes exactly these, no ``num_batches_tracked``): ``{unit}.conv3d.weight`` and
``{unit}.bn.{weight,bias,running_mean,running_var}`` for every unit (``bn.weight`` is all ones: TF's I3D has
no scale), ``logits.conv3d.{weight,bias}``. :func:`load_i3d_400` maps each of them explicitly and refuses a
file with a missing, unexpected or mis-shaped key, naming it.

Preprocessing (``evaluations/fvd/fvd.py::preprocess_single`` of MM-Diffusion, after VideoGPT): uint8 frames
/ 255, bilinear resize (``align_corners=False``) of the short side to 224 (the long side to ``ceil``), centre
crop 224, then ``(x - 0.5) * 2``.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics.feature_cache import sha256_file

NUM_CLASSES = 400
RESOLUTION = 224
BN_EPS = 1e-5

# Output channels of the stem convs and of each Inception module's (b0, b1a, b1b, b2a, b2b, b3b), as published.
PUBLISHED_STEM = (64, 64, 192)
PUBLISHED_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_STEM_UNITS = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_ORDER = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
          "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
          "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")
_BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class I3DWidths:
    """Channel widths of the network; the published ones by default (tests use tiny ones, same key names)."""

    stem: tuple[int, int, int] = PUBLISHED_STEM
    mixed: dict[str, tuple[int, int, int, int, int, int]] = field(default_factory=lambda: dict(PUBLISHED_MIXED))
    num_classes: int = NUM_CLASSES

    @property
    def published(self) -> bool:
        return self.stem == PUBLISHED_STEM and self.mixed == PUBLISHED_MIXED and self.num_classes == NUM_CLASSES


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) of one dimension."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    _, _, t, h, w = x.shape
    (tf, tb), (hf, hb), (wf, wb) = (_same_pad(s, k, r) for s, k, r in zip((t, h, w), kernel, stride, strict=True))
    return F.pad(x, (wf, wb, hf, hb, tf, tb))  # zeros, also before a max pool (inputs are post-ReLU)


class Unit3D(nn.Module):
    """Conv3d (TF-SAME padding) + optional BatchNorm3d + optional ReLU; the published names ``conv3d``/``bn``."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), norm: bool = True, bias: bool = False,
                 relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(c_out, eps=BN_EPS) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(c_in, w0)
        self.b1a = Unit3D(c_in, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(c_in, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(c_in, w3b)

    @staticmethod
    def out_channels(widths: tuple[int, int, int, int, int, int]) -> int:
        return widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """(b, 3, f, 224, 224) in [-1, 1] -> logits (b, num_classes). Module names are the published keys."""

    def __init__(self, widths: I3DWidths | None = None) -> None:
        super().__init__()
        self.widths = widths or I3DWidths()
        s1, s2, s3 = self.widths.stem
        mixed = self.widths.mixed
        self.Conv3d_1a_7x7 = Unit3D(3, s1, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(s1, s2)
        self.Conv3d_2c_3x3 = Unit3D(s2, s3, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        c = s3
        for name in ("Mixed_3b", "Mixed_3c"):
            self.add_module(name, InceptionModule(c, mixed[name]))
            c = InceptionModule.out_channels(mixed[name])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            self.add_module(name, InceptionModule(c, mixed[name]))
            c = InceptionModule.out_channels(mixed[name])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            self.add_module(name, InceptionModule(c, mixed[name]))
            c = InceptionModule.out_channels(mixed[name])
        self.logits = Unit3D(c, self.widths.num_classes, norm=False, bias=True, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in _ORDER:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # (b, c, f', 1, 1) at 224x224 input
        x = self.logits(x)  # (b, classes, f', 1, 1)
        return x.squeeze(4).squeeze(3).mean(dim=2)  # (b, classes)


# ---------------------------------------------------------------------------------------------- weights
def expected_keys(widths: I3DWidths) -> dict[str, tuple[int, ...]]:
    """Every key of a published-layout file with its shape (the converter's output, no num_batches_tracked)."""
    with torch.device("meta"):  # shapes only, no memory
        shapes = {k: tuple(v.shape) for k, v in InceptionI3d(widths).state_dict().items()}
    return {k: s for k, s in shapes.items() if not k.endswith("num_batches_tracked")}


def _widths_from(state: dict[str, torch.Tensor]) -> I3DWidths:
    """The widths a file was made with: the output channels of its convs (everything else must chain)."""
    def out(key: str) -> int:
        tensor = state.get(key)
        if tensor is None or tensor.ndim != 5:
            raise WeightsError(f"not an i3d_pretrained_400.pt state dict: {key} is missing or not a 3-D conv "
                               "weight; download it again with `avdit download --only eval-paper`")
        return int(tensor.shape[0])

    stem = tuple(out(f"{u}.conv3d.weight") for u in _STEM_UNITS)
    mixed = {m: tuple(out(f"{m}.{b}.conv3d.weight") for b in _BRANCHES) for m in PUBLISHED_MIXED}
    return I3DWidths(stem=stem, mixed=mixed, num_classes=out("logits.conv3d.weight"))  # type: ignore[arg-type]


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A plain dict of tensors from a .pt file, read with ``weights_only=True`` (no code from the file runs)."""
    if not path.is_file():
        raise WeightsError(f"{what} not found at {path}; run `avdit download --only eval-paper`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: cannot be read as a plain tensor file ({first}); download it again") from err
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; is it {what}?")
    return {str(k): v for k, v in obj.items()}


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], optional: set[str],
               file: Path, what: str) -> None:
    """Refuse missing, unexpected and mis-shaped keys, naming them (``optional`` keys may be absent)."""
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [f"{k}: {tuple(v.shape)} vs expected {expected[k]}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if keys:
            more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
            parts.append(f"{label}: {', '.join(keys[:6])}{more}")
    if parts:
        raise WeightsError(f"{file} does not fit {what}: " + "; ".join(parts) +
                           "; download it again with `avdit download --only eval-paper`")


def load_i3d_400(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> InceptionI3d:
    """InceptionI3d in eval mode with the weights of ``i3d_pretrained_400.pt`` (or a file in its layout).

    Each published key is mapped to the module of the same name; a partial file, a key too many or a tensor of
    the wrong shape is a :class:`WeightsError` naming the key. ``num_batches_tracked`` entries, which a
    re-saved copy may carry, are accepted and ignored.
    """
    file = Path(path)
    tensors = read_state_dict(file, "i3d_pretrained_400.pt")
    state = {k: v for k, v in tensors.items() if not k.endswith(".bn.num_batches_tracked")}
    widths = _widths_from(state)
    model = InceptionI3d(widths)
    kind = "published" if widths.published else "custom"
    check_keys(state, expected_keys(widths), set(), file, f"InceptionI3d ({kind} widths)")
    # A plain dict has no version metadata, so BatchNorm fills in the num_batches_tracked it lacks.
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ preprocessing
def preprocess(frames: np.ndarray | torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
    """uint8 frames (b, f, h, w, 3) -> float32 (b, 3, f, resolution, resolution) in [-1, 1], as the evaluator.

    /255, bilinear (align_corners False) short side -> resolution with the long side ``ceil``-ed, centre crop
    (start ``(size - resolution) // 2``), then ``(x - 0.5) * 2``.
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise DataError(f"I3D-400 expects uint8 frames (b, f, h, w, 3), got {x.dtype} {tuple(x.shape)}")
    b, f, h, w, _ = x.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    video = rearrange(x, "b f h w c -> (b f) c h w").float() / 255.0
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    video = video[:, :, top: top + resolution, left: left + resolution]
    video = rearrange(video, "(b f) c h w -> b c f h w", b=b) - 0.5
    return video * 2


class I3D400Features:
    """Callable: uint8 frames (b, f, h, w, 3) -> float32 logits (b, 400), in batches."""

    name = "i3d-400-inception-logits"

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu", batch_size: int = 8) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_i3d_400(self.path, self.device)
        self.sha256 = sha256_file(self.path)

    @property
    def protocol(self) -> dict[str, Any]:
        return {"extractor": self.name, "weights_sha256": self.sha256, "layer": "logits (eval mode)",
                "widths": "published" if self.model.widths.published else "custom (not the published network)",
                "input": "uint8 /255, bilinear short side -> 224, centre crop 224, (x - 0.5) * 2",
                "feature_dim": self.model.widths.num_classes}

    @torch.no_grad()
    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(frames)
        out = [self.model(preprocess(x[i: i + self.batch_size]).to(self.device)).float().cpu()
               for i in range(0, x.shape[0], self.batch_size)]
        if not out:
            return np.zeros((0, self.model.widths.num_classes), dtype=np.float32)
        return torch.cat(out).numpy()
