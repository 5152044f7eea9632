"""Noise schedules and the Gaussian diffusion process q(x_t | x_0) with its posterior (DESIGN section 3).

Numerics follow DiT's ``diffusion/gaussian_diffusion.py`` (itself IDDPM's): buffers are float64, on the CPU, and
each call gathers the rows it needs into the input's dtype and device. A :class:`Diffusion` built by
:meth:`Diffusion.respaced` walks a subset of the original timesteps; ``timestep_map`` turns its indices back into
original timesteps, which is what the model is always given (IDDPM's ``_WrappedModel`` with
``rescale_timesteps=False``, as DiT uses).

Shapes: a modality tensor is (b, ...) with its channels on some dim (video (b, f, c, h, w), audio (b, c, T, M));
``t`` is (b,) int64 indices into this schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from avdit_cli.config import BetaSchedule, DiffusionConfig
from avdit_cli.diffusion.gaussian import split_output
from avdit_cli.errors import ConfigError

# A denoiser: noisy latents per modality and original-scale timesteps per modality (each (b,)) ->
# outputs per modality (2C channels on the modality's channel dim when the variance is learned).
ModelFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Mapping[str, Tensor]]


def x0_bounds(clip: bool | tuple[float, float] | None) -> tuple[float, float] | None:
    """The range an x_0 prediction is clamped to: ``True`` is [-1, 1] (IDDPM's ``clip_denoised``), a pair is
    itself, ``False`` / ``None`` is no clamp."""
    if clip is True:
        return (-1.0, 1.0)
    if not clip:
        return None
    return (float(clip[0]), float(clip[1]))


# ----------------------------------------------------------------------------------------------------------
# Beta schedules
# ----------------------------------------------------------------------------------------------------------
def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al.'s linear schedule, rescaled so it stays similar for any T (DiT ``get_named_beta_schedule``).

    With T = 1000 this is exactly ``linspace(beta_start, beta_end, 1000)``. numpy's linspace is used so the
    values are bit-identical to DiT's.
    """
    scale = 1000.0 / num_timesteps
    if scale * beta_end >= 1:
        raise ConfigError(
            f"diffusion.num_timesteps: {num_timesteps} steps scale beta_end {beta_end} to {scale * beta_end:g} >= 1; "
            "use more steps or a smaller beta_end"
        )
    return torch.from_numpy(np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64))


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> Tensor:
    """Discretise a continuous alpha_bar(s), s in [0, 1], into T betas, each capped at ``max_beta`` (IDDPM)."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def cosine_betas(num_timesteps: int) -> Tensor:
    """IDDPM's cosine schedule (DiT's ``squaredcos_cap_v2``): alpha_bar(s) = cos²((s + 0.008) / 1.008 · π/2)."""
    return betas_for_alpha_bar(num_timesteps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)


def get_betas(
    schedule: str | BetaSchedule, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """(T,) float64 betas for a named schedule ('linear' uses beta_start/beta_end; 'cosine' ignores them)."""
    schedule = BetaSchedule(schedule)
    if schedule is BetaSchedule.LINEAR:
        return linear_betas(num_timesteps, beta_start, beta_end)
    return cosine_betas(num_timesteps)


# ----------------------------------------------------------------------------------------------------------
# The process
# ----------------------------------------------------------------------------------------------------------
class VarianceType(str, Enum):
    LEARNED_RANGE = "learned-range"  # DiT: the model interpolates log-variance between the two bounds below
    FIXED_SMALL = "fixed-small"  # the posterior variance beta~_t
    FIXED_LARGE = "fixed-large"  # beta_t (IDDPM's default when the variance is not learned)


@dataclass(frozen=True)
class PMeanVariance:
    """p(x_prev | x_t) for one modality: all tensors have x_t's shape."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    eps: Tensor


