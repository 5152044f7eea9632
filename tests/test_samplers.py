"""Samplers against known answers (Gaussian and mixture data with their exact eps-predictors), against diffusers'
schedulers, and the mechanics: conditional modes, determinism, guidance, progress."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avdit_cli.diffusion import Diffusion, classifier_free_guidance, respace, sample, space_timesteps
from avdit_cli.diffusion.samplers import default_respacing

CD = {"video": 2, "audio": 1}
# Data per modality: x0 ~ N(MU, S²) independently per element. S <= 1 so the exact DDPM reverse variance lies
# inside DiT's learned range [beta~, beta] (see _gaussian_model).
MU = {"video": 0.3, "audio": -0.2}
S = {"video": 0.5, "audio": 0.8}
N = 2000  # clips; 16 elements each per modality -> 32,000 iid draws per modality
SHAPES = {"video": (N, 2, 2, 2, 2), "audio": (N, 2, 2, 4)}  # (b, f, c, h, w), (b, c, T, M)


@pytest.fixture(scope="module")
def diffusion() -> Diffusion:
    return Diffusion.create(1000, "linear", 1e-4, 0.02, learn_sigma=True)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def _gaussian_model(base: Diffusion, chain: Diffusion):
    """The exact optimal model for Gaussian data, given original-scale t (as the samplers must pass it).

    eps half: E[eps | x_t] = sqrt(1-ab) (x_t - sqrt(ab) mu) / (ab s² + 1 - ab).
    variance half: for Gaussian data the true reverse step between kept steps i -> i-1 of ``chain`` is Gaussian
    with variance Var(x_prev | x_t) = v β / ((1-β) v + β), v = Var(x_prev) = ab_prev s² + 1 - ab_prev, β the
    chain's beta. It increases with v, equals β~ at v = 1 - ab_prev (s = 0) and β at v = 1 (s = 1), so for
    s <= 1 it lies in [β~, β] and maps to v_half = 2 frac - 1 in [-1, 1] exactly: every DDPM step is then the
    exact reverse transition, and DDPM must reproduce the data up to Monte Carlo error.
    """
    ab_all = base.alphas_cumprod
    index = torch.zeros(base.num_timesteps, dtype=torch.long)
    index[chain.timestep_map] = torch.arange(chain.num_timesteps)

    def model_fn(x, t):
        out = {}
        for m, xm in x.items():
            ab = _bcast(ab_all[t[m].cpu()], xm)
            eps = (1 - ab).sqrt() * (xm - ab.sqrt() * MU[m]) / (ab * S[m] ** 2 + 1 - ab)
            i = index[t[m].cpu()]
            beta, ab_prev = chain.betas[i], chain.alphas_cumprod_prev[i]
            v_prev = ab_prev * S[m] ** 2 + 1 - ab_prev
            var = v_prev * beta / ((1 - beta) * v_prev + beta)
            lo, hi = chain.posterior_log_variance_clipped[i], chain.log_betas[i]
            frac = ((var.log() - lo) / (hi - lo)).clamp(0, 1)  # clamps only at i = 0, which adds no noise
            v = _bcast(2 * frac - 1, xm).expand_as(xm)
            out[m] = torch.cat([eps, v], dim=CD[m])
        return out

    return model_fn


def _initial_noise(seed: int, shapes) -> dict[str, torch.Tensor]:
    """x_T as the samplers draw it: from the seeded CPU generator, modalities in sorted order."""
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(shapes[m], generator=g) for m in sorted(shapes)}


def _run(diffusion, sampler, steps, seed=0, shapes=SHAPES):
    chain = respace(diffusion, default_respacing(sampler, steps))
    return sample(
        _gaussian_model(diffusion, chain), shapes, CD, diffusion, sampler=sampler, steps=steps,
        generator=torch.Generator().manual_seed(seed),
    )


def _affine_error(diffusion, sampler, steps, shapes=SHAPES):
    """For a deterministic sampler and this linear model, output = A x_T + B per element. Fit A, B against
    the reconstructed x_T and compare with the exact probability-flow map from the first kept step t_s:
    A* = s / sqrt(ab s² + 1 - ab), B* = mu - A* sqrt(ab) mu. Returns {m: (A - A*, B - B*)}: the pure
    discretisation error, free of Monte Carlo noise."""
    out = _run(diffusion, sampler, steps, shapes=shapes)
    x_t = _initial_noise(0, shapes)
    t_s = int(respace(diffusion, default_respacing(sampler, steps)).timestep_map[-1])
    ab = diffusion.alphas_cumprod[t_s].item()
    errors = {}
    for m in shapes:
        x, y = x_t[m].double().flatten(), out[m].double().flatten()
        a = ((y - y.mean()) * (x - x.mean())).sum() / ((x - x.mean()) ** 2).sum()
        b = y.mean() - a * x.mean()
        assert (y - a * x - b).abs().max().item() < 1e-4  # affine indeed: the sampler is deterministic
        a_star = S[m] / math.sqrt(ab * S[m] ** 2 + 1 - ab)
        errors[m] = (a.item() - a_star, b.item() - (MU[m] - a_star * math.sqrt(ab) * MU[m]))
    return errors


# Discretisation allowances (on the std; the mean error is < 2e-4 for all of them). Measured with
# _affine_error: DDIM-50 -0.033 (audio) / -0.029 (video), first order: it halves from 50 to 100 steps (checked
# below); DPM-Solver++-20 -0.005 / -0.022; DDPM-250 is exact per step (see _gaussian_model), leaving only the
# N(0, I) prior at t = 999 (sqrt(ab) mu ~ 2e-3 · mu) and float32 rounding.
ALLOW = {"ddpm": (0.003, 0.003), "ddim": (0.003, 0.045), "dpm++": (0.003, 0.035)}  # (mean, std)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 250), ("ddim", 50), ("dpm++", 20)])
def test_samplers_reproduce_gaussian_data(diffusion, sampler, steps):
    out = _run(diffusion, sampler, steps)
    allow_mean, allow_std = ALLOW[sampler]
    for m in SHAPES:
        n = out[m].numel()
        mean, std = out[m].double().mean().item(), out[m].double().std().item()
        # 4 standard errors (mean: s / sqrt(n); std of a normal sample: s / sqrt(2n)) + the discretisation allowance
        assert abs(mean - MU[m]) < 4 * S[m] / math.sqrt(n) + allow_mean, (m, mean)
        assert abs(std - S[m]) < 4 * S[m] / math.sqrt(2 * n) + allow_std, (m, std)


def test_ode_samplers_discretisation_error_and_order(diffusion):
    small = {"video": (200, 2, 2, 2, 2), "audio": (200, 2, 2, 4)}  # no Monte Carlo error here: fewer draws do
    ddim50, ddim100 = _affine_error(diffusion, "ddim", 50, small), _affine_error(diffusion, "ddim", 100, small)
    ddim20, dpm20 = _affine_error(diffusion, "ddim", 20, small), _affine_error(diffusion, "dpm++", 20, small)
    for m in small:
        assert abs(ddim50[m][0]) < ALLOW["ddim"][1] and abs(ddim50[m][1]) < ALLOW["ddim"][0]
        assert abs(dpm20[m][0]) < ALLOW["dpm++"][1] and abs(dpm20[m][1]) < ALLOW["dpm++"][0]
        # DDIM is first order: doubling the steps halves the error.
        assert 0.4 < ddim100[m][0] / ddim50[m][0] < 0.6
        # DPM-Solver++(2M) reduces to DDIM without its second-order term; with it, it is far more accurate.
        assert abs(dpm20[m][0]) < 0.5 * abs(ddim20[m][0])


def _mixture_model(diffusion: Diffusion, means, stds, weights):
    """Exact E[eps | x_t] for a two-component Gaussian mixture per element: the responsibility-weighted
    per-component predictors, responsibilities from the x_t marginals N(sqrt(ab) mu_k, ab s_k² + 1 - ab)."""
    ab_all = diffusion.alphas_cumprod

    def model_fn(x, t):
        out = {}
        for m, xm in x.items():
            ab = _bcast(ab_all[t[m].cpu()], xm).double()
            xd = xm.double()
            logp, eps_k = [], []
            for mu, s, w in zip(means, stds, weights):
                var = ab * s**2 + 1 - ab
                logp.append(math.log(w) - 0.5 * (xd - ab.sqrt() * mu) ** 2 / var - 0.5 * var.log())
                eps_k.append((1 - ab).sqrt() * (xd - ab.sqrt() * mu) / var)
            r = torch.softmax(torch.stack(logp), dim=0)
            eps = (r * torch.stack(eps_k)).sum(0).to(xm.dtype)
            out[m] = torch.cat([eps, torch.zeros_like(eps)], dim=CD[m])  # v = 0: see the test below
        return out

    return model_fn


@pytest.mark.parametrize("sampler,steps", [("ddpm", 250), ("ddim", 50), ("dpm++", 20)])
def test_samplers_reproduce_a_mixture(diffusion, sampler, steps):
    """Two components per element, 0.7 N(-1, 0.25²) + 0.3 N(1.2, 0.35²): a nonlinear eps-predictor.

    The ODE samplers take their last step from the lowest kept t (trailing spacing: 19 for DDIM-50, 49 for
    DPM-Solver++-20) straight to the x0 prediction E[x0 | x_t], which narrows a component of std s by about
    sqrt(ab s² / (ab s² + 1 - ab)) (-3% and -13% here): that is the expected std. DDPM gets the variance half
    v = 0 (the geometric mean of beta~ and beta; with 250 steps the choice inside the range matters little).
    """
    means, stds, weights = (-1.0, 1.2), (0.25, 0.35), (0.7, 0.3)
    shapes = {"video": (500, 2, 2, 2, 2), "audio": (500, 2, 2, 4)}  # 8,000 draws per modality
    out = sample(
        _mixture_model(diffusion, means, stds, weights), shapes, CD, diffusion, sampler=sampler, steps=steps,
        generator=torch.Generator().manual_seed(3),
    )
    t_last = int(respace(diffusion, default_respacing(sampler, steps)).timestep_map[0])
    ab = diffusion.alphas_cumprod[t_last].item()
    for m in shapes:
        x = out[m].double().flatten()
        n = x.numel()
        upper = x > 0  # the components sit 4 and 3.4 stds from 0: the sign tells the component
        frac = upper.double().mean().item()
        # binomial standard error + 0.01 for the discretisation
        assert abs(frac - weights[1]) < 4 * math.sqrt(weights[1] * weights[0] / n) + 0.01, (m, frac)
        for k, sel in ((0, ~upper), (1, upper)):
            s, nk = stds[k], int(sel.sum())
            expect_std = s * math.sqrt(ab * s**2 / (ab * s**2 + 1 - ab))
            assert abs(x[sel].mean().item() - means[k]) < 4 * s / math.sqrt(nk) + 0.03, (m, k)
            assert abs(x[sel].std().item() - expect_std) < 4 * s / math.sqrt(2 * nk) + 0.02, (m, k)


# ----------------------------------------------------------------------------------------------------------
# diffusers parity
# ----------------------------------------------------------------------------------------------------------
_AB = Diffusion.create(1000).alphas_cumprod


def _eps_fn(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic nonlinear eps-model of x and the original-scale t: the optimal predictor for N(0, 0.5²)
    data plus a tanh term scaled by sqrt(ab), so the x0 prediction stays O(1) and float32 rounding (diffusers
    keeps its alphas in float32) is not amplified by 1 / sqrt(ab) ~ 150 at t = 999."""
    ab = _AB[torch.as_tensor(t).long().cpu()].to(torch.float32)
    return (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab) + 0.2 * ab.sqrt() * torch.tanh(x) * torch.cos(ab * 7.0)


