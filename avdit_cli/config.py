"""Configuration: frozen dataclasses with the defaults in code, presets as small YAML diffs over them.

The defaults are the paper setting (DESIGN section 1). A preset names only what it changes; unknown keys,
wrong types and impossible values are :class:`ConfigError` naming the key, what was given and what is allowed.
The resolved config is saved as plain data (``to_dict``) in every run folder and checkpoint, and
``from_dict(to_dict(c)) == c``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import yaml

from avdit_cli.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


# ----------------------------------------------------------------------------------------------------------
# Options: enums defined once; the CLI derives its choices from them.
# ----------------------------------------------------------------------------------------------------------
class VideoCodec(str, Enum):
    SD_VAE = "sd-vae"  # stabilityai/sd-vae-ft-ema, 4 latent channels, x8 down
    PIXELS = "pixels"  # plain area resize of RGB frames, no weights (tiny preset)


class AudioCodec(str, Enum):
    AUDIOLDM_VAE = "audioldm-vae"  # cvssp/audioldm-s-full-v2 vae/, 8 latent channels, x4 down
    PIXELS = "pixels"  # plain area resize of the log-mel image, no weights (tiny preset)


class Vocoder(str, Enum):
    HIFIGAN = "hifigan"  # AudioLDM's HiFi-GAN, ported to plain torch
    GRIFFIN_LIM = "griffin-lim"  # weight-free fallback


class TemporalPos(str, Enum):
    SINCOS = "sincos"
    LEARNED = "learned"
    NONE = "none"


class BetaSchedule(str, Enum):
    LINEAR = "linear"
    COSINE = "cosine"


class LossType(str, Enum):
    HYBRID = "hybrid"  # L_simple + L_vlb, as DiT
    MSE = "mse"  # L_simple only (variance channels unused)


class LrSchedule(str, Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


class TrainMode(str, Enum):
    FINETUNE = "finetune"  # adapters only, frozen backbone
    PRETRAIN = "pretrain"  # all DiT weights, single frames, no audio (makes the tiny backbone)
    # AV-DiT with every weight trained, backbone included: not the paper's method, the upper bound that tells
    # whether a shortfall of the adapters belongs to the method or to the training budget
    FULL = "full"


class Sampler(str, Enum):
    DDPM = "ddpm"
    DDIM = "ddim"
    DPM_SOLVER = "dpm++"


class SampleOrder(str, Enum):
    """How `generate` denoises the two tracks."""

    JOINT = "joint"  # both together, one t per step (the paper)
    VIDEO_FIRST = "video-first"  # the frames (sound unseen), then the sound given them: 2x the model calls


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"


LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
LOAD_TIME_DATA_FIELDS = ("hflip", "vocoder")  # data.* fields that do not change a latent cache
METRICS = ("fvd", "kvd", "fad", "av-align")


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """The frozen DiT backbone and the AV-DiT adapters around it (DESIGN section 2)."""

    # Backbone: DiT-XL/2 at 256 by default. `backbone_repo` is fetched by `avdit download`;
    # `backbone_path` (a file or folder) overrides it.
    backbone_repo: str = "facebook/DiT-XL-2-256"
    backbone_path: str | None = None
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    patch_size: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # the embedding table has one more row: the null class
    learn_sigma: bool = True
    # Audio branch: latents (audio_channels, T_a, M_a) cut into audio_patch_size² patches.
    audio_patch_size: int = 2
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # Video branch
    temporal_pos: TemporalPos = TemporalPos.SINCOS
    # Joint block(s): inserted after each listed backbone block (negative counts from the end).
    joint: bool = True
    joint_after: tuple[int, ...] = (-1,)
    joint_lora_rank: int = 8
    # Rotate the joint block's queries and keys by each token's time on the clip's clock (video frames and
    # audio rows on one time axis), so audio tokens can find the frames they sound in (adapters.TimeRotary).
    joint_time_rope: bool = True
    # A learnable per-head bias -slope |t_i - t_j| on the joint block's attention scores (ALiBi on time), so an
    # audio token starts out looking at the frames it sounds in (adapters.JointBlockAdapter).
    joint_time_bias: bool = True
    # Train the slopes of that bias (True), or keep them at their initial spread across heads as ALiBi does
    # (False). Fixed slopes let the CPU run the joint attention with its fused kernel (a learned score bias
    # needs the score matrix for its gradient): about 1.7x faster tiny-preset training steps.
    joint_time_bias_learned: bool = True
    # The joint block's attention only across modalities (video tokens attend to audio tokens and back), so it
    # cannot become extra self-attention of one modality (adapters.JointBlockAdapter).
    joint_cross_only: bool = False
    # Condition on the cache's class labels (a cache made with data.class_folders): each label indexes the DiT's
    # own class table, trained in pretrain mode and frozen in finetune mode, as DiT-XL/2's ImageNet classes are.
    # Labels are dropped to the null class with probability train.class_dropout, for classifier-free guidance.
    class_conditional: bool = False
    # A trainable class table (zero-initialised offset) for class-conditional fine-tuning (Landscape); it
    # implies class_conditional.
    trainable_class_table: bool = False
    grad_checkpointing: bool = False

    @property
    def out_channels_factor(self) -> int:
        return 2 if self.learn_sigma else 1

    @property
    def uses_labels(self) -> bool:
        """Whether training feeds the cache's class labels and sampling draws a class per clip."""
        return self.num_classes > 0 and (self.class_conditional or self.trainable_class_table)


