"""`avdit generate`: sample joint audio-video clips from a fine-tuned run and write playable mp4 files.

Sample i is drawn with its own generator seeded by ``seed + i`` and decoded on its own (the Griffin-Lim
vocoder's seeded phase is drawn per call, so a batched call would tie a clip's audio to its batch-mates).
The batches are planned over all ``num`` clips first and then dealt to the ranks, so every batch holds the
same clips whatever the world size: N processes write byte-identical files to one. A different
``--batch-size`` changes a sample only by float rounding (matmuls of another height round differently).
``--seed S+i -n 1`` redraws sample i alone.

``--audio-from`` / ``--video-from`` condition on the first clip of a given file: its latents are the `known`
modality of the sampler, and the written file carries the given audio (frames) themselves, as read from the
file (resampled to 16 kHz mono / resized and cropped), untouched by any latent codec, beside the generated
other track. ``--audio-from`` accepts any file with sound (a .wav too), ``--video-from`` any file with video.

Class-conditional runs (``model.class_conditional`` or ``model.trainable_class_table``) sample class
``--class`` with guidance scale ``--cfg-scale``. Without ``--class``, clip i's class is drawn (seeded by its
seed) from the class frequencies of the clips the run trained on, as recorded in its checkpoint, so the
clips follow the data's classes; a run that recorded none samples the null class (unconditional, no guidance).

Outputs in ``out_dir``: ``sample_00000.mp4`` ... (H.264 yuv420p + AAC mono, exactly ``num_frames / fps``
seconds), ``samples.json`` (the run, checkpoint sha256, sampler settings, and per file its seed and timing),
``contact_sheet.png`` (frames over the mel of the first 16 clips), ``sample_NNNNN.mel.png`` (each clip's mel
picture) and ``index.html`` (a gallery of them all: ``gallery.py``) and, with ``save_latents``,
``latents.safetensors`` (``video`` (n, f, c, h, w) and ``audio`` (n, c, T, M), float32, in sample order).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from einops import rearrange

from avdit_cli import __version__
from avdit_cli.codecs import Codecs, build_codecs
from avdit_cli.config import (Config, DataConfig, Precision, SampleConfig, SampleOrder, Sampler, TrainMode,
                              apply_overrides)
from avdit_cli.data.clips import Clip
from avdit_cli.data.media import MediaError, probe, read_audio, read_video, write_mp4
from avdit_cli.diffusion import Diffusion, ModelFn, classifier_free_guidance, sample, sample_in_stages
from avdit_cli.diffusion.samplers import KnownMode
from avdit_cli.errors import ConfigError, DataError, TrainingError, WeightsError
from avdit_cli.fileio import atomic_save_tensors, atomic_write_json, sha256_file
from avdit_cli.models import AVDiT, DiT, VideoStreamCache
from avdit_cli.pipelines import gallery
from avdit_cli.pipelines.distributed import dist_context, resolve_device
from avdit_cli.pipelines.hub_run import is_hub_ref, open_hub_run
from avdit_cli.pipelines.preprocess import encode_clips
from avdit_cli.pipelines.runs import Checkpoint, backbone_reference, load_checkpoint

CHANNEL_DIMS = {"video": 2, "audio": 1}  # the channel axis of (b, f, c, h, w) and (b, c, T, M)
SHEET_CLIPS = 16  # clips shown on the contact sheet
VOCODER_SEED = 0  # Griffin-Lim's initial phase: fixed, so a clip's audio depends on its latents only
CLASS_DRAW = 0xC1A55  # second seed word of a clip's class draw: independent of its noise (seeded by seed + i)
CLASS_DRAWS = {"fixed": "fixed (--class)", "null": "null class",  # samples.json's words for each `draw`
               "prior": "the training clips' class frequencies"}
OUTPUTS = ("samples.json", "contact_sheet.png", "latents.safetensors", "metrics.json", gallery.INDEX)


@dataclass
class GenerateOptions:
    out_dir: Path
    num: int = 16
    checkpoint: Path | str | None = None  # a run or checkpoint folder, or "hf://NAME[@REV]"; None: the latest run
    ema: bool = True
    # The whole sampling section in place of the run's (the demo hands over its resolved one, so no setting can
    # be left behind); the single settings below still apply on top of it.
    sample: SampleConfig | None = None
    sampler: Sampler | None = None  # None: the run's sample.* settings
    steps: int | None = None
    eta: float | None = None
    order: SampleOrder | None = None  # None: the run's sample.order
    video_noise_correlation: float | None = None  # None: the run's sample.video_noise_correlation
    cross_modal_guidance: float | None = None  # None: the run's sample.cross_modal_guidance
    frame_stagger: float | None = None  # None: the run's sample.frame_stagger
    cfg_scale: float | None = None
    class_id: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    device: str | None = None
    audio_from: Path | None = None
    video_from: Path | None = None
    overwrite: bool = False
    contact_sheet: bool = True
    gallery: bool = True  # index.html and one mel picture per clip
    save_latents: bool = False  # also write latents.safetensors (and return them in the result)
    reference: Path | None = None  # real clips to score against, named in samples.json (relative to out_dir)


@dataclass
class GenerateResult:
    out_dir: Path
    files: list[Path]  # every sample's mp4, in sample order (all ranks')
    seconds: float
    denoise_seconds: float  # summed over the ranks
    decode_seconds: float  # decode + mp4 writing, summed over the ranks
    samples_json: Path | None
    contact_sheet: Path | None
    records: list[dict[str, Any]] = field(default_factory=list)
    latents: dict[str, torch.Tensor] | None = None  # with save_latents: video (n, f, c, h, w), audio (n, c, T, M)
    gallery: Path | None = None  # index.html


# (clips done by this process - fractional inside a batch, clips this process draws, denoiser steps per second)
Progress = Callable[[float, int, float], None]


# ----------------------------------------------------------------------------------------------------------
# The run: checkpoint, config, model
# ----------------------------------------------------------------------------------------------------------
def open_checkpoint(path: Path | str | None, ema: bool = True) -> Checkpoint:
    """The checkpoint of a run folder, a checkpoint folder, adapters on the Hub (``hf://NAME[@REV]``, pulled
    into the HF cache and checked: hub_run.py) or (None) the latest run."""
    if is_hub_ref(path):
        return open_hub_run(str(path), ema=ema)
    if path is not None and not Path(path).exists():
        raise TrainingError(f"{path} does not exist; give a run folder (or one of its checkpoints) made by "
                            "`avdit finetune`")
    return load_checkpoint(path)


def load_run_model(ckpt: Checkpoint, cfg: Config, device: torch.device, ema: bool = True) -> AVDiT:
    """The AV-DiT of a checkpoint: its backbone (checked against the recorded sha256) + its adapters."""
    if ckpt.state.get("mode") == TrainMode.PRETRAIN.value:
        raise ConfigError(f"{ckpt.path} is a pretrain run: it made an image backbone, not an AV-DiT; "
                          "fine-tune on it with `avdit finetune --set model.backbone_path=RUN/backbone`")
    want = ckpt.state.get("backbone", {}).get("sha256")
    path = backbone_reference(ckpt)
    if path is None or not path.exists():
        if not (cfg.model.backbone_path or cfg.model.backbone_repo):
            raise WeightsError(f"the backbone this run was trained on is gone ({path}); put it back there "
                               f"(sha256 {str(want)[:12]}...)")
        from avdit_cli.hub import backbone_path

        path = backbone_path(cfg)
    backbone, report = DiT.from_pretrained(path, device=device, output_loading_info=True)
    if want and report.sha256() != want:
        raise WeightsError(f"the backbone at {path} is not the one this run was trained on (sha256 "
                           f"{report.sha256()[:12]} vs {want[:12]}); point model.backbone_path at the right one")
    if not ema and not ckpt.model:
        raise WeightsError(f"{ckpt.path} holds the EMA weights only (an exported checkpoint); drop --no-ema")
    model = AVDiT.from_config(cfg, backbone=backbone).to(device)
    weights = ckpt.ema if ema else ckpt.model
    if ckpt.state.get("mode") == TrainMode.FULL.value:  # every weight trained: the backbone's are in it too
        try:
            model.load_state_dict(weights)
        except RuntimeError as err:
            raise WeightsError(f"{ckpt.path} does not fit this model ({str(err).splitlines()[0]})") from err
    else:
        model.load_adapter_state_dict(weights)
    return model.eval()


def resolve_config(ckpt: Checkpoint, opts: GenerateOptions) -> Config:
    """The run's config with this command's sampling choices applied: ``opts.sample`` (whole), then each
    single setting given."""
    overrides = []
    for key, value in (("sampler", opts.sampler), ("steps", opts.steps), ("eta", opts.eta), ("order", opts.order),
                       ("video_noise_correlation", opts.video_noise_correlation),
                       ("cross_modal_guidance", opts.cross_modal_guidance), ("frame_stagger", opts.frame_stagger),
                       ("cfg_scale", opts.cfg_scale), ("seed", opts.seed), ("batch_size", opts.batch_size)):
        if value is not None:
            overrides.append(f"sample.{key}={value.value if isinstance(value, Enum) else value}")
    base = ckpt.config if opts.sample is None else replace(ckpt.config, sample=opts.sample)  # validated again
    cfg = apply_overrides(base, overrides)
    if opts.eta is not None and opts.eta > 0 and cfg.sample.sampler is not Sampler.DDIM:
        raise ConfigError(f"--eta: only DDIM uses it, and the sampler is {cfg.sample.sampler.value}; "
                          "add --sampler ddim or drop --eta")
    return cfg


def training_classes(state: dict[str, Any], num_classes: int) -> tuple[list[str], np.ndarray | None]:
    """A class-conditional checkpoint's class names (row order) and the share of its training clips in each
    class (the prior `generate` draws classes from), or ``([], None)`` for a run that recorded none.
    Raises WeightsError when the record does not fit the model's class table."""
    info = state.get("classes") or {}
    names, counts = list(info.get("names") or []), list(info.get("counts") or [])
    if not names:
        return [], None
    if len(names) != len(counts) or len(names) > num_classes or sum(counts) <= 0:
        raise WeightsError(f"the checkpoint's class record ({len(names)} names, {len(counts)} counts) does not fit "
                           f"its {num_classes}-class model; re-export it from its run")
    prior = np.asarray(counts, dtype=np.float64)
    return names, prior / prior.sum()


