"""Weight-free `pixels` codecs for the `tiny` preset: plain area resizes, so the demo runs on a CPU with no
downloads.

- video: frames (n, 3, H, W) in [-1, 1] -> (n, 3, H/k, W/k) by area averaging; decode resizes back (bilinear).
- mel: log-mel (b, 1, T, M) -> (b, 1, T/k, M/k) by area averaging, then ``(x - MEL_OFFSET) / MEL_SPREAD`` so
  the latents are roughly unit scale: log-mel values lie between log(1e-5) = -11.5 (silence, the clamp) and
  about +3 (a full-scale tone), so the fixed constants -4.5 and 4.0 map that range to about [-1.75, 1.9].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from avdit_cli.codecs.base import LatentCodec
from avdit_cli.codecs.mel import LOG_CLAMP

MEL_OFFSET = -4.5  # middle of the log-mel range [-11.5, 3]
MEL_SPREAD = 4.0  # about half that range
MEL_CEILING = 2.5  # log-mel of a full-scale square wave reaches 2.3, of a full-scale sine 2.0


class _AreaCodec(LatentCodec):
    def __init__(self, channels: int, factor: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.in_channels = self.latent_channels = channels
        self.factor = factor
        self.device, self.dtype = torch.device(device), dtype

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        self.latent_shape(tuple(x.shape))
        return F.avg_pool2d(x.to(self.device, torch.float32), self.factor)  # area resize by an integer factor

    def _up(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z.to(self.device, torch.float32), scale_factor=self.factor, mode="bilinear",
                             align_corners=False)


class PixelVideoCodec(_AreaCodec):
    """(n, 3, H, W) in [-1, 1] <-> (n, 3, H/k, W/k); no scale (1.0)."""

    scale = 1.0
    latent_range = (-1.0, 1.0)  # an average of pixels in [-1, 1]

    def __init__(self, factor: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__(3, factor, device, dtype)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._down(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._up(z).clamp(-1.0, 1.0)


class PixelMelCodec(_AreaCodec):
    """(b, 1, T, M) log-mel <-> (b, 1, T/k, M/k), normalised with MEL_OFFSET / MEL_SPREAD."""

    scale = 1.0 / MEL_SPREAD
    # from the log clamp (silence) to a full-scale signal: about [-1.75, 1.75]
    latent_range = ((math.log(LOG_CLAMP) - MEL_OFFSET) / MEL_SPREAD, (MEL_CEILING - MEL_OFFSET) / MEL_SPREAD)

    def __init__(self, factor: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__(1, factor, device, dtype)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (self._down(x) - MEL_OFFSET) / MEL_SPREAD

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._up(z.float() * MEL_SPREAD + MEL_OFFSET)
