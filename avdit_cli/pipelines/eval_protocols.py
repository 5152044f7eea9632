"""The evaluation protocols of `avdit eval --protocol`, in one place.

A protocol fixes everything a number depends on: the extractors and their weights, how frames and audio are
read, the scale factors, the default sample count, how the reference clips are chosen and the numerics of the
distances. ``metrics.json`` records the protocol beside every number; numbers of different protocols are not
comparable.

- ``avdit`` (the default): StyleGAN-V's I3D and VGGish on clips read at the run's own clip protocol (DESIGN
  section 5). Unchanged by the arrival of the second protocol.
- ``mm-diffusion``: the evaluator behind the published AIST++ / Landscape tables (MM-Diffusion, AV-DiT, MM-LDM,
  JavisDiT's re-implementation, PAV-DiT): ``eval_multimodal`` in researchmm/MM-Diffusion's
  ``mm_diffusion/evaluator.py`` (commit 7250222) with the loader it calls (``multimodal_datasets.py``: torchvision
  ``VideoClips`` for frames, moviepy for audio), ``evaluations/fvd/fvd.py`` and ``evaluations/AudioCLIP``.
  Reproduced with its quirks; the one deliberate difference is that our reference draw is seeded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from avdit_cli.errors import ConfigError
from avdit_cli.metrics.frechet import frechet_distance, frechet_distance_tfgan
from avdit_cli.metrics.kid import KVD_DISPLAY_SCALE, kvd, kvd_sklearn_float32


class ProtocolName(str, Enum):
    """What ``avdit eval --protocol`` accepts."""

    AVDIT = "avdit"
    MM_DIFFUSION = "mm-diffusion"


@dataclass(frozen=True)
class Extractor:
    """One feature extractor of a protocol and the weights it runs with."""

    metrics: tuple[str, ...]
    model: str
    weights: str  # the key of its entry in avdit_cli.hub's table
    weights_file: str
    source: str  # where the weights come from (repo or URL, pin)
    features: str
    reading: str  # how the clips it sees are read and preprocessed


@dataclass(frozen=True)
class EvalProtocol:
    """A named evaluation protocol. ``to_dict()`` is what metrics.json records."""

    name: str
    summary: str
    source: str
    metrics: tuple[str, ...]
    video: Extractor
    audio: Extractor
    display_scale: dict[str, float]
    num_samples: int | None  # None: the run config's eval.num_samples
    reference: str
    short_sets: str  # what happens when a set has fewer clips than the sample count
    numerics: dict[str, str]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def distance(self, metric: str, generated: np.ndarray, reference: np.ndarray) -> float:
        """The raw (unscaled) value of `metric` ("fvd", "kvd", "fad") between feature sets (n, d) and (m, d)."""
        if metric == "kvd":
            return kvd_sklearn_float32(generated, reference) if self.name == ProtocolName.MM_DIFFUSION.value \
                else kvd(generated, reference)
        if self.name == ProtocolName.MM_DIFFUSION.value:
            return frechet_distance_tfgan(generated, reference)
        return frechet_distance(generated, reference)


AVDIT = EvalProtocol(
    name=ProtocolName.AVDIT.value,
    summary="StyleGAN-V I3D + VGGish at the run's clip protocol",
    source="avdit (DESIGN.md section 5); FVD as in StyleGAN-V, FAD as in Google's FAD without PCA",
    metrics=("fvd", "kvd", "fad", "av-align"),
    video=Extractor(
        metrics=("fvd", "kvd"), model="I3D (StyleGAN-V TorchScript), 400-d features before the softmax",
        weights="i3d", weights_file="i3d_torchscript.pt",
        source="hf.co/flateon/FVD-I3D-torchscript @1c2d617 (sha256 bec6519f...)",
        features="(b, 400) float64",
        reading="data.num_frames frames at data.fps by timestamp; short side resized (bicubic) and centre-cropped "
                "to data.frame_size; uint8 0..255; the model rescales to [-1, 1] and resizes to 224 itself"),
    audio=Extractor(
        metrics=("fad",), model="VGGish (torchvggish), raw 128-d embeddings (no PCA, no final ReLU)",
        weights="vggish", weights_file="vggish-10086976.pth",
        source="github.com/harritaylor/torchvggish release v0.1 (sha256 prefix 10086976)",
        features="(b, 128) float64, mean over 0.96 s examples",
        reading="mono (channels averaged) at data.sample_rate, data.clip_samples samples from the first frame, "
                "resampled to 16 kHz; values in [-1, 1]"),
    display_scale={"fvd": 1.0, "kvd": KVD_DISPLAY_SCALE, "fad": 1.0, "av-align": 1.0},
    num_samples=None,
    reference="the clips of the run's latent cache (or of --ref, cut into clips at the run's protocol), "
              "num_samples drawn with numpy default_rng(seed) without replacement",
    short_sets="a set with fewer clips than num_samples is scored with the clips it has (with a warning)",
    numerics={"fd": "float64, scipy.linalg.sqrtm (eps*I offset when singular)",
              "kvd": "float64 unbiased polynomial MMD^2, degree 3, gamma 1/d, coef0 1"},
)

MM_DIFFUSION = EvalProtocol(
    name=ProtocolName.MM_DIFFUSION.value,
    summary="MM-Diffusion's evaluator: I3D-400 logits at 64->224, AudioCLIP FAD x1e4 at 44.1 kHz",
    source="github.com/researchmm/MM-Diffusion @7250222: mm_diffusion/evaluator.py (eval_multimodal), "
           "mm_diffusion/multimodal_datasets.py, evaluations/fvd/fvd.py, evaluations/AudioCLIP",
    metrics=("fvd", "kvd", "fad"),
    video=Extractor(
        metrics=("fvd", "kvd"), model="InceptionI3d (Kinetics-400) logits, eval mode",
        weights="i3d-400", weights_file="i3d_pretrained_400.pt",
        source="github.com/songweige/TATS @03bbce1 tats/fvd/i3d_pretrained_400.pt (git blob a867b87a...); "
               "VideoGPT's conversion of tf-hub i3d-kinetics-400, the file MM-Diffusion fetches from Google Drive",
        features="(b, 400) float32 logits",
        reading="every window of 16 frames at 10 fps, one frame apart (torchvision VideoClips: source frame "
                "floor(k * fps / 10), or every (fps / 10)-th when that is whole), decoded at the stored size; "
                "letterboxed into 64x64: scaled by min(64/h, 64/w) to int sizes with bicubic, no antialias "
                "(torchvision < 0.17 on tensors), rounded to uint8, centred on black; then x / 127.5 - 1 and "
                "back with ((x + 1) * 127.5).to(uint8), which truncates (63 of 256 levels lose 1); then / 255, "
                "bilinear short side -> 224, centre crop 224, (x - 0.5) * 2"),
    audio=Extractor(
        metrics=("fad",), model="AudioCLIP audio head (ESResNeXt-FBSP), raw 1024-d embedding before L2 norm",
        weights="audioclip", weights_file="AudioCLIP-Full-Training.pt",
        source="github.com/AndreyGuzhov/AudioCLIP release v0.1 (not pinned: no published hash)",
        features="(b, 1024) float32; BatchNorm with the statistics of each batch of 8 clips (the evaluator "
                 "never calls .eval() on AudioCLIP)",
        reading="44.1 kHz: the track decoded by ffmpeg to 2 channels of s16 (moviepy 1.0.3), channel 0, / 32768; "
                "sample k = round(44100 * (k / 44100 + t0)) with t0 = first frame index / fps in float32, for "
                "int(44100 * (t1 - t0)) samples, t1 = (last frame index + 1) / fps; cut or zero-padded to 70560 "
                "(1.6 s); passed in [-1, 1] to a head that expects int16 values (see metrics/audioclip.py)"),
    display_scale={"fvd": 1.0, "kvd": 1.0, "fad": 1e4},
    num_samples=2048,
    reference="every 16-frame window (one frame apart at 10 fps) of every .mp4 / .avi / .gif under the training "
              "folder (--ref DATA_DIR, or the data_dir of the run's latent cache); the generated set likewise "
              "from GEN_DIR's .mp4 files; num_samples drawn by a numpy default_rng(seed) permutation (theirs: "
              "Python random.shuffle, unseeded)",
    short_sets="a set with fewer clips than num_samples is repeated in its draw order up to num_samples, as the "
               "evaluator's endless loader does (batches of 8 restart with each pass); a warning says so",
    numerics={"fd": "float32 torch; covariances 1/(n-1); Tr((S1 S2)^1/2) as Tr((S1^1/2 S2 S1^1/2)^1/2) with "
                    "SVD square roots (TF-GAN trace_sqrt_product); generated set first",
              "kvd": "sklearn polynomial_kernel (degree 3, gamma 1/d, coef0 1) kept in float32, unbiased MMD^2, "
                     "not rescaled (printed as is)",
              "fad": "the same Fréchet distance on AudioCLIP embeddings, times 10000"},
    notes=("FAD scale: x10000 since MM-Diffusion commit 3766a2f (2024-06-04); x1000 before. We follow x10000.",
           "Frames are decoded by the ffmpeg binary (theirs: PyAV 10 through torchvision); the RGB conversion "
           "may differ by a level or two in chroma.",
           "Unreadable clips are skipped and the next clip of the draw taken (theirs: the next clip index).",
           "With several GPUs theirs batched per rank; this is the one-process order."),
)

PROTOCOLS: dict[str, EvalProtocol] = {p.name: p for p in (AVDIT, MM_DIFFUSION)}


def get_protocol(name: str | ProtocolName | EvalProtocol) -> EvalProtocol:
    """The protocol of that name; a :class:`ConfigError` naming the choices otherwise."""
    if isinstance(name, EvalProtocol):
        return name
    key = name.value if isinstance(name, ProtocolName) else str(name)
    if key not in PROTOCOLS:
        raise ConfigError(f"unknown eval protocol {key!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]
