"""Staggered frame noise levels: the "pyramid" pattern of Diffusion Forcing (Chen et al. 2024, "Diffusion
Forcing: Next-token Prediction Meets Full-Sequence Diffusion"), shared by training and sampling so that the
sampler only ever asks the model for patterns it was trained on.

A clip's frames move along one clock ``tau``; frame i of f runs ``spread x i / (f - 1)`` behind frame 0:

    u_i = clamp(tau - spread i / (f - 1), 0, 1)        progress: 0 pure noise, 1 clean

and progress maps to a timestep on the trailing grid, ``t = round((1 - u) T) - 1``: u = 0 is t = T - 1 and
u = 1 is t = -1, "clean" (fed to the model as given at t = 0, and not scored in training). ``spread = 0`` is
plain full-sequence diffusion, every frame at one t.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLEAN = -1  # the timestep of a finished (given) frame


def stagger_progress(tau: Tensor, num_frames: int, spread: Tensor | float) -> Tensor:
    """Per-frame progress u (..., f) in [0, 1] for clocks ``tau`` (...) and ``spread`` (... or a float)."""
    offsets = torch.arange(num_frames, dtype=torch.float64, device=tau.device) / max(num_frames - 1, 1)
    spread = torch.as_tensor(spread, dtype=torch.float64, device=tau.device)
    return (tau.double()[..., None] - spread[..., None] * offsets).clamp(0.0, 1.0)


def progress_to_timestep(u: Tensor, num_timesteps: int) -> Tensor:
    """Progress u in [0, 1] -> long timesteps in [-1, T - 1] (``CLEAN`` = -1 is a finished frame)."""
    return (torch.round((1.0 - u.double()) * num_timesteps) - 1).long().clamp(CLEAN, num_timesteps - 1)


def staggered_chain(num_frames: int, steps: int, spread: float, num_timesteps: int) -> Tensor:
    """(n + 1, f) long timesteps of a staggered sampling chain, from all frames at T - 1 (row 0) to all clean
    (row n): the clock tau moves (1 + spread) / round(steps x (1 + spread)) per row, so each frame passes
    through about ``steps`` distinct timesteps, as an unstaggered chain of ``steps`` does. A row that moves no
    frame (a spread wider than the frames' offsets leaves gaps in which every frame is done or not started) is
    dropped: consecutive rows always differ, so no model call is repeated."""
    if steps < 1 or spread < 0:
        raise ValueError(f"need steps >= 1 and spread >= 0, got steps={steps}, spread={spread}")
    n = max(1, round(steps * (1 + spread)))
    tau = torch.linspace(0.0, 1.0 + spread, n + 1, dtype=torch.float64)
    chain = progress_to_timestep(stagger_progress(tau, num_frames, spread), num_timesteps)
    moves = torch.cat([torch.ones(1, dtype=torch.bool), (chain[1:] != chain[:-1]).any(dim=1)])
    return chain[moves]


def draw_stagger(num_frames: int, max_spread: float, num_timesteps: int, generator: torch.Generator) -> Tensor:
    """(f,) long timesteps of one training clip: spread ~ U[0, max_spread], tau ~ U[0, 1 + spread - 1/T), so
    the last frame is never clean and every staggered clip has a frame to score; frames at ``CLEAN`` (-1) are
    given clean."""
    spread = float(torch.rand((), generator=generator, dtype=torch.float64)) * max_spread
    tau = torch.rand((), generator=generator, dtype=torch.float64) * (1.0 + spread - 1.0 / num_timesteps)
    return progress_to_timestep(stagger_progress(tau, num_frames, spread), num_timesteps)