class Diffusion:
    """A discrete Gaussian diffusion: betas and every derived float64 buffer, plus the timestep map.

    Build it with :meth:`create` or :meth:`from_config`; sampling uses :meth:`respaced` copies.
    """

    def __init__(
        self,
        betas: Tensor | np.ndarray | Iterable[float],
        *,
        learn_sigma: bool = True,
        sigma_small: bool = False,
        timestep_map: Tensor | Iterable[int] | None = None,
    ) -> None:
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64) if not isinstance(betas, Tensor) else betas)
        betas = betas.detach().to(device="cpu", dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(len(betas))
        self.learn_sigma = learn_sigma
        self.variance_type = (
            VarianceType.LEARNED_RANGE
            if learn_sigma
            else (VarianceType.FIXED_SMALL if sigma_small else VarianceType.FIXED_LARGE)
        )
        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.int64).cpu()
        if self.timestep_map.shape != betas.shape:
            raise ValueError("timestep_map must have one entry per beta")

        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = ac_prev
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_mean_coef1 = betas * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac)
        self.log_betas = betas.log()
        if self.num_timesteps > 1:
            # beta~_0 = 0: its log is clipped to beta~_1, as DiT does (only the t = 0 decoder term sees it).
            pv1 = self.posterior_variance[1:2]
            self.posterior_log_variance_clipped = torch.cat([pv1, self.posterior_variance[1:]]).log()
            self.fixed_large_variance = torch.cat([pv1, betas[1:]])  # DiT's FIXED_LARGE, same first entry
        else:  # a one-step chain: no posterior to borrow from; fall back to beta (the step adds no noise anyway)
            self.posterior_log_variance_clipped = self.log_betas.clone()
            self.fixed_large_variance = betas.clone()

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        num_timesteps: int = 1000,
        beta_schedule: str | BetaSchedule = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        learn_sigma: bool = True,
        sigma_small: bool = False,
    ) -> "Diffusion":
        return cls(
            get_betas(beta_schedule, num_timesteps, beta_start, beta_end), learn_sigma=learn_sigma,
            sigma_small=sigma_small,
        )

    @classmethod
    def from_config(cls, cfg: DiffusionConfig, learn_sigma: bool = True) -> "Diffusion":
        """``learn_sigma`` lives on ``ModelConfig`` (it decides the output channels): pass ``cfg.model.learn_sigma``."""
        return cls.create(cfg.num_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end, learn_sigma=learn_sigma)

    def respaced(self, use_timesteps: Iterable[int]) -> "Diffusion":
        """A chain over the kept indices of this one: same alphas_cumprod there, new betas between (IDDPM)."""
        kept = sorted(set(int(i) for i in use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"timesteps to keep must lie in [0, {self.num_timesteps - 1}], got {kept[:3]}...")
        ac = self.alphas_cumprod[kept]
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        return Diffusion(
            1.0 - ac / ac_prev,
            learn_sigma=self.learn_sigma,
            sigma_small=self.variance_type is VarianceType.FIXED_SMALL,
            timestep_map=self.timestep_map[kept],
        )

    # -- helpers ----------------------------------------------------------------------------------------
    def model_timesteps(self, t: Tensor) -> Tensor:
        """Indices into this chain -> the original timesteps the model was trained on; same device as ``t``."""
        return self.timestep_map[t.detach().cpu()].to(t.device)

    @staticmethod
    def gather(buf: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """buf[t] as (*t.shape, 1, ..., 1) in x's dtype and device, ready to broadcast against x: t is (b,) for
        one timestep per sample, or (b, f) for one per frame of video (b, f, c, h, w)."""
        vals = buf[t.detach().cpu().long()].to(device=x.device, dtype=x.dtype)
        return vals.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))

    # -- q ----------------------------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps."""
        return self.gather(self.sqrt_alphas_cumprod, t, x0) * x0 + self.gather(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        coef1 = self.gather(self.posterior_mean_coef1, t, x_t)
        coef2 = self.gather(self.posterior_mean_coef2, t, x_t)
        mean = coef1 * x0 + coef2 * x_t
        var = self.gather(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = self.gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self.gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        ) * eps

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (self.gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self.gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    # -- p ----------------------------------------------------------------------------------------------
    def p_mean_variance(
        self, model_out: Tensor, x_t: Tensor, t: Tensor, channel_dim: int,
        clip_denoised: bool | tuple[float, float] | None = False,
    ) -> PMeanVariance:
        """p(x_{t-1} | x_t) from one modality's model output (eps, plus v in [-1, 1] when learned).

        Learned range (DiT): frac = (v + 1) / 2, log var = frac log beta_t + (1 - frac) log beta~_t (clipped).
        ``clip_denoised`` clamps the x_0 prediction: ``True`` to [-1, 1] (IDDPM's pixel-space sampling), a
        ``(low, high)`` pair to that range; DiT's latent sampling leaves it off.
        """
        eps, v = split_output(model_out, x_t, channel_dim, self.learn_sigma)
        if self.variance_type is VarianceType.LEARNED_RANGE:
            assert v is not None  # split_output returns v whenever learn_sigma
            min_log = self.gather(self.posterior_log_variance_clipped, t, x_t)
            max_log = self.gather(self.log_betas, t, x_t)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
            var = torch.exp(log_var)
        else:
            if self.variance_type is VarianceType.FIXED_SMALL:
                table, log_table = self.posterior_variance, self.posterior_log_variance_clipped
            else:
                table, log_table = self.fixed_large_variance, self.fixed_large_variance.log()
            var = self.gather(table, t, x_t).expand_as(x_t)
            log_var = self.gather(log_table, t, x_t).expand_as(x_t)
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        bounds = x0_bounds(clip_denoised)
        if bounds is not None:
            pred_x0 = pred_x0.clamp(*bounds)
            eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return PMeanVariance(mean=mean, variance=var, log_variance=log_var, pred_x0=pred_x0, eps=eps)

    def __repr__(self) -> str:
        return (
            f"Diffusion(num_timesteps={self.num_timesteps}, variance={self.variance_type.value}, "
            f"timesteps {int(self.timestep_map[0])}..{int(self.timestep_map[-1])})"
        )
