"""Closed-form checks of the schedule, q, the posterior, eps<->x0, p's variance, respacing, timestep sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avdit_cli.config import load_preset
from avdit_cli.diffusion import (
    Diffusion,
    VarianceType,
    cosine_betas,
    linear_betas,
    respace,
    sample_timesteps,
    space_timesteps,
)
from avdit_cli.errors import ConfigError

F64 = torch.float64


@pytest.fixture(scope="module")
def diffusion() -> Diffusion:
    return Diffusion.create(1000, "linear", 1e-4, 0.02, learn_sigma=True)


def test_linear_betas_match_ho_and_scale_with_t():
    b = linear_betas(1000)
    assert b.dtype == F64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, abs=1e-18) and b[-1].item() == pytest.approx(0.02, abs=1e-18)
    assert torch.allclose(torch.diff(b), torch.full((999,), (0.02 - 1e-4) / 999, dtype=F64), atol=1e-17)
    # DiT: for T steps the ends are scaled by 1000 / T so the schedule keeps its shape.
    b250 = linear_betas(250)
    assert b250[0].item() == pytest.approx(4e-4) and b250[-1].item() == pytest.approx(0.08)


def test_alphas_cumprod_of_linear_betas_is_the_running_product(diffusion):
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    for t in (0, 1, 10, 499, 999):
        expect = math.prod(1 - b for b in betas[: t + 1])
        assert diffusion.alphas_cumprod[t].item() == pytest.approx(expect, rel=1e-12)
    assert diffusion.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1])
    assert diffusion.alphas_cumprod.dtype == F64


def test_cosine_alphas_cumprod_telescopes_to_alpha_bar():
    T = 1000
    d = Diffusion(cosine_betas(T))
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # Away from the capped last betas (max_beta 0.999), prod(1 - beta) = f((t+1)/T) / f(0).
    for t in (0, 100, 500, 900, 980):
        assert d.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-10)
    assert d.betas.max().item() <= 0.999


def test_posterior_is_the_gaussian_product(diffusion):
    """q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0, 1 - ab_{t-1})."""
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 7, 250, 999])
    x0 = torch.randn(4, 3, 2, generator=g, dtype=F64)
    xt = torch.randn(4, 3, 2, generator=g, dtype=F64)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
    beta = diffusion.betas[t].view(-1, 1, 1)
    alpha = 1 - beta
    ab_prev = diffusion.alphas_cumprod[t - 1].view(-1, 1, 1)
    precision = alpha / beta + 1 / (1 - ab_prev)
    expect_var = 1 / precision
    expect_mean = expect_var * (alpha.sqrt() * xt / beta + ab_prev.sqrt() * x0 / (1 - ab_prev))
    torch.testing.assert_close(mean, expect_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, expect_var.expand_as(xt), rtol=1e-12, atol=0)
    torch.testing.assert_close(log_var, expect_var.log().expand_as(xt), rtol=1e-12, atol=1e-12)
    # At t = 0 the posterior is a point mass; its log-variance is clipped to beta~_1 (DiT).
    _, var0, log_var0 = diffusion.q_posterior_mean_variance(x0[:1], xt[:1], torch.tensor([0]))
    assert var0.abs().max().item() == 0.0
    assert log_var0[0, 0, 0].item() == pytest.approx(math.log(diffusion.posterior_variance[1].item()))


def test_q_sample_and_eps_x0_conversions_round_trip(diffusion):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 3, 500, 999])
    x0 = torch.randn(4, 5, generator=g, dtype=F64)
    eps = torch.randn(4, 5, generator=g, dtype=F64)
    xt = diffusion.q_sample(x0, t, eps)
    ab = diffusion.alphas_cumprod[t].view(-1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(xt, t, x0), eps, rtol=1e-9, atol=1e-9)


def test_coefficients_are_gathered_into_the_input_dtype(diffusion):
    x = torch.ones(2, 3, dtype=torch.float32)
    t = torch.tensor([10, 900])
    out = diffusion.q_sample(x, t, torch.zeros_like(x))
    assert out.dtype == torch.float32
    assert out[1, 0].item() == pytest.approx(diffusion.sqrt_alphas_cumprod[900].item(), rel=1e-6)
    assert diffusion.betas.dtype == F64 and diffusion.betas.device.type == "cpu"


def test_p_mean_variance_learned_range_spans_the_two_bounds(diffusion):
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([5, 600])
    x = torch.randn(2, 3, 4, generator=g, dtype=F64)  # (b, c, n): channels on dim 1
    eps = torch.randn(2, 3, 4, generator=g, dtype=F64)
    lo = diffusion.p_mean_variance(torch.cat([eps, -torch.ones_like(eps)], 1), x, t, channel_dim=1)
    hi = diffusion.p_mean_variance(torch.cat([eps, torch.ones_like(eps)], 1), x, t, channel_dim=1)
    mid = diffusion.p_mean_variance(torch.cat([eps, torch.zeros_like(eps)], 1), x, t, channel_dim=1)
    beta = diffusion.betas[t].view(-1, 1, 1)
    beta_tilde = diffusion.posterior_variance[t].view(-1, 1, 1)
    torch.testing.assert_close(hi.variance, beta.expand_as(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(lo.variance, beta_tilde.expand_as(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(mid.variance, (beta * beta_tilde).sqrt().expand_as(x), rtol=1e-12, atol=0)
    # The mean is the posterior mean at the predicted x_0, whatever the variance.
    x0_hat = diffusion.predict_x0_from_eps(x, t, eps)
    expect, _, _ = diffusion.q_posterior_mean_variance(x0_hat, x, t)
    torch.testing.assert_close(lo.mean, expect)
    torch.testing.assert_close(hi.mean, expect)
    torch.testing.assert_close(lo.pred_x0, x0_hat)
    with pytest.raises(ValueError, match="channels"):
        diffusion.p_mean_variance(eps, x, t, channel_dim=1)  # C channels where 2C are expected


def test_fixed_variances_when_not_learned():
    large = Diffusion.create(1000, learn_sigma=False)
    small = Diffusion.create(1000, learn_sigma=False, sigma_small=True)
    assert large.variance_type is VarianceType.FIXED_LARGE and small.variance_type is VarianceType.FIXED_SMALL
    x = torch.zeros(2, 3, dtype=F64)
    t = torch.tensor([0, 400])
    p_large = large.p_mean_variance(torch.zeros_like(x), x, t, channel_dim=1)
    p_small = small.p_mean_variance(torch.zeros_like(x), x, t, channel_dim=1)
    assert p_large.variance[1, 0].item() == pytest.approx(large.betas[400].item())
    assert p_large.variance[0, 0].item() == pytest.approx(large.posterior_variance[1].item())  # DiT's first entry
    assert p_small.variance[1, 0].item() == pytest.approx(small.posterior_variance[400].item())


def test_space_timesteps_follows_iddpm():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and min(kept) == 0 and max(kept) == 999
    assert sorted(kept)[:4] == [0, 4, 8, 12]  # stride 999/249 = 4.012, rounded
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, 1000) == set(range(1000))
    sections = sorted(space_timesteps(1000, "10,15,20"))
    assert len(sections) == 45
    assert [s for s in sections if s < 334] == sorted({round(i * 333 / 9) for i in range(10)})
    with pytest.raises(ConfigError, match="ddim600"):
        space_timesteps(1000, "ddim600")
    with pytest.raises(ConfigError):
        space_timesteps(10, "20")
    with pytest.raises(ConfigError):
        space_timesteps(1000, "fast")


def test_respaced_chain_keeps_alphas_cumprod_and_maps_timesteps(diffusion):
    spaced = respace(diffusion, "250")
    kept = torch.tensor(sorted(space_timesteps(1000, "250")))
    assert spaced.num_timesteps == 250
    assert torch.equal(spaced.timestep_map, kept)
    torch.testing.assert_close(spaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert spaced.learn_sigma and spaced.variance_type is VarianceType.LEARNED_RANGE
    # Indices of the short chain go to the model as original timesteps.
    assert spaced.model_timesteps(torch.tensor([0, 1, 249])).tolist() == [0, int(kept[1]), 999]
    # Respacing a respaced chain composes the maps.
    twice = spaced.respaced([0, 100, 249])
    assert twice.timestep_map.tolist() == [0, int(kept[100]), 999]
    torch.testing.assert_close(twice.alphas_cumprod, diffusion.alphas_cumprod[twice.timestep_map], rtol=1e-12, atol=0)


def test_from_config_reads_diffusion_section():
    cfg = load_preset("tiny")
    d = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    assert d.num_timesteps == cfg.diffusion.num_timesteps
    expect = np.linspace(
        cfg.diffusion.beta_start * 1000 / d.num_timesteps,
        cfg.diffusion.beta_end * 1000 / d.num_timesteps,
        d.num_timesteps,
    )
    np.testing.assert_array_equal(d.betas.numpy(), expect)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_timesteps_shared_or_independent():
    g = torch.Generator().manual_seed(0)
    shared = sample_timesteps(512, 1000, ["video", "audio"], generator=g)
    assert torch.equal(shared["video"], shared["audio"])
    assert shared["video"].dtype == torch.int64 and shared["video"].shape == (512,)
    assert 0 <= shared["video"].min().item() and shared["video"].max().item() <= 999
    indep = sample_timesteps(512, 1000, ["video", "audio"], independent=True, generator=g)
    assert not torch.equal(indep["video"], indep["audio"])
    again = sample_timesteps(512, 1000, ["audio", "video"], independent=True, generator=_g(0))
    first = sample_timesteps(512, 1000, ["video", "audio"], independent=True, generator=_g(0))
    assert all(torch.equal(again[m], first[m]) for m in first)  # order of names does not matter
    # Roughly uniform: every decile of 0..999 is hit, small T covers every value.
    small = sample_timesteps(4000, 4, ["v"], generator=g)["v"]
    counts = torch.bincount(small, minlength=4)
    assert counts.min().item() > 800  # expected 1000 each, sd ~ 27


def test_too_few_linear_steps_is_a_config_error():
    with pytest.raises(ConfigError, match="num_timesteps"):
        Diffusion.create(10, "linear", 1e-4, 0.02)
