"""`avdit finetune`: train the AV-DiT adapters (or, in `pretrain` mode, a whole small image DiT).

Determinism: every random draw of a step (diffusion timestep, noise, label dropout) comes from a generator
seeded by (train.seed, step, global sample index), and the data order of an epoch from (train.seed, epoch).
So a run resumed from step k replays steps k+1.. exactly, and a batch split over N ranks draws the same
numbers as one process: the step number is the whole RNG state.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from avdit_cli import __version__
from avdit_cli.config import Config, Precision, TrainMode, to_yaml
from avdit_cli.data.cache import LatentCache
from avdit_cli.diffusion import Diffusion, training_losses
from avdit_cli.errors import ConfigError, TrainingError, WeightsError
from avdit_cli.models import AVDiT, DiT
from avdit_cli.paths import default_cache_dir
from avdit_cli.pipelines.distributed import DistContext, dist_context
from avdit_cli.pipelines.optim import EMA, lr_at
from avdit_cli.pipelines.runs import (
    append_metrics,
    load_checkpoint,
    new_run_dir,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
    truncate_metrics,
)

@dataclass
class StepInfo:
    step: int
    total: int
    loss: float
    losses: dict[str, float]
    lr: float
    grad_norm: float
    clips_per_s: float
    peak_mem_gib: float


@dataclass
class FinetuneResult:
    run_dir: Path
    step: int
    interrupted: bool
    checkpoint: Path | None
    history: list[StepInfo] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------
def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, 0xDA7A, epoch)))


# ----------------------------------------------------------------------------------------------------------
# Signals: Ctrl-C / SIGTERM finish the current step, save, and stop
# ----------------------------------------------------------------------------------------------------------
class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------------------------------------
# Building the model
# ----------------------------------------------------------------------------------------------------------
def load_backbone(cfg: Config, device: torch.device) -> tuple[DiT, dict[str, Any]]:
    """The frozen backbone and its reference (repo id or path + sha256) for checkpoints."""
    from avdit_cli.hub import backbone_path  # the local file/folder `avdit download` fetched

    path = Path(cfg.model.backbone_path) if cfg.model.backbone_path else backbone_path(cfg)
    backbone, report = DiT.from_pretrained(path, device=device)
    ref = {"repo": cfg.model.backbone_repo or None, "path": str(path), "format": report.format,
           "sha256": report.sha256()}
    m = cfg.model
    expect = {"hidden_size": m.hidden_size, "depth": m.depth, "patch_size": m.patch_size}
    got = {k: report.arch[k] for k in expect}
    if got != expect:
        raise WeightsError(f"the backbone at {path} has {got} but the config says {expect}; "
                           "use the matching preset or set model.* to the backbone's size")
    return backbone, ref


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.train.precision is Precision.BF16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def finetune(
    cfg: Config,
    cache_dir: Path | None = None,
    run_name: str | None = None,
    run_dir: Path | None = None,
    resume: Path | None = None,
    device: str | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Train for `cfg.train.steps` optimiser steps (continuing from `resume`, a run or checkpoint folder)."""
    ctx = dist_context()
    dev = torch.device(device or ctx.default_device())
    log = on_log or (lambda msg: None)
    pretrain = cfg.train.mode is TrainMode.PRETRAIN

    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        saved = ckpt.config
        if saved.model != cfg.model or saved.data != cfg.data or saved.diffusion != cfg.diffusion:
            raise ConfigError("--resume: the model, data and diffusion settings must equal the run's; "
                              "only train.* may change (e.g. train.steps to train longer)")
        run_dir = ckpt.path.parent.parent

    global_batch = cfg.train.batch_size
    per_rank, rem = divmod(global_batch, ctx.world_size * cfg.train.grad_accum)
    if rem or per_rank == 0:
        raise ConfigError(f"train.batch_size: got {global_batch}, expected a multiple of ranks x grad_accum "
                          f"({ctx.world_size} x {cfg.train.grad_accum})")

    dataset = LatentCache(cache_dir or default_cache_dir(cfg), hflip=cfg.data.hflip, seed=cfg.train.seed,
                          expect={"config_hash": cfg.hash("data")})
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size: got {global_batch}, but the cache holds only {len(dataset)} clips; "
                          "lower train.batch_size or preprocess more data")

    torch.manual_seed(derived_seed(cfg.train.seed, 0x1417))  # weight init of new modules
    model, backbone_ref = _build(cfg, dev, pretrain)
    trainable = dict(_trainable(model, pretrain))
    n_train = sum(p.numel() for p in trainable.values())
    n_total = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_train:,} trainable of {n_total:,} ({100 * n_train / max(1, n_total):.2f}%)")
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ema = EMA(trainable, cfg.train.ema_decay)
    start = 0
    if ckpt is not None:
        _load_trained(model, ckpt.model, pretrain)
        ema.load_state_dict(ckpt.ema)
        optimizer_from_tensors(optimizer, ckpt.optim, ckpt.state["optimizer"])
        start = ckpt.step
        log(f"resumed from {ckpt.path} at step {start}")
    if ctx.is_main:
        if run_dir is None:
            run_dir = new_run_dir(cfg, run_name)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        if ckpt is not None:
            truncate_metrics(run_dir, start)
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    net: nn.Module = model
    if cfg.train.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    if ctx.distributed:
        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)

    def state_json(step: int) -> dict[str, Any]:
        _, optim_meta = optimizer_to_tensors(optimizer)
        return {"config": cfg.to_dict(), "mode": cfg.train.mode.value, "backbone": backbone_ref,
                "seed": cfg.train.seed, "epoch": step // steps_per_epoch, "optimizer": optim_meta,
                "avdit_version": __version__, "torch_version": torch.__version__,
                "world_size": ctx.world_size, "trainable_params": n_train}

    def save(step: int) -> Path | None:
        if not ctx.is_main:
            return None
        optim_tensors, _ = optimizer_to_tensors(optimizer)
        path = save_checkpoint(run_dir, step, _trained_state(model, pretrain), ema.state_dict(), optim_tensors,
                               state_json(step), cfg.train.keep)
        if pretrain:
            _export_backbone(model, ema, run_dir / "backbone")
        return path

    history: list[StepInfo] = []
    last_ckpt: Path | None = ckpt.path if ckpt is not None else None
    step = start
    t_last, clips_since = time.perf_counter(), 0
    interrupted = False
    model.train()
    with StopFlag() as stop:
        batches = _batches(dataset, cfg, ctx, start, steps_per_epoch, per_rank)
        while step < cfg.train.steps:
            lr = lr_at(step, cfg.train)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for micro in range(cfg.train.grad_accum):
                batch, index = next(batches)
                sync = micro == cfg.train.grad_accum - 1
                with (contextlib.nullcontext() if sync or not ctx.distributed else net.no_sync()):  # type: ignore[union-attr]
                    losses = _step_losses(net, diffusion, cfg, batch, index, step, dev, pretrain)
                    loss = losses["loss"] / cfg.train.grad_accum
                    if not torch.isfinite(loss.detach()):
                        raise TrainingError(
                            f"the loss became {loss.item()} at step {step + 1}; stopped without saving it. "
                            f"The last good checkpoint is {last_ckpt or 'none (no checkpoint yet)'}; "
                            "check the data or lower train.lr, then --resume"
                        )
                    loss.backward()
                for k, v in losses.items():
                    if v.dim() == 0:
                        totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.train.grad_accum
            max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(trainable.values()), max_norm))
            optimizer.step()
            ema.update()
            step += 1
            clips_since += global_batch
            if step % cfg.train.log_every == 0 or step == cfg.train.steps or step == start + 1:
                now = time.perf_counter()
                info = StepInfo(step, cfg.train.steps, totals.get("loss", float("nan")),
                                {k: v for k, v in totals.items() if k != "loss"}, lr, grad_norm,
                                clips_since / max(1e-9, now - t_last), _peak_mem_gib(dev))
                t_last, clips_since = now, 0
                history.append(info)
                if ctx.is_main:
                    append_metrics(run_dir, {"step": step, "loss": info.loss, **info.losses, "lr": lr,
                                             "grad_norm": grad_norm, "clips_per_s": round(info.clips_per_s, 3),
                                             "peak_mem_gib": round(info.peak_mem_gib, 3)})
                if on_step:
                    on_step(info)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                last_ckpt = save(step) or last_ckpt
            if ctx.all_reduce_max(1.0 if stop.requested else 0.0) > 0:
                if step % cfg.train.checkpoint_every and step != cfg.train.steps:
                    last_ckpt = save(step) or last_ckpt
                interrupted = True
                break
    ctx.barrier()
    return FinetuneResult(run_dir=run_dir, step=step, interrupted=interrupted, checkpoint=last_ckpt,
                          history=history)


