"""`avdit generate`: sample joint audio-video clips from a fine-tuned run and write playable mp4 files.

Sample i is drawn with its own generator seeded by ``seed + i``: it does not depend on the batch size, the
batch it landed in or the rank that drew it, so N GPUs write the same files as one, and
``--seed S+i -n 1`` redraws sample i alone.

``--audio-from`` / ``--video-from`` condition on a given clip: its latents are the `known` modality of the
sampler, and the written file carries the given audio (frames) themselves, untouched by any codec, beside
the generated other track.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from einops import rearrange

from avdit_cli import __version__
from avdit_cli.codecs import Codecs, build_codecs
from avdit_cli.config import Config, Precision, Sampler, TrainMode, apply_overrides
from avdit_cli.data.clips import Clip, load_clips
from avdit_cli.data.media import write_mp4
from avdit_cli.diffusion import Diffusion, classifier_free_guidance, sample
from avdit_cli.errors import ConfigError, DataError, WeightsError
from avdit_cli.models import AVDiT, DiT, file_sha256
from avdit_cli.pipelines.distributed import dist_context
from avdit_cli.pipelines.preprocess import encode_clips
from avdit_cli.pipelines.runs import Checkpoint, TENSORS, load_checkpoint

CHANNEL_DIMS = {"video": 2, "audio": 1}


@dataclass
class GenerateOptions:
    out_dir: Path
    num: int = 16
    checkpoint: Path | None = None  # a run or checkpoint folder; None: the latest run
    ema: bool = True
    sampler: Sampler | None = None  # None: the run's sample.* settings
    steps: int | None = None
    eta: float | None = None
    cfg_scale: float | None = None
    class_id: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    device: str | None = None
    audio_from: Path | None = None
    video_from: Path | None = None
    overwrite: bool = False
    contact_sheet: bool = True


@dataclass
class GenerateResult:
    out_dir: Path
    files: list[Path]
    seconds: float
    denoise_seconds: float
    decode_seconds: float
    samples_json: Path | None
    contact_sheet: Path | None
    records: list[dict[str, Any]] = field(default_factory=list)


Progress = Callable[[int, int, float], None]  # (clips done, clips total, denoiser steps per second)


# ----------------------------------------------------------------------------------------------------------
# Loading the model from a run
# ----------------------------------------------------------------------------------------------------------
def load_run_model(ckpt: Checkpoint, cfg: Config, device: torch.device, ema: bool = True) -> AVDiT:
    """The AV-DiT of a checkpoint: its backbone (checked against the recorded sha256) + its adapters."""
    if ckpt.state.get("mode") == TrainMode.PRETRAIN.value:
        raise ConfigError(f"{ckpt.path} is a pretrain run: it made an image backbone, not an AV-DiT; "
                          "fine-tune on it with `avdit finetune --set model.backbone_path=RUN/backbone`")
    ref = ckpt.state.get("backbone", {})
    path = Path(ref["path"]) if ref.get("path") else None
    if path is None or not path.exists():
        from avdit_cli.hub import backbone_path

        path = backbone_path(cfg)
    backbone, report = DiT.from_pretrained(path, device=device)
    want = ref.get("sha256")
    if want and report.sha256() != want:
        raise WeightsError(f"the backbone at {path} is not the one this run was trained on (sha256 "
                           f"{report.sha256()[:12]} vs {want[:12]}); point model.backbone_path at the right one")
    model = AVDiT.from_config(cfg, backbone=backbone).to(device)
    model.load_adapter_state_dict(ckpt.ema if ema else ckpt.model)
    return model.eval()


def resolve_config(ckpt: Checkpoint, opts: GenerateOptions) -> Config:
    """The run's config with this command's sampling choices applied."""
    cfg = ckpt.config
    overrides = []
    for key, value in (("sampler", opts.sampler), ("steps", opts.steps), ("eta", opts.eta),
                       ("cfg_scale", opts.cfg_scale), ("seed", opts.seed), ("batch_size", opts.batch_size)):
        if value is not None:
            overrides.append(f"sample.{key}={value.value if isinstance(value, Sampler) else value}")
    return apply_overrides(cfg, overrides)


# ----------------------------------------------------------------------------------------------------------
# Output folder, decoding, writing
# ----------------------------------------------------------------------------------------------------------
def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; give a folder for the clips")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise DataError(f"{out_dir} is not empty; pass --overwrite to replace its clips or choose another -o")
        for old in list(out_dir.glob("sample_*.mp4")) + [out_dir / "samples.json", out_dir / "contact_sheet.png"]:
            old.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


@torch.no_grad()
def decode(latents: dict[str, torch.Tensor], codecs: Codecs, clip_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents -> frames uint8 (b, f, H, W, 3) and waveforms float32 (b, clip_samples) in [-1, 1]."""
    video = latents["video"]  # (b, f, c, h, w)
    b = video.shape[0]
    pixels = codecs.video.decode(rearrange(video, "b f c h w -> (b f) c h w").to(codecs.device))
    frames = rearrange(((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu(),
                       "(b f) c h w -> b f h w c", b=b)
    mel = codecs.audio.decode(latents["audio"].to(codecs.device))  # (b, 1, T, M)
    wave = codecs.vocoder(mel).float().cpu()  # (b, T * hop)
    if wave.shape[1] < clip_samples:
        wave = torch.nn.functional.pad(wave, (0, clip_samples - wave.shape[1]))
    return frames.numpy(), wave[:, :clip_samples].clamp(-1, 1).numpy()


def mel_image(wave: np.ndarray, codecs: Codecs) -> np.ndarray:
    """A (M, T) uint8 picture of a waveform's log-mel, low frequencies at the bottom."""
    mel = codecs.mel(torch.from_numpy(wave)[None].to(codecs.device))[0, 0].float().cpu().numpy()  # (T, M)
    lo, hi = np.percentile(mel, 1), np.percentile(mel, 99.5)
    img = np.clip((mel - lo) / max(hi - lo, 1e-6), 0, 1)
    return (img.T[::-1] * 255).astype(np.uint8)


def write_contact_sheet(path: Path, frames: list[np.ndarray], waves: list[np.ndarray], codecs: Codecs,
                        max_clips: int = 16, frames_per_row: int = 8) -> Path:
    """One row per clip: `frames_per_row` evenly spaced frames over that clip's mel spectrogram."""
    from PIL import Image

    cell = 96
    rows = []
    for clip, wave in list(zip(frames, waves))[:max_clips]:
        picks = np.linspace(0, len(clip) - 1, frames_per_row).round().astype(int)
        strip = np.concatenate([np.asarray(Image.fromarray(clip[i]).resize((cell, cell), Image.NEAREST))
                                for i in picks], axis=1)  # (cell, 8*cell, 3)
        mel = Image.fromarray(mel_image(wave, codecs)).resize((strip.shape[1], cell // 2), Image.BILINEAR)
        mel_rgb = np.repeat(np.asarray(mel)[..., None], 3, axis=2)
        rows.append(np.concatenate([strip, mel_rgb, np.full((4, strip.shape[1], 3), 255, np.uint8)], axis=0))
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
    ckpt = load_checkpoint(opts.checkpoint)
    cfg = resolve_config(ckpt, opts)
    s = cfg.sample
    dev = torch.device(opts.device or ctx.default_device())
    class_conditional = cfg.model.trainable_class_table and cfg.model.num_classes > 0
    if opts.class_id is not None and not class_conditional:
        raise ConfigError("--class: this run is unconditional (model.trainable_class_table is off)")
    if opts.class_id is not None and not 0 <= opts.class_id < cfg.model.num_classes:
        raise ConfigError(f"--class: got {opts.class_id}, expected 0..{cfg.model.num_classes - 1}")
    if ctx.is_main:
        prepare_out_dir(opts.out_dir, opts.overwrite)
    ctx.barrier()

    model = load_run_model(ckpt, cfg, dev, ema=opts.ema)
    if codecs is None:
        codecs = build_codecs(cfg, dev)
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    given, known_latent = _given_clip(opts, cfg, codecs)
    known_mode = "timestep" if cfg.diffusion.independent_timesteps else "replace"
    use_bf16 = dev.type == "cuda" and cfg.train.precision is Precision.BF16

    def model_fn_y(x: dict[str, torch.Tensor], t: dict[str, torch.Tensor], y: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
        ctx_amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with ctx_amp:
            out = model(x["video"], x["audio"], t["video"], t["audio"], y)
        return {k: v.float() for k, v in out.items()}

    batches = [list(range(i, min(opts.num, i + s.batch_size))) for i in range(0, opts.num, s.batch_size)]
    mine = [b for k, b in enumerate(batches) if k % ctx.world_size == ctx.rank]
    total_mine = sum(len(b) for b in mine)
    f, c, h, w = cfg.data.video_latent_shape
    records: list[dict[str, Any]] = []
    frames_all: list[np.ndarray] = []
    waves_all: list[np.ndarray] = []
    denoise_s = decode_s = 0.0
    done = 0
    for batch in mine:
        b = len(batch)
        gens = [torch.Generator().manual_seed(s.seed + i) for i in batch]
        if class_conditional:
            label = opts.class_id if opts.class_id is not None else cfg.model.num_classes  # null: unconditional
            y = torch.full((b,), label, dtype=torch.long, device=dev)
            model_fn = classifier_free_guidance(model_fn_y, y, cfg.model.num_classes, s.cfg_scale, CHANNEL_DIMS)
        else:
            model_fn = lambda x, t: model_fn_y(x, t, None)  # noqa: E731
        known = {k: v.expand(b, *v.shape[1:]) for k, v in known_latent.items()}
        t0 = time.perf_counter()

        def on_step(i: int, n: int) -> None:
            if progress:
                progress(done, total_mine, i / max(1e-9, time.perf_counter() - t0))

        latents = sample(model_fn, {"video": (b, f, c, h, w), "audio": (b, *cfg.data.audio_latent_shape)},
                         CHANNEL_DIMS, diffusion, sampler=s.sampler, steps=s.steps, eta=s.eta, generator=gens,
                         device=dev, known=known or None, known_mode=known_mode, progress=on_step)
        t1 = time.perf_counter()
        frames, waves = decode(latents, codecs, cfg.data.clip_samples)
        if given is not None and opts.audio_from:
            waves = np.repeat(given.audio[None], b, axis=0)
        if given is not None and opts.video_from:
            frames = np.repeat(given.frames[None], b, axis=0)
        for j, i in enumerate(batch):
            path = write_mp4(opts.out_dir / f"sample_{i:05d}.mp4", frames[j], waves[j], cfg.data.fps,
                             cfg.data.sample_rate)
            records.append({"file": path.name, "index": i, "seed": s.seed + i,
                            "seconds": round((time.perf_counter() - t0) / b, 4)})
        t2 = time.perf_counter()
        denoise_s += t1 - t0
        decode_s += t2 - t1
        frames_all.extend(frames)
        waves_all.extend(waves)
        done += b
        if progress:
            progress(done, total_mine, 0.0)

    all_records = sorted((r for part in ctx.gather(records) for r in part), key=lambda r: r["index"])
    timing = ctx.gather({"denoise": denoise_s, "decode": decode_s})
    samples_json = sheet = None
    if ctx.is_main:
        samples_json = opts.out_dir / "samples.json"
        tensors = ckpt.path / TENSORS
        meta = {
            "run": str(ckpt.path.parent.parent.resolve()),
            "checkpoint": str(ckpt.path.resolve()),
            "checkpoint_sha256": file_sha256(tensors),
            "step": ckpt.step,
            "weights": "ema" if opts.ema else "raw",
            "sampler": s.sampler.value, "steps": s.steps, "eta": s.eta, "cfg_scale": s.cfg_scale,
            "class": opts.class_id, "seed": s.seed, "batch_size": s.batch_size,
            "num": opts.num, "world_size": ctx.world_size, "device": str(dev),
            "audio_from": str(opts.audio_from) if opts.audio_from else None,
            "video_from": str(opts.video_from) if opts.video_from else None,
            "known_mode": known_mode if given is not None else None,
            "timing": {"denoise_seconds": sum(t["denoise"] for t in timing),
                       "decode_write_seconds": sum(t["decode"] for t in timing)},
            "config": cfg.to_dict(),
            "versions": {"avdit": __version__, "torch": torch.__version__},
            "samples": all_records,
        }
        samples_json.write_text(json.dumps(meta, indent=2) + "\n")
        if opts.contact_sheet and frames_all:
            sheet = write_contact_sheet(opts.out_dir / "contact_sheet.png", frames_all, waves_all, codecs)
    ctx.barrier()
    files = [opts.out_dir / r["file"] for r in all_records]
    return GenerateResult(opts.out_dir, files, time.perf_counter() - started, denoise_s, decode_s,
                          samples_json, sheet, all_records)


def _given_clip(opts: GenerateOptions, cfg: Config, codecs: Codecs) -> tuple[Clip | None, dict[str, torch.Tensor]]:
    """The first clip of --audio-from / --video-from and its latents for the known modality."""
    src = opts.audio_from or opts.video_from
    if src is None:
        return None, {}
    if not Path(src).is_file():
        raise DataError(f"{src} does not exist; give a video file with sound")
    clip = load_clips(Path(src), cfg.data)[0]
    video, audio = encode_clips([clip], codecs, batch_size=1)
    return clip, ({"audio": audio} if opts.audio_from else {"video": video})

