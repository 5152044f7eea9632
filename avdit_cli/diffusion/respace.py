"""Which timesteps a shortened sampling chain keeps (IDDPM / DiT ``respace.py``).

``space_timesteps(1000, "250")`` keeps 250 evenly spread steps (DiT's default sampling), ``"ddim50"`` keeps an
integer stride (range(0, 1000, 20)), ``"trailing20"`` keeps diffusers' trailing spacing (999, 949, ..., 49),
``"10,15,20"`` or ``[10, 15, 20]`` split the chain into equal sections with that many steps each. :meth:`Diffusion.respaced` builds the shortened chain from the kept set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from avdit_cli.diffusion.schedule import Diffusion
from avdit_cli.errors import ConfigError


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> set[int]:
    """The set of original timesteps to keep.

    Rounding follows IDDPM exactly (a running float stride, Python's round) so the kept steps are DiT's.
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("trailing"):
            try:
                desired = int(text[len("trailing"):])
            except ValueError:
                raise ConfigError(f"timestep spacing {text!r}: expected 'trailingN', e.g. trailing20") from None
            if not 1 <= desired <= num_timesteps:
                raise ConfigError(f"timestep spacing {text!r}: need 1 to {num_timesteps} steps")
            return trailing_timesteps(num_timesteps, desired)
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim"):])
            except ValueError:
                raise ConfigError(f"timestep spacing {text!r}: expected 'ddimN', e.g. ddim50") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ConfigError(
                f"timestep spacing {text!r}: no integer stride gives exactly {desired} of {num_timesteps} steps; "
                f"use a plain step count (e.g. {desired}) instead"
            )
        try:
            section_counts = [int(x) for x in text.split(",")]
        except ValueError:
            raise ConfigError(
                f"timestep spacing {text!r}: expected a step count (250), sections (10,15,20) or ddimN"
            ) from None
    counts = list(section_counts)
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"timestep spacing {counts}: every section needs at least one step")
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(
                f"timestep spacing: cannot take {count} steps from a section of {size} (of {num_timesteps})"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return set(kept)


def trailing_timesteps(num_timesteps: int, steps: int) -> set[int]:
    """``steps`` timesteps ending at T - 1 with stride T / steps: diffusers' ``timestep_spacing="trailing"``
    (Lin et al. 2023, table 2), ``round(arange(T, 0, -T / steps)) - 1``. The lowest kept step is about
    T / steps - 1, from which the ODE samplers take their last step straight to the clean data.
    """
    # diffusers builds it with np.arange(T, 0, -T / steps), whose float length can come out one too long; take
    # exactly `steps` values with numpy's own fill rule (start + i * (second - start)) so the rounding matches.
    delta = (num_timesteps - num_timesteps / steps) - num_timesteps
    kept = np.round(num_timesteps + np.arange(steps) * delta).astype(np.int64) - 1
    return {int(k) for k in kept}


def respace(diffusion: Diffusion, section_counts: str | int | Sequence[int]) -> Diffusion:
    """``diffusion`` shortened to the steps :func:`space_timesteps` keeps."""
    return diffusion.respaced(space_timesteps(diffusion.num_timesteps, section_counts))
