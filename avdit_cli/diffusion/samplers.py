"""Samplers over several modalities with one shared t: DDPM (learned variance), DDIM (eta), DPM-Solver++ (2M).

One entry point, :func:`sample`. The chain is ``diffusion`` respaced to ``steps`` steps (:func:`default_respacing`
unless ``respacing`` says otherwise, e.g. ``"ddim50"``); the model always sees the original timesteps.
Randomness: the initial noise and every per-step draw come from ``generator`` on the generator's own device
(pass a CPU generator: that is our choice), in sorted modality order, then move to ``device`` - so a seed gives
the same noise on a CPU and a GPU, and bit-identical samples on one device. ``generator`` may also be a
sequence of generators, one per sample: each sample's noise then comes from its own generator, so a sample
does not depend on which batch (or which rank) it was drawn in.

Conditional generation of one modality given another's clean latents (``known``):
- ``'timestep'``: the known modality goes in clean with t = 0 at every step (for models trained with
  independent timesteps);
- ``'replace'``: the known modality goes in as q_sample(known, t) with fresh seeded noise at every step,
  sharing the generated modalities' t.
Either way the returned known modality is the given latents, exactly.

``absent`` modalities are inputs the model needs but nobody has yet: they go in as fixed pure noise at the
last timestep T - 1, which a model trained with independent timesteps reads as "not known". On that rests
:func:`sample_in_stages`, e.g. frames first with the sound unseen, then the sound given the finished frames.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor

from avdit_cli.config import Sampler
from avdit_cli.diffusion.gaussian import split_output
from avdit_cli.diffusion.respace import space_timesteps
from avdit_cli.diffusion.schedule import Diffusion, ModelFn, x0_bounds
from avdit_cli.diffusion.stagger import progress_to_timestep, staggered_chain

KnownMode = Literal["timestep", "replace"]
Progress = Callable[[int, int], None]


Generators = torch.Generator | Sequence[torch.Generator]
NoiseFn = Callable[[str, Sequence[int], torch.device, torch.dtype], Tensor]  # (modality, shape, device, dtype)


Correlation = tuple[int, float]  # (axis of the full shape, rho): see mixed_noise


def mixed_noise(shape: Sequence[int], generator: torch.Generator, axis: int | None = None, rho: float = 0.0
                ) -> Tensor:
    """Standard normal noise of ``shape`` (float32, on the generator's device); with ``axis`` and ``rho > 0``
    every slice along ``axis`` shares a part: ``sqrt(rho) shared + sqrt(1 - rho) own``.

    That is the "mixed" noise prior of PYoCo (Ge et al. 2023, "Preserve Your Own Correlation: A Noise Prior for
    Video Diffusion Models"), for frames: each element stays N(0, 1), so an image model applied to one frame
    sees the noise it was trained on, while the frames of a clip start out alike (correlation ``rho``), as
    the frames of a video are. ``rho = 0`` draws exactly what ``torch.randn`` draws.
    """
    own = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    if axis is None or rho <= 0:
        return own
    shared = torch.randn(tuple(s for i, s in enumerate(shape) if i != axis), generator=generator,
                         device=generator.device, dtype=torch.float32).unsqueeze(axis)
    return math.sqrt(1.0 - rho) * own + math.sqrt(rho) * shared


def _randn(shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype,
           correlation: Correlation | None = None) -> Tensor:
    axis, rho = correlation if correlation is not None else (None, 0.0)
    if isinstance(generator, torch.Generator):
        z = mixed_noise(shape, generator, axis, rho)
    else:  # one generator per sample: (b, ...) stacked from b draws of shape (...)
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        inner = None if axis is None else axis - 1  # the axis within one sample
        z = torch.stack([mixed_noise(shape[1:], g, inner, rho) for g in generator])
    return z.to(device=device, dtype=dtype)


def default_respacing(sampler: str | Sampler, steps: int) -> str:
    """DDPM: IDDPM's even spacing ``str(steps)`` (DiT's 250-step sampling). DDIM and DPM-Solver++: diffusers'
    trailing spacing (999, 949, ..., 49 for 20 steps), last step straight to the clean data. Trailing matters for
    DPM-Solver++: with the even spacing the last kept step is t = 0, so the second-order step before it spans a
    huge log-SNR interval and extrapolates badly (on Gaussian data its std came out ~25% high at 20 steps, vs
    ~-5%..0% with trailing)."""
    return str(steps) if Sampler(sampler) is Sampler.DDPM else f"trailing{steps}"


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    shapes: Mapping[str, Sequence[int]],
    channel_dims: Mapping[str, int],
    diffusion: Diffusion,
    *,
    sampler: str | Sampler = Sampler.DDPM,
    steps: int = 250,
    eta: float = 0.0,
    generator: Generators,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    known: Mapping[str, Tensor] | None = None,
    known_mode: KnownMode = "timestep",
    progress: Progress | None = None,
    respacing: str | Sequence[int] | None = None,
    clip_denoised: bool | Mapping[str, tuple[float, float] | None] = False,
    noise_correlation: Mapping[str, Correlation] | None = None,
    absent: Mapping[str, Tensor] | None = None,
    known_guidance: float = 1.0,
    frame_stagger: float = 0.0,
    unknown_correlation: Mapping[str, Correlation] | None = None,
) -> dict[str, Tensor]:
    """Generate every modality in ``shapes`` (full shapes with the batch dim, e.g. video (b, f, c, h, w)).

    ``known`` modalities are taken as given (see the module doc); the rest start from seeded N(0, I).
    ``eta`` is used by DDIM only. ``progress(done, total)`` is called after each step.
    ``clip_denoised``: clamp every step's x_0 prediction, to [-1, 1] for every modality (``True``) or to a
    range per modality (a mapping; a modality missing or mapped to None is not clamped), as data with known
    bounds (pixels) allow. ``noise_correlation``: per modality ``(axis, rho)``, the mixed noise prior the model
    was trained with (:func:`mixed_noise`, e.g. ``{"video": (1, 0.5)}`` for frames), for every draw of that
    modality (x_T, DDPM's and DDIM's step noise, a known modality's noising). Returns a dict with every
    modality of ``shapes`` and ``known``. ``absent``: per modality a fixed noise tensor (full shape) fed at t = T - 1
    at every step and not returned (see the module doc).
    ``known_guidance`` s (``'timestep'`` mode only): classifier-free guidance towards the known modalities, as
    UniDiffuser (Bao et al. 2023) does with a joint model trained with independent timesteps: the model also
    runs with every known modality replaced by seeded pure noise at T - 1 ("not known"), in one doubled batch,
    and each generated modality's eps is ``eps_u + s (eps_c - eps_u)`` (the variance half stays conditional).
    s = 1 is plain conditional sampling. The guidance noise is drawn after x_T, so s = 1 draws as before.
    ``unknown_correlation``: the noise prior of those "not known" draws, per modality like ``noise_correlation``
    (None: ``noise_correlation``). It should be the prior the model was *trained* with, since "not known" is an
    input the model learnt (a modality at T - 1), while ``noise_correlation`` may be a sampling-only prior.
    ``frame_stagger`` (DDIM only, when ``video`` (b, f, c, h, w) is generated): staggered "pyramid" sampling
    of the frames (:mod:`avdit_cli.diffusion.stagger`), see :func:`_sample_staggered`.
    """
    sampler = Sampler(sampler)
    device = torch.device(device)
    known = dict(known or {})
    if known_mode not in ("timestep", "replace"):
        raise ValueError(f"known_mode must be 'timestep' or 'replace', got {known_mode!r}")
    known = {m: v.to(device=device, dtype=dtype) for m, v in known.items()}
    absent = {m: v.to(device=device, dtype=dtype) for m, v in (absent or {}).items()}
    if set(absent) & (set(known) | set(shapes)):
        raise ValueError(f"absent modalities {sorted(absent)} must be neither generated nor known")
    generated = sorted(m for m in shapes if m not in known)
    if not generated:
        raise ValueError("nothing to generate: every modality in `shapes` is also in `known`")
    batch = ({int(shapes[m][0]) for m in generated} | {int(v.shape[0]) for v in known.values()}
             | {int(v.shape[0]) for v in absent.values()})
    if len(batch) != 1:
        raise ValueError(f"all modalities need the same batch size, got {sorted(batch)}")
    b = batch.pop()

    if frame_stagger > 0 and "video" in generated:
        if sampler is not Sampler.DDIM or respacing is not None or _guided(known_guidance, known):
            raise ValueError("frame_stagger needs the DDIM sampler with its own chain and no known_guidance")
        if known and known_mode != "timestep":
            raise ValueError("frame_stagger feeds known modalities clean at t = 0: known_mode must be 'timestep'")
        return _sample_staggered(model_fn, shapes, channel_dims, diffusion, generated, known, absent, b,
                                 steps=steps, spread=frame_stagger, eta=eta, generator=generator, device=device,
                                 dtype=dtype, progress=progress, clip_denoised=clip_denoised,
                                 noise_correlation=dict(noise_correlation or {}))
    spacing = respacing if respacing is not None else default_respacing(sampler, steps)
    chain = diffusion.respaced(space_timesteps(diffusion.num_timesteps, spacing))
    n = chain.num_timesteps
    correlations = dict(noise_correlation or {})

    def noise(m: str, shape: Sequence[int], dev: torch.device, dt: torch.dtype) -> Tensor:
        return _randn(shape, generator, dev, dt, correlations.get(m))

    step_fn = {Sampler.DDPM: _DDPM, Sampler.DDIM: _DDIM, Sampler.DPM_SOLVER: _DPMSolverPP2M}[sampler](
        chain, channel_dims, noise, clip_denoised, eta
    )

    x = {m: noise(m, shapes[m], device, dtype) for m in generated}  # x_T
    guided = _guided(known_guidance, known)
    if guided and known_mode != "timestep":
        raise ValueError("known_guidance needs known_mode='timestep' (a model trained with independent timesteps)")
    unknown_prior = _unknown_prior(noise_correlation, unknown_correlation)
    unknown = ({m: _randn(known[m].shape, generator, device, dtype, unknown_prior.get(m)) for m in sorted(known)}
               if guided else {})
    zeros = torch.zeros(b, dtype=torch.long, device=device)
    last = torch.full((b,), diffusion.num_timesteps - 1, dtype=torch.long, device=device)  # original scale
    for done, i in enumerate(range(n - 1, -1, -1), start=1):
        t = torch.full((b,), i, dtype=torch.long, device=device)  # index into the respaced chain
        t_model = chain.model_timesteps(t)  # original scale, what the model was trained on
        inputs: dict[str, Tensor] = dict(x)
        t_in = {m: t_model for m in generated}
        for m in sorted(known):
            if known_mode == "timestep":
                inputs[m], t_in[m] = known[m], zeros
            else:
                inputs[m] = chain.q_sample(known[m], t, noise(m, known[m].shape, device, dtype))
                t_in[m] = t_model
        for m in sorted(absent):
            inputs[m], t_in[m] = absent[m], last
        if guided:
            out = _guide_towards_known(model_fn, inputs, t_in, unknown, last, generated, channel_dims, known_guidance)
        else:
            out = model_fn(inputs, t_in)
        for m in generated:
            x[m] = step_fn(m, out[m].to(dtype), x[m], i)
        if progress is not None:
            progress(done, n)
    return {**x, **{m: v.clone() for m, v in known.items()}}


def _unknown_prior(noise_correlation: Mapping[str, Correlation] | None,
                   unknown_correlation: Mapping[str, Correlation] | None) -> dict[str, Correlation]:
    """The noise prior of "not known" inputs: ``unknown_correlation``, or the sampling prior when it is None."""
    return dict(noise_correlation or {}) if unknown_correlation is None else dict(unknown_correlation)


def _guided(known_guidance: float, known: Mapping[str, Tensor]) -> bool:
    """Whether :func:`sample` guides towards its known modalities (a scale other than 1, and something known)."""
    return known_guidance != 1.0 and bool(known)


def _sample_staggered(
    model_fn: ModelFn, shapes: Mapping[str, Sequence[int]], channel_dims: Mapping[str, int], diffusion: Diffusion,
    generated: Sequence[str], known: Mapping[str, Tensor], absent: Mapping[str, Tensor], b: int, *,
    steps: int, spread: float, eta: float, generator: Generators, device: torch.device, dtype: torch.dtype,
    progress: Progress | None, clip_denoised: bool | Mapping[str, tuple[float, float] | None],
    noise_correlation: Mapping[str, Correlation],
) -> dict[str, Tensor]:
    """DDIM over :func:`staggered_chain`: frame i of ``video`` runs ``spread i / (f - 1)`` of the chain behind
    frame 0; the other generated modalities walk the whole chain, every frame's span at once. A frame (or
    modality) whose timestep does not change in a row keeps its value; one that reaches ``CLEAN`` is its x_0
    prediction and goes in as given (t = 0) from then on. Each update is IDDPM's DDIM step (see
    :class:`_DDIM`) with the frame's own ab and ab_prev (1 when clean), x_0 and eps from
    :meth:`_Step.x0_and_eps` on the original chain (its ``gather`` takes one t per frame). Known modalities
    enter clean at t = 0, absent ones as their fixed noise at T - 1. Draws: x_T in sorted modality order, then
    with ``eta`` > 0 every row's noise in that order."""
    T = diffusion.num_timesteps
    f = int(shapes["video"][1])
    chain = staggered_chain(f, steps, spread, T)  # (n + 1, f)
    n = chain.shape[0] - 1
    # the other modalities: progress tau / (1 + spread), on the same grid of rows
    whole = progress_to_timestep(torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64), T)  # (n + 1,)
    ab_table = torch.cat([diffusion.alphas_cumprod.double(), torch.ones(1, dtype=torch.float64)])  # [-1] clean

    def noise(m: str, shape: Sequence[int], dev: torch.device = device, dt: torch.dtype = dtype) -> Tensor:
        return _randn(shape, generator, dev, dt, noise_correlation.get(m))

    step = _Step(diffusion, channel_dims, noise, clip_denoised, eta)

    def levels(m: str, row: int) -> Tensor:  # (b, f) for video, (b,) otherwise; CLEAN = -1
        t = chain[row] if m == "video" else whole[row : row + 1]
        return t.to(device).expand(b, -1) if m == "video" else t.to(device).expand(b)

    x = {m: noise(m, shapes[m]) for m in generated}  # x_T
    zeros = torch.zeros(b, dtype=torch.long, device=device)
    last = torch.full((b,), T - 1, dtype=torch.long, device=device)
    for row in range(n):
        inputs: dict[str, Tensor] = dict(x)
        t_in = {m: levels(m, row).clamp(min=0) for m in generated}
        for m in sorted(known):
            inputs[m], t_in[m] = known[m], zeros
        for m in sorted(absent):
            inputs[m], t_in[m] = absent[m], last
        out = model_fn(inputs, t_in)
        for m in generated:
            t_now, t_next = levels(m, row), levels(m, row + 1)
            shape = (*t_now.shape, *([1] * (x[m].ndim - t_now.ndim)))  # broadcast over the frame / sample
            x0, eps = step.x0_and_eps(m, out[m].to(dtype), x[m], t_now.clamp(min=0))  # clean ones are not moved
            ab = ab_table[t_now.cpu()].to(device=device, dtype=dtype).view(shape)
            ab_next = ab_table[t_next.cpu()].to(device=device, dtype=dtype).view(shape)
            sigma = eta * ((1 - ab_next) / (1 - ab).clamp(min=1e-12) * (1 - ab / ab_next).clamp(min=0)).sqrt()
            x_next = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x_next = x_next + sigma * noise(m, x[m].shape)
            moving = (t_now != t_next).view(shape) & (t_now >= 0).view(shape)
            x[m] = torch.where(moving, x_next, x[m])
        if progress is not None:
            progress(row + 1, n)
    return {**x, **{m: v.clone() for m, v in known.items()}}


