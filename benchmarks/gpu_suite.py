"""The GPU suite: every figure of the real-size CUDA path in one run on one H200 (<= 8 minutes), as JSON + a table.

    python benchmarks/gpu_suite.py --out DIR [--budget 450] [--only S ...] [--skip S ...] [--profile auto]
    python benchmarks/gpu_suite.py --cpu-smoke --out DIR     # tiny sizes on a CPU in seconds (tests run this)

Every model has random weights in the real sizes and layouts (DiT-XL/2, SD-VAE AutoencoderKL with
block_out_channels [128, 256, 512, 512], AudioLDM's VAE, AudioLDM's HiFi-GAN): nothing is downloaded, and a
forward pass costs the same whatever the values. The backbone is saved in the diffusers layout and the adapters
as finetune writes them, and the codecs are written into a Hugging Face cache layout, so ``avdit generate``,
``preprocess`` and ``finetune`` run through the project's own code, unchanged.

Sections (in this order; each one's figure and goal is in the table):

  env               card, driver, torch / CUDA / cuDNN versions, bf16 matmul and copy ceilings, and which SDPA
                    backend (flash, mem-efficient, cudnn, math) each attention shape of the model gets
  denoiser          AV-DiT-XL/2 forward, 16x4x32x32 video + 8x40x16 audio latents, bf16 autocast, batch 8:
                    ms per clip (goal <= 10), FLOPs and the floor, SDPA kernels used; variant: bf16 weights
  denoiser_compile  the same under torch.compile as ``train.compile`` applies it (goal <= 10), compile seconds
  dit_vs_diffusers  our DiT-XL/2 image forward vs diffusers' DiTTransformer2DModel, same weights, batch 128
                    (goal: ratio <= 1.0), with a float32 parity check
  train_step        the fine-tuning step, adapters only, bf16, batch 4 and 8, checkpointing off/on: clips/s
                    (goal >= 25 at batch 8) and peak GiB
  generate          ``avdit generate -n 16``, DPM-Solver++ 25 steps, VAE decode + HiFi-GAN + mp4 writing
                    (goal <= 10 s, model loading reported apart), and the cold CLI's wall time
  preprocess        SD-VAE encode frames/s at 256^2 (goal >= 700), AudioLDM VAE clips/s, ffmpeg decode
                    frames/s per worker count and whether the decoders keep up, preprocess end to end
  precision         bf16 vs fp32 relative error of the denoiser output and of one DDIM-25 sample (+ fp64)
  nccl              ``torchrun --nproc-per-node 1`` finetune for a few steps, then ``--resume``; an NCCL
                    all-reduce + DDP backward probe under torchrun

Isolation: each section runs in its own process (``--isolate process``, the default on a GPU) with a time box
(its cap, or what is left of ``--budget``); a section that fails, runs out of memory or out of time records
its error and partial figures in the JSON, and the suite goes on. A section does not start with less than
MIN_START_S of the budget left, and its time box leaves the later sections their floors (REAL_FLOORS).
Timing: CUDA events around each call after warm-up; medians are reported.
``--profile auto`` (default) adds a torch.profiler top-k table for every figure that misses its goal
(``always``: for every timed figure; ``never``).

Outputs in --out: ``gpu_suite.json`` (everything), ``gpu_suite.md`` (the table, with the card, torch and CUDA
versions at the top), ``profiles.txt`` and, with process isolation, ``sections.log``; rewritten after every
section, so a run stopped from outside still leaves what it measured. Exit status 0 when every section ran
cleanly, 1 otherwise. ``--cpu-smoke``: tiny sizes, fp32, compile off, every section's code path inline on a CPU
(torchrun replaced by an in-process call of the same command line); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(REPO)):  # benchlib beside this file; avdit_cli from the checkout when not installed
    if _p not in sys.path:
        sys.path.insert(0, _p)

MIN_START_S = 20.0  # a section never starts with less of the budget left than this
GOAL_MS_PER_CLIP = 10.0
GOAL_RATIO = 1.0
GOAL_TRAIN_CLIPS_S = 25.0
GOAL_GENERATE_S = 10.0
GOAL_VAE_FPS = 700.0


# ----------------------------------------------------------------------------------------------------------
# What a run measures: real sizes, or tiny ones for the CPU smoke mode
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    smoke: bool
    device: str
    overrides: tuple[str, ...]  # --set values on the aist preset (empty: the paper setting)
    tiny_codecs: bool
    warmup: int
    iters: int
    denoiser_batch: int
    dit_batch: int
    train_batches: tuple[int, ...]
    train_steps: int
    train_warmup: int
    gen_num: int
    gen_steps: int
    gen_batch_sizes: tuple[int, ...]
    gen_cli: bool  # also time the cold `avdit generate` command in a fresh process
    encode_clips: int
    encode_chunks: tuple[int, ...]  # SD-VAE frames per vae.encode call (8 is what preprocess uses)
    decode_files: int
    decode_seconds: float
    decode_source_size: int
    decode_workers: tuple[int, ...]
    cache_files: int  # files preprocessed into the cache the nccl section trains on
    precision_batch: int
    precision_steps: int
    nccl_steps: int
    nccl_batch: int
    compile_backend: str  # "inductor", "eager", ... or "off"
    compile_mode: str
    ceiling_n: int  # matmul size for the bf16 ceiling
    copy_mib: int
    profile: str  # auto | always | never
    profile_iters: int
    isolate: str  # process | inline
    caps: dict[str, float] = field(default_factory=dict)  # a section's time box at most
    floors: dict[str, float] = field(default_factory=dict)  # held back from earlier sections for this one


REAL_CAPS = {"env": 45, "denoiser": 60, "denoiser_compile": 150, "dit_vs_diffusers": 60, "train_step": 90,
             "generate": 150, "preprocess": 90, "precision": 60, "nccl": 120}
# What each section needs to give its main figure (a guess from the anchors; no GPU has run it): an earlier
# section's time box never eats into what the later ones need, so one overrun cannot empty the table's tail.
REAL_FLOORS = {"env": 15, "denoiser": 20, "denoiser_compile": 60, "dit_vs_diffusers": 20, "train_step": 30,
               "generate": 50, "preprocess": 30, "precision": 20, "nccl": 50}
SMOKE_CAPS = {name: 60.0 for name in REAL_CAPS}
SMOKE_OVERRIDES = ("model.hidden_size=32", "model.depth=2", "model.num_heads=2", "model.lora_rank=4",
                   "model.joint_lora_rank=4", "data.num_frames=4", "data.frame_size=64")


def real_spec(args: argparse.Namespace) -> Spec:
    return Spec(
        smoke=False, device=args.device or "cuda", overrides=(), tiny_codecs=False, warmup=3, iters=args.iters or 20,
        denoiser_batch=8, dit_batch=128, train_batches=(4, 8), train_steps=8, train_warmup=2, gen_num=16,
        gen_steps=25, gen_batch_sizes=(8, 16), gen_cli=True, encode_clips=32, encode_chunks=(8, 32),
        decode_files=12, decode_seconds=6.6, decode_source_size=args.decode_source_size or 512,
        decode_workers=(1, 4, 8, 16), cache_files=2, precision_batch=2, precision_steps=25, nccl_steps=4,
        nccl_batch=4, compile_backend=args.compile_backend or "inductor", compile_mode=args.compile_mode,
        ceiling_n=8192, copy_mib=2048, profile=args.profile, profile_iters=3, isolate=args.isolate or "process",
        caps=dict(REAL_CAPS), floors=dict(REAL_FLOORS))


def smoke_spec(args: argparse.Namespace) -> Spec:
    return Spec(
        smoke=True, device="cpu", overrides=SMOKE_OVERRIDES, tiny_codecs=True, warmup=1, iters=args.iters or 2,
        denoiser_batch=2, dit_batch=2, train_batches=(2,), train_steps=2, train_warmup=1, gen_num=2, gen_steps=2,
        gen_batch_sizes=(2,), gen_cli=False, encode_clips=2, encode_chunks=(8,), decode_files=2,
        decode_seconds=1.0, decode_source_size=args.decode_source_size or 64, decode_workers=(1, 2),
        cache_files=2, precision_batch=1, precision_steps=2, nccl_steps=2, nccl_batch=2,
        compile_backend=args.compile_backend or "off", compile_mode=args.compile_mode, ceiling_n=128,
        copy_mib=4, profile=args.profile, profile_iters=1, isolate=args.isolate or "inline", caps=dict(SMOKE_CAPS))


# ----------------------------------------------------------------------------------------------------------
# A section's context: where it writes, how long it may take, what it found
# ----------------------------------------------------------------------------------------------------------
class Ctx:
    """Handed to each section: the spec, the shared work folder, the deadline, and the result being built.

    ``record`` writes the result file at once (process isolation), so a section killed at its time box still
    leaves what it measured before.
    """

    def __init__(self, name: str, spec: Spec, work: Path, deadline: float, result_path: Path | None) -> None:
        self.name, self.spec, self.work, self.deadline, self.result_path = name, spec, work, deadline, result_path
        self.result: dict[str, Any] = {"status": "running", "figures": {}, "notes": [], "profiles": {}}
        self._device: Any = None

    @property
    def device(self) -> Any:
        if self._device is None:
            import torch

            self._device = torch.device(self.spec.device)
            if self._device.type == "cuda":
                if not torch.cuda.is_available():
                    raise RuntimeError("no CUDA device is visible; use --cpu-smoke for the CPU smoke mode")
                if self._device.index is None:
                    self._device = torch.device("cuda", 0)
                torch.cuda.set_device(self._device)
        return self._device

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def cfg(self, *more: str) -> Any:
        """The aist preset (the paper setting) with the spec's size overrides, then `more`."""
        from avdit_cli.config import load_preset

        return load_preset("aist", [*self.spec.overrides, *more])

    def left(self) -> float:
        return self.deadline - time.time()

    def time_for(self, seconds: float, what: str) -> bool:
        """True when `seconds` of the time box remain; otherwise note that `what` was skipped."""
        if self.left() >= seconds:
            return True
        self.note(f"skipped {what}: less than {seconds:.0f} s of the section's time box left")
        return False

    def record(self, key: str, value: Any) -> None:
        self.result["figures"][key] = value
        self.flush()

    def note(self, text: str) -> None:
        self.result["notes"].append(text)
        self.flush()

    def want_profile(self, missed: bool) -> bool:
        return self.spec.profile == "always" or (self.spec.profile == "auto" and missed)

    def add_profile(self, label: str, table: str) -> None:
        self.result["profiles"][label] = table
        self.flush()

    def flush(self) -> None:
        if self.result_path is not None:
            write_json(self.result_path, self.result)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def results_of(work: Path, section: str) -> dict[str, Any]:
    """Figures an earlier section of this run wrote (empty when it did not run)."""
    path = work / "results" / f"{section}.json"
    try:
        return json.loads(path.read_text()).get("figures", {})
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------------------
# Shared inputs, made once per run in the work folder (by whichever section first needs them)
# ----------------------------------------------------------------------------------------------------------
def ensure_run(ctx: Ctx) -> Path:
    """A run folder with random adapters over a random backbone saved in the diffusers layout."""
    import benchlib as bl

    run = ctx.work / "assets" / "run"
    if (run / "latest").is_file():
        return run
    shutil.rmtree(ctx.work / "assets", ignore_errors=True)
    t0 = time.perf_counter()
    bl.make_random_run(ctx.work / "assets", ctx.cfg(), seed=0, device=ctx.device, nontrivial=True)
    ctx.note(f"made the random backbone (diffusers layout) and run folder in {time.perf_counter() - t0:.1f} s")
    return run