def _ours_with_trajectory(diffusion, sampler, steps, shape):
    seen = []

    def model_fn(x, t):
        seen.append((x["video"].clone(), int(t["video"][0])))
        eps = _eps_fn(x["video"], t["video"].view(-1, 1, 1, 1, 1))
        junk = torch.full_like(eps, 0.7)  # a variance half that DDIM / DPM-Solver++ must ignore
        return {"video": torch.cat([eps, junk], dim=2)}

    out = sample(model_fn, {"video": shape}, CD, diffusion, sampler=sampler, steps=steps,
                 generator=torch.Generator().manual_seed(5))
    return seen, out["video"]


def _diffusers_trajectory(scheduler, x):
    seen = []
    for t in scheduler.timesteps:
        seen.append((x.clone(), int(t)))
        x = scheduler.step(_eps_fn(x, t), t, x).prev_sample
    return seen, x


def _compare(ours, theirs):
    (seen_o, out_o), (seen_d, out_d) = ours, theirs
    assert [t for _, t in seen_o] == [t for _, t in seen_d]
    for (xo, _), (xd, _) in zip(seen_o, seen_d):
        torch.testing.assert_close(xo, xd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_o, out_d, rtol=1e-5, atol=1e-5)


SHAPE = (2, 3, 4, 4, 4)