def sample_in_stages(
    model_fn: ModelFn,
    shapes: Mapping[str, Sequence[int]],
    channel_dims: Mapping[str, int],
    diffusion: Diffusion,
    stages: Sequence[Sequence[str]],
    *,
    generator: Generators,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    noise_correlation: Mapping[str, Correlation] | None = None,
    unknown_correlation: Mapping[str, Correlation] | None = None,
    **kwargs: object,
) -> dict[str, Tensor]:
    """Generate the modalities of ``shapes`` stage by stage with :func:`sample`: a stage's modalities are drawn
    given what earlier stages made (``known``, clean at t = 0) while later stages' modalities are ``absent``
    (fixed pure noise at T - 1). ``[["video"], ["audio"]]`` draws the frames first, then the sound for them;
    ``[["video", "audio"]]`` is plain joint sampling. Needs a model trained with independent timesteps.

    Every stage runs the whole chain (``steps`` model calls each); ``progress(done, total)`` counts over all
    stages. Seeded draws: the absent modalities' noise first (sorted), then each stage's, from ``generator``.
    The absent modalities' noise, like guidance's "not known" draws, follows ``unknown_correlation`` (None:
    ``noise_correlation``), see :func:`sample`. Other keyword arguments go to :func:`sample` unchanged. Returns
    every modality of ``shapes``.
    """
    order = [m for stage in stages for m in stage]
    if sorted(order) != sorted(shapes):
        raise ValueError(f"stages {list(map(list, stages))} must name every modality of {sorted(shapes)} once")
    if {"known", "known_mode", "absent"} & set(kwargs):
        raise ValueError("sample_in_stages decides known, known_mode and absent itself")
    device = torch.device(device)
    unknown_prior = _unknown_prior(noise_correlation, unknown_correlation)
    later = sorted(m for stage in stages[1:] for m in stage)
    unseen = {m: _randn(shapes[m], generator, device, dtype, unknown_prior.get(m)) for m in later}
    made: dict[str, Tensor] = {}
    for k, stage in enumerate(stages):
        def on_step(done: int, n: int, k: int = k) -> None:
            if progress is not None:
                progress(k * n + done, len(stages) * n)

        out = sample(model_fn, {m: shapes[m] for m in stage}, channel_dims, diffusion, generator=generator,
                     device=device, dtype=dtype, known=dict(made) or None, known_mode="timestep",
                     absent={m: unseen[m] for m in unseen if m not in made and m not in stage} or None,
                     progress=on_step, noise_correlation=noise_correlation,
                     unknown_correlation=unknown_correlation, **kwargs)  # type: ignore[arg-type]
        made.update({m: out[m] for m in stage})
    return made


