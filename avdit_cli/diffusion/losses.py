"""Training losses for several modalities at once: DiT's hybrid loss (L_simple + L_vlb) per modality.

DiT builds its diffusion with ``LossType.MSE`` and learned-range variance (``diffusion/__init__.py``,
``create_diffusion``: ``rescale_learned_sigmas=False`` -> ``gd.LossType.MSE``); in
``gaussian_diffusion.py::training_losses`` that gives ``terms["loss"] = terms["mse"] + terms["vb"]`` with the VLB
term in bits per dim, computed on ``frozen_out = th.cat([model_output.detach(), model_var_values], dim=1)`` and
NOT multiplied by ``num_timesteps / 1000`` (that factor is only for ``RESCALED_MSE``). We do exactly that, per
modality, and combine modalities with weights and per-sample masks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping

import torch
from torch import Tensor

from avdit_cli.config import LossType
from avdit_cli.diffusion.gaussian import discretized_gaussian_log_likelihood, mean_flat, normal_kl, split_output

if TYPE_CHECKING:
    from avdit_cli.diffusion.schedule import Diffusion, ModelFn

LN2 = math.log(2.0)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (then moved), so a CPU
    generator gives the same numbers whatever device ``x`` is on."""
    if generator is None:
        return torch.randn_like(x)
    z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return z.to(device=x.device, dtype=x.dtype)