def backbone_folder(ctx: Ctx) -> Path:
    return ensure_run(ctx).parent / "backbone"


def ensure_codecs(ctx: Ctx) -> Path:
    """Random SD-VAE, AudioLDM VAE and HiFi-GAN in the Hugging Face cache that HF_HUB_CACHE points at."""
    import benchlib as bl

    hub = Path(os.environ["HF_HUB_CACHE"])
    done = hub / ".complete"
    if not done.is_file():
        shutil.rmtree(hub, ignore_errors=True)
        t0 = time.perf_counter()
        bl.write_random_codecs(hub, ctx.cfg(), tiny=ctx.spec.tiny_codecs)
        done.write_text("ok\n")
        ctx.note(f"wrote the random codecs into the HF cache layout in {time.perf_counter() - t0:.1f} s")
    return hub


def ensure_videos(ctx: Ctx) -> list[Path]:
    import benchlib as bl

    s = ctx.spec
    return bl.make_videos(ctx.work / "videos", s.decode_files, s.decode_seconds, s.decode_source_size,
                          workers=min(16, os.cpu_count() or 1))


def ensure_cache(ctx: Ctx) -> tuple[Path, float | None]:
    """A latent cache made by the project's preprocess() from the first few synthetic videos (with the random
    codecs): what the nccl section fine-tunes on. Returns (folder, clips/s when made now)."""
    from avdit_cli.pipelines.preprocess import preprocess

    cache = ctx.work / "cache"
    if (cache / "manifest.json").is_file():
        return cache, None
    ensure_codecs(ctx)
    small = ctx.work / "videos_small"
    shutil.rmtree(small, ignore_errors=True)
    small.mkdir(parents=True)
    for p in ensure_videos(ctx)[: ctx.spec.cache_files]:
        shutil.copy2(p, small / p.name)
    t0 = time.perf_counter()
    summary = preprocess(ctx.cfg(), small, cache, workers=min(8, os.cpu_count() or 1),
                         device=str(ctx.device))
    return cache, summary.clips / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------