class _Step:
    """One sampler's update x_i -> x_{i-1} for one modality, at index i of the respaced chain."""

    def __init__(
        self, chain: Diffusion, channel_dims: Mapping[str, int], noise: NoiseFn,
        clip: bool | Mapping[str, tuple[float, float] | None], eta: float
    ) -> None:
        self.chain, self.channel_dims, self.noise, self.clip, self.eta = chain, channel_dims, noise, clip, eta

    def bounds(self, m: str) -> tuple[float, float] | None:
        """The x_0 range of modality m, or None (no clamp)."""
        return x0_bounds(self.clip.get(m) if isinstance(self.clip, Mapping) else self.clip)

    def x0_and_eps(self, m: str, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Only the eps half of a learned-variance output is used here."""
        eps, _ = split_output(out, x, self.channel_dims[m], self.chain.learn_sigma)
        x0 = self.chain.predict_x0_from_eps(x, t, eps)
        bounds = self.bounds(m)
        if bounds is not None:
            x0 = x0.clamp(*bounds)
            eps = self.chain.predict_eps_from_x0(x, t, x0)
        return x0, eps

    def __call__(self, m: str, out: Tensor, x: Tensor, i: int) -> Tensor:
        raise NotImplementedError


class _DDPM(_Step):
    """Ancestral sampling with the model's variance (learned range, DiT) - no noise on the last step."""

    def __call__(self, m: str, out: Tensor, x: Tensor, i: int) -> Tensor:
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        p = self.chain.p_mean_variance(out, x, t, self.channel_dims[m], clip_denoised=self.bounds(m))
        if i == 0:
            return p.mean
        return p.mean + torch.exp(0.5 * p.log_variance) * self.noise(m, x.shape, x.device, x.dtype)


class _DDIM(_Step):
    """IDDPM's ``ddim_sample``: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma²) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev); ab_prev of the first kept step is 1."""

    def __call__(self, m: str, out: Tensor, x: Tensor, i: int) -> Tensor:
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0, eps = self.x0_and_eps(m, out, x, t)
        ab = float(self.chain.alphas_cumprod[i])
        ab_prev = float(self.chain.alphas_cumprod_prev[i])
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0 and i > 0:
            x_prev = x_prev + sigma * self.noise(m, x.shape, x.device, x.dtype)
        return x_prev


class _DPMSolverPP2M(_Step):
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022, the multistep second-order solver), midpoint form,
    the way diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` runs it:
    first order on the first step, second order after, and the final step from the last kept t goes to the
    clean data (sigma = 0, diffusers' ``final_sigmas_type="zero"``), which returns the x0 prediction.

    With alpha_i = sqrt(ab_i), sigma_i = sqrt(1 - ab_i), lambda = log(alpha / sigma), h = lambda_next - lambda_i:
        x_next = (sigma_next / sigma_i) x - alpha_next (e^{-h} - 1) (D0 + D1 / 2),
        D0 = x0_i, D1 = (x0_i - x0_prev) h / h_prev   (D1 = 0 on the first step).
    """

    def __init__(
        self, chain: Diffusion, channel_dims: Mapping[str, int], noise: NoiseFn,
        clip: bool | Mapping[str, tuple[float, float] | None], eta: float
    ) -> None:
        super().__init__(chain, channel_dims, noise, clip, eta)
        ab = chain.alphas_cumprod
        self.alpha = ab.sqrt()
        self.sigma = (1 - ab).sqrt()
        self.lam = self.alpha.log() - self.sigma.log()
        self.history: dict[str, tuple[Tensor, float]] = {}  # modality -> (previous x0, previous h)

    def __call__(self, m: str, out: Tensor, x: Tensor, i: int) -> Tensor:
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0, _ = self.x0_and_eps(m, out, x, t)
        if i == 0:  # to sigma = 0: the first-order update reduces to the data prediction
            self.history.pop(m, None)
            return x0
        h = float(self.lam[i - 1] - self.lam[i])
        ratio = float(self.sigma[i - 1] / self.sigma[i])
        phi = float(self.alpha[i - 1]) * math.expm1(-h)  # alpha_next (e^{-h} - 1)
        d = x0
        if m in self.history:
            x0_prev, h_prev = self.history[m]
            d = x0 + 0.5 * (h / h_prev) * (x0 - x0_prev)
        self.history[m] = (x0, h)
        return ratio * x - phi * d


def _guided_eps(cond: Tensor, uncond: Tensor, channels: int, dim: int, scale: float) -> Tensor:
    """``eps_u + s (eps_c - eps_u)`` on the first ``channels`` of ``dim`` (eps), the rest (a learned variance)
    from the conditional output."""
    eps_c, rest_c = cond.split([channels, cond.shape[dim] - channels], dim=dim)
    eps_u = uncond.narrow(dim, 0, channels)
    return torch.cat([eps_u + scale * (eps_c - eps_u), rest_c], dim=dim)


def _guide_towards_known(
    model_fn: ModelFn, inputs: Mapping[str, Tensor], t_in: Mapping[str, Tensor], unknown: Mapping[str, Tensor],
    last: Tensor, generated: Sequence[str], channel_dims: Mapping[str, int], scale: float,
) -> dict[str, Tensor]:
    """One doubled model call: the inputs as they are, then with each known modality (a key of ``unknown``)
    replaced by its fixed noise at t = T - 1; guided eps for the generated modalities (see :func:`sample`)."""
    x2 = {m: torch.cat([v, unknown[m] if m in unknown else v]) for m, v in inputs.items()}
    t2 = {m: torch.cat([v, last if m in unknown else v]) for m, v in t_in.items()}
    out = model_fn(x2, t2)
    result = {}
    for m in generated:
        cond, uncond = out[m].chunk(2, dim=0)
        result[m] = _guided_eps(cond, uncond, inputs[m].shape[channel_dims[m]], channel_dims[m], scale)
    return result


def classifier_free_guidance(
    model_fn_y: Callable[[Mapping[str, Tensor], Mapping[str, Tensor], Tensor], Mapping[str, Tensor]],
    y: Tensor,
    null_class: int | Tensor,
    scale: float,
    channel_dims: Mapping[str, int],
) -> ModelFn:
    """A model_fn that guides ``model_fn_y(x, t, y)`` towards class ``y`` with scale ``scale``.

    Cond and uncond (``null_class``, e.g. 1000 for DiT) run in one doubled batch; on every modality
    eps = eps_u + s (eps_c - eps_u) over ALL eps channels, and the variance half is the conditional one.
    (DiT's ``forward_with_cfg`` guides only the first 3 channels - a leftover it documents - and returns the
    guided half twice; we guide every channel and return the batch once.) scale == 1 runs the cond batch alone.
    """
    null = torch.as_tensor(null_class, dtype=y.dtype, device=y.device).expand_as(y)

    def guided(x: Mapping[str, Tensor], t: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # A caller may tile the batch (sample's known_guidance doubles it): the classes tile along with it.
        reps = next(iter(x.values())).shape[0] // y.shape[0]
        yy, nn_ = y.repeat(reps), null.repeat(reps)
        if scale == 1.0:
            return dict(model_fn_y(x, t, yy))
        x2 = {m: torch.cat([v, v]) for m, v in x.items()}  # (2b, ...): cond first, then uncond
        t2 = {m: torch.cat([v, v]) for m, v in t.items()}
        out = model_fn_y(x2, t2, torch.cat([yy, nn_]))
        return {m: _guided_eps(*o.chunk(2, dim=0), x[m].shape[channel_dims[m]], channel_dims[m], scale)
                for m, o in out.items()}

    return guided