@dataclass(frozen=True)
class DataConfig:
    """The clip protocol (DESIGN sections 1 and 4)."""

    num_frames: int = 16
    fps: float = 10.0
    frame_size: int = 256
    sample_rate: int = 16000
    stride_seconds: float | None = None  # None: non-overlapping windows
    video_codec: VideoCodec = VideoCodec.SD_VAE
    video_vae_repo: str = "stabilityai/sd-vae-ft-ema"
    pixel_downsample: int = 8  # only for the `pixels` codecs
    audio_codec: AudioCodec = AudioCodec.AUDIOLDM_VAE
    audio_vae_repo: str = "cvssp/audioldm-s-full-v2"
    audio_pixel_downsample: int = 4  # only for the `pixels` audio codec
    vocoder: Vocoder = Vocoder.HIFIGAN
    # Mel front end (AudioLDM)
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    class_folders: bool = False  # Landscape: the parent folder's name is the class
    hflip: bool = False  # applied at load time, never frozen into the cache
    files_per_shard: int = 16  # source files per cache shard: a shard is the unit of work and of resuming

    @property
    def clip_seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def mel_frames(self) -> int:
        return self.clip_samples // self.hop_length

    @property
    def video_factor(self) -> int:
        return 8 if self.video_codec is VideoCodec.SD_VAE else self.pixel_downsample

    @property
    def video_channels(self) -> int:
        return 4 if self.video_codec is VideoCodec.SD_VAE else 3

    @property
    def audio_factor(self) -> int:
        return 4 if self.audio_codec is AudioCodec.AUDIOLDM_VAE else self.audio_pixel_downsample

    @property
    def audio_channels(self) -> int:
        return 8 if self.audio_codec is AudioCodec.AUDIOLDM_VAE else 1

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int]:
        """(f, c, h, w) of one clip's video latents."""
        s = self.frame_size // self.video_factor
        return (self.num_frames, self.video_channels, s, s)

    @property
    def audio_latent_shape(self) -> tuple[int, int, int]:
        """(c, T_a, M_a) of one clip's audio latents."""
        return (self.audio_channels, self.mel_frames // self.audio_factor, self.n_mels // self.audio_factor)


@dataclass(frozen=True)
class DiffusionConfig:
    """DESIGN section 3."""

    num_timesteps: int = 1000
    beta_schedule: BetaSchedule = BetaSchedule.LINEAR
    beta_start: float = 1e-4
    beta_end: float = 0.02
    loss: LossType = LossType.HYBRID
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    # Independent timesteps per modality so one model can also do audio->video and video->audio.
    independent_timesteps: bool = False
    # Min-SNR-γ loss weighting (Hang et al. 2023) of the eps MSE; 0 turns it off (DiT's plain L_simple).
    min_snr_gamma: float = 0.0
    # The video noise's correlation across the frames of a clip (PYoCo's mixed noise prior, Ge et al. 2023):
    # each frame's noise is sqrt(rho) shared + sqrt(1 - rho) own. 0: independent frames (DiT, the paper).
    video_noise_correlation: float = 0.0
    # The share of training clips whose frames are given clean (t_video = 0, no video loss): with independent
    # timesteps these teach the audio branch to follow frames it can see, which is what the video-first
    # sampler (sample.order) and `generate --video-from` ask of it. 0: every clip is a joint one.
    given_video_prob: float = 0.0
    # The share of the other training clips (those with a video loss) whose frames are staggered: frame i of f
    # is noised to its own level, progress u_i = clamp(tau - spread i / (f - 1), 0, 1) (0: pure noise, 1:
    # clean, given and not scored), tau ~ U[0, 1 + spread), spread ~ U[0, frame_stagger_max]. A frame then
    # often sees a cleaner frame before it, which is meant to teach the temporal layers to carry content from
    # frame to frame (Diffusion Forcing, Chen et al. 2024, with its pyramid pattern); sample.frame_stagger draws
    # that way. On the tiny demo it did not make motion smoother (benchmarks/RESULTS.md, demo round 4).
    frame_stagger_prob: float = 0.0
    frame_stagger_max: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """DESIGN section 5 (finetune)."""

    mode: TrainMode = TrainMode.FINETUNE
    lr: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 100_000
    warmup_steps: int = 0
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # True: the default rule of diffusers' EMAModel, decay 0 for the first update (0-based n = 0) and then
    # min(ema_decay, (1 + n) / (10 + n)), so the average forgets the initial weights at once. Plain EMA (False)
    # starts at them and still holds ema_decay^n of them after n steps: 37 % after 2000 steps at 0.9995.
    ema_warmup: bool = False
    precision: Precision = Precision.BF16  # bf16 autocast on GPU; CPU always runs fp32
    compile: bool = False
    checkpoint_every: int = 5000
    keep: int = 3
    log_every: int = 50
    seed: int = 0
    num_workers: int = 4
    class_dropout: float = 0.1  # label dropout for classifier-free guidance (class-conditional runs only)
    # Pretrain mode only: start from this DiT (a folder or file DiT.from_pretrained reads) instead of random
    # weights. A class table with fewer classes than model.num_classes is grown: each new class starts at the
    # null class's row, so the model starts as the one it was and learns what the labels add.
    init_from: str | None = None


@dataclass(frozen=True)
class SampleConfig:
    sampler: Sampler = Sampler.DDPM
    steps: int = 250
    eta: float = 0.0
    cfg_scale: float = 1.0
    batch_size: int = 8
    seed: int = 0
    # Clamp every step's x_0 prediction to the codec's latent range, where the codec has one (the `pixels`
    # codecs); a VAE's latents are unbounded, so this does nothing for them.
    clip_denoised: bool = False
    # joint, or video-first (the frames, then the sound for them; needs diffusion.independent_timesteps).
    order: SampleOrder = SampleOrder.JOINT
    # The initial noise's correlation across frames (mixed noise, see DiffusionConfig); None: the prior the
    # model was trained with (diffusion.video_noise_correlation). A model trained on independent frames can
    # be sampled with alike ones: the frozen image backbone then draws alike frames (README, the demo).
    video_noise_correlation: float | None = None
    # Classifier-free guidance towards a given modality (UniDiffuser): when one track is given (the sound stage
    # of video-first sampling, generate --video-from / --audio-from), the model also runs with that track
    # "not known" (pure noise at T - 1) and the drawn track's eps is pushed s times away from that answer.
    # 1: none. Needs diffusion.independent_timesteps (the model must have learnt "not known").
    cross_modal_guidance: float = 1.0
    # Staggered ("pyramid") sampling of the frames, DDIM only: frame i starts spread x i / (f - 1) of the chain
    # after frame 0, so each frame is drawn while the frames before it are already cleaner (see
    # diffusion.frame_stagger_prob, which a model needs for it). The chain runs steps x (1 + spread) model calls
    # so that every frame still takes `steps` steps. 0: every frame at one t.
    frame_stagger: float = 0.0


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 2048
    seed: int = 0
    metrics: tuple[str, ...] = METRICS
    batch_size: int = 16


@dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        validate(self)

    # -- plain data --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        return _build(cls, data, prefix="")

    def replace(self, **overrides: Any) -> "Config":
        """``config.replace(**{"train.lr": 1e-4})``: dotted keys, checked like ``--set``."""
        return _set_values(self, [(k, _to_plain(v)) for k, v in overrides.items()])

    def hash(self, *sections: str) -> str:
        """A short stable hash of the given sections (all when none), e.g. to key a cache on `data`."""
        d = self.to_dict()
        picked = {s: d[s] for s in sections} if sections else d
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_hash(self) -> str:
        """The key of a latent cache: the data settings that change what is cached (not those used only when
        reading it, such as the flip applied at load time, or after it, such as the vocoder)."""
        picked = {k: v for k, v in self.to_dict()["data"].items() if k not in LOAD_TIME_DATA_FIELDS}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = {k: v for k, v in typing.get_type_hints(Config).items() if k != "name"}


# ----------------------------------------------------------------------------------------------------------
# Validation of values that types alone cannot catch
# ----------------------------------------------------------------------------------------------------------
def _fail(key: str, given: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: got {given!r}, expected {allowed}")


def validate(cfg: Config) -> None:
    m, d, df, t, s, e = cfg.model, cfg.data, cfg.diffusion, cfg.train, cfg.sample, cfg.eval
    positive_ints = {
        "model.hidden_size": m.hidden_size, "model.depth": m.depth, "model.num_heads": m.num_heads,
        "model.patch_size": m.patch_size, "model.audio_patch_size": m.audio_patch_size,
        "data.num_frames": d.num_frames, "data.frame_size": d.frame_size, "data.sample_rate": d.sample_rate,
        "data.n_fft": d.n_fft, "data.win_length": d.win_length, "data.hop_length": d.hop_length,
        "data.n_mels": d.n_mels, "data.files_per_shard": d.files_per_shard, "data.pixel_downsample": d.pixel_downsample,
        "data.audio_pixel_downsample": d.audio_pixel_downsample,
        "diffusion.num_timesteps": df.num_timesteps, "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum, "train.steps": t.steps, "train.checkpoint_every": t.checkpoint_every,
        "train.keep": t.keep, "train.log_every": t.log_every, "sample.steps": s.steps,
        "sample.batch_size": s.batch_size, "eval.num_samples": e.num_samples, "eval.batch_size": e.batch_size,
    }
    for key, v in positive_ints.items():
        if v < 1:
            _fail(key, v, "an integer >= 1")
    if m.hidden_size % m.num_heads:
        _fail("model.hidden_size", m.hidden_size, f"a multiple of model.num_heads ({m.num_heads})")
    if m.num_classes < 0:
        _fail("model.num_classes", m.num_classes, "an integer >= 0")
    if m.lora_rank < 0 or m.joint_lora_rank < 0:
        _fail("model.lora_rank", (m.lora_rank, m.joint_lora_rank), "ranks >= 0 (0 turns LoRA off)")
    for target in m.lora_targets:
        if target not in LORA_TARGETS:
            _fail("model.lora_targets", list(m.lora_targets), f"a subset of {list(LORA_TARGETS)}")
    for k in m.joint_after:
        if not -m.depth <= k < m.depth:
            _fail("model.joint_after", list(m.joint_after), f"block indices in [-{m.depth}, {m.depth - 1}]")
    if len({k % m.depth for k in m.joint_after}) != len(m.joint_after):
        _fail("model.joint_after", list(m.joint_after), "distinct block indices")
    if d.fps <= 0:
        _fail("data.fps", d.fps, "a number > 0")
    if d.stride_seconds is not None and d.stride_seconds <= 0:
        _fail("data.stride_seconds", d.stride_seconds, "a number > 0, or null for non-overlapping clips")
    step = m.patch_size * d.video_factor
    if d.frame_size % step:
        _fail("data.frame_size", d.frame_size,
              f"a multiple of model.patch_size x video codec factor = {m.patch_size} x {d.video_factor} = {step}")
    if abs(d.clip_seconds * d.sample_rate - d.clip_samples) > 1e-6:
        _fail("data.fps / data.sample_rate", (d.fps, d.sample_rate),
              f"values such that num_frames / fps x sample_rate ({d.clip_seconds * d.sample_rate:g}) is a whole number")
    if d.clip_samples % d.hop_length:
        _fail("data.hop_length", d.hop_length, f"a divisor of the clip's {d.clip_samples} samples")
    if d.win_length > d.n_fft:
        _fail("data.win_length", d.win_length, f"<= data.n_fft ({d.n_fft})")
    if not 0 <= d.f_min < d.f_max <= d.sample_rate / 2:
        _fail("data.f_max", d.f_max, f"f_min < f_max <= sample_rate / 2 ({d.sample_rate / 2:g})")
    a_step = m.audio_patch_size * d.audio_factor
    if d.mel_frames % a_step or d.n_mels % a_step:
        _fail("model.audio_patch_size", m.audio_patch_size,
              f"a size such that mel frames ({d.mel_frames}) and data.n_mels ({d.n_mels}) divide by "
              f"audio_patch_size x audio codec factor ({d.audio_factor})")
    if not 0 < df.beta_start < df.beta_end < 1:
        _fail("diffusion.beta_end", df.beta_end, f"0 < beta_start ({df.beta_start}) < beta_end < 1")
    if not 0 <= df.video_noise_correlation < 1:
        _fail("diffusion.video_noise_correlation", df.video_noise_correlation, "a number in [0, 1)")
    if s.video_noise_correlation is not None and not 0 <= s.video_noise_correlation < 1:
        _fail("sample.video_noise_correlation", s.video_noise_correlation, "a number in [0, 1) or null")
    if s.order is SampleOrder.VIDEO_FIRST and not df.independent_timesteps:
        _fail("sample.order", s.order.value,
              "joint unless the model was trained with diffusion.independent_timesteps=true")
    if s.cross_modal_guidance < 0:
        _fail("sample.cross_modal_guidance", s.cross_modal_guidance, "a number >= 0 (1: no guidance)")
    if s.cross_modal_guidance != 1 and not df.independent_timesteps:
        _fail("sample.cross_modal_guidance", s.cross_modal_guidance,
              "1 unless the model was trained with diffusion.independent_timesteps=true")
    if not 0 <= df.given_video_prob < 1:
        _fail("diffusion.given_video_prob", df.given_video_prob, "a number in [0, 1)")
    if df.given_video_prob > 0 and not df.independent_timesteps:
        _fail("diffusion.given_video_prob", df.given_video_prob,
              "0 unless diffusion.independent_timesteps=true (a clean video needs its own timestep)")
    if not 0 <= df.frame_stagger_prob <= 1:
        _fail("diffusion.frame_stagger_prob", df.frame_stagger_prob, "a number in [0, 1]")
    if df.frame_stagger_prob > 0 and not df.independent_timesteps:
        _fail("diffusion.frame_stagger_prob", df.frame_stagger_prob,
              "0 unless diffusion.independent_timesteps=true (the frames need timesteps of their own)")
    if df.frame_stagger_max <= 0:
        _fail("diffusion.frame_stagger_max", df.frame_stagger_max, "a number > 0")
    if s.frame_stagger < 0:
        _fail("sample.frame_stagger", s.frame_stagger, "a number >= 0 (0: every frame at one t)")
    if s.frame_stagger > 0 and df.frame_stagger_prob == 0:
        _fail("sample.frame_stagger", s.frame_stagger,
              "0 for a model trained without staggered frames (diffusion.frame_stagger_prob=0)")
    if s.frame_stagger > df.frame_stagger_max and df.frame_stagger_prob > 0:
        _fail("sample.frame_stagger", s.frame_stagger,
              f"at most diffusion.frame_stagger_max={df.frame_stagger_max}, the widest spread the model was trained on")
    if s.frame_stagger > 0 and s.sampler is not Sampler.DDIM:
        _fail("sample.frame_stagger", s.frame_stagger, f"0 with sample.sampler={s.sampler.value} (DDIM only)")
    if df.min_snr_gamma < 0:
        _fail("diffusion.min_snr_gamma", df.min_snr_gamma, "a number >= 0 (0 turns the weighting off)")
    if df.video_loss_weight < 0 or df.audio_loss_weight < 0:
        _fail("diffusion.video_loss_weight", (df.video_loss_weight, df.audio_loss_weight), "weights >= 0")
    if t.lr <= 0:
        _fail("train.lr", t.lr, "a number > 0")
    if not 0 <= t.ema_decay < 1:
        _fail("train.ema_decay", t.ema_decay, "a number in [0, 1)")
    if t.grad_clip < 0:
        _fail("train.grad_clip", t.grad_clip, "a number >= 0 (0 turns clipping off)")
    if t.warmup_steps < 0:
        _fail("train.warmup_steps", t.warmup_steps, "an integer >= 0")
    if not 0 <= t.class_dropout < 1:
        _fail("train.class_dropout", t.class_dropout, "a number in [0, 1)")
    if t.init_from and t.mode is not TrainMode.PRETRAIN:
        _fail("train.init_from", t.init_from, "unset outside train.mode=pretrain (finetune and full start "
              "from model.backbone_path)")
    if (m.class_conditional or m.trainable_class_table) and m.num_classes == 0:
        _fail("model.num_classes", m.num_classes, "the number of classes (> 0) for a class-conditional model")
    if t.num_workers < 0:
        _fail("train.num_workers", t.num_workers, "an integer >= 0")
    if s.steps > df.num_timesteps:
        _fail("sample.steps", s.steps, f"at most diffusion.num_timesteps ({df.num_timesteps})")
    if not 0 <= s.eta <= 1:
        _fail("sample.eta", s.eta, "a number in [0, 1]")
    if s.cfg_scale < 0:
        _fail("sample.cfg_scale", s.cfg_scale, "a number >= 0 (1 turns guidance off)")
    for metric in e.metrics:
        if metric not in METRICS:
            _fail("eval.metrics", list(e.metrics), f"a subset of {list(METRICS)}")


# ----------------------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checking
# ----------------------------------------------------------------------------------------------------------
def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` (from YAML/JSON or a parsed --set) against the annotation `tp`; return the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        _fail(key, value, _type_name(tp))
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):  # a single item given where a list is expected
            value = [value]
        return tuple(_coerce(v, item_tp, key) for v in value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            _fail(key, value, _type_name(tp))
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, value, "true/false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, value, "a number")
        if not math.isfinite(value):
            _fail(key, value, "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, value, "a string")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in this module, not user input


def _build(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        _fail(prefix.rstrip(".") or "config", data, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; allowed keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
            + ", ".join(sorted(names))
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in diff.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------------
# Presets and overrides
# ----------------------------------------------------------------------------------------------------------
def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def load_preset(name_or_path: str | Path = "aist", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset by name (``presets/NAME.yaml``) or a YAML path, merged over the defaults, then ``--set``s."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = PRESETS_DIR / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown preset {text!r}; available presets: {', '.join(available_presets())} (or a YAML file path)"
            )
    elif not path.is_file():
        raise ConfigError(f"preset file {text} does not exist")
    diff = _read_yaml(path)
    diff.setdefault("name", path.stem)
    try:
        cfg = Config.from_dict(diff)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err}") from None
    return apply_overrides(cfg, overrides)


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``: the value is read as YAML, so lists and null work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``--set KEY=VALUE`` strings in order."""
    return _set_values(cfg, [parse_override(item) for item in overrides])


def _set_values(cfg: Config, items: list[tuple[str, Any]]) -> Config:
    if not items:
        return cfg
    data = cfg.to_dict()
    for key, value in items:
        parts = key.split(".")
        if parts == ["name"]:
            data["name"] = value
            continue
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(
                f"override key {key!r}: expected SECTION.FIELD with SECTION one of {', '.join(SECTIONS)}"
            )
        section, fld = parts
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if fld not in names:
            raise ConfigError(f"unknown config key {key}; allowed keys in {section}: {', '.join(sorted(names))}")
        tp = typing.get_type_hints(SECTIONS[section])[fld]
        # YAML reads "1e-4" as a string and "5" as an int: let numbers and quoted numbers through as floats.
        if isinstance(value, str) and _accepts(tp, float):
            try:
                value = float(value)
            except ValueError:
                pass
        data[section][fld] = value
    return Config.from_dict(data)


def _accepts(tp: Any, target: type) -> bool:
    if tp is target:
        return True
    return target in typing.get_args(tp)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