def _build(cfg: Config, dev: torch.device, pretrain: bool) -> tuple[nn.Module, dict[str, Any]]:
    f, c, h, w = cfg.data.video_latent_shape
    if pretrain:
        model = DiT.from_config(cfg.model, input_size=h, in_channels=c).to(dev)
        return model, {"repo": None, "path": None, "sha256": None, "note": "pretrain: the whole DiT is trained"}
    backbone, ref = load_backbone(cfg, dev)
    return AVDiT.from_config(cfg, backbone=backbone).to(dev), ref


def _trainable(model: nn.Module, pretrain: bool) -> Iterator[tuple[str, nn.Parameter]]:
    if pretrain:
        yield from model.named_parameters()
    else:
        yield from model.adapter_named_parameters()  # type: ignore[operator]


def _trained_state(model: nn.Module, pretrain: bool) -> dict[str, torch.Tensor]:
    return dict(model.state_dict()) if pretrain else model.adapter_state_dict()  # type: ignore[operator]


def _load_trained(model: nn.Module, sd: dict[str, torch.Tensor], pretrain: bool) -> None:
    if pretrain:
        model.load_state_dict(sd)
    else:
        model.load_adapter_state_dict(sd)  # type: ignore[operator]


def _export_backbone(model: nn.Module, ema: EMA, folder: Path) -> None:
    """Pretrain mode: write the EMA weights in the diffusers layout that `DiT.from_pretrained` reads."""
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for k, p in ema.params.items():
            p.copy_(ema.shadow[k])
        model.save_pretrained(folder)  # type: ignore[operator]
        model.load_state_dict(live)


