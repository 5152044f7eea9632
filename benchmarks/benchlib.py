"""Pieces the benchmarks share: timing on a CPU or a GPU, short profiles, SDPA backend checks, models with
random weights in the real sizes and layouts, a random run folder, random codecs in a Hugging Face cache
layout, synthetic videos for decoding, and one training step of the fine-tuning loop.

Used by ``gpu_suite.py``, ``finetune_bench.py``, ``generate_bench.py`` and ``preprocess_bench.py`` (each runs
as a script from this folder, so ``import benchlib`` finds this file). Nothing here downloads weights: every
model is random, which costs the same to run as the real weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from avdit_cli.config import Config

# bf16 matrix rate measured on an H200 of this workplace (device KINDS.md): the ceiling the FLOP floor uses
# when the suite's own measurement is not at hand.
H200_BF16_TFLOPS = 790.0


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls of `fn` after `warmup` untimed ones.

    On a GPU each call is bracketed by CUDA events and waited for, so queued work from the previous call never
    lands in the next one's time; on a CPU a wall clock around the call does the same.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    for _ in range(max(1, iters)):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def stats(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of milliseconds (the median is what the tables report)."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "n": len(times_ms)}


def peak_gib(device: torch.device) -> float:
    """GPU: the peak allocated memory since the last reset; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def amp(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast as the project uses it on a GPU (``train.precision=bf16``); CPU autocast when asked."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """True float32 matrix products (no TF32) inside the block, for reference outputs."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, in float64."""
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call (torch's FLOP counter: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------------
# Profiles and attention backends
# ----------------------------------------------------------------------------------------------------------
def profile_table(fn: Callable[[], Any], device: torch.device, iters: int = 3, row_limit: int = 15) -> str:
    """A torch.profiler top-k table (by self device time on a GPU, self CPU time on a CPU) of `iters` calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()  # outside the profile: first-call costs are not what a profile should show
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(max(1, iters)):
            fn()
        sync(device)
    averages = prof.key_averages()
    keys = ("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ("self_cpu_time_total",)
    for key in keys:  # torch renamed the CUDA sort key; take the one this version knows
        try:
            return averages.table(sort_by=key, row_limit=row_limit, max_name_column_width=70)
        except (AttributeError, KeyError, ValueError):
            continue
    return averages.table(row_limit=row_limit, max_name_column_width=70)


# aten ops that scaled_dot_product_attention dispatches to, and the backend each one means
SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def sdpa_kernels(fn: Callable[[], Any]) -> dict[str, int]:
    """Which SDPA backends one call of `fn` used: {backend: number of calls} (read off the profiler's op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    found: dict[str, int] = {}
    for event in prof.key_averages():
        if event.key in SDPA_KERNELS:
            name = SDPA_KERNELS[event.key]
            found[name] = found.get(name, 0) + int(event.count)
    return found


def sdpa_backend_check(shapes: dict[str, tuple[int, int, int, int]], dtype: torch.dtype, device: torch.device,
                       iters: int = 10) -> dict[str, Any]:
    """For each attention shape (batch, heads, tokens, head dim): the backend SDPA picks by itself, and the
    milliseconds of the default and of each backend forced alone (or why that backend refuses the shape)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    forced = {"flash": SDPBackend.FLASH_ATTENTION, "mem-efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None), "math": SDPBackend.MATH}
    out: dict[str, Any] = {}
    g = torch.Generator(device=device).manual_seed(0)
    for name, shape in shapes.items():
        q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
        row: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
        with torch.no_grad():
            row["chosen"] = sdpa_kernels(lambda: sdpa(q, k, v))
            row["default_ms"] = stats(time_ms(lambda: sdpa(q, k, v), device, 2, iters))["median_ms"]
            for label, backend in forced.items():
                if backend is None:
                    row[label] = "not in this torch"
                    continue
                try:
                    with sdpa_kernel([backend]):
                        row[label] = round(stats(time_ms(lambda: sdpa(q, k, v), device, 1, iters))["median_ms"], 4)
                except (RuntimeError, ValueError) as err:  # the backend refuses this shape/dtype/device: say why
                    row[label] = "unavailable: " + (str(err).strip().splitlines() or ["?"])[0][:160]
        out[name] = row
    return out


# ----------------------------------------------------------------------------------------------------------
# Models with random weights
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def fill_zero_params_(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> int:
    """Give every all-zero floating parameter N(0, std) values; returns how many were filled.

    DiT's adaLN-Zero, its final layer and every new AV-DiT part start at exactly zero, which makes the untrained
    model an identity in places: fine for timing, useless for comparing precisions. Filling them makes every
    part contribute to the output.
    """
    filled = 0
    for p in module.parameters():
        if p.is_floating_point() and not bool(p.any()):
            p.normal_(0.0, std, generator=generator)
            filled += 1
    return filled


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def build_avdit(cfg: Config, device: torch.device, seed: int = 0, nontrivial: bool = True) -> nn.Module:
    """AV-DiT of the config's sizes with a random backbone, built on `device` directly (a DiT-XL/2's random
    init on a CPU takes a while). `nontrivial`: zero-initialised parts get small random values too."""
    from avdit_cli.models import AVDiT, DiT

    g = generator_for(device, seed)
    f, c, h, w = cfg.data.video_latent_shape
    with torch.device(device):
        backbone = DiT.from_config(cfg.model, input_size=h, in_channels=c, generator=g)
        model = AVDiT.from_config(cfg, backbone=backbone, generator=g)
    model.to(device)  # buffers made from CPU caches on purpose
    if nontrivial:
        fill_zero_params_(model, g)
    return model


def build_dit(cfg: Config, device: torch.device, seed: int = 0, nontrivial: bool = True) -> nn.Module:
    """The image DiT of the config's sizes, random weights, on `device`."""
    from avdit_cli.models import DiT

    g = generator_for(device, seed)
    f, c, h, w = cfg.data.video_latent_shape
    with torch.device(device):
        model = DiT.from_config(cfg.model, input_size=h, in_channels=c, generator=g)
    model.to(device)
    if nontrivial:
        fill_zero_params_(model, g)
    return model


def av_inputs(cfg: Config, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random (never zero) latents and timesteps of one batch, float32 as the sampler gives them."""
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(batch, *cfg.data.video_latent_shape, generator=g).to(device),
            "audio": torch.randn(batch, *cfg.data.audio_latent_shape, generator=g).to(device),
            "t": torch.randint(0, cfg.diffusion.num_timesteps, (batch,), generator=g).to(device)}


# ----------------------------------------------------------------------------------------------------------
# A run folder, as finetune writes it
# ----------------------------------------------------------------------------------------------------------
def make_random_run(root: Path, cfg: Config, seed: int = 0, device: torch.device | str = "cpu",
                    nontrivial: bool = False, adapter_noise: float = 0.05) -> Path:
    """``root/backbone`` (a random DiT in the diffusers layout) and ``root/run`` (random adapters in the layout
    finetune writes, one checkpoint): what ``avdit generate`` reads. Returns the run folder."""
    from avdit_cli.fileio import sha256_file
    from avdit_cli.models.dit_loading import SAFETENSORS_NAME
    from avdit_cli.pipelines.runs import save_checkpoint

    device = torch.device(device)
    model = build_avdit(cfg, device, seed, nontrivial)
    g = generator_for(device, seed + 1)
    with torch.no_grad():  # off the adapters' zero init, so the audio branch does not output zeros
        for _, p in model.adapter_named_parameters():
            p.add_(torch.randn(p.shape, generator=g, device=device) * adapter_noise)
    model.to("cpu")
    folder = model.backbone.save_pretrained(root / "backbone")
    sd = model.adapter_state_dict()
    state = {"config": cfg.to_dict(), "mode": "finetune",
             "backbone": {"path": str(folder.resolve()), "sha256": sha256_file(folder / SAFETENSORS_NAME)},
             "optimizer": {"param_groups": []}}
    save_checkpoint(root / "run", 1, sd, {k: v.clone() for k, v in sd.items()}, {}, state, keep=1)
    del model
    return root / "run"


# ----------------------------------------------------------------------------------------------------------
# Random codecs in the real layouts, where `avdit` looks for them (a Hugging Face cache)
# ----------------------------------------------------------------------------------------------------------
def _vae_config(channels: list[int], in_channels: int, latent: int, layers: int, groups: int, sample: int,
                scale: float) -> dict[str, Any]:
    return {"in_channels": in_channels, "out_channels": in_channels, "latent_channels": latent,
            "block_out_channels": channels, "layers_per_block": layers, "norm_num_groups": groups,
            "down_block_types": ["DownEncoderBlock2D"] * len(channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(channels), "act_fn": "silu", "sample_size": sample,
            "scaling_factor": scale}


# stabilityai/sd-vae-ft-ema (REFERENCES.md) and cvssp/audioldm-s-full-v2 vae/ (ch 128, ch_mult 1,2,4, two res
# blocks, z 8, as AudioLDM's own config; the scale factor as public code reports it: random weights anyway).
SD_VAE_CONFIG = _vae_config([128, 256, 512, 512], 3, 4, 2, 32, 256, 0.18215)
AUDIOLDM_VAE_CONFIG = _vae_config([128, 256, 512], 1, 8, 2, 32, 512, 0.9227914214134216)
# Tiny stand-ins with the same number of levels (so the same down-sampling factors), for the CPU smoke mode.
SD_VAE_TINY = _vae_config([8, 8, 16, 16], 3, 4, 1, 4, 64, 0.18215)
AUDIOLDM_VAE_TINY = _vae_config([8, 8, 16], 1, 8, 1, 4, 64, 0.9227914214134216)
HIFIGAN_TINY_CHANNELS = 64  # upsample_initial_channel: halved 5 times, so at least 32


def _snapshot_folder(hub_cache: Path, entry: Any) -> Path:
    """The folder of an entry's files in the Hugging Face cache layout that ``huggingface_hub`` reads."""
    repo = hub_cache / ("models--" + entry.repo_id.replace("/", "--"))
    revision = entry.revision
    if len(revision) != 40:  # a branch name: point refs/<branch> at a made-up commit
        commit = "0" * 39 + "1"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        revision = commit
    folder = repo / "snapshots" / revision
    return folder / entry.subfolder if entry.subfolder else folder


def write_random_codecs(hub_cache: Path, cfg: Config, tiny: bool = False, seed: int = 0) -> dict[str, Path]:
    """Random SD VAE, AudioLDM VAE and HiFi-GAN written where ``avdit_cli.hub`` finds the repos `cfg` names
    (point ``HF_HUB_CACHE`` at `hub_cache`). Real sizes unless `tiny`. Returns {key: folder}."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from avdit_cli import hub
    from avdit_cli.codecs.vocoder import HifiGan, HifiGanConfig

    folders: dict[str, Path] = {}
    torch.manual_seed(seed)  # diffusers initialises from the global generator
    for key, repo, config in (("video-vae", cfg.data.video_vae_repo, SD_VAE_TINY if tiny else SD_VAE_CONFIG),
                              ("audio-vae", cfg.data.audio_vae_repo,
                               AUDIOLDM_VAE_TINY if tiny else AUDIOLDM_VAE_CONFIG)):
        folder = _snapshot_folder(hub_cache, hub.lookup(key, repo))
        AutoencoderKL(**config).save_pretrained(str(folder), safe_serialization=True)
        folders[key] = folder
    voc_cfg = HifiGanConfig(upsample_initial_channel=HIFIGAN_TINY_CHANNELS) if tiny else HifiGanConfig()
    folder = _snapshot_folder(hub_cache, hub.lookup("vocoder", cfg.data.audio_vae_repo))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in HifiGan(voc_cfg).state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**asdict(voc_cfg), "model_type": "hifigan"}, indent=1))
    folders["vocoder"] = folder
    return folders


# ----------------------------------------------------------------------------------------------------------
# Decoding media (what preprocess's workers do)
# ----------------------------------------------------------------------------------------------------------
def make_videos(folder: Path, files: int, seconds: float, size: int, workers: int = 4, seed: int = 0) -> list[Path]:
    """Synthetic mp4 files (30 fps H.264 + 44.1 kHz AAC, `size` square), made once into `folder`."""
    from avdit_cli.data.synthetic import make_dataset

    done = folder / ".complete"
    if done.is_file():
        return sorted(folder.glob("*.mp4"))
    shutil.rmtree(folder, ignore_errors=True)
    paths = make_dataset(folder, files, seconds=seconds, seed=seed, size=size, workers=workers)
    done.write_text("ok\n")
    return paths


def bench_decode(files: Sequence[Path], workers: int, kind: str, cfg: Config) -> tuple[int, float, float]:
    """(clips, seconds, pool start seconds) for decoding and cutting every file with `workers` decoders of `kind`
    (0: inline), as preprocess does. `seconds` excludes starting the pool, timed on its own (one trivial task
    per worker)."""
    from avdit_cli.pipelines.preprocess import decode_executor, decode_file

    t0 = time.perf_counter()
    executor = decode_executor(workers, kind)
    try:
        for f in [executor.submit(time.sleep, 0.2) for _ in range(workers)]:
            f.result()
        t1 = time.perf_counter()
        futures = [executor.submit(decode_file, str(p), cfg.data, cfg.data.stride_seconds) for p in files]
        clips = sum(len(f.result().clips) for f in futures)  # DecodedFile
        t2 = time.perf_counter()
    finally:
        executor.shutdown(wait=True)
    return clips, t2 - t1, max(0.0, t1 - t0 - 0.2 * bool(workers))


# ----------------------------------------------------------------------------------------------------------
# One training step of the fine-tuning loop
# ----------------------------------------------------------------------------------------------------------
def train_step_row(cfg: Config, device: torch.device, batch: int, ckpt: bool, steps: int, warmup: int,
                   compile_: bool = False, profile_if: Callable[[dict[str, Any]], bool] | None = None,
                   profile_iters: int = 2) -> dict[str, Any]:
    """Speed and peak memory of the step `avdit finetune` runs (per-sample noise and timesteps, forward, hybrid
    loss, backward, clipping, AdamW, EMA; data loading excluded: random latents already on the device),
    adapter-only, with the config's precision (bf16 autocast on a GPU). A row that runs out of GPU memory
    says so instead of failing. ``profile_if(row)``: when it says so, a profile table of a few more steps is
    added to the row under ``profile``."""
    from avdit_cli.diffusion import Diffusion
    from avdit_cli.pipelines.finetune import _batch_share, _loss_weights, _step_terms
    from avdit_cli.pipelines.optim import EMA

    cfg = cfg.replace(**{"train.batch_size": batch, "model.grad_checkpointing": ckpt})
    row: dict[str, Any] = {"name": f"b{batch}-{'ckpt' if ckpt else 'plain'}", "batch": batch, "ckpt": ckpt,
                           "precision": cfg.train.precision.value if device.type == "cuda" else "fp32",
                           "compile": compile_}
    reset_peak(device)
    model = optimizer = ema = None
    try:
        model = build_avdit(cfg, device, seed=0, nontrivial=False).train()
        trainable = dict(model.adapter_named_parameters())
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.train.lr)
        ema = EMA(trainable, cfg.train.ema_decay)
        net = torch.compile(model) if compile_ else model
        diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
        g = torch.Generator().manual_seed(0)
        batch_t = {"video": torch.randn(batch, *cfg.data.video_latent_shape, generator=g),
                   "audio": torch.randn(batch, *cfg.data.audio_latent_shape, generator=g),
                   "label": torch.full((batch,), -1), "audio_ok": torch.ones(batch, dtype=torch.bool)}
        slot = torch.arange(batch)
        counts = {"video": batch, "audio": batch}
        step = [0]

        def one() -> None:
            optimizer.zero_grad(set_to_none=True)
            terms, masks = _step_terms(net, diffusion, cfg, batch_t, slot, step[0], device, False)
            _batch_share(terms, masks, counts, _loss_weights(cfg, False))["loss"].backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), cfg.train.grad_clip)
            optimizer.step()
            ema.update(step[0])
            step[0] += 1

        times = time_ms(one, device, warmup, steps)
        s = stats(times)
        row.update(ms_per_step=s["median_ms"], clips_per_s=batch / (s["median_ms"] / 1e3),
                   steps_per_s=1e3 / s["median_ms"], clips_per_s_mean=batch * len(times) / (sum(times) / 1e3),
                   peak_gib=peak_gib(device), peak_kind="allocated" if device.type == "cuda" else "process RSS",
                   trainable=sum(p.numel() for p in trainable.values()))
        if profile_if is not None and profile_if(row):
            row["profile"] = profile_table(one, device, profile_iters)
    except torch.cuda.OutOfMemoryError:
        row.update(clips_per_s=math.nan, steps_per_s=math.nan, peak_gib=math.nan, note="out of memory")
    finally:
        model = optimizer = ema = None  # drop the references before emptying the cache
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row
