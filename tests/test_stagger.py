"""Staggered frames (Diffusion Forcing's pyramid): per-frame timesteps through the schedule, the model, the loss,
training's draws and the sampler."""

from __future__ import annotations

import math

import pytest
import torch

from avdit_cli.config import apply_overrides, load_preset
from avdit_cli.diffusion import Diffusion, sample, space_timesteps, training_losses
from avdit_cli.diffusion.samplers import default_respacing
from avdit_cli.diffusion.stagger import CLEAN, draw_stagger, progress_to_timestep, staggered_chain
from avdit_cli.errors import ConfigError
from avdit_cli.models import AVDiT
from _models_fixtures import (AUDIO_SHAPE, VIDEO_SHAPE, av_inputs, random_backbone, randomize_adapters, rel_err,
                              tiny_cfg)

CD = {"video": 2, "audio": 1}
MU = {"video": 0.3, "audio": -0.2}
S = {"video": 0.5, "audio": 0.8}


@pytest.fixture(scope="module")
def diffusion() -> Diffusion:
    return Diffusion.create(1000, "linear", 1e-4, 0.02, learn_sigma=True)


# -- the pattern ---------------------------------------------------------------------------------------------
def test_chain_without_spread_is_the_trailing_ddim_grid() -> None:
    chain = staggered_chain(3, 25, 0.0, 1000)  # (26, 3)
    trailing = sorted(space_timesteps(1000, default_respacing("ddim", 25)), reverse=True)
    assert chain[:-1, 0].tolist() == trailing and chain[-1].tolist() == [CLEAN] * 3
    assert torch.equal(chain, chain[:, :1].expand(-1, 3))  # every frame at one t


def test_chain_staggers_frames_and_every_frame_walks_its_whole_range() -> None:
    chain = staggered_chain(16, 20, 1.0, 1000)
    assert chain.shape == (41, 16)  # 20 x (1 + 1) rows after the start
    assert chain[0].tolist() == [999] * 16 and chain[-1].tolist() == [CLEAN] * 16
    assert (chain[1:] <= chain[:-1]).all()  # never noisier later
    assert (chain[:, 1:] >= chain[:, :-1]).all()  # a later frame is never cleaner than an earlier one
    middle = chain[20]
    assert middle[0] == CLEAN and middle[-1] == 999 and len(set(middle.tolist())) > 8
    for i in range(16):  # about `steps` distinct levels per frame
        assert 19 <= len(set(chain[:, i].tolist()) - {999, CLEAN}) <= 21


@pytest.mark.parametrize("frames,spread", [(3, 3.0), (16, 60.0), (1, 0.5), (16, 1.0)])
def test_chain_never_repeats_a_row(frames, spread) -> None:
    """A spread wider than the frames' offsets leaves rows in which no frame moves: they are dropped, so the
    sampler never makes the same model call twice (a repeated call would also hit the sound-only cache)."""
    chain = staggered_chain(frames, 8, spread, 1000)
    assert (chain[1:] != chain[:-1]).any(dim=1).all()
    assert chain[0].tolist() == [999] * frames and chain[-1].tolist() == [CLEAN] * frames
    assert ((chain[1:] <= chain[:-1]).all())


def test_progress_maps_to_timesteps_at_both_ends() -> None:
    u = torch.tensor([0.0, 0.5, 1.0])
    assert progress_to_timestep(u, 1000).tolist() == [999, 499, CLEAN]