def vb_terms_bpd(
    diffusion: Diffusion, model_out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, channel_dim: int
) -> Tensor:
    """One VLB term per sample, in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or at t = 0 the
    decoder NLL -log p(x_0 | x_1) under the discretised Gaussian (IDDPM / DiT ``_vb_terms_bpd``). -> (b,)"""
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    p = diffusion.p_mean_variance(model_out, x_t, t, channel_dim, clip_denoised=False)
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / LN2
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)) / LN2
    return torch.where(t.to(kl.device) == 0, nll, kl)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (b,) values over the samples whose mask is set; 0 (still in the graph) when none is."""
    if mask is None:
        return values.mean()
    m = mask.to(device=values.device, dtype=values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def training_losses(
    diffusion: Diffusion,
    model_fn: ModelFn,
    x0: Mapping[str, Tensor],
    t: Mapping[str, Tensor],
    channel_dims: Mapping[str, int],
    *,
    noise: Mapping[str, Tensor] | None = None,
    weights: Mapping[str, float] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    loss_type: str | LossType = LossType.HYBRID,
    generator: torch.Generator | None = None,
    min_snr_gamma: float = 0.0,
    frame_masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Noise every modality to its t, run the model once on all of them, and score each.

    x0: clean latents per modality, e.g. video (b, f, c, h, w), audio (b, c, T, M); t: (b,) indices into
    ``diffusion`` per modality (the same tensor for joint training, different ones for independent timesteps);
    noise: optional fixed eps per modality (else drawn from ``generator`` in sorted modality order);
    masks: (b,) per modality, which samples count (e.g. clips whose audio is padded); weights: per modality
    (default 1).

    Per-frame timesteps: a video t of shape (b, f) (for x0 (b, f, c, h, w)) noises every frame to its own t
    (Diffusion Forcing, Chen et al. 2024, trains a video model so); each frame is scored as an image of its own
    and a sample's term is the mean over its frames that count, ``frame_masks[m]`` (b, f) (default all; a
    sample with none counts 0, so mask it out in ``masks`` too).

    min_snr_gamma: when > 0, each sample's eps MSE is weighted by ``min(SNR(t), gamma) / SNR(t)`` (Min-SNR-γ,
    Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", eq. for eps-prediction),
    SNR(t) = alpha_bar / (1 - alpha_bar): the nearly clean steps, whose large and noisy eps errors otherwise
    dominate the gradient, count less; the VLB term is left as it is.

    Returns per-sample (b,) terms ``NAME`` (the loss of that modality), ``NAME_mse`` (unweighted, for logs) and,
    for the hybrid loss with a learned variance, ``NAME_vb``; and the scalar ``loss`` = sum over modalities of
    weight x (masked mean over samples of NAME), the value to backpropagate.
    """
    loss_type = LossType(loss_type)
    names = sorted(x0)
    if set(t) != set(names) or set(channel_dims) < set(names):
        raise ValueError(
            f"x0 {names}, t {sorted(t)} and channel_dims {sorted(channel_dims)} must name the same modalities"
        )
    if noise is None:
        noise = {m: randn_like(x0[m], generator) for m in names}
    x_t = {m: diffusion.q_sample(x0[m], t[m], noise[m]) for m in names}
    out = model_fn(x_t, {m: diffusion.model_timesteps(t[m]) for m in names})

    terms: dict[str, Tensor] = {}
    loss = x0[names[0]].new_zeros(())
    for m in names:
        cd = channel_dims[m]
        # Score in the latents' dtype even when the model ran under bf16 autocast.
        model_out, xt_m, x0_m, noise_m, t_m = out[m].to(x_t[m].dtype), x_t[m], x0[m], noise[m], t[m]
        per_frame = t_m.ndim == 2
        if per_frame:  # score each frame as an image: (b, f, ...) -> ((b f), ...), its own t
            model_out, xt_m, x0_m, noise_m = (z.flatten(0, 1) for z in (model_out, xt_m, x0_m, noise_m))
            t_m, cd = t_m.flatten(), cd - 1
        eps, v = split_output(model_out, xt_m, cd, diffusion.learn_sigma)
        mse = mean_flat((noise_m - eps) ** 2)
        parts = {"mse": mse}
        total = mse if min_snr_gamma <= 0 else mse * min_snr_weight(diffusion, t_m, min_snr_gamma).to(mse)
        if loss_type is LossType.HYBRID and v is not None:
            # The VLB trains only the variance: the mean half is detached (DiT: frozen_out).
            frozen = torch.cat([eps.detach(), v], dim=cd)
            parts["vb"] = vb_terms_bpd(diffusion, frozen, x0_m, xt_m, t_m, cd)
            total = total + parts["vb"]
        parts[""] = total
        if per_frame:  # ((b f),) -> (b,): the mean over the frames that count
            fm = None if frame_masks is None else frame_masks.get(m)
            fm = (torch.ones(t[m].shape, device=mse.device) if fm is None else fm.to(mse.device)).to(mse.dtype)
            parts = {k: (p.view(fm.shape) * fm).sum(1) / fm.sum(1).clamp(min=1.0) for k, p in parts.items()}
        for k, p in parts.items():
            terms[f"{m}_{k}" if k else m] = p
        total = parts[""]
        weight = 1.0 if weights is None else float(weights.get(m, 1.0))
        loss = loss + weight * masked_mean(total, None if masks is None else masks.get(m))
    terms["loss"] = loss
    return terms


def min_snr_weight(diffusion: Diffusion, t: Tensor, gamma: float) -> Tensor:
    """(b,) Min-SNR-γ weights of eps-prediction losses at timesteps t: ``min(SNR, gamma) / SNR``."""
    ab = diffusion.alphas_cumprod[t.cpu()]  # float64 buffer on the CPU
    snr = ab / (1 - ab)
    return (snr.clamp(max=gamma) / snr).float().to(t.device)


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    modalities: Iterable[str],
    *,
    independent: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """t ~ U{0, ..., T-1} per sample: one draw shared by all modalities (joint training), or one per modality
    in sorted order (``independent``, DiffusionConfig.independent_timesteps). Drawn on the generator's device."""
    draw_device = generator.device if generator is not None else torch.device("cpu")
    names = sorted(modalities)

    def draw() -> Tensor:
        return torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=draw_device).to(device)

    if independent:
        return {m: draw() for m in names}
    shared = draw()
    return {m: shared.clone() for m in names}