def test_ddim_matches_diffusers(diffusion):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000, trained_betas=diffusion.betas.numpy(), clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, prediction_type="epsilon", timestep_spacing="trailing", thresholding=False,
    )
    sched.set_timesteps(50)
    x_t = _initial_noise(5, {"video": SHAPE})["video"]
    _compare(_ours_with_trajectory(diffusion, "ddim", 50, SHAPE), _diffusers_trajectory(sched, x_t))


@pytest.mark.parametrize("steps", [20, 8])
def test_dpm_solver_pp_2m_matches_diffusers(diffusion, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=diffusion.betas.numpy(), algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", prediction_type="epsilon", thresholding=False,
        lower_order_final=True, final_sigmas_type="zero", timestep_spacing="trailing", use_karras_sigmas=False,
    )
    sched.set_timesteps(steps)
    x_t = _initial_noise(5, {"video": SHAPE})["video"]
    _compare(_ours_with_trajectory(diffusion, "dpm++", steps, SHAPE), _diffusers_trajectory(sched, x_t))


# ----------------------------------------------------------------------------------------------------------
# Mechanics
# ----------------------------------------------------------------------------------------------------------
SMALL = {"video": (2, 3, 2, 4, 4), "audio": (2, 2, 4, 4)}


def _toy_model(record=None):
    def model_fn(x, t):
        if record is not None:
            record.append(({m: v.clone() for m, v in x.items()}, {m: v.clone() for m, v in t.items()}))
        out = {}
        for m, v in x.items():
            eps = 0.3 * torch.tanh(v) + 0.001 * t[m].view(-1, *([1] * (v.ndim - 1)))
            out[m] = torch.cat([eps, torch.zeros_like(eps)], dim=CD[m])
        return out

    return model_fn


