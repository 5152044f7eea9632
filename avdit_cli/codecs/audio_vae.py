"""The AudioLDM VAE (``cvssp/audioldm-s-full-v2``, subfolder ``vae``) for log-mel images.

(b, 1, T, M) log-mel -> (b, 8, T/4, M/4): 1.6 s = 160 frames x 64 mels -> (8, 40, 16). The log-mel goes in
as the front end makes it (AudioLDM feeds its VAE the log-mel directly); latents are multiplied by the config's
``scaling_factor`` once, in ``encode``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from avdit_cli.codecs.base import AutoencoderKLCodec
from avdit_cli.errors import WeightsError


class AudioLDMVAE(AutoencoderKLCodec):
    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 16) -> None:
        super().__init__(folder, device, dtype, batch_size)
        if self.in_channels != 1:
            raise WeightsError(f"the VAE in {folder} takes {self.in_channels} channels, not a mel image: "
                               "data.audio_vae_repo must name AudioLDM's VAE (subfolder vae)")
