"""Run folders and checkpoints.

A run folder ``runs/<name>/`` holds::

    config.yaml           the resolved config (plain data), so generate/eval need no model flags
    metrics.jsonl         one JSON object per logged step
    checkpoints/step_00001000/
        trainable.safetensors   model.* (trained tensors), ema.* (their EMA), optim.* (AdamW state)
        state.json              step, epoch, config, RNG scheme, backbone repo id + sha256, versions
    latest                the name of the newest complete checkpoint (written last, atomically)
    tb/                   TensorBoard events (only when the `tensorboard` package is installed)

A checkpoint holds no backbone tensor: the backbone is referenced by its repo id / path and sha256.
Every randomness of the training loop is derived from (seed, step, sample index), so the step number *is*
the RNG state: resuming from a checkpoint replays exactly the same data order, noise and timesteps.

Every file is written atomically (a temp file in the same folder, fsync, rename) with the ordinary
permissions a plain ``open()`` would give (0666 minus the umask), not the 0600 of ``mkstemp``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from avdit_cli.config import Config, apply_overrides, to_yaml
from avdit_cli.errors import ConfigError, TrainingError
from avdit_cli.fileio import atomic_save_tensors, atomic_write_bytes, atomic_write_json, file_mode
from avdit_cli.paths import runs_root

LATEST = "latest"
CHECKPOINTS = "checkpoints"
TENSORS = "trainable.safetensors"
STATE = "state.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


# ----------------------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------------------
def run_dir_for(cfg: Config, name: str | None = None, root: Path | None = None) -> Path:
    """Where a new run goes (not created): ``root/name``, default name ``<preset>-<date>-<time>``."""
    root = root or runs_root()
    return root / (name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_new_run_dir(path: Path) -> None:
    """A new run never mixes with an old one: its folder must be absent or empty."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TrainingError(f"run folder {path} already exists; pass --resume {path} to continue it, "
                            "or another --name")


def new_run_dir(cfg: Config, name: str | None = None, root: Path | None = None) -> Path:
    """Create the folder of a new run (refusing one that already holds something)."""
    path = run_dir_for(cfg, name, root)
    check_new_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_bytes(run_dir / CONFIG, to_yaml(cfg).encode())


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
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path} does not exist; give a run folder (runs/NAME) or a checkpoint folder")
    if (path / STATE).is_file():
        return path
    pointer = path / LATEST
    if pointer.is_file():
        ckpt = path / CHECKPOINTS / pointer.read_text().strip()
        if (ckpt / STATE).is_file():
            return ckpt
        raise TrainingError(f"{pointer} names {ckpt.name}, which is missing; "
                            f"give one of the folders under {path / CHECKPOINTS} instead")
    raise TrainingError(f"{path} holds no checkpoint; train one with `avdit finetune`")


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """The complete checkpoint folders of a run, by step (temp folders of a killed save are not listed)."""
    found: dict[int, Path] = {}
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / STATE).is_file():
                found[int(m.group(1))] = p
    return found


def remove_stale_temps(run_dir: Path) -> None:
    """Delete what a killed save left behind (``checkpoints/.step_*.tmp`` folders, ``.*.tmp`` files)."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    # Set for adapters pulled from the Hub (hub_run.py): where they came from ("hf://NAME@COMMIT") and their file.
    source: str | None = None
    weights_file: Path | None = None

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def config(self) -> Config:
        return Config.from_dict(self.state["config"])

    @property
    def run_dir(self) -> Path:
        """RUN for RUN/checkpoints/step_N; an exported checkpoint (``avdit export``) is a run folder of its own."""
        return self.path.parent.parent if self.path.parent.name == CHECKPOINTS else self.path

    @property
    def run_label(self) -> str:
        """What samples.json records as the run: its folder, or the Hub reference it was pulled from."""
        return self.source or str(self.run_dir.resolve())

    @property
    def tensors_file(self) -> Path:
        """The safetensors file the weights were read from (hashed into samples.json)."""
        return self.weights_file or self.path / TENSORS


def save_checkpoint(run_dir: Path, step: int, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                    optim: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint folder atomically (a temp folder renamed into place), point `latest` at it, then
    prune: keep the `keep` newest up to `step`, and drop any of a later step (the abandoned future of a run
    resumed from an older checkpoint; its metrics rows were dropped too)."""
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
    if final.exists():  # the same step saved again (a rerun after an interrupt): replace it
        old = ckpt_root / f".{name}.old.tmp"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    atomic_write_bytes(run_dir / LATEST, (name + "\n").encode())
    steps = checkpoint_steps(run_dir)
    older = sorted(s for s in steps if s <= step)
    for s in [s for s in steps if s > step] + older[: max(0, len(older) - keep)]:
        shutil.rmtree(steps[s], ignore_errors=True)
    return final