def test_model_gets_original_timesteps_and_progress_is_reported(diffusion):
    record, ticks = [], []
    out = sample(_toy_model(record), SMALL, CD, diffusion, sampler="ddpm", steps=250,
                 generator=torch.Generator().manual_seed(0), progress=lambda i, n: ticks.append((i, n)))
    assert [int(t["video"][0]) for _, t in record] == sorted(space_timesteps(1000, "250"), reverse=True)
    assert all(torch.equal(t["video"], t["audio"]) for _, t in record)  # one t for both modalities
    assert ticks == [(i, 250) for i in range(1, 251)]
    assert out["video"].shape == SMALL["video"] and out["audio"].shape == SMALL["audio"]


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpm++", 0.0)])
def test_same_seed_same_samples_different_seed_different(diffusion, sampler, eta):
    def run(seed):
        return sample(_toy_model(), SMALL, CD, diffusion, sampler=sampler, steps=10, eta=eta,
                      generator=torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    for m in SMALL:
        assert torch.equal(a[m], b[m])
        assert not torch.allclose(a[m], c[m])


def test_ddim_eta_adds_seeded_noise(diffusion):
    # Same x_T (same seed) but eta = 1 draws per-step noise: the results differ from eta = 0.
    a = sample(_toy_model(), SMALL, CD, diffusion, sampler="ddim", steps=10, eta=0.0,
               generator=torch.Generator().manual_seed(1))
    b = sample(_toy_model(), SMALL, CD, diffusion, sampler="ddim", steps=10, eta=1.0,
               generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a["video"], b["video"])


def test_replace_mode_noises_the_known_modality_and_returns_it_exactly(diffusion):
    known = {"audio": torch.randn(SMALL["audio"], generator=torch.Generator().manual_seed(9)) * 0.5 + 0.2}
    record = []
    out = sample(_toy_model(record), SMALL, CD, diffusion, sampler="ddpm", steps=50,
                 generator=torch.Generator().manual_seed(0), known=known, known_mode="replace")
    assert torch.equal(out["audio"], known["audio"])
    assert out["video"].shape == SMALL["video"]
    chain = respace(diffusion, "50")
    for (x, t) in record:
        assert torch.equal(t["audio"], t["video"])
        # x_t of the known audio: sqrt(ab) known + sqrt(1 - ab) z  ->  z must look standard normal
        ab = diffusion.alphas_cumprod[int(t["audio"][0])].item()
        z = (x["audio"] - math.sqrt(ab) * known["audio"]) / math.sqrt(1 - ab)
        assert abs(z.mean().item()) < 0.5 and 0.6 < z.std().item() < 1.4
    assert int(record[-1][1]["audio"][0]) == int(chain.timestep_map[0]) == 0
    # Fresh noise each step, and still seeded.
    again = sample(_toy_model(), SMALL, CD, diffusion, sampler="ddpm", steps=50,
                   generator=torch.Generator().manual_seed(0), known=known, known_mode="replace")
    assert torch.equal(again["video"], out["video"])


def test_timestep_mode_passes_the_known_modality_clean_at_t0(diffusion):
    known = {"video": torch.randn(SMALL["video"], generator=torch.Generator().manual_seed(9))}
    record = []
    out = sample(_toy_model(record), SMALL, CD, diffusion, sampler="dpm++", steps=10,
                 generator=torch.Generator().manual_seed(0), known=known, known_mode="timestep")
    assert torch.equal(out["video"], known["video"])
    for x, t in record:
        assert torch.equal(x["video"], known["video"])
        assert t["video"].tolist() == [0, 0]
        assert t["audio"].min().item() > 0  # the generated audio runs its own chain
    with pytest.raises(ValueError, match="nothing to generate"):
        sample(_toy_model(), {"video": SMALL["video"]}, CD, diffusion, generator=torch.Generator(), known=known)


def test_classifier_free_guidance_guides_every_eps_channel_and_keeps_cond_variance():
    calls = []

    def model_fn_y(x, t, y):
        calls.append(y.clone())
        out = {}
        for m, v in x.items():
            yy = y.view(-1, *([1] * (v.ndim - 1))).float()
            eps = v * (1 + yy) + yy  # depends on the class in every channel
            var = torch.tanh(yy * 0.01).expand_as(v)
            out[m] = torch.cat([eps, var], dim=CD[m])
        return out

    g = torch.Generator().manual_seed(0)
    x = {"video": torch.randn(SMALL["video"], generator=g), "audio": torch.randn(SMALL["audio"], generator=g)}
    t = {m: torch.tensor([10, 500]) for m in x}
    y = torch.tensor([3, 7])
    guided = classifier_free_guidance(model_fn_y, y, 1000, 4.0, CD)(x, t)
    assert len(calls) == 1 and calls[0].tolist() == [3, 7, 1000, 1000]  # one doubled batch
    cond = model_fn_y(x, t, y)
    uncond = model_fn_y(x, t, torch.full_like(y, 1000))
    for m in x:
        c = x[m].shape[CD[m]]
        eps_c, var_c = cond[m].split(c, dim=CD[m])
        eps_u, _ = uncond[m].split(c, dim=CD[m])
        eps_g, var_g = guided[m].split(c, dim=CD[m])
        torch.testing.assert_close(eps_g, eps_u + 4.0 * (eps_c - eps_u))
        torch.testing.assert_close(var_g, var_c)
        assert guided[m].shape == cond[m].shape
    calls.clear()
    plain = classifier_free_guidance(model_fn_y, y, 1000, 1.0, CD)(x, t)
    assert len(calls) == 1 and calls[0].tolist() == [3, 7]
    torch.testing.assert_close(plain["video"], cond["video"])


def test_dtype_and_device_of_samples(diffusion):
    out = sample(_toy_model(), SMALL, CD, diffusion, sampler="ddim", steps=5, dtype=torch.float64,
                 generator=torch.Generator().manual_seed(0), device="cpu")
    assert out["video"].dtype == torch.float64 and out["audio"].device.type == "cpu"
    # noise drawn in float32 on the generator then cast: the float64 run starts from the float32 run's x_T
    out32 = sample(_toy_model(), SMALL, CD, diffusion, sampler="ddim", steps=5,
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["video"].float(), out32["video"], rtol=1e-4, atol=1e-5)


def test_respacing_override(diffusion):
    record = []
    sample(_toy_model(record), SMALL, CD, diffusion, sampler="ddim", steps=50, respacing="ddim50",
           generator=torch.Generator().manual_seed(0))
    assert [int(t["video"][0]) for _, t in record] == list(range(980, -1, -20))
    assert np.all(np.diff([int(t["audio"][0]) for _, t in record]) < 0)


def test_per_sample_generators_make_samples_independent_of_the_batch() -> None:
    """With one generator per sample, a sample is the same alone or inside a bigger batch (DDPM draws noise
    at every step, so this checks the per-step draws too)."""
    from avdit_cli.diffusion import Diffusion, sample

    diffusion = Diffusion.create(num_timesteps=100, learn_sigma=True)

    def model_fn(x, t):  # a deterministic stand-in: eps = 0.1 x, variance half 0
        return {"a": torch.cat([0.1 * x["a"], torch.zeros_like(x["a"])], dim=1)}

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = sample(model_fn, {"a": (2, 3, 4)}, {"a": 1}, diffusion, sampler="ddpm", steps=10,
                  generator=gens([7, 8]))["a"]
    alone = sample(model_fn, {"a": (1, 3, 4)}, {"a": 1}, diffusion, sampler="ddpm", steps=10,
                   generator=gens([8]))["a"]
    assert torch.equal(both[1:], alone)
    assert not torch.equal(both[0], both[1])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_x0_clamped_to_each_modalitys_range(diffusion, sampler) -> None:
    """Data far outside its range (mean 3): clamping the x0 prediction to a range per modality keeps every sample
    inside it (the last step of each sampler returns x0 or the posterior mean from it), while a modality
    without a range is untouched."""
    shapes = {"video": (64, 2, 2, 2, 2), "audio": (64, 2, 2, 4)}
    chain = respace(diffusion, default_respacing(sampler, 10))
    model = _gaussian_model(diffusion, chain)

    def shifted(x, t):  # the exact model for data N(MU + 3, S²)
        out = model({m: v - 3 * torch.sqrt(_bcast(diffusion.alphas_cumprod[t[m].cpu()], v)) for m, v in x.items()}, t)
        return out

    kw = dict(sampler=sampler, steps=10, generator=torch.Generator().manual_seed(0))
    free = sample(shifted, shapes, CD, diffusion, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    clamped = sample(shifted, shapes, CD, diffusion, clip_denoised={"video": (-1.0, 1.5), "audio": None}, **kw)
    assert free["video"].mean() > 2.5 and free["video"].max() > 1.5
    assert clamped["video"].max() <= 1.5 + 0.05 and clamped["video"].min() >= -1.0 - 0.05
    torch.testing.assert_close(clamped["audio"], free["audio"])


def test_mixed_noise_correlates_frames_and_keeps_unit_variance() -> None:
    from avdit_cli.diffusion.samplers import mixed_noise

    g = torch.Generator().manual_seed(0)
    z = mixed_noise((4000, 3, 8), g, axis=1, rho=0.5)  # 4000 clips of 3 "frames"
    flat = z.reshape(4000, 3, 8)
    assert abs(float(z.var()) - 1.0) < 0.02 and abs(float(z.mean())) < 0.02
    corr = torch.corrcoef(torch.stack([flat[:, 0].flatten(), flat[:, 2].flatten()]))[0, 1]
    assert abs(float(corr) - 0.5) < 0.02
    # rho = 0 is exactly torch.randn (the same draws, so runs without the prior are unchanged)
    torch.testing.assert_close(mixed_noise((2, 3), torch.Generator().manual_seed(7), 1, 0.0),
                               torch.randn((2, 3), generator=torch.Generator().manual_seed(7)))


def test_noise_correlation_reaches_every_draw_of_its_modality(diffusion) -> None:
    """x_T of a correlated modality has correlated frames; the other modality does not; DDPM's per-step noise too
    (a model that predicts eps = 0 leaves x_T's structure in the result)."""
    shapes = {"video": (256, 4, 1, 2, 2), "audio": (256, 1, 2, 2)}
    zero = lambda x, t: {m: torch.cat([torch.zeros_like(v), torch.zeros_like(v)], dim=CD[m]) for m, v in x.items()}
    out = sample(zero, shapes, CD, diffusion, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0),
                 noise_correlation={"video": (1, 0.8)})
    v = out["video"]
    corr = torch.corrcoef(torch.stack([v[:, 0].flatten(), v[:, 3].flatten()]))[0, 1]
    assert float(corr) > 0.6
    plain = sample(zero, shapes, CD, diffusion, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0))
    corr0 = torch.corrcoef(torch.stack([plain["video"][:, 0].flatten(), plain["video"][:, 3].flatten()]))[0, 1]
    assert abs(float(corr0)) < 0.15