def attention_shapes(cfg: Any, batch: int, dit_batch: int) -> dict[str, tuple[int, int, int, int]]:
    """(batch, heads, tokens, head dim) of every attention the AV-DiT runs, and of the DiT image forward."""
    m = cfg.model
    f, c, h, w = cfg.data.video_latent_shape
    c_a, t_a, m_a = cfg.data.audio_latent_shape
    heads, d = m.num_heads, m.hidden_size // m.num_heads
    n_v = (h // m.patch_size) * (w // m.patch_size)
    n_a = (t_a // m.audio_patch_size) * (m_a // m.audio_patch_size)
    return {"spatial": (batch * f, heads, n_v, d), "temporal": (batch * n_v, heads, f, d),
            "audio": (batch, heads, n_a, d), "joint": (batch, heads, f * n_v + n_a, d),
            "dit_image": (dit_batch, heads, n_v, d)}


def sec_env(ctx: Ctx) -> None:
    import importlib.metadata as md

    import torch

    import benchlib as bl

    dev = ctx.device
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "device_type": dev.type,
                            "smoke": ctx.spec.smoke}
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(card=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                    nccl=nccl_version())
        info["sdp_enabled"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                               "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                               "math": torch.backends.cuda.math_sdp_enabled(),
                               "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)()}
    else:
        info["card"] = f"CPU ({platform.processor() or platform.machine()})"
    info["driver"] = nvidia_smi_driver()
    versions = {}
    for pkg in ("diffusers", "timm", "safetensors", "imageio-ffmpeg", "huggingface-hub", "numpy", "torchaudio",
                "einops", "typer", "triton"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    info["versions"] = versions
    try:
        from avdit_cli.data.media import ffmpeg_exe

        out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, timeout=20)
        info["ffmpeg"] = (out.stdout.splitlines() or ["?"])[0]
    except Exception as err:  # recorded, not fatal: the media sections will say more
        info["ffmpeg"] = f"unavailable: {err}"
    info["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    ctx.record("env", info)

    # Ceilings (device METHOD.md): a large bf16 matrix product and a device-to-device copy.
    n = ctx.spec.ceiling_n
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = bl.generator_for(dev, 0)
    a, b = (torch.randn(n, n, generator=g, device=dev, dtype=dtype) for _ in range(2))
    s = bl.stats(bl.time_ms(lambda: a @ b, dev, 3, 10))
    ctx.record("matmul_tflops", round(2 * n**3 / (s["median_ms"] / 1e3) / 1e12, 2))
    src = torch.empty(ctx.spec.copy_mib * 2**20, dtype=torch.uint8, device=dev)
    src.random_(0, 255, generator=g)
    dst = torch.empty_like(src)
    s = bl.stats(bl.time_ms(lambda: dst.copy_(src), dev, 2, 10))
    ctx.record("copy_tb_per_s", round(2 * src.numel() / (s["median_ms"] / 1e3) / 1e12, 3))  # read + write

    cfg = ctx.cfg()
    shapes = attention_shapes(cfg, ctx.spec.denoiser_batch, ctx.spec.dit_batch)
    ctx.record("sdpa", bl.sdpa_backend_check(shapes, dtype, dev, iters=5 if ctx.spec.smoke else 10))


def nccl_version() -> str | None:
    """NCCL's version as torch reports it (a tuple or an int, depending on the torch version)."""
    try:
        import torch

        v = torch.cuda.nccl.version()
        return ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
    except (AttributeError, RuntimeError):
        return None


def nvidia_smi_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _denoiser_call(model: Any, x: dict[str, Any], use_amp: bool, dev: Any) -> Callable[[], Any]:
    import torch

    import benchlib as bl

    def call() -> Any:
        with torch.no_grad(), bl.amp(dev, use_amp):
            return model(x["video"], x["audio"], x["t"])

    return call


def _peak_tflops(ctx: Ctx) -> float:
    import benchlib as bl

    measured = results_of(ctx.work, "env").get("matmul_tflops")
    return float(measured) if ctx.on_gpu and measured else bl.H200_BF16_TFLOPS


def sec_denoiser(ctx: Ctx) -> None:
    import torch

    import benchlib as bl

    dev, cfg, b = ctx.device, ctx.cfg(), ctx.spec.denoiser_batch
    model = bl.build_avdit(cfg, dev).eval()
    x = bl.av_inputs(cfg, b, dev)
    use_amp = ctx.on_gpu  # the project's bf16 autocast (train.precision=bf16); the CPU smoke mode runs fp32
    call = _denoiser_call(model, x, use_amp, dev)
    bl.reset_peak(dev)
    s = bl.stats(bl.time_ms(call, dev, ctx.spec.warmup, ctx.spec.iters))
    eager = {"ms_per_call": s["median_ms"], "ms_per_clip": s["median_ms"] / b, "min_ms_per_clip": s["min_ms"] / b,
             "max_ms_per_clip": s["max_ms"] / b, "calls": s["n"], "batch": b,
             "precision": "bf16 autocast" if use_amp else "fp32", "peak_gib": bl.peak_gib(dev),
             "params": sum(p.numel() for p in model.parameters())}
    ctx.record("eager", eager)
    flops = bl.count_flops(call)
    peak = _peak_tflops(ctx)
    ctx.record("flops_per_clip", flops / b)
    ctx.record("achieved_tflops", flops / (s["median_ms"] / 1e3) / 1e12)
    ctx.record("floor_ms_per_clip", flops / b / (peak * 1e12) * 1e3)
    ctx.record("floor_at_tflops", peak)
    ctx.record("sdpa_kernels", bl.sdpa_kernels(call))
    if ctx.want_profile(eager["ms_per_clip"] > GOAL_MS_PER_CLIP):
        ctx.add_profile("denoiser, eager", bl.profile_table(call, dev, ctx.spec.profile_iters))
    # Variant (not the project's path): weights cast to bf16, so the residual stream is bf16 too. What the
    # float32 residual stream under autocast costs.
    if ctx.time_for(10, "the bf16-weights variant"):
        model.to(torch.bfloat16)
        s2 = bl.stats(bl.time_ms(call, dev, ctx.spec.warmup, ctx.spec.iters))
        ctx.record("bf16_weights", {"ms_per_clip": s2["median_ms"] / b, "min_ms_per_clip": s2["min_ms"] / b})


def sec_denoiser_compile(ctx: Ctx) -> None:
    import torch

    import benchlib as bl

    dev, cfg, b, spec = ctx.device, ctx.cfg(), ctx.spec.denoiser_batch, ctx.spec
    model = bl.build_avdit(cfg, dev).eval()
    x = bl.av_inputs(cfg, b, dev)
    if spec.compile_backend == "off":
        net, label = model, "off (smoke mode: the eager model through the same timing code)"
    else:
        import torch._dynamo

        torch._dynamo.reset()
        kwargs: dict[str, Any] = {"backend": spec.compile_backend}
        if spec.compile_backend == "inductor" and spec.compile_mode != "default":
            kwargs["mode"] = spec.compile_mode
        net, label = torch.compile(model, **kwargs), f"torch.compile({kwargs})"  # as train.compile does
    call = _denoiser_call(net, x, ctx.on_gpu, dev)
    t0 = time.perf_counter()
    call()
    bl.sync(dev)
    ctx.record("compile", label)
    ctx.record("first_call_s", time.perf_counter() - t0)
    bl.reset_peak(dev)
    s = bl.stats(bl.time_ms(call, dev, spec.warmup, spec.iters))
    ctx.record("compiled", {"ms_per_call": s["median_ms"], "ms_per_clip": s["median_ms"] / b,
                            "min_ms_per_clip": s["min_ms"] / b, "calls": s["n"], "batch": b,
                            "peak_gib": bl.peak_gib(dev)})
    if spec.compile_backend != "off":
        from torch._dynamo.utils import counters

        ctx.record("graph_breaks", {k: int(v) for k, v in counters["graph_break"].items()})
        ctx.record("unique_graphs", int(counters["stats"].get("unique_graphs", 0)))
    if ctx.want_profile(s["median_ms"] / b > GOAL_MS_PER_CLIP):
        ctx.add_profile("denoiser, compiled", bl.profile_table(call, dev, spec.profile_iters))


def sec_dit_vs_diffusers(ctx: Ctx) -> None:
    import torch
    from diffusers import DiTTransformer2DModel

    import benchlib as bl
    from avdit_cli.models.dit_loading import diffusers_config, diffusers_state_dict

    dev, cfg, spec = ctx.device, ctx.cfg(), ctx.spec
    dit = bl.build_dit(cfg, dev).eval()
    with torch.device(dev):
        ref = DiTTransformer2DModel.from_config(diffusers_config(dit))
    ref.load_state_dict(diffusers_state_dict(dit), strict=True)
    for block in ref.transformer_blocks:  # the original DiT's timestep frequencies (DESIGN section 2)
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    ref.to(dev).eval()
    _, c, h, w = cfg.data.video_latent_shape
    g = torch.Generator().manual_seed(0)

    def batch_of(n: int) -> tuple[Any, Any, Any]:
        return (torch.randn(n, c, h, w, generator=g).to(dev),
                torch.randint(0, cfg.diffusion.num_timesteps, (n,), generator=g).to(dev),
                torch.randint(0, cfg.model.num_classes, (n,), generator=g).to(dev))

    xs, ts, ys = batch_of(4)
    with torch.no_grad(), bl.full_fp32():
        ctx.record("parity_rel_err_fp32", bl.rel_err(dit(xs, ts, ys), ref(xs, timestep=ts, class_labels=ys).sample))
    X, T, Y = batch_of(spec.dit_batch)
    use_amp = ctx.on_gpu

    def ours() -> Any:
        with torch.no_grad(), bl.amp(dev, use_amp):
            return dit(X, T, Y)

    def theirs() -> Any:
        with torch.no_grad(), bl.amp(dev, use_amp):
            return ref(X, timestep=T, class_labels=Y).sample

    n = spec.dit_batch
    a = bl.stats(bl.time_ms(ours, dev, spec.warmup, spec.iters))
    r = bl.stats(bl.time_ms(theirs, dev, spec.warmup, spec.iters))
    ratio = a["median_ms"] / r["median_ms"]
    ctx.record("autocast", {"batch": n, "precision": "bf16 autocast" if use_amp else "fp32",
                            "ours_ms_per_image": a["median_ms"] / n, "diffusers_ms_per_image": r["median_ms"] / n,
                            "ratio": ratio})
    ctx.record("sdpa_kernels", {"ours": bl.sdpa_kernels(ours), "diffusers": bl.sdpa_kernels(theirs)})
    if ctx.want_profile(ratio > GOAL_RATIO):
        ctx.add_profile("DiT-XL/2 image forward, ours", bl.profile_table(ours, dev, spec.profile_iters))
        ctx.add_profile("DiT-XL/2 image forward, diffusers", bl.profile_table(theirs, dev, spec.profile_iters))
    if ctx.time_for(10, "the bf16-weights variant"):  # both models with their weights cast to bf16
        dit.to(torch.bfloat16)
        ref.to(torch.bfloat16)
        X = X.to(torch.bfloat16)  # diffusers' patch embedding takes its weights' dtype
        a = bl.stats(bl.time_ms(ours, dev, spec.warmup, spec.iters))
        r = bl.stats(bl.time_ms(theirs, dev, spec.warmup, spec.iters))
        ctx.record("bf16_weights", {"ours_ms_per_image": a["median_ms"] / n,
                                    "diffusers_ms_per_image": r["median_ms"] / n,
                                    "ratio": a["median_ms"] / r["median_ms"]})


def sec_train_step(ctx: Ctx) -> None:
    import benchlib as bl

    dev, spec = ctx.device, ctx.spec
    cfg = ctx.cfg("train.precision=bf16")
    rows: dict[str, Any] = {}
    for batch in spec.train_batches:
        for ckpt in (False, True):
            name = f"b{batch}-{'ckpt' if ckpt else 'plain'}"
            if not ctx.time_for(10, f"row {name}"):
                continue

            def missed(row: dict[str, Any], batch: int = batch, ckpt: bool = ckpt) -> bool:
                # profile the batch-8 rows (the goal's) and, in smoke mode, the first row
                goal_row = batch >= 8 or (spec.smoke and not ckpt)
                return goal_row and ctx.want_profile(not row.get("clips_per_s", 0) >= GOAL_TRAIN_CLIPS_S)

            row = bl.train_step_row(cfg, dev, batch, ckpt, spec.train_steps, spec.train_warmup,
                                    profile_if=missed, profile_iters=spec.profile_iters)
            table = row.pop("profile", None)
            if table:
                ctx.add_profile(f"training step {name}", table)
            rows[name] = row
            ctx.record("rows", rows)


def sec_generate(ctx: Ctx) -> None:
    import torch

    import benchlib as bl
    from avdit_cli.codecs import build_codecs
    from avdit_cli.config import Sampler
    from avdit_cli.data.media import write_mp4
    from avdit_cli.pipelines.generate import GenerateOptions, decode, generate

    spec, dev, cfg = ctx.spec, ctx.device, ctx.cfg()
    run = ensure_run(ctx)
    ensure_codecs(ctx)

    def once(num: int, steps: int, batch: int) -> Any:
        return generate(GenerateOptions(out_dir=ctx.work / "generated", num=num, checkpoint=run,
                                        sampler=Sampler.DPM_SOLVER, steps=steps, batch_size=batch, device=str(dev),
                                        overwrite=True))

    def measure(batch: int) -> dict[str, Any]:
        r = once(spec.gen_num, spec.gen_steps, batch)
        calls = spec.gen_steps * -(-spec.gen_num // batch)
        row = {"clips": spec.gen_num, "steps": spec.gen_steps, "batch": batch, "sampler": "dpm++",
               "total_s": r.seconds, "denoise_s": r.denoise_seconds, "decode_write_s": r.decode_seconds,
               "sample_decode_write_s": r.denoise_seconds + r.decode_seconds,
               "load_s": r.seconds - r.denoise_seconds - r.decode_seconds,
               "ms_per_denoiser_call": 1e3 * r.denoise_seconds / calls, "files": len(r.files)}
        ctx.record(f"b{batch}", row)
        return row

    # Warm-up, one clip and one step: CUDA kernels, cuDNN plans for the VAE decoder (it decodes 8 frames per call
    # whatever the batch), the first ffmpeg start. Model loading is in every call and reported apart.
    t0 = time.perf_counter()
    once(1, 1, 1)
    ctx.record("warmup_s", time.perf_counter() - t0)
    first, *more = spec.gen_batch_sizes
    row = measure(first)
    if ctx.want_profile(row["sample_decode_write_s"] > GOAL_GENERATE_S) and ctx.time_for(20, "the decode profile"):
        # The denoiser has its own section; this shows VAE decode, vocoder and mp4 writing of one batch.
        codecs = build_codecs(cfg, dev)
        g = torch.Generator().manual_seed(0)
        lat = {"video": torch.randn(first, *cfg.data.video_latent_shape, generator=g).to(dev),
               "audio": torch.randn(first, *cfg.data.audio_latent_shape, generator=g).to(dev)}
        folder = ctx.work / "profiled"

        def decode_write() -> None:
            frames, waves = decode(lat, codecs, cfg.data.clip_samples)
            for j in range(first):
                write_mp4(folder / f"{j}.mp4", frames[j], waves[j], cfg.data.fps, cfg.data.sample_rate)

        ctx.add_profile(f"generate: decode + vocoder + mp4 of one batch of {first}",
                        bl.profile_table(decode_write, dev, 1))
    if spec.gen_cli and ctx.time_for(45, "the cold CLI run"):
        argv = ["generate", "-n", str(spec.gen_num), "--run", str(run), "-o", str(ctx.work / "generated_cli"),
                "--sampler", "dpm++", "--steps", str(spec.gen_steps), "--overwrite"]
        ctx.record("cli_cold", launch_avdit(ctx, argv, torchrun=False))
    for batch in more:
        if ctx.time_for(35, f"generate with batch {batch}"):
            measure(batch)


def sec_preprocess(ctx: Ctx) -> None:
    import numpy as np
    import torch

    import benchlib as bl
    from avdit_cli.codecs import build_codecs
    from avdit_cli.data.clips import Clip
    from avdit_cli.pipelines.preprocess import encode_clips

    spec, dev, cfg = ctx.spec, ctx.device, ctx.cfg()
    ensure_codecs(ctx)
    codecs = build_codecs(cfg, dev)  # the dtype preprocess uses: bf16 VAEs on a GPU
    f, size, n = cfg.data.num_frames, cfg.data.frame_size, spec.encode_clips
    rng = np.random.default_rng(0)
    clips = [Clip(0.0, rng.integers(0, 256, (f, size, size, 3), dtype=np.uint8),
                  rng.uniform(-0.5, 0.5, cfg.data.clip_samples).astype(np.float32)) for _ in range(n)]
    s = bl.stats(bl.time_ms(lambda: encode_clips(clips, codecs, batch_size=16), dev, 1, max(2, spec.iters // 5)))
    whole_clips_s = n / (s["median_ms"] / 1e3)
    ctx.record("encode_clips", {"clips": n, "clips_per_s": whole_clips_s, "frames_per_s": whole_clips_s * f,
                                "dtype": str(codecs.video.dtype).replace("torch.", "")})

    frames = torch.rand(min(n * f, 256), 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
    vae_rows: dict[str, float] = {}
    default_chunk = codecs.video.batch_size
    for chunk in spec.encode_chunks:
        codecs.video.batch_size = chunk
        s = bl.stats(bl.time_ms(lambda: codecs.video.encode(frames), dev, 1, max(2, spec.iters // 5)))
        vae_rows[f"chunk{chunk}"] = len(frames) / (s["median_ms"] / 1e3)
    ctx.record("sd_vae_frames_per_s", vae_rows)
    ctx.record("sd_vae_default_chunk", default_chunk)
    goal_fps = vae_rows.get(f"chunk{default_chunk}", max(vae_rows.values()))
    if ctx.want_profile(goal_fps < GOAL_VAE_FPS):
        codecs.video.batch_size = default_chunk
        ctx.add_profile(f"SD-VAE encode, chunks of {default_chunk}",
                        bl.profile_table(lambda: codecs.video.encode(frames[: default_chunk * 2]), dev,
                                         spec.profile_iters))
    if ctx.time_for(10, "the channels-last variant"):  # variant: NHWC convolutions
        codecs.video.vae.to(memory_format=torch.channels_last)
        codecs.video.batch_size = max(spec.encode_chunks)
        cl = frames.contiguous(memory_format=torch.channels_last)
        s = bl.stats(bl.time_ms(lambda: codecs.video.encode(cl), dev, 1, max(2, spec.iters // 5)))
        ctx.record("sd_vae_channels_last_frames_per_s", {f"chunk{max(spec.encode_chunks)}":
                                                         len(frames) / (s["median_ms"] / 1e3)})
    codecs.video.batch_size = default_chunk

    wave = torch.rand(n, cfg.data.clip_samples, generator=torch.Generator().manual_seed(1)).to(dev) - 0.5
    s = bl.stats(bl.time_ms(lambda: codecs.audio.encode(codecs.mel(wave)), dev, 1, max(2, spec.iters // 5)))
    ctx.record("audio_vae_clips_per_s", n / (s["median_ms"] / 1e3))

    # Decoding: can ffmpeg workers (threads driving ffmpeg processes, preprocess's default) feed the encoder?
    files = ensure_videos(ctx)
    decode: dict[str, Any] = {"source": f"{len(files)} synthetic H.264 files, {spec.decode_source_size}^2 30 fps, "
                                        f"{spec.decode_seconds} s each", "workers": {}}
    for w in spec.decode_workers:
        if not ctx.time_for(8, f"decoding with {w} workers"):
            break
        clips_n, seconds, _ = bl.bench_decode(files, w, "thread", cfg)
        decode["workers"][str(w)] = {"clips_per_s": clips_n / seconds, "frames_per_s": clips_n * f / seconds}
        ctx.record("decode", decode)
    need = whole_clips_s * f
    enough = [int(w) for w, r in decode["workers"].items() if r["frames_per_s"] >= need]
    ctx.record("decode_keeps_up", {"encode_frames_per_s": need, "keeps_up": bool(enough),
                                   "fewest_workers": min(enough) if enough else None})
    if ctx.time_for(15, "preprocess end to end"):
        cache, clips_s = ensure_cache(ctx)
        if clips_s is not None:
            ctx.record("preprocess_end_to_end_clips_per_s", clips_s)


def sec_precision(ctx: Ctx) -> None:
    import torch

    import benchlib as bl
    from avdit_cli.diffusion import Diffusion, sample
    from avdit_cli.pipelines.generate import CHANNEL_DIMS

    spec, dev, cfg = ctx.spec, ctx.device, ctx.cfg()
    model = bl.build_avdit(cfg, dev, seed=1).eval()
    x = bl.av_inputs(cfg, spec.precision_batch, dev, seed=2)

    def out(dtype: Any = None, bf16: bool = False) -> dict[str, Any]:
        with torch.no_grad(), bl.full_fp32(), bl.amp(dev, bf16):
            cast = (lambda v: v.to(dtype)) if dtype is not None else (lambda v: v)
            o = model(cast(x["video"]), cast(x["audio"]), x["t"])
        return {k: v.double() for k, v in o.items()}

    o32, obf = out(), out(bf16=True)
    model.double()
    o64 = out(torch.float64)
    model.float()
    ctx.record("denoiser", {m: {"bf16_vs_fp32": bl.rel_err(obf[m], o32[m]), "fp32_vs_fp64": bl.rel_err(o32[m], o64[m]),
                                "bf16_vs_fp64": bl.rel_err(obf[m], o64[m])} for m in ("video", "audio")})
    if not ctx.time_for(10, "the DDIM sample comparison"):
        return
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    f, c, h, w = cfg.data.video_latent_shape
    shapes = {"video": (spec.precision_batch, f, c, h, w), "audio": (spec.precision_batch, *cfg.data.audio_latent_shape)}

    def draw(bf16: bool) -> dict[str, Any]:
        def model_fn(xx: dict[str, Any], tt: dict[str, Any]) -> dict[str, Any]:  # as generate's, autocast or not
            with bl.amp(dev, bf16):
                o = model(xx["video"], xx["audio"], tt["video"], tt["audio"])
            return {k: v.float() for k, v in o.items()}

        gens = [torch.Generator().manual_seed(100 + i) for i in range(spec.precision_batch)]
        with bl.full_fp32():
            return sample(model_fn, shapes, CHANNEL_DIMS, diffusion, sampler="ddim", steps=spec.precision_steps,
                          generator=gens, device=dev)

    s32, sbf = draw(False), draw(True)
    ctx.record(f"ddim{spec.precision_steps}", {m: {"bf16_vs_fp32": bl.rel_err(sbf[m], s32[m]),
                                                   "fp32_std": float(s32[m].double().std())} for m in s32})


def sec_nccl(ctx: Ctx) -> None:
    import torch

    spec = ctx.spec
    ctx.record("probe", launch_probe(ctx))  # first: cheap, and independent of the finetune's inputs
    bb = backbone_folder(ctx)
    cache, _ = ensure_cache(ctx)
    if ctx.on_gpu:
        torch.cuda.empty_cache()
    sets = [*spec.overrides, f"model.backbone_path={bb}", f"train.steps={spec.nccl_steps}",
            f"train.batch_size={spec.nccl_batch}", "train.checkpoint_every=2", "train.log_every=1",
            "train.num_workers=0", "train.precision=bf16"]
    argv = ["finetune", "--preset", "aist", "--cache", str(cache), "--name", "nccl", "--no-tensorboard"]
    for kv in sets:
        argv += ["--set", kv]
    first = launch_avdit(ctx, argv, torchrun=True)
    ctx.record("finetune", first)
    run = Path(os.environ["AVDIT_RUNS"]) / "nccl"
    ctx.record("runs", False)
    if first["rc"] == 0 and ctx.time_for(20, "the resume"):
        resumed = spec.nccl_steps + 2
        second = launch_avdit(ctx, ["finetune", "--resume", str(run), "--set", f"train.steps={resumed}",
                                    "--no-tensorboard"], torchrun=True)
        ctx.record("resume", second)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        ctx.record("metrics_steps", steps)
        ctx.record("runs", second["rc"] == 0 and steps == list(range(1, resumed + 1))
                   and all(r["loss"] == r["loss"] for r in rows))  # no NaN
        ctx.record("peak_mem_gib", max((r.get("peak_mem_gib", 0.0) for r in rows), default=None))
    ctx.note("world size 1: avdit's distributed.py creates no process group, so finetune ran without DDP; "
             "the probe is what exercises NCCL")


def launch_avdit(ctx: Ctx, argv: list[str], torchrun: bool) -> dict[str, Any]:
    """Run an `avdit` command line: in a fresh process (under torchrun --nproc-per-node 1 when asked), or, in
    the smoke mode, in this process through the Typer app. Returns its exit code, seconds and output's tail."""
    t0 = time.perf_counter()
    if ctx.spec.isolate == "inline":
        from typer.testing import CliRunner

        from avdit_cli.cli.app import app

        result = CliRunner().invoke(app, argv)
        tail = result.output[-1500:]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            tail += "\n" + "".join(traceback.format_exception(result.exception))[-1500:]
        return {"rc": result.exit_code, "seconds": time.perf_counter() - t0, "how": "in-process (smoke)",
                "tail": tail}
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"] if torchrun \
        else [sys.executable]
    cmd = [*prefix, "-m", "avdit_cli", *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, ctx.left() - 5))
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2500:]
    except subprocess.TimeoutExpired as err:
        rc, tail = 124, f"timed out after {err.timeout:.0f} s"
    return {"rc": rc, "seconds": time.perf_counter() - t0, "how": " ".join(cmd[:8]) + " ...", "tail": tail}


def launch_probe(ctx: Ctx) -> dict[str, Any]:
    """The NCCL probe under torchrun (gloo and in this process in the smoke mode)."""
    result = ctx.work / "probe.json"
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if ctx.spec.isolate == "inline":
        store = ctx.work / "pg_store"
        store.unlink(missing_ok=True)
        write_json(result, nccl_probe(f"file://{store}"))
        return {**json.loads(result.read_text()), "seconds": time.perf_counter() - t0, "how": "in-process (smoke)"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", __file__,
           "--nccl-probe", str(result)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, ctx.left() - 5))
        tail = (proc.stdout + proc.stderr)[-1500:]
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc, tail = 124, "timed out"
    found = json.loads(result.read_text()) if result.is_file() else {}
    return {**found, "rc": rc, "seconds": time.perf_counter() - t0, "tail": tail if rc else ""}


def nccl_probe(init_method: str = "env://") -> dict[str, Any]:
    """One rank: a process group (NCCL on a GPU, gloo on a CPU), an all-reduce, a DDP backward, a gather."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = torch.cuda.is_available()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        x = torch.full((1024,), float(rank + 1), device=dev)
        dist.all_reduce(x)
        torch.manual_seed(0)
        net = DistributedDataParallel(torch.nn.Linear(64, 64).to(dev), device_ids=[dev.index] if cuda else None)
        net(torch.randn(8, 64, device=dev)).square().mean().backward()
        grad_ok = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, {"rank": rank})
        dist.barrier()
        return {"ok": bool(x[0].item() == world * (world + 1) / 2) and grad_ok, "backend": backend,
                "world_size": world, "nccl": nccl_version() if cuda else None}
    finally:
        dist.destroy_process_group()


SECTIONS: dict[str, Callable[[Ctx], None]] = {
    "env": sec_env, "denoiser": sec_denoiser, "denoiser_compile": sec_denoiser_compile,
    "dit_vs_diffusers": sec_dit_vs_diffusers, "train_step": sec_train_step, "generate": sec_generate,
    "preprocess": sec_preprocess, "precision": sec_precision, "nccl": sec_nccl,
}


# ----------------------------------------------------------------------------------------------------------
# Running sections: in this process, or each in its own (time box, failure isolation)
# ----------------------------------------------------------------------------------------------------------
def run_section(name: str, spec: Spec, work: Path, deadline: float, result_path: Path | None) -> dict[str, Any]:
    """Run one section here; its exception is recorded (type, message, traceback tail), never raised."""
    ctx = Ctx(name, spec, work, deadline, result_path)
    t0 = time.perf_counter()
    try:
        SECTIONS[name](ctx)
        ctx.result["status"] = "ok"
    except Exception as err:  # failure isolation: the suite goes on with the next section
        ctx.result["status"] = "error"
        ctx.result["error"] = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
        ctx.result["traceback"] = traceback.format_exc()[-3000:]
    ctx.result["seconds"] = time.perf_counter() - t0
    ctx.flush()
    return ctx.result


def run_isolated(name: str, spec_file: Path, work: Path, timeout: float, log: Path) -> dict[str, Any]:
    """Run one section in a child process of its own session, killed (with its children: torchrun, compile
    workers) when it outlives `timeout`. Partial figures written before that are kept."""
    result = work / "results" / f"{name}.json"
    result.unlink(missing_ok=True)
    deadline = time.time() + timeout
    cmd = [sys.executable, __file__, "--child", name, "--spec-file", str(spec_file), "--work", str(work),
           "--deadline", repr(deadline), "--result", str(result)]
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n===== {name} (time box {timeout:.0f} s) =====\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    try:
        res = json.loads(result.read_text())
    except (OSError, ValueError):
        res = {"status": "error", "figures": {}, "notes": [], "profiles": {}}
    res["seconds"] = time.perf_counter() - t0
    if timed_out:
        res["status"] = "timeout"
        res["error"] = f"killed at its time box of {timeout:.0f} s (partial figures kept)"
    elif res.get("status") in ("running", None) or (proc.returncode != 0 and res.get("status") == "ok"):
        res["status"] = "error"
        res.setdefault("error", f"the section's process died with exit status {proc.returncode}; see sections.log")
    return res


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (it started a session of its own), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def setup_env(work: Path) -> None:
    """Point avdit's folders and the Hugging Face cache into the work folder (children inherit it); offline."""
    for sub in ("results", "hub", "home", "runs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update({"HF_HUB_CACHE": str(work / "hub"), "HF_HUB_OFFLINE": "1", "AVDIT_HOME": str(work / "home"),
                       "AVDIT_RUNS": str(work / "runs"), "PYTHONUNBUFFERED": "1",
                       "DIFFUSERS_VERBOSITY": "error"})  # no "install accelerate" advice in every log
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]  # children import avdit_cli from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def run_suite(spec: Spec, names: list[str], out: Path, work: Path, budget: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    setup_env(work)
    spec_file = work / "spec.json"
    write_json(spec_file, dataclasses.asdict(spec))
    log = out / "sections.log"
    if spec.isolate == "process":
        log.write_text("")
    started = time.time()
    suite: dict[str, Any] = {"meta": meta(spec, budget, started), "sections": {}}
    for i, name in enumerate(names):
        left = budget - (time.time() - started)
        if left < MIN_START_S:
            suite["sections"][name] = {"status": "skipped", "figures": {}, "notes": [], "profiles": {},
                                       "error": f"not started: {max(0.0, left):.0f} s of the {budget:.0f} s budget "
                                                f"left (a section needs {MIN_START_S:.0f} s)"}
            write_outputs(suite, out)
            continue
        held_back = sum(spec.floors.get(later, 0.0) for later in names[i + 1:])
        timeout = min(spec.caps.get(name, 60.0), left, max(spec.floors.get(name, MIN_START_S), left - held_back))
        print(f"[gpu_suite] {name}: time box {timeout:.0f} s", flush=True)
        if spec.isolate == "process":
            res = run_isolated(name, spec_file, work, timeout, log)
        else:
            res = run_section(name, spec, work, time.time() + timeout, work / "results" / f"{name}.json")
        suite["sections"][name] = res
        suite["meta"]["seconds"] = time.time() - started
        write_outputs(suite, out)
        print(f"[gpu_suite] {name}: {res['status']} in {res.get('seconds', 0):.1f} s"
              + (f" - {res['error']}" if res.get("error") else ""), flush=True)
    print(render_table(suite))
    return 0 if all(s["status"] == "ok" for s in suite["sections"].values()) else 1


def meta(spec: Spec, budget: float, started: float) -> dict[str, Any]:
    return {"suite": "avdit GPU suite", "mode": "cpu-smoke (tiny sizes)" if spec.smoke else "real sizes",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)), "budget_s": budget,
            "spec": dataclasses.asdict(spec), "host": platform.node(), "argv": sys.argv[1:]}


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------
def _get(suite: dict[str, Any], section: str, *path: str) -> Any:
    node: Any = suite["sections"].get(section, {}).get("figures", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(v: Any, digits: int = 2) -> str:
    """A table cell: `digits` decimals, or 3 significant digits in scientific notation when digits < 0."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if digits < 0:
            return f"{v:.2e}"
        return f"{v:.{digits}f}" if abs(v) >= 10.0**-digits or v == 0 else f"{v:.2e}"
    return str(v)


def _verdict(v: Any, goal: tuple[str, float] | None) -> str:
    if goal is None:
        return "report"
    if v is None or (isinstance(v, float) and v != v):
        return "not measured"
    op, target = goal
    ok = v <= target if op == "<=" else v >= target if op == ">=" else bool(v)
    return "met" if ok else "MISSED"


def table_rows(suite: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, verdict) rows, in the issue's order."""
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, value: Any, goal: tuple[str, float] | None = None, text: str | None = None,
            digits: int = 2) -> None:
        goal_text = "report" if goal is None else (f"{goal[0].replace('<=', '≤').replace('>=', '≥')} {goal[1]:g}"
                                                   if goal[0] in ("<=", ">=") else goal[0])
        rows.append((label, text if text is not None else _num(value, digits), goal_text, _verdict(value, goal)))

    s = suite
    b = _get(s, "denoiser", "eager", "batch") or 8
    add(f"AV-DiT denoiser, eager, {_get(s, 'denoiser', 'eager', 'precision') or 'bf16'}, batch {b}: ms/clip",
        _get(s, "denoiser", "eager", "ms_per_clip"), ("<=", GOAL_MS_PER_CLIP))
    add("… variant, weights cast to bf16: ms/clip", _get(s, "denoiser", "bf16_weights", "ms_per_clip"))
    floor = _get(s, "denoiser", "floor_ms_per_clip")
    add("… FLOP floor / achieved rate", floor, text=f"{_num(floor)} ms/clip at {_num(_get(s, 'denoiser', 'floor_at_tflops'), 0)}"
        f" TFLOP/s; {_num(_get(s, 'denoiser', 'achieved_tflops'), 1)} TFLOP/s achieved" if floor is not None else None)
    add("… SDPA kernels in one forward", None, text=json.dumps(_get(s, "denoiser", "sdpa_kernels")) if
        _get(s, "denoiser", "sdpa_kernels") is not None else "–")
    add("AV-DiT denoiser, torch.compile (train.compile): ms/clip", _get(s, "denoiser_compile", "compiled", "ms_per_clip"),
        ("<=", GOAL_MS_PER_CLIP))
    add("… compile: first call s; graph breaks", _get(s, "denoiser_compile", "first_call_s"),
        text=f"{_num(_get(s, 'denoiser_compile', 'first_call_s'), 1)} s; "
             f"{sum((_get(s, 'denoiser_compile', 'graph_breaks') or {}).values())} graph breaks"
        if _get(s, "denoiser_compile", "first_call_s") is not None else None)
    n = _get(s, "dit_vs_diffusers", "autocast", "batch") or 128
    ours, theirs = (_get(s, "dit_vs_diffusers", "autocast", k) for k in ("ours_ms_per_image", "diffusers_ms_per_image"))
    add(f"DiT-XL/2 image forward, batch {n}: ours / diffusers ms per image", ours,
        text=f"{_num(ours, 3)} / {_num(theirs, 3)}" if ours is not None else None)
    add("… ratio ours / diffusers", _get(s, "dit_vs_diffusers", "autocast", "ratio"), ("<=", GOAL_RATIO), digits=3)
    add("… ratio with both models' weights in bf16", _get(s, "dit_vs_diffusers", "bf16_weights", "ratio"), digits=3)
    add("… parity, float32 relative error", _get(s, "dit_vs_diffusers", "parity_rel_err_fp32"), digits=-1)
    for name, row in (_get(s, "train_step", "rows") or {}).items():
        goal = (">=", GOAL_TRAIN_CLIPS_S) if row.get("batch", 0) >= 8 else None  # the goal is at batch 8
        add(f"adapter training step {name} ({row.get('precision')}): clips/s; peak GiB", row.get("clips_per_s"), goal,
            text=f"{_num(row.get('clips_per_s'), 1)}; {_num(row.get('peak_gib'), 1)} {row.get('peak_kind', '')}"
                 + (f" ({row['note']})" if row.get("note") else ""))
    gen_keys = [k for k in s["sections"].get("generate", {}).get("figures", {}) if k[:1] == "b" and k[1:].isdigit()]
    for key in sorted(gen_keys, key=lambda k: int(k[1:])):
        g = _get(s, "generate", key)
        add(f"avdit generate -n {g['clips']}, DPM-Solver++ {g['steps']}, batch {g['batch']}: s (sample + decode + mp4)",
            g["sample_decode_write_s"], ("<=", GOAL_GENERATE_S),
            text=f"{_num(g['sample_decode_write_s'])} (denoise {_num(g['denoise_s'])}, decode+write "
                 f"{_num(g['decode_write_s'])}; loading {_num(g['load_s'])} more)")
    cli = _get(s, "generate", "cli_cold")
    if cli is not None:
        add("… cold `python -m avdit_cli generate` wall s", cli.get("seconds"),
            text=f"{_num(cli.get('seconds'), 1)} (exit {cli.get('rc')})")
    chunk = _get(s, "preprocess", "sd_vae_default_chunk") or 8
    vae = _get(s, "preprocess", "sd_vae_frames_per_s") or {}
    add(f"SD-VAE encode {_get(s, 'preprocess', 'encode_clips', 'dtype') or ''} 256², as preprocess (chunks of {chunk}): frames/s",
        vae.get(f"chunk{chunk}"), (">=", GOAL_VAE_FPS), digits=0)
    for k, v in vae.items():
        if k != f"chunk{chunk}":
            add(f"… chunks of {k[5:]}: frames/s", v, digits=0)
    for k, v in (_get(s, "preprocess", "sd_vae_channels_last_frames_per_s") or {}).items():
        add(f"… channels-last, chunks of {k[5:]}: frames/s", v, digits=0)
    add("AudioLDM VAE encode (mel front end included): clips/s", _get(s, "preprocess", "audio_vae_clips_per_s"), digits=0)
    add("encode_clips (video + audio, host side included): frames/s", _get(s, "preprocess", "encode_clips", "frames_per_s"),
        digits=0)
    for w, r in ((_get(s, "preprocess", "decode") or {}).get("workers") or {}).items():
        add(f"ffmpeg decode, {w} thread worker(s): frames/s", r["frames_per_s"], digits=0)
    keeps = _get(s, "preprocess", "decode_keeps_up")
    add("… decoders keep up with encode_clips", keeps["keeps_up"] if keeps else None, ("yes", 1),
        text=(f"{_num(keeps['keeps_up'])} (fewest workers: {keeps['fewest_workers']})" if keeps else None))
    add(f"preprocess() end to end on {s['meta']['spec'].get('cache_files')} files (decode + encode + shards): clips/s",
        _get(s, "preprocess", "preprocess_end_to_end_clips_per_s"), digits=1)
    for m in ("video", "audio"):
        d = _get(s, "precision", "denoiser", m)
        add(f"denoiser output, {m}: rel. error bf16 vs fp32 (fp32 vs fp64)", d["bf16_vs_fp32"] if d else None,
            text=f"{_num(d['bf16_vs_fp32'], -1)} ({_num(d['fp32_vs_fp64'], -1)})" if d else None)
    steps = s["meta"]["spec"].get("precision_steps", 25)
    for m in ("video", "audio"):
        d = _get(s, "precision", f"ddim{steps}", m)
        add(f"one DDIM-{steps} sample, {m}: rel. error bf16 vs fp32", d["bf16_vs_fp32"] if d else None, digits=-1)
    ft = _get(s, "nccl", "finetune")
    add("torchrun --nproc-per-node 1 finetune, then --resume", _get(s, "nccl", "runs"), ("runs", 1),
        text=(f"{_num(_get(s, 'nccl', 'runs'))} (steps {_get(s, 'nccl', 'metrics_steps')}, "
              f"{_num(ft.get('seconds'), 1)} s + {_num((_get(s, 'nccl', 'resume') or {}).get('seconds'), 1)} s)")
        if ft else None)
    probe = _get(s, "nccl", "probe")
    add("NCCL all-reduce + DDP backward (torchrun, 1 rank)", probe.get("ok") if probe else None, ("runs", 1),
        text=f"{_num(probe.get('ok'))} ({probe.get('backend')} {probe.get('nccl') or ''})" if probe else None)
    return rows


def header(suite: dict[str, Any]) -> str:
    env = _get(suite, "env", "env") or {}
    m = suite["meta"]
    card = env.get("card") or "card unknown (the env section did not run)"
    if env.get("capability"):
        card += f" (sm {env['capability']}, {env.get('sms')} SMs, {env.get('memory_gib')} GiB)"
    versions = env.get("versions") or {}
    parts = [f"card: {card}", f"driver: {env.get('driver') or '–'}", f"torch {env.get('torch', '?')}",
             f"CUDA {env.get('cuda') or '–'}", f"cuDNN {env.get('cudnn') or '–'}",
             f"diffusers {versions.get('diffusers') or '–'}", f"python {env.get('python', '?')}"]
    ceil = f"measured ceilings: bf16 matmul {_num(_get(suite, 'env', 'matmul_tflops'), 0)} TFLOP/s, copy " \
           f"{_num(_get(suite, 'env', 'copy_tb_per_s'))} TB/s"
    return (f"# avdit GPU suite — {m['mode']}\n\n" + " · ".join(parts) + "\n\n" + ceil + "\n\n"
            f"started {m['started']}, budget {m['budget_s']:.0f} s, used {m.get('seconds', 0):.0f} s\n")


def render_table(suite: dict[str, Any]) -> str:
    lines = [header(suite), "| figure | value | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows(suite)]
    lines += ["", "| section | status | seconds | note |", "|---|---|---:|---|"]
    for name, res in suite["sections"].items():
        note = res.get("error") or "; ".join(res.get("notes", []))[:200]
        lines.append(f"| {name} | {res['status']} | {res.get('seconds', 0):.1f} | {note.replace('|', '/')} |")
    sdpa = _get(suite, "env", "sdpa")
    if sdpa:
        lines += ["", "SDPA backends per attention shape (chosen by default; ms of each backend forced alone):", "",
                  "| attention | shape (b, heads, tokens, d) | chosen | default ms | flash | mem-efficient | cudnn | math |",
                  "|---|---|---|---:|---|---|---|---|"]
        for name, r in sdpa.items():
            cells = [str(r.get(k)) if not str(r.get(k)).startswith("unavailable") else "unavailable"
                     for k in ("flash", "mem-efficient", "cudnn", "math")]
            lines.append(f"| {name} | {tuple(r['shape'])} | {json.dumps(r['chosen'])} | {_num(r['default_ms'], 3)} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(suite: dict[str, Any], out: Path) -> None:
    profiles = []
    for name, res in suite["sections"].items():
        for label, table in (res.get("profiles") or {}).items():
            profiles.append(f"===== {name}: {label} =====\n{table}\n")
    lean = {**suite, "sections": {k: {**v, "profiles": sorted(v.get("profiles") or {})}
                                  for k, v in suite["sections"].items()}}
    write_json(out / "gpu_suite.json", lean)
    (out / "gpu_suite.md").write_text(render_table(suite))
    (out / "profiles.txt").write_text("\n".join(profiles) if profiles else "no profile was taken\n")


# ----------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on a CPU: every code path, in seconds")
    ap.add_argument("--out", type=Path, default=Path("gpu_suite_out"), help="folder for the JSON, table, profiles")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder, removed)")
    ap.add_argument("--budget", type=float, default=None, help="global seconds [450 real, 300 smoke]")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), default=None, help="run these sections only")
    ap.add_argument("--skip", nargs="+", choices=list(SECTIONS), default=(), help="leave these sections out")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default=None,
                    help="torch.profiler top-k tables: for figures that miss their goal [auto; smoke: always]")
    ap.add_argument("--isolate", choices=("process", "inline"), default=None,
                    help="each section in its own process (time box, crash isolation) or inline "
                         "[process; smoke: inline]")
    ap.add_argument("--device", default=None, help="CUDA device [cuda]")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per figure [20; smoke 2]")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend [inductor; smoke: off]")
    ap.add_argument("--compile-mode", default="default",
                    help="inductor mode: default (what train.compile uses), reduce-overhead, max-autotune...")
    ap.add_argument("--decode-source-size", type=int, default=None,
                    help="square size of the synthetic source videos decoded [512; smoke 64]")
    ap.add_argument("--caps", nargs="+", default=(), metavar="SECTION=SECONDS",
                    help="change sections' time caps, e.g. denoiser_compile=240")
    ap.add_argument("--list", action="store_true", help="list the sections with their time caps and exit")
    # internal
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec-file", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--nccl-probe", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nccl_probe is not None:  # under torchrun
        write_json(args.nccl_probe, nccl_probe())
        return 0
    if args.child is not None:
        raw = json.loads(args.spec_file.read_text())
        spec = Spec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})  # JSON lists -> tuples
        res = run_section(args.child, spec, args.work, args.deadline, args.result)
        return 0 if res["status"] == "ok" else 1
    if args.profile is None:
        args.profile = "always" if args.cpu_smoke else "auto"
    spec = smoke_spec(args) if args.cpu_smoke else real_spec(args)
    for item in args.caps:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--caps: got {item!r}, expected SECTION=SECONDS with SECTION one of {', '.join(SECTIONS)}")
        spec.caps[name] = float(seconds)
    if args.list:
        for name in SECTIONS:
            print(f"{name:<18} cap {spec.caps[name]:.0f} s")
        return 0
    if not spec.smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device is visible: this suite needs a GPU (--cpu-smoke runs tiny sizes on a CPU)")
    names = [n for n in (args.only or SECTIONS) if n not in set(args.skip)]
    budget = args.budget if args.budget is not None else (300.0 if spec.smoke else 450.0)
    own_work = args.work is None
    work = Path(tempfile.mkdtemp(prefix="avdit-gpu-suite-")) if own_work else args.work
    try:
        return run_suite(spec, names, args.out, work, budget)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