def _batches(dataset: LatentCache, cfg: Config, ctx: DistContext, start: int, steps_per_epoch: int,
             per_rank: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Micro-batches for this rank from optimiser step `start` on, forever; with each sample's global index
    in the step's batch (what its noise is seeded by)."""
    global_batch = cfg.train.batch_size
    step = start
    while True:
        epoch, pos = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), cfg.train.seed, epoch)
        plan: list[list[int]] = []
        slots: list[torch.Tensor] = []
        for s in range(pos, steps_per_epoch):
            ids = order[s * global_batch : (s + 1) * global_batch]
            for micro in range(cfg.train.grad_accum):
                lo = (micro * ctx.world_size + ctx.rank) * per_rank
                plan.append(ids[lo : lo + per_rank].tolist())
                slots.append(torch.arange(lo, lo + per_rank))
        loader = DataLoader(dataset, batch_sampler=plan, num_workers=cfg.train.num_workers,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        for batch, slot in zip(loader, slots):
            yield batch, slot
        step = (epoch + 1) * steps_per_epoch


def _step_losses(net: nn.Module, diffusion: Diffusion, cfg: Config, batch: dict[str, torch.Tensor],
                 slot: torch.Tensor, step: int, dev: torch.device, pretrain: bool) -> dict[str, torch.Tensor]:
    """Draw t and noise per sample (seeded by step and the sample's slot in the global batch), run the loss."""
    video = batch["video"].to(dev, non_blocking=True)  # (b, f, c, h, w)
    audio = batch["audio"].to(dev, non_blocking=True)  # (b, c_a, T_a, M_a)
    b = video.shape[0]
    gens = [torch.Generator().manual_seed(derived_seed(cfg.train.seed, step, int(i))) for i in slot]
    T = cfg.diffusion.num_timesteps

    def draw_t() -> torch.Tensor:
        return torch.stack([torch.randint(0, T, (), generator=g) for g in gens]).to(dev)

    def draw_noise(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(dev, x.dtype)

    if pretrain:
        from einops import rearrange

        images = rearrange(video, "b f c h w -> (b f) c h w")
        f = video.shape[1]
        t = draw_t().repeat_interleave(f)
        noise = rearrange(draw_noise(video), "b f c h w -> (b f) c h w")
        with autocast(cfg, dev):
            return training_losses(
                diffusion, lambda x, tt: {"image": net(x["image"], tt["image"], None)},
                {"image": images}, {"image": t}, {"image": 1}, noise={"image": noise},
                loss_type=cfg.diffusion.loss.value,
            )
    t_video = draw_t()
    t_audio = draw_t() if cfg.diffusion.independent_timesteps else t_video
    noise = {"video": draw_noise(video), "audio": draw_noise(audio)}
    y = None
    if cfg.model.trainable_class_table and cfg.model.num_classes > 0:
        labels = batch["label"].to(dev)
        drop = torch.stack([torch.rand((), generator=g) for g in gens]).to(dev) < cfg.train.class_dropout
        y = torch.where((labels < 0) | drop, torch.full_like(labels, cfg.model.num_classes), labels)
    masks = {"audio": batch["audio_ok"].to(dev).float()}
    weights = {"video": cfg.diffusion.video_loss_weight, "audio": cfg.diffusion.audio_loss_weight}

    def model_fn(x: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net(x["video"], x["audio"], t["video"], t["audio"], y)

    with autocast(cfg, dev):
        return training_losses(diffusion, model_fn, {"video": video, "audio": audio}, {"video": t_video, "audio": t_audio},
                               {"video": 2, "audio": 1}, noise=noise, weights=weights, masks=masks,
                               loss_type=cfg.diffusion.loss.value)


def _peak_mem_gib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
