"""Parameter counts per module group, for ``avdit info --params``: built on the meta device, so no memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avdit_cli.config import Config
from avdit_cli.models.avdit import AVDiT


@dataclass(frozen=True)
class ParamRow:
    name: str
    total: int
    frozen: int
    trainable: int


# Module group -> the AVDiT attributes that make it up (module ownership, not name matching).
GROUPS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone",),
    "temporal attention": ("temporal", "temporal_pos"),
    "audio embed/final": ("audio_embedder", "audio_final_layer"),
    "audio LoRA": ("audio_lora",),
    "joint block adapters": ("joint",),
    "class table": ("class_offset",),
}


def _params(obj: nn.Module | nn.Parameter | None) -> list[nn.Parameter]:
    if obj is None:
        return []
    return [obj] if isinstance(obj, nn.Parameter) else list(obj.parameters())


def parameter_counts(cfg: Config) -> list[ParamRow]:
    """Rows (group, total, frozen, trainable) for the AV-DiT of ``cfg``, then a ``total`` row."""
    with torch.device("meta"):
        model = AVDiT.from_config(cfg)
    rows: list[ParamRow] = []
    seen: set[int] = set()
    for name, attrs in GROUPS.items():
        params = [p for a in attrs for p in _params(getattr(model, a))]
        seen.update(id(p) for p in params)
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append(ParamRow(name, total, total - trainable, trainable))
    unassigned = [n for n, p in model.named_parameters() if id(p) not in seen]
    if unassigned:  # a new module without a group: a bug in this table, not user input
        raise RuntimeError(f"parameters without a group in models/params.py: {unassigned[:4]}")
    rows.append(ParamRow("total", *(sum(getattr(r, k) for r in rows) for k in ("total", "frozen", "trainable"))))
    return rows