def test_training_draws_are_seeded_ordered_and_in_range() -> None:
    rows = [draw_stagger(16, 1.5, 1000, torch.Generator().manual_seed(s)) for s in range(200)]
    again = [draw_stagger(16, 1.5, 1000, torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(torch.equal(a, b) for a, b in zip(rows, again))
    stacked = torch.stack(rows)
    assert stacked.min() >= CLEAN and stacked.max() <= 999
    assert (stacked[:, 1:] >= stacked[:, :-1]).all()
    # both ends and a spread of levels in between occur, and every clip keeps a frame to score
    assert (stacked == CLEAN).any() and (stacked == 999).any() and stacked[:, 8].float().std() > 200
    assert (stacked[:, -1] >= 0).all()
    wide = torch.stack([draw_stagger(4, 0.01, 1000, torch.Generator().manual_seed(s)) for s in range(3000)])
    assert (wide[:, -1] >= 0).all()  # even when tau lands at the very end


# -- schedule, model and loss ---------------------------------------------------------------------------------
def test_q_sample_takes_one_timestep_per_frame(diffusion) -> None:
    x0, noise = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    t = torch.tensor([[0, 500, 999], [10, 10, 700]])
    got = diffusion.q_sample(x0, t, noise)
    for b in range(2):
        for f in range(3):
            one = diffusion.q_sample(x0[b, f][None], t[b, f][None], noise[b, f][None])[0]
            assert torch.allclose(got[b, f], one)


def _model(joint: bool) -> AVDiT:
    cfg = tiny_cfg(joint=joint, joint_after=(-1,), trainable_class_table=True)
    model = AVDiT(cfg, VIDEO_SHAPE, AUDIO_SHAPE, backbone=random_backbone(cfg),
                  generator=torch.Generator().manual_seed(100)).eval()
    randomize_adapters(model)  # every adapter away from its zero init, so every path matters
    return model


@pytest.mark.parametrize("joint", [True, False])
def test_model_with_one_timestep_on_every_frame_equals_the_per_clip_call(joint) -> None:
    model = _model(joint)
    x = av_inputs(b=2, f=4)
    v, a, y, ta = x["video"], x["audio"], x["y"], x["t_audio"]
    t = torch.tensor([10.0, 600.0])
    with torch.no_grad():
        per_clip = model(v, a, t, ta, y)
        per_frame = model(v, a, t[:, None].expand(2, 4), ta, y)
        mixed = model(v, a, torch.tensor([[10.0, 10, 600, 600], [600, 10, 10, 10]]), ta, y)
    for m in per_clip:
        assert rel_err(per_frame[m], per_clip[m]) < 1e-5  # float rounding only
    assert not torch.allclose(mixed["video"], per_clip["video"])
    assert torch.equal(mixed["audio"], per_clip["audio"]) != joint  # the sound sees the frames' levels


def test_model_refuses_bad_per_frame_timesteps() -> None:
    model = _model(True)
    x = av_inputs(b=2, f=4)
    with pytest.raises(ValueError, match="one per frame"):
        model(x["video"], x["audio"], torch.zeros(2, 3), x["t_audio"])
    with pytest.raises(ValueError, match="needs its own t_audio"):
        model(x["video"], x["audio"], torch.zeros(2, 4))


def _loss_model(offset: float = 0.0, frame: int | None = None):
    def model_fn(x, t):
        out = {}
        for m, v in x.items():
            eps = 0.5 * v
            if frame is not None and m == "video":
                eps = eps.clone()
                eps[:, frame] += offset
            out[m] = torch.cat([eps, torch.zeros_like(eps)], dim=CD[m])
        return out
    return model_fn


def test_per_frame_loss_equals_the_per_clip_loss_when_frames_share_t(diffusion) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = {"video": torch.randn(3, 4, 2, 4, 4, generator=g), "audio": torch.randn(3, 2, 4, 4, generator=g)}
    noise = {m: torch.randn(v.shape, generator=g) for m, v in x0.items()}
    t = {"video": torch.tensor([0, 400, 999]), "audio": torch.tensor([5, 6, 7])}
    per_clip = training_losses(diffusion, _loss_model(), x0, t, CD, noise=noise, min_snr_gamma=5)
    t_frames = dict(t, video=t["video"][:, None].expand(3, 4))
    per_frame = training_losses(diffusion, _loss_model(), x0, t_frames, CD, noise=noise, min_snr_gamma=5)
    assert per_clip.keys() == per_frame.keys()
    for k in per_clip:
        assert torch.allclose(per_clip[k], per_frame[k], rtol=1e-5, atol=1e-7), k


def test_frames_out_of_the_mask_do_not_count(diffusion) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = {"video": torch.randn(2, 4, 2, 4, 4, generator=g), "audio": torch.randn(2, 2, 4, 4, generator=g)}
    noise = {m: torch.randn(v.shape, generator=g) for m, v in x0.items()}
    t = {"video": torch.tensor([[0, 0, 300, 900], [0, 100, 200, 300]]), "audio": torch.tensor([5, 6])}
    fm = {"video": torch.tensor([[0.0, 0, 1, 1], [0, 1, 1, 1]])}
    base = training_losses(diffusion, _loss_model(), x0, t, CD, noise=noise, frame_masks=fm)
    moved = training_losses(diffusion, _loss_model(3.0, frame=0), x0, t, CD, noise=noise, frame_masks=fm)
    assert torch.equal(base["video"], moved["video"])  # frame 0 is given in both clips
    hit = training_losses(diffusion, _loss_model(3.0, frame=2), x0, t, CD, noise=noise, frame_masks=fm)
    assert (hit["video"] > base["video"]).all()
    # the sample's term is the mean over its scored frames
    x_t = diffusion.q_sample(x0["video"], t["video"], noise["video"])
    per_frame = ((noise["video"] - 0.5 * x_t) ** 2).mean(dim=(2, 3, 4))  # (b, f)
    want = (per_frame * fm["video"]).sum(1) / fm["video"].sum(1)
    assert torch.allclose(base["video_mse"], want, rtol=1e-5)


# -- training draws --------------------------------------------------------------------------------------------
def test_finetune_staggers_only_clips_with_a_video_loss() -> None:
    from avdit_cli.pipelines.finetune import _stagger_frames

    cfg = apply_overrides(load_preset("tiny"), ["diffusion.independent_timesteps=true",
                                                "diffusion.frame_stagger_prob=1.0"])
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    t_video = torch.tensor([0, 500, 700, 900])
    given = torch.tensor([True, False, False, False])
    t, masks = _stagger_frames(cfg, gens, t_video, given, 16)
    assert t.shape == (4, 16) and t.min() >= 0
    assert masks["video"][0].sum() == 0 and torch.equal(t[0], torch.zeros(16, dtype=torch.long))
    for i in range(1, 4):
        row = t[i]
        assert (row[1:] >= row[:-1]).all() and row.unique().numel() > 1  # staggered
        assert (row[masks["video"][i] == 0] == 0).all()  # the given frames go in clean
    none = apply_overrides(cfg, ["diffusion.frame_stagger_prob=0.0"])
    t0, m0 = _stagger_frames(none, [torch.Generator().manual_seed(s) for s in range(4)], t_video, given, 16)
    assert torch.equal(t0, t_video[:, None].expand(4, 16)) and m0["video"].tolist() == [[0.0] * 16] + [[1.0] * 16] * 3


def test_config_refuses_staggering_it_cannot_do() -> None:
    tiny = load_preset("tiny")
    with pytest.raises(ConfigError, match="frame_stagger_prob"):
        apply_overrides(tiny, ["diffusion.frame_stagger_prob=0.5"])  # needs independent timesteps
    with pytest.raises(ConfigError, match="sample.frame_stagger"):
        apply_overrides(tiny, ["diffusion.independent_timesteps=true", "sample.frame_stagger=1"])
    with pytest.raises(ConfigError, match="frame_stagger_max"):
        apply_overrides(tiny, ["diffusion.independent_timesteps=true", "diffusion.frame_stagger_prob=0.5",
                               "diffusion.frame_stagger_max=1.0", "sample.frame_stagger=2"])
    with pytest.raises(ConfigError, match="DDIM only"):
        apply_overrides(tiny, ["diffusion.independent_timesteps=true", "diffusion.frame_stagger_prob=0.5",
                               "sample.sampler=ddpm", "sample.frame_stagger=1"])


# -- the sampler ------------------------------------------------------------------------------------------------
def _gaussian_eps(diffusion: Diffusion, record=None):
    """The exact eps of x0 ~ N(MU, S²) iid, for any timestep shape (per clip or per frame)."""
    def model_fn(x, t):
        if record is not None:
            record.append(({m: v.clone() for m, v in x.items()}, {m: v.clone() for m, v in t.items()}))
        out = {}
        for m, xm in x.items():
            ab = diffusion.gather(diffusion.alphas_cumprod, t[m], xm)
            eps = (1 - ab).sqrt() * (xm - ab.sqrt() * MU[m]) / (ab * S[m] ** 2 + 1 - ab)
            out[m] = torch.cat([eps, torch.zeros_like(eps)], dim=CD[m])
        return out
    return model_fn


def test_staggered_sampling_with_no_spread_is_ddim(diffusion) -> None:
    shapes = {"video": (4, 3, 2, 2, 2), "audio": (4, 2, 2, 4)}
    plain = sample(_gaussian_eps(diffusion), shapes, CD, diffusion, sampler="ddim", steps=12,
                   generator=torch.Generator().manual_seed(0), clip_denoised=True)
    tiny = sample(_gaussian_eps(diffusion), shapes, CD, diffusion, sampler="ddim", steps=12, frame_stagger=1e-9,
                  generator=torch.Generator().manual_seed(0), clip_denoised=True)
    for m in shapes:
        assert torch.allclose(plain[m], tiny[m], atol=1e-5), m


def test_staggered_sampling_reproduces_gaussian_data(diffusion) -> None:
    n = 2000
    shapes = {"video": (n, 4, 2, 2, 2), "audio": (n, 2, 2, 4)}
    out = sample(_gaussian_eps(diffusion), shapes, CD, diffusion, sampler="ddim", steps=50, frame_stagger=1.0,
                 generator=torch.Generator().manual_seed(0))
    for m in shapes:
        frames = out[m].transpose(0, 1).flatten(1) if m == "video" else out[m].flatten()[None]
        for x in frames.double():  # each frame alone: staggering must not bias any of them
            k = x.numel()
            # 4 standard errors + DDIM-50's discretisation allowance (tests/test_samplers.py ALLOW)
            assert abs(x.mean().item() - MU[m]) < 4 * S[m] / math.sqrt(k) + 0.003
            assert abs(x.std().item() - S[m]) < 4 * S[m] / math.sqrt(2 * k) + 0.045


def test_staggered_sampling_feeds_earlier_frames_cleaner_and_finished_ones_at_zero(diffusion) -> None:
    record, ticks = [], []
    shapes = {"video": (2, 5, 2, 2, 2)}
    absent = {"audio": torch.randn(2, 2, 2, 4)}
    out = sample(_gaussian_eps(diffusion, record), shapes, CD, diffusion, sampler="ddim", steps=10,
                 frame_stagger=1.0, absent=absent, generator=torch.Generator().manual_seed(0),
                 progress=lambda i, k: ticks.append((i, k)))
    assert len(record) == 20 and ticks[-1] == (20, 20)
    chain = staggered_chain(5, 10, 1.0, 1000)
    for row, (x, t) in enumerate(record):
        assert torch.equal(t["video"][0], chain[row].clamp(min=0)) and t["video"].shape == (2, 5)
        assert t["audio"].tolist() == [999, 999] and torch.equal(x["audio"], absent["audio"])
        done = chain[row] == CLEAN
        if done.any():  # a finished frame is final: what the model sees is what is returned
            assert torch.equal(x["video"][:, done], out["video"][:, done])
    with pytest.raises(ValueError, match="DDIM"):
        sample(_gaussian_eps(diffusion), shapes, CD, diffusion, sampler="ddpm", steps=10, frame_stagger=1.0,
               absent=absent, generator=torch.Generator().manual_seed(0))


def test_staggered_sampling_is_seeded_with_eta(diffusion) -> None:
    shapes = {"video": (2, 3, 2, 2, 2), "audio": (2, 2, 2, 4)}

    def run(seed, eta):
        return sample(_gaussian_eps(diffusion), shapes, CD, diffusion, sampler="ddim", steps=8, eta=eta,
                      frame_stagger=0.5, generator=torch.Generator().manual_seed(seed))

    a, b, c, d = run(1, 1.0), run(1, 1.0), run(2, 1.0), run(1, 0.0)
    for m in shapes:
        assert torch.equal(a[m], b[m]) and not torch.allclose(a[m], c[m]) and not torch.allclose(a[m], d[m])