def frame_noise_rho(cfg: Config) -> float:
    """The sampler's noise correlation across frames: sample.video_noise_correlation, else the run's training
    prior diffusion.video_noise_correlation."""
    rho = cfg.sample.video_noise_correlation
    return cfg.diffusion.video_noise_correlation if rho is None else rho


def known_mode(cfg: Config) -> KnownMode:
    """How a given track enters the model: clean at t = 0 for runs trained with independent timesteps, else
    noised to the drawn track's t (see :mod:`avdit_cli.diffusion.samplers`)."""
    return "timestep" if cfg.diffusion.independent_timesteps else "replace"


def clip_bounds(cfg: Config, codecs: Codecs) -> dict[str, tuple[float, float] | None] | bool:
    """The sampler's x_0 clamp: each codec's latent range when sample.clip_denoised, else none."""
    if not cfg.sample.clip_denoised:
        return False
    return {"video": codecs.video.latent_range, "audio": codecs.audio.latent_range}


def sample_latents(model_fn: ModelFn, cfg: Config, codecs: Codecs, diffusion: Diffusion,
                   shapes: dict[str, tuple[int, ...]], known: dict[str, torch.Tensor], *,
                   generator: list[torch.Generator], device: torch.device | str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """One batch's latents as `avdit generate` draws them: ``cfg.sample``'s sampler, steps, eta, x_0 clamp,
    frame-noise correlation and cross-modal guidance; with nothing ``known`` and ``sample.order`` video-first,
    the frames first, then the sound for them. ``shapes``: full shapes with the batch dim."""
    s = cfg.sample
    common = dict(sampler=s.sampler, steps=s.steps, eta=s.eta, generator=generator, device=device, progress=progress,
                  clip_denoised=clip_bounds(cfg, codecs), noise_correlation=noise_correlation(cfg),
                  unknown_correlation=training_noise_correlation(cfg), known_guidance=s.cross_modal_guidance,
                  frame_stagger=s.frame_stagger)
    if s.order is SampleOrder.VIDEO_FIRST and not known:
        return sample_in_stages(model_fn, shapes, CHANNEL_DIMS, diffusion, [["video"], ["audio"]], **common)
    return sample(model_fn, shapes, CHANNEL_DIMS, diffusion, known=known or None, known_mode=known_mode(cfg),
                  **common)


def noise_correlation(cfg: Config) -> dict[str, tuple[int, float]]:
    """:func:`frame_noise_rho` as the sampler takes it."""
    return _frame_prior(frame_noise_rho(cfg))


def training_noise_correlation(cfg: Config) -> dict[str, tuple[int, float]]:
    """The frames' noise prior the model was trained with (diffusion.video_noise_correlation), as the sampler
    takes it: for inputs that stand for "not known" (pure noise at T - 1), which the model learnt in training,
    whatever prior sample.video_noise_correlation draws the generated frames from."""
    return _frame_prior(cfg.diffusion.video_noise_correlation)


def _frame_prior(rho: float) -> dict[str, tuple[int, float]]:
    """A frame-noise correlation as the sampler's per-modality prior: frames are axis 1 of (b, f, c, h, w)."""
    return {"video": (1, rho)} if rho > 0 else {}


def plan_batches(num: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This rank's batches of sample indices. Batches are cut from 0..num-1 first, then dealt round-robin, so
    a batch holds the same samples whatever the world size (no duplicates, no gaps over the ranks)."""
    batches = [list(range(i, min(num, i + batch_size))) for i in range(0, num, batch_size)]
    return batches[rank::world_size]


# ----------------------------------------------------------------------------------------------------------
# Output folder
# ----------------------------------------------------------------------------------------------------------
def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without ``overwrite`` (read-only: every rank may call it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; give a folder for the clips")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} is not empty; pass --overwrite to replace its clips or choose another -o")


def clear_out_dir(out_dir: Path) -> None:
    """Remove what an earlier generate wrote there (other files stay), and make the folder."""
    if out_dir.is_dir():
        for old in [*out_dir.glob("sample_*.mp4"), *out_dir.glob(f"sample_*{gallery.MEL_SUFFIX}"),
                    *(out_dir / name for name in OUTPUTS)]:
            old.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------------------------------------
# Conditioning clip, decoding, contact sheet
# ----------------------------------------------------------------------------------------------------------
def load_given_clip(path: Path, data: DataConfig, modality: str) -> Clip:
    """The first clip of ``path`` for ``modality`` ('audio' or 'video'); the other track is left silent/black.

    Read exactly as preprocess reads training clips (ffmpeg, 16 kHz mono, short side resize + centre crop).
    """
    info = probe(path)  # MediaError (a DataError) for a missing, empty or unreadable file
    f, size = data.num_frames, data.frame_size
    if modality == "audio":
        audio = read_audio(path, data.sample_rate, info=info)
        if len(audio) < data.clip_samples:
            raise MediaError(path, "too-short", f"{len(audio) / data.sample_rate:.2f} s of audio; --audio-from "
                                                f"needs {data.clip_seconds:.2f} s")
        return Clip(0.0, np.zeros((f, size, size, 3), np.uint8), np.ascontiguousarray(audio[: data.clip_samples]))
    frames = read_video(path, data.fps, size, info=info)
    if len(frames) < f:
        raise MediaError(path, "too-short", f"{len(frames) / data.fps:.2f} s of video; --video-from needs "
                                            f"{data.clip_seconds:.2f} s")
    return Clip(0.0, np.ascontiguousarray(frames[:f]), np.zeros(data.clip_samples, np.float32))


@torch.no_grad()
def decode(latents: dict[str, torch.Tensor], codecs: Codecs, clip_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents -> frames uint8 (b, f, H, W, 3) and waveforms float32 (b, clip_samples) in [-1, 1].

    The vocoder runs one clip at a time: a batched Griffin-Lim would give a clip another initial phase
    depending on its place in the batch."""
    video = latents["video"]  # (b, f, c, h, w)
    b = video.shape[0]
    pixels = codecs.video.decode(rearrange(video, "b f c h w -> (b f) c h w").to(codecs.device))
    frames = rearrange(((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu(),
                       "(b f) c h w -> b f h w c", b=b)
    mel = codecs.audio.decode(latents["audio"].to(codecs.device))  # (b, 1, T, M)
    wave = torch.cat([codecs.vocoder(m).float().cpu() for m in mel.split(1)])  # (b, T * hop)
    if wave.shape[1] < clip_samples:
        wave = torch.nn.functional.pad(wave, (0, clip_samples - wave.shape[1]))
    return frames.numpy(), wave[:, :clip_samples].clamp(-1, 1).numpy()


def mel_image(wave: np.ndarray, codecs: Codecs) -> np.ndarray:
    """A (M, T) uint8 picture of a waveform's log-mel, low frequencies at the bottom."""
    # torch.tensor copies: audio read back from a file may be a read-only array
    mel = codecs.mel(torch.tensor(wave)[None].to(codecs.device))[0, 0].float().cpu().numpy()  # (T, M)
    lo, hi = np.percentile(mel, 1), np.percentile(mel, 99.5)
    img = np.clip((mel - lo) / max(hi - lo, 1e-6), 0, 1)
    return (img.T[::-1] * 255).astype(np.uint8)


def contact_row(frames: np.ndarray, wave: np.ndarray, codecs: Codecs, frames_per_row: int = 8,
                cell: int = 96) -> np.ndarray:
    """One clip's row of the contact sheet: `frames_per_row` evenly spaced frames over its mel, uint8 RGB."""
    from PIL import Image

    picks = np.linspace(0, len(frames) - 1, frames_per_row).round().astype(int)
    strip = np.concatenate([np.asarray(Image.fromarray(frames[i]).resize((cell, cell), Image.NEAREST))
                            for i in picks], axis=1)  # (cell, frames_per_row * cell, 3)
    mel = Image.fromarray(mel_image(wave, codecs)).resize((strip.shape[1], cell // 2), Image.BILINEAR)
    mel_rgb = np.repeat(np.asarray(mel)[..., None], 3, axis=2)
    return np.concatenate([strip, mel_rgb, np.full((4, strip.shape[1], 3), 255, np.uint8)], axis=0)


def write_contact_sheet(path: Path, rows: list[np.ndarray]) -> Path:
    from PIL import Image

    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
def generate(opts: GenerateOptions, progress: Progress | None = None, codecs: Codecs | None = None) -> GenerateResult:
    started = time.perf_counter()
    ctx = dist_context()
    if opts.num < 1:
        raise ConfigError(f"-n: got {opts.num}, expected at least 1 clip")
    if opts.audio_from and opts.video_from:
        raise ConfigError("--audio-from and --video-from exclude each other: give one modality to condition on")
    ckpt = open_checkpoint(opts.checkpoint, ema=opts.ema)
    cfg = resolve_config(ckpt, opts)
    s = cfg.sample
    class_conditional = cfg.model.uses_labels
    if opts.class_id is not None and not class_conditional:
        raise ConfigError("--class: this run is unconditional (model.class_conditional is off); drop --class")
    if opts.cfg_scale is not None and opts.cfg_scale != 1.0 and not class_conditional:
        raise ConfigError("--cfg-scale: this run is unconditional, there is no class to guide towards; "
                          "drop --cfg-scale")
    if opts.class_id is not None and not 0 <= opts.class_id < cfg.model.num_classes:
        raise ConfigError(f"--class: got {opts.class_id}, expected 0..{cfg.model.num_classes - 1}")
    class_names, class_prior = training_classes(ckpt.state, cfg.model.num_classes)
    if opts.class_id is not None and class_names and opts.class_id >= len(class_names):
        raise ConfigError(f"--class: got {opts.class_id}, but the run trained classes 0..{len(class_names) - 1} ("
                          + ", ".join(f"{k} {n}" for k, n in enumerate(class_names[:8])) + ", ...)")
    dev = resolve_device(opts.device, ctx)
    check_out_dir(opts.out_dir, opts.overwrite)  # on every rank, before anyone waits at a barrier
    given_modality = "audio" if opts.audio_from else "video" if opts.video_from else None
    given: Clip | None = None
    if given_modality is not None:
        given = load_given_clip(Path(opts.audio_from or opts.video_from), cfg.data, given_modality)
    # Guidance towards a given track needs one: the sound stage of video-first sampling, or a given clip.
    guided_stage = given is not None or s.order is SampleOrder.VIDEO_FIRST
    if opts.cross_modal_guidance not in (None, 1.0) and not guided_stage:
        raise ConfigError("--cross-modal-guidance guides a track towards a given one, and joint sampling has "
                          "none; add --order video-first, --video-from or --audio-from")
    if s.frame_stagger > 0 and given_modality == "audio" and s.cross_modal_guidance != 1:
        raise ConfigError("--frame-stagger draws the frames without guidance towards the given sound; drop "
                          "--cross-modal-guidance or --frame-stagger")
    # How each clip gets its class: --class; else, with no clip given (a drawn class could contradict it),
    # drawn from the training clips' class frequencies; else the null class.
    draw = (None if not class_conditional else "fixed" if opts.class_id is not None
            else "null" if class_prior is None or given is not None else "prior")
    # Everything that can fail on the user's input fails before the output folder is touched.
    model = load_run_model(ckpt, cfg, dev, ema=opts.ema)
    if codecs is None:
        codecs = build_codecs(cfg.replace(**{"sample.seed": VOCODER_SEED}), dev)
    known_latent: dict[str, torch.Tensor] = {}
    if given is not None:
        video_z, audio_z = encode_clips([given], codecs, batch_size=1)  # (1, f, c, h, w), (1, c, T, M)
        known_latent = {"audio": audio_z} if given_modality == "audio" else {"video": video_z}
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    ctx.barrier()
    if ctx.is_main:
        clear_out_dir(opts.out_dir)
    ctx.barrier()
    mode = known_mode(cfg)
    # Frames fixed over the chain (the sound stage of video-first sampling, or given frames fed at t = 0): the
    # video stream up to the joint block is computed once per batch, not once per step.
    frames_fixed = ((s.order is SampleOrder.VIDEO_FIRST and not known_latent)
                    or ("video" in known_latent and mode == "timestep"))
    use_bf16 = dev.type == "cuda" and cfg.train.precision is Precision.BF16

    def model_fn_y(x: dict[str, torch.Tensor], t: dict[str, torch.Tensor], y: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with amp:
            out = model(x["video"], x["audio"], t["video"], t["audio"], y, video_cache=video_cache)
        return {k: v.float() for k, v in out.items()}

    def clip_class(i: int) -> int:
        """Sample i's class, as `draw` says."""
        if draw == "fixed":
            return opts.class_id  # type: ignore[return-value]
        if draw == "null":
            return cfg.model.num_classes
        rng = np.random.default_rng([(s.seed + i) % 2**64, CLASS_DRAW])  # numpy wants words >= 0: wrap negatives
        return int(rng.choice(len(class_prior), p=class_prior))  # type: ignore[arg-type]

    guidance: dict[int, tuple[int, float]] = {}  # sample -> (its class, the guidance scale it had)
    mine = plan_batches(opts.num, s.batch_size, ctx.rank, ctx.world_size)
    total_mine = sum(len(batch) for batch in mine)
    f, c, h, w = cfg.data.video_latent_shape
    shapes = {"video": (f, c, h, w), "audio": cfg.data.audio_latent_shape}
    records: list[dict[str, Any]] = []
    sheet_rows: dict[int, np.ndarray] = {}
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    denoise_s = decode_s = 0.0
    done = 0
    for batch in mine:
        b = len(batch)
        video_cache = VideoStreamCache(audio_only=True) if frames_fixed else None
        gens = [torch.Generator().manual_seed(s.seed + i) for i in batch]  # one per sample: batch-independent
        if class_conditional:
            null = cfg.model.num_classes
            ids = [clip_class(i) for i in batch]
            y = torch.tensor(ids, dtype=torch.long, device=dev)
            scale = 1.0 if all(c == null for c in ids) else s.cfg_scale  # null vs null: guidance would be a no-op
            guidance.update({i: (k, scale) for i, k in zip(batch, ids)})
            model_fn = classifier_free_guidance(model_fn_y, y, null, scale, CHANNEL_DIMS)
        else:
            model_fn = lambda x, t: model_fn_y(x, t, None)  # noqa: E731
        known = {k: v.expand(b, *v.shape[1:]) for k, v in known_latent.items()}
        t0 = time.perf_counter()

        def on_step(i: int, n: int) -> None:
            if progress:
                progress(done + b * i / n, total_mine, i / max(1e-9, time.perf_counter() - t0))

        latents = sample_latents(model_fn, cfg, codecs, diffusion, {k: (b, *v) for k, v in shapes.items()}, known,
                                 generator=gens, device=dev, progress=on_step)
        t1 = time.perf_counter()
        frames, waves = decode(latents, codecs, cfg.data.clip_samples)
        if given is not None and given_modality == "audio":
            waves = np.repeat(given.audio[None], b, axis=0)
        if given is not None and given_modality == "video":
            frames = np.repeat(given.frames[None], b, axis=0)
        for j, i in enumerate(batch):
            write_mp4(opts.out_dir / f"sample_{i:05d}.mp4", frames[j], waves[j], cfg.data.fps, cfg.data.sample_rate)
            if opts.contact_sheet and i < SHEET_CLIPS:
                sheet_rows[i] = contact_row(frames[j], waves[j], codecs)
            if opts.gallery:
                gallery.write_mel_picture(opts.out_dir / gallery.mel_picture_name(f"sample_{i:05d}.mp4"),
                                          mel_image(waves[j], codecs))
            if opts.save_latents:
                kept[i] = (latents["video"][j].float().cpu(), latents["audio"][j].float().cpu())
        t2 = time.perf_counter()
        for i in batch:
            record = {"file": f"sample_{i:05d}.mp4", "index": i, "seed": s.seed + i,
                      "denoise_seconds": round((t1 - t0) / b, 4), "decode_seconds": round((t2 - t1) / b, 4)}
            if class_conditional:
                k, scale = guidance[i]
                record["class"] = k
                record["class_name"] = class_names[k] if k < len(class_names) else None  # None: null or unnamed
                record["cfg_scale"] = scale  # the guidance this clip had (1: none)
            records.append(record)
        denoise_s += t1 - t0
        decode_s += t2 - t1
        done += b
        if progress:
            progress(done, total_mine, 0.0)

    all_records = sorted((r for part in ctx.gather(records) for r in part), key=lambda r: r["index"])
    all_rows = {i: row for part in ctx.gather(sheet_rows) for i, row in part.items()}
    timing = ctx.gather({"denoise": denoise_s, "decode": decode_s})
    denoise_s, decode_s = sum(t["denoise"] for t in timing), sum(t["decode"] for t in timing)
    latents_all = None
    if opts.save_latents:
        gathered = {i: z for part in ctx.gather(kept) for i, z in part.items()}
        order = sorted(gathered)
        latents_all = {"video": torch.stack([gathered[i][0] for i in order]),
                       "audio": torch.stack([gathered[i][1] for i in order])}
    samples_json = sheet = page = None
    if ctx.is_main:
        samples_json = opts.out_dir / "samples.json"
        run = {
            "run": ckpt.run_label,
            "checkpoint": str(ckpt.path.resolve()),
            "checkpoint_sha256": sha256_file(ckpt.tensors_file),
            "step": ckpt.step,
            "weights": "ema" if opts.ema else "raw",
            "sampler": s.sampler.value, "steps": s.steps, "eta": s.eta, "clip_denoised": s.clip_denoised,
            "order": s.order.value if given is None else None,
            "video_noise_correlation": frame_noise_rho(cfg),
            "cross_modal_guidance": s.cross_modal_guidance if guided_stage else None,
            "frame_stagger": s.frame_stagger if given_modality != "video" else None,
            "cfg_scale": s.cfg_scale if class_conditional else None, "class": opts.class_id,
            "class_draw": CLASS_DRAWS.get(draw) if draw else None,
        }
        meta = {
            **run,
            "seed": s.seed, "batch_size": s.batch_size, "num": opts.num, "world_size": ctx.world_size,
            "device": str(dev),
            "audio_from": str(opts.audio_from) if opts.audio_from else None,
            "video_from": str(opts.video_from) if opts.video_from else None,
            "known_mode": mode if given is not None else None,
            # `avdit eval OUT` takes it as --ref; relative, so the folders can move together
            **({"reference": os.path.relpath(opts.reference, opts.out_dir)} if opts.reference else {}),
            "timing": {"seconds": round(time.perf_counter() - started, 3),
                       "denoise_seconds": round(denoise_s, 3), "decode_write_seconds": round(decode_s, 3)},
            "config": cfg.to_dict(),
            "versions": {"avdit": __version__, "torch": torch.__version__},
            # Per file, self-contained: what made it (run, checkpoint, sampler) and how long it took.
            "samples": [{**run, **r} for r in all_records],
        }
        atomic_write_json(samples_json, meta)
        if all_rows:
            sheet = write_contact_sheet(opts.out_dir / "contact_sheet.png", [all_rows[i] for i in sorted(all_rows)])
        if latents_all is not None:
            atomic_save_tensors(opts.out_dir / "latents.safetensors", latents_all,
                                metadata={"seed": str(s.seed), "num": str(opts.num)})
        page = gallery.write_gallery(opts.out_dir) if opts.gallery else None
    ctx.barrier()
    files = [opts.out_dir / r["file"] for r in all_records]
    return GenerateResult(opts.out_dir, files, time.perf_counter() - started, denoise_s, decode_s,
                          samples_json, sheet, all_records, latents_all, page if ctx.is_main else None)