def test_video_first_stages_draw_frames_with_the_sound_unseen_then_the_sound_for_them(diffusion) -> None:
    from avdit_cli.diffusion import sample_in_stages

    record, ticks = [], []
    out = sample_in_stages(_toy_model(record), SMALL, CD, diffusion, [["video"], ["audio"]], sampler="ddim",
                           steps=10, generator=torch.Generator().manual_seed(0),
                           progress=lambda i, n: ticks.append((i, n)))
    assert ticks == [(i, 20) for i in range(1, 21)]  # two whole chains
    first, second = record[:10], record[10:]
    unseen = first[0][0]["audio"]
    for x, t in first:  # stage 1: the sound is one fixed pure-noise tensor at the last timestep
        assert torch.equal(x["audio"], unseen) and t["audio"].tolist() == [999, 999]
    video_ts = [int(t["video"][0]) for _, t in first]
    assert video_ts == sorted(video_ts, reverse=True) and len(set(video_ts)) == 10  # the frames: a whole chain
    assert abs(float(unseen.std()) - 1.0) < 0.35
    for x, t in second:  # stage 2: the finished frames, clean at t = 0
        assert torch.equal(x["video"], out["video"]) and t["video"].tolist() == [0, 0]
    assert [int(t["audio"][0]) for _, t in second] == [int(t["video"][0]) for _, t in first]
    again = sample_in_stages(_toy_model(), SMALL, CD, diffusion, [["video"], ["audio"]], sampler="ddim", steps=10,
                             generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(again[m], out[m]) for m in SMALL)  # seeded


