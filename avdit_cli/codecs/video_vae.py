"""The SD VAE (``stabilityai/sd-vae-ft-ema``) for video frames: (n, 3, H, W) in [-1, 1] -> (n, 4, H/8, W/8).

Frames of a clip are encoded independently (the VAE is an image model); latents are multiplied by the
config's ``scaling_factor`` (0.18215 for SD) once, in ``encode``. bf16 on GPU, float32 on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from avdit_cli.codecs.base import AutoencoderKLCodec
from avdit_cli.errors import WeightsError


class SDVideoVAE(AutoencoderKLCodec):
    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 8) -> None:
        super().__init__(folder, device, dtype, batch_size)
        if self.in_channels != 3:
            raise WeightsError(f"the VAE in {folder} takes {self.in_channels} channels, not RGB frames: "
                               "data.video_vae_repo must name an image VAE")