def read_checkpoint_state(path: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint folder and its state.json only (cheap: no tensors), e.g. to get a run's config."""
    ckpt = resolve_checkpoint(path)
    try:
        return ckpt, json.loads((ckpt / STATE).read_text())
    except (OSError, ValueError) as err:
        raise TrainingError(f"checkpoint {ckpt} cannot be read ({err}); use an earlier one") from err


def load_checkpoint(path: Path | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    ckpt, state = read_checkpoint_state(path)
    try:
        flat = load_file(str(ckpt / TENSORS), device=str(map_location))
    except (OSError, SafetensorError) as err:
        raise TrainingError(f"checkpoint {ckpt} cannot be read ({err}); use an earlier one") from err
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
    return Checkpoint(ckpt, state, parts["model"], parts["ema"], parts["optim"])


def export_checkpoint(src: Path | None, out: Path, backbone: Path | None = None, extra: dict[str, Any] | None = None,
                      sample: Sequence[str] = ()) -> Path:
    """A small, portable copy of a checkpoint in ``out``: only the EMA adapter tensors (``ema.*``; no raw
    weights, no optimiser state) and ``state.json``, which still names the backbone by sha256.

    ``backbone``: a backbone folder to reference instead of the recorded path, written as a path relative to
    ``out`` (so a folder that travels with its backbone, such as the package's demo models, keeps working);
    its sha256 is checked against the recorded one. ``extra`` is added to the state (e.g. provenance).
    ``sample``: ``sample.KEY=VALUE`` overrides, the sampling defaults that `generate` and `demo` use for the
    exported model (only sample.* keys: the rest of the config says how the weights were made).
    ``out`` must be absent or empty. Raises TrainingError / WeightsError / ConfigError.
    """
    from avdit_cli.errors import WeightsError
    from avdit_cli.models import DiT

    ckpt = load_checkpoint(src)
    if not ckpt.ema:
        raise TrainingError(f"{ckpt.path} holds no EMA weights to export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"{out} already exists and is not empty; choose another folder")
    wrong = [item for item in sample if not item.startswith("sample.")]
    if wrong:
        raise ConfigError(f"--set {wrong[0]}: an export changes sampling defaults only (sample.KEY=VALUE); the "
                          "rest of the config records how the weights were trained")
    state = dict(ckpt.state)
    state.pop("optimizer", None)
    if sample:
        state["config"] = apply_overrides(ckpt.config, list(sample)).to_dict()
    ref = dict(state.get("backbone") or {})
    if backbone is not None:
        _, report = DiT.from_pretrained(backbone, output_loading_info=True)
        if ref.get("sha256") and report.sha256() != ref["sha256"]:
            raise WeightsError(f"{backbone} is not the backbone {ckpt.path} was trained on (sha256 "
                               f"{report.sha256()[:12]} vs {ref['sha256'][:12]})")
        ref["path"] = os.path.relpath(Path(backbone).resolve(), out.resolve())
    state["backbone"] = ref
    if backbone is not None:
        # The folder travels: keep no path of the machine that trained it (the backbone is found by `ref`).
        state["config"] = copy.deepcopy(state["config"])
        state["config"]["model"]["backbone_path"] = None
        state["cache_dir"] = None
        state["exported_from"] = {"checkpoint": f"{ckpt.run_dir.name}/{ckpt.path.name}", "step": ckpt.step}
    else:
        state["exported_from"] = {"checkpoint": str(ckpt.path.resolve()), "step": ckpt.step}
    state.update(extra or {})
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / TENSORS, {f"ema.{k}": v for k, v in ckpt.ema.items()})
    atomic_write_json(out / STATE, state)
    return out


def backbone_reference(ckpt: Checkpoint) -> Path | None:
    """The backbone path a checkpoint records (a relative one is relative to the checkpoint folder)."""
    path = (ckpt.state.get("backbone") or {}).get("path")
    if not path:
        return None
    return Path(path) if Path(path).is_absolute() else (ckpt.path / path).resolve()


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------
def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """One JSON line per logged step. Appends are not atomic, but a torn last line is dropped on read and
    rewritten on resume (`truncate_metrics`)."""
    path = run_dir / METRICS
    new = not path.exists()
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    if new:
        os.chmod(path, file_mode())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line torn by a kill: skip it
            continue
    return rows


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step, so the curve continues without duplicates."""
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write_bytes(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


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
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as err:
        raise TrainingError(f"the checkpoint's optimiser state does not fit this model ({err})") from err