def test_one_stage_is_joint_sampling_and_bad_stages_are_refused(diffusion) -> None:
    from avdit_cli.diffusion import sample_in_stages

    joint = sample(_toy_model(), SMALL, CD, diffusion, sampler="ddim", steps=5,
                   generator=torch.Generator().manual_seed(3))
    staged = sample_in_stages(_toy_model(), SMALL, CD, diffusion, [["video", "audio"]], sampler="ddim", steps=5,
                              generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(joint[m], staged[m]) for m in SMALL)
    with pytest.raises(ValueError, match="every modality"):
        sample_in_stages(_toy_model(), SMALL, CD, diffusion, [["video"]], generator=torch.Generator())
    with pytest.raises(ValueError, match="neither generated nor known"):
        sample(_toy_model(), SMALL, CD, diffusion, generator=torch.Generator(), absent={"audio": torch.zeros(2)})


def test_known_guidance_is_cfg_between_known_and_not_known(diffusion) -> None:
    """Guided sampling with a model whose sound depends on whether the frames are known equals unguided sampling
    with the model that returns eps_u + s (eps_c - eps_u) itself; the "not known" frames are one fixed noise
    tensor at T - 1, and s = 1 changes nothing."""
    known = {"video": torch.randn(SMALL["video"], generator=torch.Generator().manual_seed(9))}

    def sound(x, t, frames_known):  # eps of the sound, with and without frames
        v = x["audio"]
        scale = 0.4 if frames_known else -0.2
        return scale * torch.tanh(v) + 0.001 * t["audio"].view(-1, 1, 1, 1)

    record = []

    def model_fn(x, t):
        record.append(({m: v.clone() for m, v in x.items()}, {m: v.clone() for m, v in t.items()}))
        frames_known = (t["video"] == 0).view(-1, 1, 1, 1)
        eps = torch.where(frames_known, sound(x, t, True), sound(x, t, False))
        return {"video": torch.zeros_like(torch.cat([x["video"]] * 2, dim=2)),
                "audio": torch.cat([eps, torch.full_like(eps, 7.0)], dim=1)}  # the variance half: constant

    def pre_guided(s):
        def fn(x, t):
            c, u = sound(x, t, True), sound(x, t, False)
            return {"audio": torch.cat([u + s * (c - u), torch.full_like(c, 7.0)], dim=1),
                    "video": torch.zeros_like(torch.cat([x["video"]] * 2, dim=2))}
        return fn

    common = dict(sampler="ddim", steps=6, known=known, known_mode="timestep")
    guided = sample(model_fn, SMALL, CD, diffusion, generator=torch.Generator().manual_seed(0), known_guidance=3.0,
                    **common)
    want = sample(pre_guided(3.0), SMALL, CD, diffusion, generator=torch.Generator().manual_seed(0), **common)
    assert torch.allclose(guided["audio"], want["audio"], rtol=1e-5, atol=1e-5)
    assert torch.equal(guided["video"], known["video"])
    unknown = record[0][0]["video"][2:]
    for x, t in record:  # one doubled batch per step: the given frames at t = 0, then fixed noise at T - 1
        assert x["video"].shape[0] == 4 and torch.equal(x["video"][:2], known["video"])
        assert torch.equal(x["video"][2:], unknown) and t["video"].tolist() == [0, 0, 999, 999]
        assert torch.equal(x["audio"][:2], x["audio"][2:])
    assert abs(float(unknown.std()) - 1.0) < 0.35
    plain = sample(model_fn, SMALL, CD, diffusion, generator=torch.Generator().manual_seed(0), known_guidance=1.0,
                   **common)
    conditional = sample(lambda x, t: model_fn(x, {**t, "video": torch.zeros_like(t["video"])}), SMALL, CD, diffusion,
                         generator=torch.Generator().manual_seed(0), **common)
    assert torch.equal(plain["audio"], conditional["audio"])
    with pytest.raises(ValueError, match="timestep"):
        sample(model_fn, SMALL, CD, diffusion, generator=torch.Generator(), known=known, known_mode="replace",
               known_guidance=2.0)


