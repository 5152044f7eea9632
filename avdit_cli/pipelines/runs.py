"""Run folders and checkpoints.

A run folder ``runs/<name>/`` holds::

    config.yaml           the resolved config (plain data), so generate/eval need no model flags
    metrics.jsonl         one JSON object per logged step
    checkpoints/step_00001000/
        trainable.safetensors   model.* (trained tensors), ema.* (their EMA), optim.* (AdamW state)
        state.json              step, epoch, config, seeds, backbone repo id + sha256, versions
    latest                the name of the newest complete checkpoint (written last, atomically)

A checkpoint holds no backbone tensor: the backbone is referenced by its repo id / path and sha256.
Every randomness of the training loop is derived from (seed, step, sample index), so the step number *is*
the RNG state: resuming from a checkpoint replays exactly the same data order, noise and timesteps.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from avdit_cli.config import Config
from avdit_cli.data.cache import atomic_save_tensors, atomic_write_bytes, atomic_write_json
from avdit_cli.errors import TrainingError
from avdit_cli.paths import runs_root

LATEST = "latest"
CHECKPOINTS = "checkpoints"
TENSORS = "trainable.safetensors"
STATE = "state.json"


def new_run_dir(cfg: Config, name: str | None = None, root: Path | None = None) -> Path:
    root = root or runs_root()
    name = name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = root / name
    if path.exists() and any(path.iterdir()):
        raise TrainingError(f"run folder {path} already exists; pass --resume to continue it or another --name")
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_run(root: Path | None = None) -> Path:
    """The run whose newest checkpoint is the most recent, under `root` (default: AVDIT_RUNS or ./runs)."""
    root = root or runs_root()
    runs = [p for p in root.glob("*") if (p / LATEST).is_file()] if root.is_dir() else []
    if not runs:
        raise TrainingError(f"no run with a checkpoint under {root}; train one with `avdit finetune`")
    return max(runs, key=lambda p: (p / LATEST).stat().st_mtime)


def resolve_checkpoint(path: Path | None = None) -> Path:
    """A checkpoint folder from: None (the latest run), a run folder, or a checkpoint folder."""
    if path is None:
        path = latest_run()
    if not path.exists():
        raise TrainingError(f"{path} does not exist; give a run folder (runs/NAME) or a checkpoint folder")
    if (path / STATE).is_file():
        return path
    pointer = path / LATEST
    if pointer.is_file():
        ckpt = path / CHECKPOINTS / pointer.read_text().strip()
        if (ckpt / STATE).is_file():
            return ckpt
    raise TrainingError(f"{path} holds no checkpoint; train one with `avdit finetune`")


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def config(self) -> Config:
        return Config.from_dict(self.state["config"])


def save_checkpoint(run_dir: Path, step: int, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                    optim: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint folder atomically (a temp folder renamed into place), point `latest` at it,
    then prune the oldest so that `keep` remain."""
    ckpt_root = run_dir / CHECKPOINTS
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.items()}
    tensors.update({f"ema.{k}": v.detach().cpu() for k, v in ema.items()})
    tensors.update({f"optim.{k}": v.detach().cpu() for k, v in optim.items()})
    atomic_save_tensors(tmp / TENSORS, tensors)
    atomic_write_json(tmp / STATE, {**state, "step": step})
    if final.exists():  # a checkpoint of the same step (e.g. saved on interrupt right after a periodic one)
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_bytes(run_dir / LATEST, (name + "\n").encode())
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    ckpt = resolve_checkpoint(path)
    try:
        state = json.loads((ckpt / STATE).read_text())
        flat = load_file(str(ckpt / TENSORS), device=str(map_location))
    except (OSError, ValueError) as err:
        raise TrainingError(f"checkpoint {ckpt} cannot be read ({err}); use an earlier one") from err
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
    return Checkpoint(ckpt, state, parts["model"], parts["ema"], parts["optim"])


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step, so the curve continues without duplicates."""
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write_bytes(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


# ----------------------------------------------------------------------------------------------------------
# Optimiser state <-> flat tensors (safetensors holds tensors only; hyper-parameters go to state.json)
# ----------------------------------------------------------------------------------------------------------
def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, slots in sd["state"].items():
        for slot, value in slots.items():
            tensors[f"{pid}.{slot}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, _, slot = key.partition(".")
        state.setdefault(int(pid), {})[slot] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as err:
        raise TrainingError(f"the checkpoint's optimiser state does not fit this model ({err})") from err
