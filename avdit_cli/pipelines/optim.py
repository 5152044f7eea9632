"""Learning-rate schedules and the EMA of the trained weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from avdit_cli.config import LrSchedule, TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warmup, then constant or cosine to 0."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.lr_schedule is LrSchedule.COSINE:
        span = max(1, train.steps - train.warmup_steps)
        progress = min(1.0, (step - train.warmup_steps) / span)
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.lr


class EMA:
    """Exponential moving average of named parameters, kept in float32 beside the model.

    The EMA starts equal to the initial weights and is updated after every optimiser step:
    ``ema = decay_n * ema + (1 - decay_n) * param``, with ``decay_n = decay``, or with ``warmup`` the rule of
    diffusers' ``EMAModel`` (``use_ema_warmup=False``): 0 for the first update (the EMA becomes the weights),
    then ``min(decay, (1 + n) / (10 + n))`` for update n (0-based), so early updates average rather than decay.
    Without it the initial weights keep ``decay^n`` of the average after n updates.
    """

    def __init__(self, named: dict[str, nn.Parameter], decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.params = named
        self.shadow = {k: p.detach().float().clone() for k, p in named.items()}

    def decay_at(self, n: int) -> float:
        """The decay of update n (0-based): what is kept of the average so far."""
        if not self.warmup:
            return self.decay
        return 0.0 if n <= 0 else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, n: int) -> None:
        """Update n (0-based; the optimiser step just taken, so a resumed run continues the same decays)."""
        keys = list(self.params)
        # One fused call over all tensors (the trainable set is hundreds of small tensors).
        torch._foreach_lerp_([self.shadow[k] for k in keys], [self.params[k].detach().float() for k in keys],
                             1.0 - self.decay_at(n))

    def initial_share(self, steps: int) -> float:
        """The weight the initial parameters still have in the average after `steps` updates."""
        if not self.warmup:
            return self.decay ** steps
        return 1.0 if steps <= 0 else 0.0  # the first warmup update replaces the start

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(sd)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for k in self.shadow:
            if sd[k].shape != self.shadow[k].shape:
                raise KeyError(f"EMA tensor {k} has shape {tuple(sd[k].shape)}, expected {tuple(self.shadow[k].shape)}")
            self.shadow[k].copy_(sd[k])