def test_not_known_inputs_follow_the_training_prior_not_the_sampling_one(diffusion) -> None:
    """Guidance's "not known" frames and a stage's absent frames are drawn with unknown_correlation (the prior the
    model learnt "not known" under); the generated frames keep noise_correlation; None falls back to it."""
    from avdit_cli.diffusion import sample_in_stages

    shapes = {"video": (512, 4, 1, 2, 2), "audio": (512, 1, 2, 2)}
    seen = []

    def model_fn(x, t):
        seen.append({m: v.clone() for m, v in x.items()})
        return {m: torch.cat([torch.zeros_like(v), torch.zeros_like(v)], dim=CD[m]) for m, v in x.items()}

    def frame_corr(v):  # correlation of frames 0 and 3 over the batch
        return float(torch.corrcoef(torch.stack([v[:, 0].flatten(), v[:, 3].flatten()]))[0, 1])

    known = {"video": torch.randn(shapes["video"], generator=torch.Generator().manual_seed(9))}
    for prior, low in (({}, True), (None, False)):
        seen.clear()
        sample(model_fn, {"audio": shapes["audio"]}, CD, diffusion, sampler="ddim", steps=2, known=known,
               known_guidance=2.0, generator=torch.Generator().manual_seed(0), noise_correlation={"video": (1, 0.8)},
               unknown_correlation=prior)
        not_known = seen[0]["video"][512:]
        assert (abs(frame_corr(not_known)) < 0.15) if low else (frame_corr(not_known) > 0.6)
    seen.clear()  # audio first, then the frames: the frames are absent while the sound is drawn
    out = sample_in_stages(model_fn, shapes, CD, diffusion, [["audio"], ["video"]], sampler="ddim", steps=2,
                           generator=torch.Generator().manual_seed(0), noise_correlation={"video": (1, 0.8)},
                           unknown_correlation={})
    assert abs(frame_corr(seen[0]["video"])) < 0.15  # absent frames: the training prior
    assert frame_corr(seen[-1]["video"]) > 0.6  # the frames' own chain: the sampling prior (eps = 0 keeps x_T)
    assert out["video"].shape == shapes["video"]
    seen.clear()  # video first with guidance: the sound stage's "not known" frames, through sample_in_stages
    sample_in_stages(model_fn, shapes, CD, diffusion, [["video"], ["audio"]], sampler="ddim", steps=2,
                     generator=torch.Generator().manual_seed(0), noise_correlation={"video": (1, 0.8)},
                     unknown_correlation={}, known_guidance=2.0)
    sound_stage = [x for x in seen if x["video"].shape[0] == 1024]  # the doubled batch: known, then not known
    assert sound_stage and abs(frame_corr(sound_stage[0]["video"][512:])) < 0.15


@pytest.mark.parametrize("class_scale", [1.0, 4.0])
def test_known_guidance_composes_with_class_guidance(diffusion, class_scale) -> None:
    """Class guidance wraps the model and known guidance doubles its batch: the classes tile with the batch."""
    from avdit_cli.diffusion import classifier_free_guidance

    known = {"video": torch.randn(SMALL["video"], generator=torch.Generator().manual_seed(9))}
    seen = []
    toy = _toy_model()

    def model_fn_y(x, t, y):
        assert y.shape[0] == x["audio"].shape[0]
        seen.append(y.clone())
        out = toy(x, t)
        out["audio"] = out["audio"] + 0.01 * y.view(-1, 1, 1, 1)  # the class matters
        return out

    y = torch.tensor([3, 5])
    fn = classifier_free_guidance(model_fn_y, y, 10, class_scale, CD)
    out = sample(fn, SMALL, CD, diffusion, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0),
                 known=known, known_mode="timestep", known_guidance=2.0)
    assert out["audio"].shape == SMALL["audio"] and torch.isfinite(out["audio"]).all()
    want = [3, 5, 3, 5] + ([10, 10, 10, 10] if class_scale != 1.0 else [])  # known / not known, then the null class
    assert all(s.tolist() == want for s in seen)
