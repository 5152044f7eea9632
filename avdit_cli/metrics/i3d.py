"""I3D video features for FVD / KVD: StyleGAN-V's TorchScript I3D (Kinetics-400).

The file ``i3d_torchscript.pt`` (mirrored as ``flateon/FVD-I3D-torchscript``) is the torchscript port of the
tf.hub I3D that the original FVD uses. StyleGAN-V calls it as

    model(videos, rescale=True, resize=True, return_features=True)   # videos uint8 (b, 3, f, h, w) in 0..255

and gets the 400-d features before the softmax. ``rescale`` maps 0..255 to [-1, 1] and ``resize`` resizes
every frame to 224x224 inside the model. Some other code resizes itself and calls with both flags off: the
two conventions give different numbers, so the flags are part of the protocol recorded beside each score.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics.feature_cache import sha256_file

I3D_FEATURE_DIM = 400


class I3DFeatures:
    """Callable: uint8 frames (b, f, h, w, 3) -> float64 features (b, 400)."""

    name = "i3d-stylegan-v-torchscript"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        rescale: bool = True,
        resize: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"I3D weights not found at {self.path}; run `avdit download` first.")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.rescale = rescale
        self.resize = resize
        self.sha256 = sha256_file(self.path)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in recent torch, but it is the format this I3D is released in.
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except RuntimeError as e:  # not a TorchScript archive
            raise WeightsError(f"{self.path} is not a TorchScript I3D file ({e}); download it again.") from e
        self._frames: int | None = None
        self._resolution: tuple[int, int] | None = None

    @property
    def protocol(self) -> dict[str, Any]:
        """What a number computed with these features depends on (set resolution/frames after a call)."""
        return {
            "extractor": self.name,
            "weights_sha256": self.sha256,
            "rescale": self.rescale,
            "resize": self.resize,
            "model_resolution": 224 if self.resize else None,
            "input_resolution": list(self._resolution) if self._resolution else None,
            "frames": self._frames,
            "feature_dim": I3D_FEATURE_DIM,
        }

    @torch.no_grad()
    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(frames)  # (b, f, h, w, 3)
        if x.dtype != torch.uint8:
            raise DataError(f"I3D expects uint8 frames in 0..255, got {x.dtype}; convert before extracting.")
        if x.ndim != 5 or x.shape[-1] != 3:
            raise DataError(f"I3D expects frames shaped (b, f, h, w, 3), got {tuple(x.shape)}.")
        self._frames, self._resolution = int(x.shape[1]), (int(x.shape[2]), int(x.shape[3]))
        if x.shape[0] == 0:
            return np.zeros((0, I3D_FEATURE_DIM), dtype=np.float64)

        out = []
        for start in range(0, x.shape[0], self.batch_size):
            videos = rearrange(x[start : start + self.batch_size], "b f h w c -> b c f h w")
            videos = videos.contiguous().to(self.device)
            feats = self.model(videos, rescale=self.rescale, resize=self.resize, return_features=True)  # (b, 400)
            out.append(feats.detach().to("cpu", torch.float64).numpy())
        feats = np.concatenate(out, axis=0)
        if feats.shape != (x.shape[0], I3D_FEATURE_DIM):
            raise WeightsError(
                f"{self.path} returned features of shape {feats.shape}, expected ({x.shape[0]}, {I3D_FEATURE_DIM});"
                " is it StyleGAN-V's i3d_torchscript.pt?"
            )
        return feats
