"""The hybrid loss against a hand computation, its gradient routing, masks, weights, loss types."""

from __future__ import annotations

import math

import pytest
import torch

from avdit_cli.diffusion import (
    Diffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
    respace,
    training_losses,
)

F64 = torch.float64
CD = {"video": 2, "audio": 1}


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(10, generator=g, dtype=F64), torch.randn(10, generator=g, dtype=F64)
    lv1, lv2 = torch.randn(10, generator=g, dtype=F64), torch.randn(10, generator=g, dtype=F64)
    expect = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expect)


def test_discretized_likelihood_is_a_distribution_over_256_bins():
    # The bins telescope (each bin's upper edge is the next bin's lower edge, the end bins take the tails),
    # so the probabilities of the 256 bin centres sum to exactly 1 for any mean and scale.
    centres = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in [(0.0, math.log(0.1)), (0.3, math.log(0.01)), (-0.9, math.log(2.0))]:
        lp = discretized_gaussian_log_likelihood(
            centres, torch.full_like(centres, mean), torch.full_like(centres, log_scale)
        )
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def _approx_cdf(x: float) -> float:
    return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def test_hybrid_loss_equals_a_hand_computation():
    """One modality (b=2, c=1, two elements each), t = [7, 0]: mse + VLB (KL at t=7, decoder NLL at t=0)."""
    d = Diffusion(torch.linspace(0.01, 0.2, 10, dtype=F64), learn_sigma=True)
    betas = [b.item() for b in d.betas]
    ab = [math.prod(1 - b for b in betas[: i + 1]) for i in range(10)]
    x0 = torch.tensor([[[0.5, -0.25]], [[0.1, 0.6]]], dtype=F64)  # (b, c, n)
    noise = torch.tensor([[[1.0, -0.5]], [[0.3, 2.0]]], dtype=F64)
    eps_hat = torch.tensor([[[0.8, -0.1]], [[0.0, 1.5]]], dtype=F64)
    v = torch.tensor([[[0.2, -0.6]], [[0.9, -1.0]]], dtype=F64)
    t = torch.tensor([7, 0])

    seen = {}

    def model_fn(x, tt):
        seen.update(x=x["a"], t=tt["a"])
        return {"a": torch.cat([eps_hat, v], dim=1)}

    terms = training_losses(d, model_fn, {"a": x0}, {"a": t}, {"a": 1}, noise={"a": noise})

    expect_mse, expect_vb = [], []
    for i, ti in enumerate(t.tolist()):
        a_t, a_prev = ab[ti], (ab[ti - 1] if ti > 0 else 1.0)
        beta = betas[ti]
        # posterior q(x_{t-1}|x_t,x0) by completing the square, with the clipped variance convention of DiT
        beta_tilde_1 = betas[1] * (1 - ab[0]) / (1 - ab[1])
        bits = []
        for j in range(2):
            x0j, nj, ej, vj = x0[i, 0, j].item(), noise[i, 0, j].item(), eps_hat[i, 0, j].item(), v[i, 0, j].item()
            xt = math.sqrt(a_t) * x0j + math.sqrt(1 - a_t) * nj
            assert seen["x"][i, 0, j].item() == pytest.approx(xt, rel=1e-12)

            def post_mean(x0_):
                return (beta * math.sqrt(a_prev) * x0_ + (1 - a_prev) * math.sqrt(1 - beta) * xt) / (1 - a_t)

            x0_hat = (xt - math.sqrt(1 - a_t) * ej) / math.sqrt(a_t)
            mu_p = post_mean(x0_hat)
            var_q = beta * (1 - a_prev) / (1 - a_t) if ti > 0 else beta_tilde_1
            frac = (vj + 1) / 2
            log_var_p = frac * math.log(beta) + (1 - frac) * math.log(var_q)
            if ti > 0:
                mu_q = post_mean(x0j)
                kl = 0.5 * (log_var_p - math.log(var_q) + (var_q + (mu_q - mu_p) ** 2) / math.exp(log_var_p) - 1)
                bits.append(kl / math.log(2))
            else:
                s = math.exp(0.5 * log_var_p)
                p = _approx_cdf((x0j - mu_p + 1 / 255) / s) - _approx_cdf((x0j - mu_p - 1 / 255) / s)
                bits.append(-math.log(p) / math.log(2))
        expect_vb.append(sum(bits) / 2)
        expect_mse.append(((noise[i] - eps_hat[i]) ** 2).mean().item())

    assert seen["t"].tolist() == [7, 0]
    torch.testing.assert_close(terms["a_mse"], torch.tensor(expect_mse, dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms["a_vb"], torch.tensor(expect_vb, dtype=F64), rtol=1e-9, atol=1e-12)
    # DiT (LossType.MSE with a learned range): loss = mse + vb, no num_timesteps / 1000 factor.
    torch.testing.assert_close(terms["a"], terms["a_mse"] + terms["a_vb"])
    assert terms["loss"].item() == pytest.approx(sum(expect_mse + expect_vb) / 2, rel=1e-9)


def _param_model(shapes: dict[str, tuple[int, ...]], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {m: (0.5 * torch.randn(s, generator=g)).requires_grad_() for m, s in shapes.items()}

    def model_fn(x, t):
        # Output depends on the parameters only, so gradients land on them directly.
        return {m: params[m] + 0 * x[m].sum() for m in x}

    return params, model_fn


def test_vlb_sends_no_gradient_to_the_mean_half_and_mse_none_to_the_variance_half():
    d = Diffusion.create(1000)
    g = torch.Generator().manual_seed(3)
    x0 = {"video": torch.randn(3, 2, 4, 2, 2, generator=g)}
    params, model_fn = _param_model({"video": (3, 2, 8, 2, 2)})
    t = {"video": torch.tensor([0, 10, 900])}
    terms = training_losses(d, model_fn, x0, t, CD, generator=g)
    (grad_vb,) = torch.autograd.grad(terms["video_vb"].sum(), params["video"], retain_graph=True)
    eps_half, var_half = grad_vb.split(4, dim=2)
    assert eps_half.abs().max().item() == 0.0
    assert var_half.abs().max().item() > 0.0
    (grad_mse,) = torch.autograd.grad(terms["video_mse"].sum(), params["video"])
    eps_half, var_half = grad_mse.split(4, dim=2)
    assert var_half.abs().max().item() == 0.0 and eps_half.abs().max().item() > 0.0


def test_masks_and_weights_combine_modalities():
    d = Diffusion.create(1000)
    g = torch.Generator().manual_seed(4)
    x0 = {"video": torch.randn(4, 2, 3, 2, 2, generator=g), "audio": torch.randn(4, 2, 3, 2, generator=g)}
    params, model_fn = _param_model({"video": (4, 2, 6, 2, 2), "audio": (4, 4, 3, 2)})
    t = {"video": torch.tensor([1, 50, 500, 999]), "audio": torch.tensor([3, 3, 3, 3])}
    mask = torch.tensor([True, False, True, False])
    terms = training_losses(
        d, model_fn, x0, t, CD, weights={"video": 0.5, "audio": 2.0}, masks={"audio": mask}, generator=g
    )
    for m in ("video", "audio"):
        assert terms[m].shape == (4,) and terms[f"{m}_mse"].shape == (4,) and terms[f"{m}_vb"].shape == (4,)
    expect = 0.5 * terms["video"].mean() + 2.0 * terms["audio"][mask].mean()
    torch.testing.assert_close(terms["loss"], expect)
    terms["loss"].backward()
    # Masked-out audio samples contribute nothing.
    assert params["audio"].grad[~mask].abs().max().item() == 0.0
    assert params["audio"].grad[mask].abs().max().item() > 0.0
    # A modality with no sample left counts zero (and does not divide by zero).
    params2, model_fn2 = _param_model({"video": (4, 2, 6, 2, 2), "audio": (4, 4, 3, 2)})
    none = training_losses(
        d, model_fn2, x0, t, CD, masks={"audio": torch.zeros(4, dtype=torch.bool)},
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(none["loss"], none["video"].mean())


def test_independent_timesteps_noise_each_modality_to_its_own_t():
    d = Diffusion.create(1000)
    x0 = {"video": torch.ones(2, 1, 1, 1, 1), "audio": torch.ones(2, 1, 1, 1)}
    noise = {"video": torch.zeros(2, 1, 1, 1, 1), "audio": torch.zeros(2, 1, 1, 1)}
    t = {"video": torch.tensor([0, 999]), "audio": torch.tensor([500, 1])}
    seen = {}

    def model_fn(x, tt):
        seen.update({m: (x[m].flatten().tolist(), tt[m].tolist()) for m in x})
        return {m: torch.zeros(2, *(2 * s if i == CD[m] - 1 else s for i, s in enumerate(x[m].shape[1:]))) for m in x}

    training_losses(d, model_fn, x0, t, CD, noise=noise)
    sab = d.sqrt_alphas_cumprod
    assert seen["video"][1] == [0, 999] and seen["audio"][1] == [500, 1]
    assert seen["video"][0] == pytest.approx([sab[0].item(), sab[999].item()], rel=1e-6)
    assert seen["audio"][0] == pytest.approx([sab[500].item(), sab[1].item()], rel=1e-6)


def test_mse_loss_type_and_fixed_variance():
    g = torch.Generator().manual_seed(5)
    x0 = {"audio": torch.randn(3, 2, 4, 4, generator=g)}
    t = {"audio": torch.tensor([0, 5, 700])}
    params, model_fn = _param_model({"audio": (3, 4, 4, 4)})
    terms = training_losses(Diffusion.create(1000), model_fn, x0, t, CD, loss_type="mse", generator=g)
    assert "audio_vb" not in terms
    torch.testing.assert_close(terms["audio"], terms["audio_mse"])
    # Without a learned variance the model outputs C channels; hybrid reduces to L_simple (as DiT).
    fixed = Diffusion.create(1000, learn_sigma=False)
    params, model_fn = _param_model({"audio": (3, 2, 4, 4)})
    terms = training_losses(fixed, model_fn, x0, t, CD, generator=g)
    assert "audio_vb" not in terms
    with pytest.raises(ValueError, match="channels"):
        training_losses(Diffusion.create(1000), model_fn, x0, t, CD, generator=g)


def test_seeded_noise_is_reproducible_and_respaced_chains_pass_original_timesteps():
    d = Diffusion.create(1000)
    x0 = {"audio": torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))}
    t = {"audio": torch.tensor([3, 9])}
    params, model_fn = _param_model({"audio": (2, 2, 4, 4)})
    a = training_losses(d, model_fn, x0, t, CD, generator=torch.Generator().manual_seed(7))
    b = training_losses(d, model_fn, x0, t, CD, generator=torch.Generator().manual_seed(7))
    c = training_losses(d, model_fn, x0, t, CD, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a["loss"], b["loss"]) and not torch.equal(a["loss"], c["loss"])
    spaced = respace(d, "10")
    seen = {}

    def spy(x, tt):
        seen["t"] = tt["audio"].tolist()
        return model_fn(x, tt)

    training_losses(spaced, spy, x0, t, CD, generator=torch.Generator().manual_seed(7))
    assert seen["t"] == spaced.timestep_map[[3, 9]].tolist() == [333, 999]


def test_min_snr_weighting_down_weights_only_the_nearly_clean_steps():
    from avdit_cli.diffusion.losses import min_snr_weight

    d = Diffusion.create(1000, "linear", 1e-4, 0.02, learn_sigma=True)
    t = torch.tensor([0, 10, 100, 300, 999])
    ab = d.alphas_cumprod[t]
    snr = ab / (1 - ab)
    w = min_snr_weight(d, t, 5.0)
    expected = torch.where(snr > 5, 5 / snr, torch.ones_like(snr)).float()
    torch.testing.assert_close(w, expected)
    assert w[0] < 0.01 and w[-1] == 1.0  # t = 0 has SNR ~1e4; t = 999 is pure noise

    # in training_losses: the weighted MSE is the loss, the logged MSE stays unweighted, the VLB is untouched
    g = torch.Generator().manual_seed(0)
    x0 = {"video": torch.randn(5, 2, 3, 4, 4, generator=g)}
    out = torch.randn(5, 2, 6, 4, 4, generator=g)
    kw = dict(noise={"video": torch.randn(5, 2, 3, 4, 4, generator=g)})
    plain = training_losses(d, lambda x, tt: {"video": out}, x0, {"video": t}, {"video": 2}, **kw)
    weighted = training_losses(d, lambda x, tt: {"video": out}, x0, {"video": t}, {"video": 2}, min_snr_gamma=5.0,
                               **kw)
    torch.testing.assert_close(weighted["video_mse"], plain["video_mse"])
    torch.testing.assert_close(weighted["video_vb"], plain["video_vb"])
    torch.testing.assert_close(weighted["video"], plain["video_mse"] * expected + plain["video_vb"])
