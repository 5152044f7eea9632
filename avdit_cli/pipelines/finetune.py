"""`avdit finetune`: train the AV-DiT adapters (or, in `pretrain` mode, a whole small image DiT; in `full` mode,
every AV-DiT weight, the backbone too, as the upper bound of the demo's diagnosis).

Determinism: every random draw of a step (diffusion timestep, noise, label dropout) comes from a generator
seeded by (train.seed, step, global sample index), and the data order of an epoch from (train.seed, epoch).
So a run resumed from step k replays steps k+1.. exactly, and a batch split over N ranks draws the same
numbers as one process: the step number is the whole RNG state.

The loss of a step is the loss of its whole global batch, however it is split: each (rank, micro-batch)
part contributes ``sum over its samples / number of counted samples in the global batch`` (counts known from
the cache manifest before any tensor is read), so N ranks x M accumulation steps give the gradient of one
process on the same batch (DDP averages over ranks, hence the x world_size).

Testing aid: with ``AVDIT_DUMP_GRADS=FILE`` set, rank 0 writes the (synchronised, unclipped) gradients of
the first optimiser step of a fresh run to FILE (safetensors, one tensor per trainable parameter).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import resource
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from avdit_cli import __version__
from avdit_cli.config import Config, LrSchedule, Precision, TrainMode
from avdit_cli.data.cache import MANIFEST, LatentCache, audio_ok
from avdit_cli.diffusion import Diffusion, training_losses
from avdit_cli.diffusion.samplers import mixed_noise
from avdit_cli.diffusion.stagger import draw_stagger
from avdit_cli.errors import ConfigError, DataError, TrainingError, WeightsError
from avdit_cli.fileio import atomic_save_tensors, atomic_write_json
from avdit_cli.models import AVDiT, DiT
from avdit_cli.models.dit_loading import CLASS_NAMES, read_class_names
from avdit_cli.paths import default_cache_dir
from avdit_cli.pipelines.distributed import DistContext, dist_context, resolve_device
from avdit_cli.pipelines.optim import EMA, lr_at
from avdit_cli.pipelines.runs import (
    Checkpoint,
    append_metrics,
    check_new_run_dir,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    remove_stale_temps,
    run_dir_for,
    save_checkpoint,
    truncate_metrics,
    write_config,
)

DUMP_GRADS_ENV = "AVDIT_DUMP_GRADS"


@dataclass
class StepInfo:
    step: int
    total: int
    loss: float
    losses: dict[str, float]  # per modality: video, audio (+ _mse, _vb parts); image in pretrain mode
    lr: float
    grad_norm: float
    clips_per_s: float
    peak_mem_gib: float  # GPU: peak allocated; CPU: the process's peak resident memory


@dataclass
class FinetuneResult:
    run_dir: Path | None  # None on ranks other than 0 of a new run (only rank 0 names and writes it)
    step: int
    interrupted: bool
    checkpoint: Path | None
    history: list[StepInfo] = field(default_factory=list)
    model: nn.Module | None = None  # the trained model (live weights, not EMA), unwrapped


# ----------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------
def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def given_video(cfg: Config, step: int, slot: int) -> bool:
    """Whether the clip at `slot` of optimiser step `step`'s global batch has its frames given clean
    (``diffusion.given_video_prob``). A pure function of (seed, step, slot), so the batch planner can count
    the clips that carry a video loss before any worker draws its noise."""
    p = cfg.diffusion.given_video_prob
    if p <= 0:
        return False
    return torch.rand((), generator=torch.Generator().manual_seed(derived_seed(cfg.train.seed, 0x61D3, step, slot))
                      ).item() < p


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, 0xDA7A, epoch)))


def step_clip_ids(n: int, seed: int, step: int, global_batch: int) -> list[int]:
    """The cache indices of the clips of optimiser step `step` (0-based), in global-batch order."""
    steps_per_epoch = n // global_batch
    epoch, pos = divmod(step, steps_per_epoch)
    return epoch_order(n, seed, epoch)[pos * global_batch : (pos + 1) * global_batch].tolist()


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


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers share the terminal's process group: a Ctrl-C must reach only the main process,
    which finishes the step and saves (a worker dying on SIGINT would fail the step instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------------------
# Building the model
# ----------------------------------------------------------------------------------------------------------
def _backbone_location(cfg: Config) -> Path:
    from avdit_cli.hub import backbone_path  # the local file/folder `avdit download` fetched

    return Path(cfg.model.backbone_path) if cfg.model.backbone_path else backbone_path(cfg)


def load_backbone(cfg: Config, device: torch.device) -> tuple[DiT, dict[str, Any]]:
    """The frozen backbone and its reference (repo id or path + sha256) for checkpoints."""
    path = _backbone_location(cfg)
    if not path.exists():
        raise WeightsError(f"no backbone at {path}; run `avdit download` or set model.backbone_path")
    backbone, report = DiT.from_pretrained(path, device=device, output_loading_info=True)
    m = cfg.model
    expect = {"hidden_size": m.hidden_size, "depth": m.depth, "patch_size": m.patch_size}
    got = {k: report.arch[k] for k in expect}
    if got != expect:
        raise WeightsError(f"the backbone at {path} has {got} but the config says {expect}; "
                           "use the matching preset or set model.* to the backbone's size")
    ref = {"repo": cfg.model.backbone_repo or None, "path": str(path.resolve()), "format": report.format,
           "sha256": report.sha256()}
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
    tensorboard: bool = True,
) -> FinetuneResult:
    """Train for `cfg.train.steps` optimiser steps (continuing from `resume`, a run or checkpoint folder).

    A new run goes to `run_dir`, else ``runs/<run_name>``, else ``runs/<preset>-<time>``; the folder must be
    empty or absent, and it is created only once everything is set up (a config error leaves nothing).
    `tensorboard`: also log to ``RUN/tb`` when the `tensorboard` package is installed (else silently not).
    """
    ctx = dist_context()
    dev = resolve_device(device, ctx)  # a bare "cuda" gets this rank's index, which DDP needs
    log = on_log or (lambda msg: None)
    pretrain = cfg.train.mode is TrainMode.PRETRAIN

    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        _check_resume(ckpt, cfg)
        run_dir = ckpt.run_dir
        if cache_dir is None and ckpt.state.get("cache_dir"):
            cache_dir = Path(ckpt.state["cache_dir"])
    else:
        if ctx.is_main:
            run_dir = run_dir if run_dir is not None else run_dir_for(cfg, run_name)
        _on_rank0(ctx, lambda: check_new_run_dir(run_dir))  # early, before any work (checked again below)

    global_batch = cfg.train.batch_size
    per_rank, rem = divmod(global_batch, ctx.world_size * cfg.train.grad_accum)
    if rem or per_rank == 0:
        raise ConfigError(f"train.batch_size: got {global_batch}, expected a multiple of ranks x grad_accum "
                          f"({ctx.world_size} x {cfg.train.grad_accum})")
    if cache_dir is None and not (default_cache_dir(cfg) / MANIFEST).exists():
        raise DataError(f"no latent cache for this config at {default_cache_dir(cfg)}; make it with `avdit preprocess "
                        f"DATA_DIR --preset {cfg.name}` and the same --set data.* / --stride values, or pass --cache DIR")
    cache_dir = Path(cache_dir or default_cache_dir(cfg))
    dataset = LatentCache(cache_dir, hflip=cfg.data.hflip, seed=cfg.train.seed,
                          expect={"config_hash": cfg.cache_hash()})
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size: got {global_batch}, but the cache holds only {len(dataset)} clips; "
                          "lower train.batch_size or preprocess more data")

    # a resumed run keeps the class rows it started with (its checkpoint's names), whatever the cache or source
    classes = _class_info(cfg, dataset, (ckpt.state.get("classes") or {}).get("names") if ckpt else None)
    init = torch.Generator().manual_seed(derived_seed(cfg.train.seed, 0x1417))  # weights of new modules
    model, backbone_ref = _build(cfg, dev, pretrain, init, resumed=ckpt is not None)
    trainable = dict(_trainable(model, cfg.train.mode))
    n_train = sum(p.numel() for p in trainable.values())
    n_total = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_train:,} trainable of {n_total:,} ({100 * n_train / max(1, n_total):.2f}%)")
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ema = EMA(trainable, cfg.train.ema_decay, warmup=cfg.train.ema_warmup)
    start = 0
    if ckpt is not None:
        _restore(ckpt, cfg, model, ema, optimizer, backbone_ref)
        start = ckpt.step
        log(f"resumed from {ckpt.path} at step {start}")
        if cfg.train.lr_schedule is LrSchedule.COSINE and ckpt.config.train.steps != cfg.train.steps:
            log("note: the cosine schedule spans train.steps, which changed: the lr curve differs from the "
                "one the run started on")
    if start == 0 < cfg.train.steps:  # a new run (a resumed one may have had other EMA settings before)
        ema_note(ema, cfg.train.steps, log, planned=True)
    if start >= cfg.train.steps:
        log(f"nothing to do: the run is at step {start} of train.steps={cfg.train.steps} "
            "(--set train.steps=N to train longer)")

    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    # The run folder: made on rank 0 only now that everything is set up; the verdict is shared.
    created = bool(_on_rank0(ctx, lambda: _open_run_dir(run_dir, cfg, ckpt)))

    def save(step: int) -> Path | None:
        if not ctx.is_main:
            return None
        optim_tensors, optim_meta = optimizer_to_tensors(optimizer)
        state = {"config": cfg.to_dict(), "mode": cfg.train.mode.value, "backbone": backbone_ref,
                 "cache_dir": str(cache_dir.resolve()), "epoch": step // steps_per_epoch,
                 "rng": {"scheme": "blake2b(train.seed, step, global sample index); data order by "
                                   "(train.seed, epoch)", "seed": cfg.train.seed, "next_step": step},
                 "optimizer": optim_meta, "trainable_params": n_train, "world_size": ctx.world_size,
                 "avdit_version": __version__, "torch_version": torch.__version__}
        if classes is not None:
            state["classes"] = classes
        path = save_checkpoint(run_dir, step, _trained_state(model, cfg.train.mode), ema.state_dict(), optim_tensors,
                               state, cfg.train.keep)
        if pretrain:
            _export_backbone(model, ema, run_dir / "backbone", classes["names"] if classes else None)
        return path

    history: list[StepInfo] = []
    last_ckpt: Path | None = ckpt.path if ckpt is not None else None
    step = start
    t_last, clips_since = time.perf_counter(), 0
    interrupted = False
    dump_grads = os.environ.get(DUMP_GRADS_ENV) if start == 0 else None
    writer = None
    model.train()
    try:
        net: nn.Module = model
        ddp: DistributedDataParallel | None = None
        if ctx.distributed:
            net = ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.train.compile:
            net = torch.compile(net)  # type: ignore[assignment]  # after DDP, as PyTorch recommends
        writer = _tensorboard(run_dir, tensorboard, start) if ctx.is_main else None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with StopFlag() as stop:
            batches = _batches(dataset, cfg, ctx, start, steps_per_epoch, per_rank, pretrain)
            while step < cfg.train.steps:
                lr = lr_at(step, cfg.train)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                sums: dict[str, float] = {}
                for micro in range(cfg.train.grad_accum):
                    batch, slot, counts = next(batches)
                    sync = micro == cfg.train.grad_accum - 1
                    # Gradients are all-reduced only on the last micro-batch of a step.
                    with ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext():
                        terms, masks = _step_terms(net, diffusion, cfg, batch, slot, step, dev, pretrain)
                        part = _batch_share(terms, masks, counts, _loss_weights(cfg, pretrain))
                        # DDP averages gradients over ranks; the parts are shares of the global batch: x N.
                        (part["loss"] * ctx.world_size).backward()
                    for k, v in part.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                if dump_grads and step == 0 and ctx.is_main:
                    atomic_save_tensors(Path(dump_grads), {k: p.grad.detach().clone() if p.grad is not None
                                                           else torch.zeros_like(p) for k, p in trainable.items()})
                max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(list(trainable.values()), max_norm))
                bad = not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm))
                bad_any, stop_any = ctx.all_reduce([float(bad), float(stop.requested)], op="max")
                if bad_any:
                    raise TrainingError(
                        f"the loss or its gradient became non-finite at step {step + 1} (loss {sums['loss']:.4g}, "
                        f"grad norm {grad_norm:.4g}); stopped without updating the weights. The last good "
                        f"checkpoint is {last_ckpt or 'none (no checkpoint yet)'}; check the data or lower train.lr, "
                        "then --resume")
                optimizer.step()
                ema.update(step)
                step += 1
                clips_since += global_batch
                logged = step % cfg.train.log_every == 0 or step == cfg.train.steps or step == 1
                if logged or step == start + 1:
                    totals = dict(zip(sums, ctx.all_reduce(list(sums.values()), op="sum")))
                    now = time.perf_counter()
                    info = StepInfo(step, cfg.train.steps, totals.pop("loss"), totals, lr, grad_norm,
                                    clips_since / max(1e-9, now - t_last), _peak_mem_gib(dev))
                    t_last, clips_since = now, 0
                    history.append(info)
                    if ctx.is_main and logged:
                        _log_row(run_dir, writer, info)
                    if on_step:
                        on_step(info)
                if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                    last_ckpt = save(step) or last_ckpt
                elif stop_any:
                    last_ckpt = save(step) or last_ckpt
                if stop_any:
                    interrupted = True
                    log(f"stopped at step {step} on request; checkpoint {last_ckpt}")
                    if start == 0:
                        ema_note(ema, step, log, planned=False)
                    break
    except BaseException:
        if created and step == start and ctx.is_main and run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before the first step: leave no half-made run
        raise
    finally:
        if writer is not None:
            writer.close()
    ctx.barrier()
    return FinetuneResult(run_dir=run_dir, step=step, interrupted=interrupted, checkpoint=last_ckpt,
                          history=history, model=model)


EMA_NOTE_SHARE = 0.05  # above this share of the initial weights in the EMA, finetune says so


def ema_note(ema: EMA, steps: int, log: Callable[[str], None], planned: bool) -> None:
    """Say when the EMA (what export, generate and the demo use) would still be more than 5 % the initial
    weights after `steps` updates of a new run: a short run, or one stopped early, with a decay meant for a long
    one. (With train.ema_warmup the first update replaces the start: never.)"""
    share = ema.initial_share(steps)
    if share > EMA_NOTE_SHARE:
        when = f"will still be {share:.0%} the initial weights after train.steps={steps}" if planned else \
            f"are still {share:.0%} the initial weights at step {steps}"
        log(f"note: the EMA weights {when} (train.ema_decay="
            f"{ema.decay:g}); set train.ema_warmup=true, lower train.ema_decay or train longer")


def _check_resume(ckpt: Checkpoint, cfg: Config) -> None:
    saved = ckpt.config
    for section in ("model", "data", "diffusion"):
        if getattr(saved, section) != getattr(cfg, section):
            raise ConfigError(f"--resume: the {section}.* settings must equal the run's (see "
                              f"{ckpt.run_dir / 'config.yaml'}); only train.* may change, e.g. train.steps")
    if saved.train.mode != cfg.train.mode:
        raise ConfigError(f"--resume: the run was trained with train.mode={saved.train.mode.value}; keep it")
    # The data order and every draw are derived from (seed, step, sample) and the epoch length from the batch
    # size: changing either would silently replay or skip clips. grad_accum keeps the global batch: allowed.
    for key in ("seed", "batch_size"):
        if getattr(saved.train, key) != getattr(cfg.train, key):
            raise ConfigError(f"--resume: train.{key} must stay {getattr(saved.train, key)} (the run's data order "
                              "and noise depend on it); start a new run to change it")


def _restore(ckpt: Checkpoint, cfg: Config, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
             backbone_ref: dict[str, Any]) -> None:
    want = (ckpt.state.get("backbone") or {}).get("sha256")
    if want and backbone_ref.get("sha256") and want != backbone_ref["sha256"]:
        raise WeightsError(f"the backbone at {backbone_ref['path']} is not the one {ckpt.path} was trained on "
                           f"(sha256 {backbone_ref['sha256'][:12]} vs {want[:12]}); set model.backbone_path to it")
    try:
        _load_trained(model, ckpt.model, cfg.train.mode)
        ema.load_state_dict(ckpt.ema)
    except (KeyError, RuntimeError) as err:
        raise TrainingError(f"{ckpt.path} does not fit this model ({err})") from err
    optimizer_from_tensors(optimizer, ckpt.optim, ckpt.state["optimizer"])
    for group in optimizer.param_groups:  # train.* may change on resume; the schedule sets lr every step
        group["weight_decay"] = cfg.train.weight_decay


def _on_rank0(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0; if it fails, every rank raises (instead of the others waiting in a collective)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after the other ranks know (else they would hang)
            error = err
    if ctx.all_reduce([float(error is not None)], op="max")[0] > 0:
        if error is not None:
            raise error
        raise TrainingError("rank 0 could not set up the run folder; see its error")
    return result


def _open_run_dir(run_dir: Path | None, cfg: Config, ckpt: Checkpoint | None) -> bool:
    """Create (new run) or reopen (resume) the run folder and write its config; True when created here."""
    assert run_dir is not None  # set on rank 0 above
    created = False
    if ckpt is None:
        check_new_run_dir(run_dir)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        remove_stale_temps(run_dir)
        truncate_metrics(run_dir, ckpt.step)
    write_config(run_dir, cfg)
    return created


def _log_row(run_dir: Path, writer: Any, info: StepInfo) -> None:
    row = {"step": info.step, "loss": info.loss, **info.losses, "lr": info.lr, "grad_norm": info.grad_norm,
           "clips_per_s": round(info.clips_per_s, 3), "peak_mem_gib": round(info.peak_mem_gib, 3)}
    append_metrics(run_dir, row)
    if writer is not None:
        for key, value in row.items():
            if key != "step":
                writer.add_scalar(f"train/{key}", value, info.step)


def _tensorboard(run_dir: Path | None, enabled: bool, start: int = 0) -> Any:
    """A SummaryWriter into RUN/tb when asked and the `tensorboard` package is installed; else None."""
    if not enabled or run_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the optional `tensorboard` package
        return None
    # purge_step drops events a resumed run logged after its checkpoint, as truncate_metrics does for metrics.jsonl
    return SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)


def _build(cfg: Config, dev: torch.device, pretrain: bool, init: torch.Generator, resumed: bool = False
           ) -> tuple[nn.Module, dict[str, Any]]:
    f, c, h, w = cfg.data.video_latent_shape
    if pretrain:
        model = DiT.from_config(cfg.model, input_size=h, in_channels=c, generator=init).to(dev)
        ref: dict[str, Any] = {"repo": None, "path": None, "sha256": None, "note": "pretrain: the whole DiT is trained"}
        if cfg.train.init_from and not resumed:  # a resumed run's weights come from its checkpoint
            ref["init_from"] = _init_from(model, Path(cfg.train.init_from))
            ref["note"] = "pretrain: the whole DiT is trained, starting from train.init_from"
        return model, ref
    backbone, ref = load_backbone(cfg, dev)
    model = AVDiT.from_config(cfg, backbone=backbone, generator=init).to(dev)
    if cfg.train.mode is TrainMode.FULL:  # the upper bound: the backbone trains too
        model.backbone.requires_grad_(True)
    return model, ref


def _init_from(model: DiT, path: Path) -> dict[str, Any]:
    """Copy the DiT at `path` into `model` (pretrain mode's ``train.init_from``), growing its class table:
    the rows of classes the source lacks start as its null row, which stays the last row. Returns the
    source's path and sha256 for the run's record. Raises WeightsError when the architectures differ."""
    if not path.exists():
        raise WeightsError(f"train.init_from: no DiT at {path}; give a backbone folder or file")
    src, report = DiT.from_pretrained(path, device="cpu", output_loading_info=True)
    sizes = ("hidden_size", "depth", "num_heads", "patch_size", "in_channels", "input_size", "learn_sigma")
    got, want = ({k: getattr(m, k) for k in sizes} for m in (src, model))
    if got != want:
        diff = ", ".join(f"{k} {got[k]} (config: {want[k]})" for k in sizes if got[k] != want[k])
        raise WeightsError(f"train.init_from: {path} has {diff}; set model.* / data.* to the source's size")
    sd = src.state_dict()
    key = "y_embedder.embedding_table.weight"
    old, new = sd[key], model.state_dict()[key]  # (k_src + 1, d), (k + 1, d): the last row is the null class
    if old.shape[0] > new.shape[0]:
        raise WeightsError(f"train.init_from: {path} has {old.shape[0] - 1} classes, the config {new.shape[0] - 1}; "
                           "set model.num_classes to at least the source's")
    if old.shape[0] > 1 and read_class_names(path) is None:
        raise WeightsError(f"train.init_from: {path} has {old.shape[0] - 1} class rows but no {CLASS_NAMES} to say "
                           "which; write one beside its weights (a JSON list of names), so labels find their rows")
    grown = old[-1:].expand(new.shape[0], -1).clone()
    grown[: old.shape[0] - 1] = old[:-1]
    sd[key] = grown
    model.load_state_dict(sd)
    return {"path": str(path.resolve()), "sha256": report.sha256()}


def _class_info(cfg: Config, dataset: LatentCache, resumed_names: list[str] | None = None
                ) -> dict[str, Any] | None:
    """For a class-conditional run: the names of the model's classes (row i of its class table is class
    names[i]) and how many of the cache's clips each has, which is what `generate` draws classes by.

    The names are the backbone's own (``class_names.json`` beside its weights: finetune mode's backbone, or
    pretrain mode's ``train.init_from``, where the cache's new classes are appended) when it has them, else
    the cache's; a resumed run keeps ``resumed_names``. The cache's labels are mapped to them
    (:meth:`LatentCache.relabel`), so a cache that lacks some classes still means the same ones.
    Raises ConfigError / DataError when the cache has no classes, a class the backbone lacks, or more classes
    than model.num_classes."""
    if not cfg.model.uses_labels:
        return None
    names = list(dataset.manifest.get("classes") or [])
    if not names:
        raise ConfigError("model.class_conditional needs a cache with classes; preprocess a folder of class "
                          "folders with --set data.class_folders=true")
    pretrain = cfg.train.mode is TrainMode.PRETRAIN
    source = cfg.train.init_from if pretrain else _backbone_location(cfg)
    table = resumed_names or (read_class_names(Path(source)) if source else None)
    if table and pretrain and not resumed_names:  # growing a named table: new classes get new rows
        table = table + [n for n in names if n not in table]
    table = table or names
    if len(table) > cfg.model.num_classes:
        raise ConfigError(f"model.num_classes: got {cfg.model.num_classes}, but the model needs {len(table)} "
                          f"classes; set model.num_classes={len(table)}")
    dataset.relabel(table)
    counts = [0] * len(table)
    for i in range(len(dataset)):
        label = dataset.label_of(dataset.clips[i])
        if label >= 0:
            counts[label] += 1
    return {"names": table, "counts": counts}


def _trainable(model: nn.Module, mode: TrainMode) -> list[tuple[str, nn.Parameter]]:
    if mode is TrainMode.FINETUNE:
        return model.adapter_named_parameters()  # type: ignore[operator]
    return list(model.named_parameters())  # pretrain, full: every weight


def _trained_state(model: nn.Module, mode: TrainMode) -> dict[str, torch.Tensor]:
    if mode is TrainMode.FINETUNE:
        return model.adapter_state_dict()  # type: ignore[operator]
    return dict(model.state_dict())


def _load_trained(model: nn.Module, sd: dict[str, torch.Tensor], mode: TrainMode) -> None:
    if mode is TrainMode.FINETUNE:
        model.load_adapter_state_dict(sd)  # type: ignore[operator]
    else:
        model.load_state_dict(sd)


def _export_backbone(model: nn.Module, ema: EMA, folder: Path, class_names: list[str] | None = None) -> None:
    """Pretrain mode: write the EMA weights in the diffusers layout that `DiT.from_pretrained` reads
    (atomically, weights first and config last), with the names of its classes in ``class_names.json``
    (class-conditional runs)."""
    live = {k: p.detach().clone() for k, p in ema.params.items()}
    if class_names is not None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / CLASS_NAMES, class_names)
    try:
        with torch.no_grad():
            for k, p in ema.params.items():
                p.copy_(ema.shadow[k])
        model.save_pretrained(folder)  # type: ignore[operator]
    finally:
        with torch.no_grad():
            for k, p in ema.params.items():
                p.copy_(live[k])


def _batches(dataset: LatentCache, cfg: Config, ctx: DistContext, start: int, steps_per_epoch: int,
             per_rank: int, pretrain: bool
             ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, int]]]:
    """Micro-batches for this rank from optimiser step `start` on, forever; with each sample's global index
    in the step's batch (what its noise is seeded by) and the step's global count of loss samples per
    modality (what every part's loss is divided by)."""
    global_batch = cfg.train.batch_size
    frames = cfg.data.num_frames
    step = start
    while True:
        epoch, pos = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), cfg.train.seed, epoch)
        plan: list[list[int]] = []
        extra: list[tuple[torch.Tensor, dict[str, int]]] = []
        for s in range(pos, steps_per_epoch):
            ids = order[s * global_batch : (s + 1) * global_batch].tolist()
            if pretrain:  # every frame is an image of its own
                counts = {"image": global_batch * frames}
            else:
                global_step = epoch * steps_per_epoch + s
                given = sum(given_video(cfg, global_step, j) for j in range(len(ids)))
                counts = {"video": global_batch - given, "audio": sum(audio_ok(dataset.clips[i]) for i in ids)}
            for micro in range(cfg.train.grad_accum):
                lo = (micro * ctx.world_size + ctx.rank) * per_rank
                plan.append(ids[lo : lo + per_rank])
                extra.append((torch.arange(lo, lo + per_rank), counts))
        loader = DataLoader(dataset, batch_sampler=plan, num_workers=cfg.train.num_workers,
                            worker_init_fn=_ignore_sigint if cfg.train.num_workers else None,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        for batch, (slot, counts) in zip(loader, extra):
            yield batch, slot, counts
        step = (epoch + 1) * steps_per_epoch


def _loss_weights(cfg: Config, pretrain: bool) -> dict[str, float]:
    if pretrain:
        return {"image": 1.0}
    return {"video": cfg.diffusion.video_loss_weight, "audio": cfg.diffusion.audio_loss_weight}


def _batch_share(terms: dict[str, Tensor], masks: dict[str, Tensor], counts: dict[str, int],
                 weights: dict[str, float]) -> dict[str, Tensor]:
    """This part's share of the global batch's losses: for every per-sample term NAME or NAME_part (b,),
    sum(mask x term) / global count of NAME; ``loss`` = sum over modalities of weight x share."""
    share: dict[str, Tensor] = {}
    for key, values in terms.items():
        if key == "loss":
            continue
        modality = key.split("_")[0]
        mask = masks.get(modality)
        summed = values.sum() if mask is None else (values * mask).sum()
        share[key] = summed / max(1, counts[modality])
    share["loss"] = sum(weights[m] * share[m] for m in weights)  # type: ignore[assignment]
    return share


def _drop_labels(cfg: Config, labels: Tensor, gens: list[torch.Generator], per_sample: int) -> Tensor:
    """Labels (b * per_sample,), each sample's `per_sample` in a row, with the unlabelled (-1) and a
    ``train.class_dropout`` share drawn from each sample's generator replaced by the null class."""
    drop = torch.stack([torch.rand((per_sample,), generator=g) for g in gens]).flatten().to(labels.device)
    return torch.where((labels < 0) | (drop < cfg.train.class_dropout),
                       torch.full_like(labels, cfg.model.num_classes), labels)


def _step_terms(net: nn.Module, diffusion: Diffusion, cfg: Config, batch: dict[str, torch.Tensor],
                slot: torch.Tensor, step: int, dev: torch.device, pretrain: bool
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Draw t and noise per sample (seeded by step and the sample's slot in the global batch), run the model,
    return the per-sample loss terms (b,) and the per-modality masks of the samples that count."""
    video = batch["video"].to(dev, non_blocking=True)  # (b, f, c, h, w)
    audio = batch["audio"].to(dev, non_blocking=True)  # (b, c_a, T_a, M_a)
    gens = [torch.Generator().manual_seed(derived_seed(cfg.train.seed, step, int(i))) for i in slot]
    T = cfg.diffusion.num_timesteps

    def draw_t() -> torch.Tensor:  # (b,)
        return torch.stack([torch.randint(0, T, (), generator=g) for g in gens]).to(dev)

    def draw_noise(x: torch.Tensor, axis: int | None = None, rho: float = 0.0) -> torch.Tensor:
        # like x, one sample per generator; axis (within one sample) and rho: mixed_noise's shared part
        return torch.stack([mixed_noise(x.shape[1:], g, axis, rho) for g in gens]).to(dev, x.dtype)

    if pretrain:
        f = video.shape[1]
        images = rearrange(video, "b f c h w -> (b f) c h w")
        # One t per frame: the frames of a clip are near-duplicates, and a t shared by them would leave only
        # b noise levels in a batch of b x f images (a much noisier gradient over t).
        t = torch.stack([torch.randint(0, T, (f,), generator=g) for g in gens]).flatten().to(dev)  # (b f)
        noise = rearrange(draw_noise(video), "b f c h w -> (b f) c h w")
        y_img = None
        if cfg.model.uses_labels:  # each frame is labelled with its clip's class, dropped per image
            y_img = _drop_labels(cfg, batch["label"].to(dev).repeat_interleave(f), gens, f)  # (b f)
        with autocast(cfg, dev):
            terms = training_losses(
                diffusion, lambda x, tt: {"image": net(x["image"], tt["image"], y_img)},
                {"image": images}, {"image": t}, {"image": 1}, noise={"image": noise},
                loss_type=cfg.diffusion.loss.value, min_snr_gamma=cfg.diffusion.min_snr_gamma,
            )
        return terms, {}
    t_video = draw_t()
    t_audio = draw_t() if cfg.diffusion.independent_timesteps else t_video
    # clips whose frames are given clean: t_video = 0 and no video loss (counted out in _batches as well)
    given = torch.tensor([given_video(cfg, step, int(i)) for i in slot], device=dev)
    t_video = torch.where(given, torch.zeros_like(t_video), t_video)
    # frames (axis 0 of one clip's (f, c, h, w)) share a part of their noise: the PYoCo prior, 0 by default
    noise = {"video": draw_noise(video, 0, cfg.diffusion.video_noise_correlation), "audio": draw_noise(audio)}
    y = _drop_labels(cfg, batch["label"].to(dev), gens, 1) if cfg.model.uses_labels else None
    masks = {"audio": batch["audio_ok"].to(dev).float(), "video": (~given).float()}
    frame_masks = None
    if cfg.diffusion.frame_stagger_prob > 0:  # drawn after everything else: runs without it draw as before
        t_video, frame_masks = _stagger_frames(cfg, gens, t_video, given, video.shape[1])

    def model_fn(x: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net(x["video"], x["audio"], t["video"], t["audio"], y)

    with autocast(cfg, dev):
        terms = training_losses(diffusion, model_fn, {"video": video, "audio": audio},
                                {"video": t_video, "audio": t_audio}, {"video": 2, "audio": 1}, noise=noise,
                                loss_type=cfg.diffusion.loss.value,
                                min_snr_gamma=cfg.diffusion.min_snr_gamma, frame_masks=frame_masks)
    return terms, masks


def _stagger_frames(cfg: Config, gens: list[torch.Generator], t_video: Tensor, given: Tensor, num_frames: int
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-frame timesteps (b, f): each clip with a video loss is staggered with probability
    diffusion.frame_stagger_prob (:func:`draw_stagger`), the others keep their one t on every frame. Returns
    them with the video frame mask (b, f): the frames that are scored (a staggered clip's clean frames are given,
    not scored, and it always keeps one to score; a clip given whole has none and is masked out already)."""
    df = cfg.diffusion
    rows, scored = [], []
    for g, t, clean in zip(gens, t_video.tolist(), given.tolist()):
        staggered = bool(torch.rand((), generator=g) < df.frame_stagger_prob)
        if staggered and not clean:
            row = draw_stagger(num_frames, df.frame_stagger_max, df.num_timesteps, g)
        else:
            row = torch.full((num_frames,), t, dtype=torch.long)
        rows.append(row.clamp(min=0))
        scored.append(row >= 0 if not clean else torch.zeros(num_frames, dtype=torch.bool))
    dev = t_video.device
    return torch.stack(rows).to(dev), {"video": torch.stack(scored).to(dev).float()}


def _peak_mem_gib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
