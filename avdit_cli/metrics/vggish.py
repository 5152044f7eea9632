"""VGGish audio embeddings for FAD, in plain torch.

Network: torchvggish's module layout, so its released state dict ``vggish-10086976.pth`` loads strictly:
``features.{0,3,6,8,11,13}`` are the 3x3 convs (64, 128, 256, 256, 512, 512 channels, a 2x2 max-pool after
the 1st, 2nd, 4th and 6th), ``embeddings.{0,2,4}`` the Linear layers 12288 -> 4096 -> 4096 -> 128. The PCA
file ``vggish_pca_params-970ea276.pth`` holds ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128,).

Front end (vggish_input / mel_features, re-implemented): 16 kHz mono; frames of 400 samples (25 ms) every 160
(10 ms), no centring or padding, periodic Hann, |rfft| with n_fft 512; 64 mel bands 125-7500 Hz on the HTK mel
scale (DC bin zeroed); log(mel + 0.01); examples of 96 frames (0.96 s) every 96 frames, incomplete examples
dropped. A 1.6 s clip (25,600 samples -> 158 frames) therefore gives exactly ONE example, covering its first
0.96 s: the last 0.64 s is not seen. We do not pad; this is the standard VGGish framing.

What FAD uses (``FAD_PROTOCOL``): the raw 128-d output of the last Linear layer, *without* the PCA / 8-bit
quantisation postprocess and *without* torchvggish's final ReLU. Google's FAD reference runs the TF VGGish
whose embedding layer has no activation, before PCA; the torch FAD package (frechet_audio_distance) matches
it with ``use_pca=False, use_activation=False``. Statistics are taken over per-clip means of the examples
(identical to per-example statistics for 1.6 s clips, which have one example each).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from torch import nn

from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics.feature_cache import sha256_file

SAMPLE_RATE = 16000
WINDOW = 400  # 0.025 s
HOP = 160  # 0.010 s
N_FFT = 512  # next power of two of the window
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EXAMPLE_HOP_FRAMES = 96
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0

RELEASED_CHANNELS = (64, 128, 256, 256, 512, 512)
RELEASED_HIDDEN = 4096
_CONV_INDICES = (0, 3, 6, 8, 11, 13)  # positions of the convs in `features` (ReLU / MaxPool in between)
_POOL_AFTER = (0, 1, 3, 5)  # conv numbers followed by a 2x2 max-pool

FAD_PROTOCOL: dict[str, Any] = {
    "layer": "embeddings.4 (pre-activation, no PCA)",
    "sample_rate": SAMPLE_RATE,
    "example_seconds": 0.96,
    "example_hop_seconds": 0.96,
    "clip_pooling": "mean",
}


# ---------------------------------------------------------------------------------------------- front end


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def htk_mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = N_FFT // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """Triangular HTK mel weights (num_spectrogram_bins, num_mel_bins), triangles linear in mel, DC bin zero."""
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise DataError(f"mel band edges {lower_hz}-{upper_hz} Hz must satisfy 0 <= low < high <= {nyquist}.")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))  # (k,)
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)  # (m + 2,)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (m,) each
    rising = (bins_mel[:, None] - lower) / (center - lower)  # (k, m)
    falling = (upper - bins_mel[:, None]) / (upper - center)  # (k, m)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # HTK leaves out the DC bin
    return weights


def log_mel(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """VGGish log-mel spectrogram of a 16 kHz mono waveform (s,) -> (t, 64), float64."""
    x = torch.as_tensor(np.asarray(waveform), dtype=torch.float64).flatten()  # (s,)
    if x.numel() < WINDOW:
        return torch.zeros((0, NUM_MEL_BINS), dtype=torch.float64)
    frames = x.unfold(0, WINDOW, HOP)  # (t, 400), no padding: incomplete frames are dropped
    window = torch.hann_window(WINDOW, periodic=True, dtype=torch.float64)
    magnitude = torch.fft.rfft(frames * window, n=N_FFT).abs()  # (t, 257)
    mel = magnitude @ torch.from_numpy(htk_mel_matrix())  # (t, 64)
    return torch.log(mel + LOG_OFFSET)


def waveform_to_examples(waveform: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Waveform (s,) at 16 kHz -> VGGish examples (n, 96, 64), float32. n is 0 below 0.975 s."""
    if sample_rate != SAMPLE_RATE:
        raise DataError(f"VGGish needs 16 kHz audio, got {sample_rate} Hz; resample the audio first.")
    spec = log_mel(waveform)  # (t, 64)
    if spec.shape[0] < EXAMPLE_FRAMES:
        return torch.zeros((0, EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=torch.float32)
    examples = spec.unfold(0, EXAMPLE_FRAMES, EXAMPLE_HOP_FRAMES)  # (n, 64, 96)
    return rearrange(examples, "n m t -> n t m").float().contiguous()


# ------------------------------------------------------------------------------------------------ network


class VGGishNet(nn.Module):
    """torchvggish's VGG: features (convs) + embeddings (MLP). Widths are arguments so tests can be tiny."""

    def __init__(
        self,
        channels: tuple[int, ...] = RELEASED_CHANNELS,
        hidden: int = RELEASED_HIDDEN,
        embedding_size: int = EMBEDDING_SIZE,
    ) -> None:
        super().__init__()
        if len(channels) != len(_CONV_INDICES):
            raise WeightsError(f"VGGish has {len(_CONV_INDICES)} conv layers, got {len(channels)} widths.")
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            if i in _POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        # 96 x 64 input halved four times -> 6 x 4 grid.
        flat = channels[-1] * (EXAMPLE_FRAMES // 16) * (NUM_MEL_BINS // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, embedding_size),
            nn.ReLU(inplace=True),  # torchvggish keeps it; FAD skips it (final_relu=False)
        )

    def forward(self, examples: torch.Tensor, final_relu: bool = False) -> torch.Tensor:
        """examples (n, 96, 64) log-mel -> (n, embedding_size)."""
        x = self.features(examples[:, None])  # (n, c, 6, 4)
        # torchvggish flattens in (time, mel, channel) order to stay compatible with the TF weights.
        x = rearrange(x, "n c t m -> n (t m c)")
        x = self.embeddings[:5](x)
        return self.embeddings[5](x) if final_relu else x

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> VGGishNet:
        """Build with the widths found in ``state_dict`` and load it strictly."""
        expected = {f"features.{i}.{p}" for i in _CONV_INDICES for p in ("weight", "bias")}
        expected |= {f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
        missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
        if missing or unexpected:
            raise WeightsError(
                f"not a torchvggish state dict (missing {missing[:4]}, unexpected {unexpected[:4]}); "
                "use vggish-10086976.pth from the torchvggish v0.1 release."
            )
        channels = tuple(int(state_dict[f"features.{i}.weight"].shape[0]) for i in _CONV_INDICES)
        hidden = int(state_dict["embeddings.0.weight"].shape[0])
        embedding_size = int(state_dict["embeddings.4.weight"].shape[0])
        net = cls(channels, hidden, embedding_size)
        try:
            net.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:  # shape mismatch
            raise WeightsError(f"VGGish weights do not fit the network: {str(e).splitlines()[-1].strip()}") from e
        return net


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals needed to unpickle plain float arrays (and nothing that can run code)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved it to np._core
    reconstruct = core.multiarray._reconstruct
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # the name numpy 1.x wrote
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float32)),
        type(np.dtype(np.float64)),
    ]


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) a dict of tensors; numpy arrays are allowed too, since files written by
    older tools (the VGGish PCA params were converted from an .npz) may hold them."""
    if not path.is_file():
        raise WeightsError(f"{what} not found at {path}; run `avdit download` first.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"cannot read {what} at {path} ({first_line}); download it again.") from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{what} at {path} is not a dict of tensors.")
    return {str(k): torch.as_tensor(v) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------- extractor


class VGGishFeatures:
    """Callable: 16 kHz waveforms -> VGGish embeddings, one row per clip (or per example)."""

    name = "vggish-torchvggish"

    def __init__(
        self,
        weights_path: str | os.PathLike[str],
        pca_path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        use_pca: bool = False,
        final_relu: bool = False,
        pooling: Literal["mean", "examples"] = "mean",
        batch_size: int = 64,
    ) -> None:
        self.weights_path = Path(weights_path)
        self.device = torch.device(device)
        self.use_pca, self.final_relu, self.pooling, self.batch_size = use_pca, final_relu, pooling, batch_size
        self.net = VGGishNet.from_state_dict(_load_tensors(self.weights_path, "VGGish weights"))
        self.net = self.net.to(self.device).eval()
        self.sha256 = sha256_file(self.weights_path)
        self.pca_sha256: str | None = None
        self.pca_matrix: torch.Tensor | None = None
        self.pca_means: torch.Tensor | None = None
        if pca_path is not None:
            self._load_pca(Path(pca_path))
        if use_pca and self.pca_matrix is None:
            raise WeightsError("use_pca needs the PCA params file vggish_pca_params-970ea276.pth (pca_path).")
        if pooling not in ("mean", "examples"):
            raise DataError(f"pooling must be 'mean' or 'examples', got {pooling!r}.")

    def _load_pca(self, path: Path) -> None:
        params = _load_tensors(path, "VGGish PCA params")
        if "pca_eigen_vectors" not in params or "pca_means" not in params:
            raise WeightsError(f"{path} lacks pca_eigen_vectors / pca_means; is it vggish_pca_params-970ea276.pth?")
        d = self.net.embeddings[4].out_features
        matrix, means = params["pca_eigen_vectors"].double(), params["pca_means"].double().reshape(-1)
        if matrix.shape != (d, d) or means.shape != (d,):
            raise WeightsError(
                f"PCA params have shapes {tuple(matrix.shape)} / {tuple(means.shape)}, expected ({d}, {d}) / ({d},);"
                " use vggish_pca_params-970ea276.pth."
            )
        self.pca_matrix, self.pca_means, self.pca_sha256 = matrix, means, sha256_file(path)

    @property
    def protocol(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights_sha256": self.sha256,
            "sample_rate": SAMPLE_RATE,
            "example_seconds": 0.96,
            "example_hop_seconds": 0.96,
            "postprocess": "pca+quantize" if self.use_pca else "raw",
            "pca_sha256": self.pca_sha256 if self.use_pca else None,
            "final_relu": self.final_relu,
            "pooling": self.pooling,
        }

    def postprocess(self, embeddings: torch.Tensor) -> torch.Tensor:
        """AudioSet release postprocess: PCA (with whitening), clip to [-2, 2], 8-bit quantise -> 0..255."""
        if self.pca_matrix is None or self.pca_means is None:
            raise WeightsError("no PCA params loaded; pass pca_path.")
        x = embeddings.double()  # (n, d)
        pca = (x - self.pca_means) @ self.pca_matrix.T  # == (E @ (x.T - means)).T
        clipped = pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))

    @torch.no_grad()
    def _embed_examples(self, examples: torch.Tensor) -> torch.Tensor:
        """Examples (n, 96, 64) -> embeddings (n, 128), float64 on the CPU, in batches."""
        out = []
        for start in range(0, examples.shape[0], self.batch_size):
            batch = examples[start : start + self.batch_size].to(self.device)
            out.append(self.net(batch, final_relu=self.final_relu).double().cpu())
        emb = torch.cat(out)
        return self.postprocess(emb) if self.use_pca else emb

    def _examples(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        examples = waveform_to_examples(waveform, sample_rate)  # (n, 96, 64)
        if examples.shape[0] == 0:
            seconds = np.asarray(waveform).size / sample_rate
            raise DataError(f"audio of {seconds:.3f} s is shorter than one VGGish example (0.975 s); use longer clips.")
        return examples

    def embed(self, waveform: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """One waveform (s,) -> per-example embeddings (n, 128), float64."""
        return self._embed_examples(self._examples(waveform, sample_rate)).numpy()

    def __call__(
        self, waveforms: np.ndarray | torch.Tensor | list[np.ndarray], sample_rate: int = SAMPLE_RATE
    ) -> np.ndarray:
        """Clips (b, s) or a list of 1-D waveforms -> (b, 128) clip means, or (sum of examples, 128)."""
        per_clip = [self._examples(w, sample_rate) for w in waveforms]
        if not per_clip:
            return np.zeros((0, self.net.embeddings[4].out_features), dtype=np.float64)
        # All clips' examples go through the network together, so a GPU sees full batches.
        emb = self._embed_examples(torch.cat(per_clip)).numpy()  # (sum n, 128)
        if self.pooling == "examples":
            return emb
        bounds = np.cumsum([0] + [e.shape[0] for e in per_clip])
        return np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
