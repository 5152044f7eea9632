"""Gaussian maths shared by the losses and the samplers: KL, discretised likelihood, output splitting.

Pure tensor functions with no schedule state, following IDDPM / DiT ``diffusion_utils.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dim but the batch: (b, ...) -> (b,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF that IDDPM and DiT use (kept for their numbers)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales)), elementwise.

    The two edge bins take the whole tails, as in IDDPM. DiT applies it to latents unchanged; so do we.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def split_output(out: Tensor, x: Tensor, channel_dim: int, learn_sigma: bool) -> tuple[Tensor, Tensor | None]:
    """Split a model output into (eps, v): v is the variance interpolation in [-1, 1], None when not learned.

    ``out`` has 2C channels on ``channel_dim`` when the variance is learned (eps first, as DiT), C otherwise,
    where C is ``x``'s channel count there.
    """
    c = x.shape[channel_dim]
    want = 2 * c if learn_sigma else c
    if out.shape[channel_dim] != want or out.shape[0] != x.shape[0] or out.ndim != x.ndim:
        raise ValueError(
            f"model output of shape {tuple(out.shape)} does not fit input {tuple(x.shape)}: expected {want} channels "
            f"on dim {channel_dim} ({'eps + variance' if learn_sigma else 'eps only'})"
        )
    if not learn_sigma:
        return out, None
    eps, v = out.split(c, dim=channel_dim)
    return eps, v
