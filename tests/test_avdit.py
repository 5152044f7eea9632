"""AV-DiT: identity at step 0, frozen stays frozen, shapes, adapter checkpoints, checkpointing, param counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _models_fixtures import (
    AUDIO_SHAPE,
    VIDEO_SHAPE,
    av_inputs,
    random_backbone,
    randomize_adapters,
    rel_err,
    tiny_cfg,
)

from avdit_cli.config import TemporalPos, load_preset
from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.models import AVDiT, DiT, VideoStreamCache, parameter_counts
from avdit_cli.models.adapters import block_lora


def build(seed: int = 0, **overrides: object) -> AVDiT:
    cfg = tiny_cfg(**overrides)
    return AVDiT(cfg, VIDEO_SHAPE, AUDIO_SHAPE, backbone=random_backbone(cfg, seed),
                 generator=torch.Generator().manual_seed(seed + 100))


# ---- identity at step 0 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        dict(temporal_pos=TemporalPos.SINCOS),
        dict(temporal_pos=TemporalPos.LEARNED),
        dict(temporal_pos=TemporalPos.NONE),
        dict(temporal_pos=TemporalPos.SINCOS, joint_after=(-1,), trainable_class_table=True),
        dict(temporal_pos=TemporalPos.LEARNED, joint=False),
    ],
    ids=["sincos-joint0", "learned-joint0", "none-joint0", "sincos-jointlast-classes", "learned-nojoint"],
)
def test_identity_at_step_0(overrides: dict) -> None:
    model = build(**overrides).eval()
    assert model.cfg.joint is False or len(model.joint) == 1
    x = av_inputs(b=2, f=3)
    with torch.no_grad():
        out = model(**x)
        for i in range(3):  # the frozen DiT on each frame alone
            frame = model.backbone(x["video"][:, i], x["t_video"], x["y"])
            assert frame.abs().max() > 0.1
            assert rel_err(out["video"][:, i], frame) <= 1e-6
    assert torch.count_nonzero(out["audio"]) == 0  # the audio final layer starts at zero, like DiT's


def test_identity_needs_the_zero_inits() -> None:
    """The identity test can fail: move one adapter and the video output moves."""
    model = build().eval()
    x = av_inputs()
    with torch.no_grad():
        model.temporal[0].attn.proj.weight.normal_()
        frame = model.backbone(x["video"][:, 0], x["t_video"], x["y"])
        assert rel_err(model(**x)["video"][:, 0], frame) > 1e-3


def test_temporal_off_makes_each_frame_alone_and_restores_the_weights() -> None:
    """With trained (random) temporal layers and no joint block, temporal_off gives the frozen DiT on each frame;
    on exit, even after an error, the weights are back and the frames see each other again."""
    from avdit_cli.models.avdit import temporal_off

    model = build(joint=False).eval()
    randomize_adapters(model)
    x = av_inputs(b=2, f=3)
    with torch.no_grad():
        before = model(**x)["video"]
        with temporal_off(model):
            alone = model(**x)["video"]
        with pytest.raises(RuntimeError), temporal_off(model):
            raise RuntimeError("inside")
        after = model(**x)["video"]
        for i in range(3):
            assert rel_err(alone[:, i], model.backbone(x["video"][:, i], x["t_video"], x["y"])) <= 1e-6
    assert rel_err(before, alone) > 1e-3 and torch.equal(before, after)


def test_audio_lora_with_zero_b_is_the_frozen_block() -> None:
    model = build()
    block, lora = model.backbone.blocks[0], model.audio_lora[0]
    assert set(lora) == {"qkv", "proj", "fc1", "fc2"}
    x, c = torch.randn(2, 8, 32), torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x, c, lora=lora), block(x, c), atol=1e-6, rtol=1e-6)
        lora["fc1"].up.weight.normal_()
        assert (block(x, c, lora=lora) - block(x, c)).abs().max() > 1e-3


# ---- frozen stays frozen -----------------------------------------------------------------------------------
def test_training_changes_only_the_adapters() -> None:
    model = build(temporal_pos=TemporalPos.LEARNED, trainable_class_table=True).train()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    # Ownership: the trainable set is exactly the parameters of the non-backbone children.
    new = {id(p) for name, child in model.named_children() if name != "backbone" for p in child.parameters()}
    new |= {id(model.temporal_pos)}
    assert {id(p) for p in model.trainable_parameters()} == new
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(4):
        x = av_inputs(seed=step)
        out = model(**x)
        loss = out["video"].square().mean() + (out["audio"] - 1).square().mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), f"backbone tensor {k} changed"
    unchanged = [k for k, v in model.adapter_state_dict().items() if torch.equal(v, trainable_before[k])]
    assert unchanged == []


def test_joint_block_reuses_the_frozen_block_by_reference() -> None:
    model = build(joint_after=(-1,))
    assert list(model.joint) == ["1"]  # -1 = after the last of 2 blocks
    adapter = model.joint["1"]
    assert not any(isinstance(m, type(model.backbone.blocks[0])) for m in adapter.modules())
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not any(id(p) in backbone_ids for p in adapter.parameters())
    d, r = 32, 4
    lora = r * (d + 3 * d) + r * (d + d) + r * (d + 4 * d) + r * (4 * d + d)
    heads = 2  # one time-distance slope per head
    assert sum(p.numel() for p in adapter.parameters()) == 3 * 2 * d + lora + heads  # no copy of the block's weights
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in model.state_dict().values())


# ---- shapes and errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [TemporalPos.SINCOS, TemporalPos.LEARNED])
@pytest.mark.parametrize("frames, t_a", [(1, 8), (2, 4), (3, 12)])
def test_output_shapes(kind: TemporalPos, frames: int, t_a: int) -> None:
    model = build(temporal_pos=kind).eval()
    x = av_inputs(b=2, f=frames, t_a=t_a, classes=False)
    x["t_audio"] = None
    with torch.no_grad():
        out = model(**x)
    assert out["video"].shape == (2, frames, 8, 8, 8)
    assert out["audio"].shape == (2, 4, t_a, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.update(video=x["video"][:, :, :3]), "video has shape"),
        (lambda x: x.update(video=torch.randn(2, 3, 4, 16, 16)), "video has shape"),
        (lambda x: x.update(audio=x["audio"][:, :1]), "audio has shape"),
        (lambda x: x.update(audio=torch.randn(2, 2, 7, 4)), "multiples of the audio patch size"),
        (lambda x: x.update(audio=x["audio"][:1]), "audio has shape"),
        (lambda x: x.update(t_video=x["t_video"][:1]), "t_video has shape"),
        (lambda x: x.update(y=torch.zeros(2, 1, dtype=torch.long)), "y has shape"),
        (lambda x: x.update(video=torch.randn(2, 4, 4, 8, 8)), "learned temporal position embedding"),
    ],
)
def test_wrong_inputs_are_clear_errors(change, message: str) -> None:
    model = build(temporal_pos=TemporalPos.LEARNED)
    x = av_inputs()
    change(x)
    with pytest.raises(ValueError, match=message):
        model(**x)


def test_backbone_that_does_not_fit_the_config_is_a_config_error() -> None:
    cfg = tiny_cfg()
    other = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    with pytest.raises(ConfigError, match="hidden_size=64"):
        AVDiT(cfg, VIDEO_SHAPE, AUDIO_SHAPE, backbone=other)


# ---- adapter checkpoints ---------------------------------------------------------------------------------------
def test_adapter_state_dict_round_trip() -> None:
    model = build(trainable_class_table=True)
    randomize_adapters(model)
    sd = model.adapter_state_dict()
    backbone_ptrs = {p.data_ptr() for p in model.backbone.parameters()}
    assert sd and not any(k.startswith("backbone.") for k in sd)
    assert not any(v.data_ptr() in backbone_ptrs for v in sd.values())
    fresh = AVDiT(model.cfg, VIDEO_SHAPE, AUDIO_SHAPE, backbone=model.backbone)
    x = av_inputs()
    with torch.no_grad():
        assert not torch.equal(fresh(**x)["audio"], model(**x)["audio"])
        fresh.load_adapter_state_dict({k: v.clone() for k, v in sd.items()})
        for key in ("video", "audio"):
            torch.testing.assert_close(fresh(**x)[key], model(**x)[key], atol=0, rtol=0)


@pytest.mark.parametrize("edit", ["drop", "extra", "reshape"])
def test_load_adapter_state_dict_is_strict(edit: str) -> None:
    model = build()
    sd = dict(model.adapter_state_dict())
    key = "temporal.1.attn.qkv.weight"
    if edit == "drop":
        del sd[key]
    elif edit == "extra":
        key = "backbone.blocks.0.attn.qkv.weight"
        sd[key] = torch.zeros(96, 32)
    else:
        sd[key] = torch.zeros(3, 3)
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        model.load_adapter_state_dict(sd)


# ---- gradient checkpointing and autocast ------------------------------------------------------------------
def test_grad_checkpointing_gives_the_same_gradients() -> None:
    model = build(temporal_pos=TemporalPos.LEARNED).train()
    randomize_adapters(model)
    x = av_inputs()
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.grad_checkpointing = ckpt
        out = model(**x)
        (out["video"].square().mean() + out["audio"].square().mean()).backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_forward_and_backward() -> None:
    model = build().train()
    randomize_adapters(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**av_inputs())
        loss = out["video"].float().square().mean() + out["audio"].float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.trainable_parameters())


# ---- parameter counts -----------------------------------------------------------------------------------------
def test_parameter_counts_match_a_real_model() -> None:
    cfg = load_preset("tiny")
    rows = {r.name: r for r in parameter_counts(cfg)}
    model = AVDiT.from_config(cfg)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    assert rows["total"].trainable == trainable
    assert rows["total"].frozen == rows["backbone"].total == sum(p.numel() for p in model.backbone.parameters())
    assert rows["backbone"].trainable == 0 and rows["class table"].total == 0
    assert rows["audio LoRA"].total == sum(p.numel() for p in model.audio_lora.parameters())
    assert sum(r.total for r in rows.values() if r.name != "total") == rows["total"].total


def test_parameter_counts_of_the_paper_setting_on_meta() -> None:
    rows = {r.name: r for r in parameter_counts(load_preset("aist"))}
    assert rows["backbone"].total == rows["backbone"].frozen == 674_834_720  # DiT-XL/2
    d, depth, r = 1152, 28, 8
    lora_per_block = r * (d + 3 * d) + r * (d + d) + r * (d + 4 * d) + r * (4 * d + d)
    assert rows["audio LoRA"].trainable == depth * lora_per_block
    heads = 16  # the joint block's time-distance slopes, one per head
    assert rows["joint block adapters"].trainable == lora_per_block + 6 * d + heads


def test_lora_rank_zero_means_no_lora() -> None:
    cfg = dataclasses.replace(tiny_cfg(), lora_rank=0)
    assert len(block_lora(random_backbone(cfg).blocks[0], cfg.lora_targets, 0, 1.0)) == 0
    model = AVDiT(cfg, VIDEO_SHAPE, AUDIO_SHAPE, backbone=random_backbone(cfg))
    assert sum(p.numel() for p in model.audio_lora.parameters()) == 0
    with torch.no_grad():
        model(**av_inputs())


def test_construction_is_deterministic_given_a_generator() -> None:
    cfg = tiny_cfg(temporal_pos=TemporalPos.LEARNED)
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # must not matter
        model = AVDiT(cfg, VIDEO_SHAPE, AUDIO_SHAPE, generator=torch.Generator().manual_seed(7))
        states.append(model.state_dict())
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


def test_residual_stream_stays_float32_under_bf16_autocast() -> None:
    """As the original DiT: the float32 position table promotes the bf16 patch embedding, so the stream (and its
    28 residual additions in XL) runs in float32 even under autocast."""
    from avdit_cli.config import load_preset
    from avdit_cli.models import AVDiT

    cfg = load_preset("tiny")
    model = AVDiT.from_config(cfg, generator=torch.Generator().manual_seed(0))
    f, c, h, w = cfg.data.video_latent_shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.backbone.embed(torch.randn(2, c, h, w))
        out = model(torch.randn(1, 2, c, h, w), torch.randn(1, *cfg.data.audio_latent_shape), torch.tensor([10]))
    assert tokens.dtype == torch.float32
    assert torch.isfinite(out["video"]).all() and torch.isfinite(out["audio"]).all()


# ---- the joint block's time rotary embedding ------------------------------------------------------------------
def test_time_rotary_scores_depend_on_the_time_difference_only() -> None:
    from avdit_cli.models.adapters import TimeRotary

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    def score(tq: float, tk: float) -> float:
        rq, rk = TimeRotary(torch.tensor([tq]), 16), TimeRotary(torch.tensor([tk]), 16)
        return float((rq(q) * rk(k)).sum())
    assert score(3.0, 1.0) == pytest.approx(score(7.5, 5.5), abs=1e-5)  # same difference, same score
    assert score(3.0, 3.0) == pytest.approx(float((q * k).sum()), abs=1e-5)  # no difference: unrotated
    assert abs(score(3.0, 1.0) - score(3.0, 3.0)) > 1e-3
    rot = TimeRotary(torch.tensor([0.0, 2.0, 4.0]), 16)
    x = torch.randn(2, 3, 3, 16, generator=g)
    torch.testing.assert_close(rot(x).norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_joint_token_times_share_one_clock() -> None:
    model = build(joint_after=(-1,))
    times = model.joint_token_times(num_frames=3, audio_rows=6, audio_cols=2, device=torch.device("cpu"))
    n_v = model.backbone.grid_size ** 2
    assert times.shape == (3 * n_v + 12,)
    assert times[:n_v].eq(0).all() and times[2 * n_v: 3 * n_v].eq(2).all()
    # 6 audio rows span the same 3 frames: row r sits at (r + 0.5) / 2 frames, twice (2 columns)
    torch.testing.assert_close(times[3 * n_v:], torch.tensor([0.25, 0.25, 0.75, 0.75, 1.25, 1.25, 1.75, 1.75,
                                                              2.25, 2.25, 2.75, 2.75]))


@pytest.mark.parametrize("rope", [True, False])
def test_the_joint_block_sees_token_times_only_with_rope(rope: bool) -> None:
    """With trained joint adapters, switching the time rotary on or off changes the output: the joint attention
    really uses it (and the config switch really reaches it)."""
    model = build(joint_after=(-1,), joint_time_rope=rope).eval()
    assert model.joint["1"].time_rope is rope
    randomize_adapters(model, scale=0.5)
    x = av_inputs(b=1, f=3, t_a=8)
    with torch.no_grad():
        base = model(**x)["video"]
        model.joint["1"].time_rope = not rope
        other = model(**x)["video"]
    assert (base - other).abs().max() > 1e-4


def test_the_time_bias_starts_local_and_its_slopes_learn() -> None:
    model = build(joint_after=(-1,)).train()
    adapter = model.joint["1"]
    times = torch.tensor([0.0, 1.0, 3.0])
    bias = adapter.time_score_bias(times)  # (1, heads, 3, 3)
    assert bias.shape == (1, 2, 3, 3) and torch.all(bias.diagonal(dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(bias[0, 0, 0, 1], torch.tensor(-2.0))  # the sharpest head: e^-2 one frame away
    assert torch.all(bias[0, :, 0, 2] < bias[0, :, 0, 1])  # farther in time, lower score
    randomize_adapters(model, scale=0.5)
    out = model(**av_inputs(b=1, f=3, t_a=8))
    (out["audio"].square().mean() + out["video"].square().mean()).backward()
    assert adapter.time_slopes.grad is not None and adapter.time_slopes.grad.abs().max() > 0
    assert build(joint_after=(-1,), joint_time_bias=False).joint["1"].time_slopes is None

    # fixed slopes (ALiBi): the same bias, from a buffer that is neither trained nor saved
    fixed = build(joint_after=(-1,), joint_time_bias_learned=False)
    slopes = fixed.joint["1"].time_slopes
    assert not isinstance(slopes, torch.nn.Parameter) and not slopes.requires_grad
    torch.testing.assert_close(fixed.joint["1"].time_score_bias(times), bias.detach())
    assert not any("time_slopes" in name for name in fixed.adapter_state_dict())
    assert not any("time_slopes" in name for name in fixed.state_dict())


def cross_modal_mask(n_video: int, n_audio: int) -> torch.Tensor:
    """(n, n) additive scores: 0 between a video and an audio token, -inf within one modality (the full-attention
    form of the cross-only joint block, which computes the two cross blocks alone)."""
    video = torch.arange(n_video + n_audio) < n_video
    same = video[:, None] == video[None, :]
    return torch.zeros(same.shape).masked_fill(same, float("-inf"))


def test_attention_in_blocks_equals_the_masked_full_attention() -> None:
    block = random_backbone(tiny_cfg()).blocks[0]
    g = torch.Generator().manual_seed(5)
    h, time_bias = torch.randn(2, 10, 32, generator=g), torch.randn(1, 2, 10, 10, generator=g)
    full = block.attention(h, bias=time_bias + cross_modal_mask(6, 4))
    v, a = slice(0, 6), slice(6, None)
    pairs = [(v, a, time_bias[..., v, a]), (a, v, time_bias[..., a, v])]
    torch.testing.assert_close(block.attention(h, pairs=pairs), full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(block.attention(h, pairs=pairs[1:]), full[:, 6:], atol=1e-6, rtol=1e-5)
    no_bias = [(v, a, None), (a, v, None)]
    torch.testing.assert_close(block.attention(h, pairs=no_bias), block.attention(h, bias=cross_modal_mask(6, 4)),
                               atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        block.attention(h, bias=time_bias, pairs=pairs)


def test_time_bias_of_a_block_is_that_block_of_the_full_bias() -> None:
    adapter = build(joint_after=(-1,)).joint["1"]
    times = torch.cat([torch.arange(3.0).repeat_interleave(4), torch.linspace(0, 2, 5)])
    full = adapter.time_score_bias(times)
    torch.testing.assert_close(adapter.time_score_bias(times[12:], times[:12]), full[..., 12:, :12])


def joint_block_inputs(b: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A joint block's inputs for the test model (d = 32): 3 frames x 16 video tokens, 8 audio tokens, one
    conditioning vector per clip, and the tokens' times in frames."""
    g = torch.Generator().manual_seed(seed)
    xv, xa, c = torch.randn(b, 3 * 16, 32, generator=g), torch.randn(b, 8, 32, generator=g), torch.randn(b, 32, generator=g)
    return xv, xa, c, torch.cat([torch.arange(3.0).repeat_interleave(16), torch.linspace(0, 2, 8)])


@pytest.mark.parametrize("video_out", [True, False])
def test_cross_only_joint_block_equals_the_masked_full_attention(video_out: bool) -> None:
    """The joint block's two cross blocks (with the time rotary and the time bias) give what the full attention
    over all its tokens gives with the pairs within a modality masked, for the audio-only call too."""
    model = build(joint_after=(-1,), joint_cross_only=True, joint_time_rope=True).eval()
    randomize_adapters(model, scale=0.5)
    adapter, block = model.joint["1"], model.backbone.blocks[1]
    xv, xa, c, times = joint_block_inputs(b=2, seed=4)
    with torch.no_grad():
        got = adapter(block, xv, xa, c, c, times, video_out=video_out)
        full = block.attention

        def masked(h, lora=None, rotary=None, bias=None, pairs=None):  # type: ignore[no-untyped-def]
            mask = cross_modal_mask(xv.shape[1], xa.shape[1])  # added to the blocks the full attention uses
            return full(h, lora, rotary, pairs=[(q, k, mask[q, k] if b is None else b + mask[q, k])
                                                for q, k, b in pairs])

        block.attention = masked  # type: ignore[method-assign]
        adapter.cross_only = False
        try:
            want = adapter(block, xv, xa, c, c, times, video_out=video_out)
        finally:
            del block.attention
            adapter.cross_only = True
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (got[1] - xa).abs().max() > 1e-3  # the block did something to the sound


def test_cross_only_joint_attention_sees_the_other_modality_only() -> None:
    # a video input change reaches the audio only through the joint block, and audio tokens do not mix
    # among themselves there: changing one clip's audio leaves the joint block's audio branch unmoved (its
    # attention reads video only) as long as the video is the same
    model = build(joint_after=(-1,), joint_cross_only=True).eval()
    randomize_adapters(model, scale=0.5)
    adapter, block = model.joint["1"], model.backbone.blocks[1]
    xv, xa, c, times = joint_block_inputs(b=1, seed=3)
    with torch.no_grad():
        _, a1 = adapter(block, xv, xa, c, c, times)
        xa2 = xa.clone()
        xa2[:, 0] += 1.0  # move one audio token
        _, a2 = adapter(block, xv, xa2, c, c, times)
    # the other audio tokens' outputs do not depend on token 0 (no audio-audio attention in this block)
    torch.testing.assert_close(a1[:, 1:], a2[:, 1:])


# ---- the video stream cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [dict(joint_after=(0,)), dict(joint_after=(-1,)), dict(joint=False)],
                         ids=["joint-first", "joint-last", "no-joint"])
def test_video_stream_cache_is_exact(overrides: dict) -> None:
    model = build(**overrides).eval()
    randomize_adapters(model)
    x = av_inputs(b=2, f=3)
    cache = VideoStreamCache()
    with torch.no_grad():
        for seed in range(3):  # the same frames, new sound each time: the sound stage of video-first sampling
            x["audio"] = torch.randn(x["audio"].shape, generator=torch.Generator().manual_seed(seed))
            x["t_audio"] = torch.full((2,), 100.0 * seed)
            plain, reused = model(**x), model(**x, video_cache=cache)
            for m in ("video", "audio"):
                assert torch.equal(plain[m], reused[m]), (seed, m)
        assert (cache.hits, cache.misses) == (2, 1)
        misses = 1
        for key in ("video", "t_video", "y"):  # any new input of the video stream runs it again
            x[key] = (x[key] + 1) % 11 if key == "y" else x[key] + 1  # y: 10 classes + the null class
            assert torch.equal(model(**x)["audio"], model(**x, video_cache=cache)["audio"]), key
            misses += 1
            assert cache.misses == misses, key


@pytest.mark.parametrize("overrides", [dict(joint_after=(0,)), dict(joint_after=(-1,)), dict(joint_after=(0, 1)),
                                       dict(joint=False), dict(joint_after=(-1,), joint_cross_only=True)],
                         ids=["joint-first", "joint-last", "two-joint", "no-joint", "cross-only"])
def test_audio_only_calls_give_the_same_sound(overrides: dict) -> None:
    """With given frames the sound stage skips what only the frames' output needs: the video queries of the last
    joint block, the video blocks after it, the video final layer."""
    model = build(**overrides).eval()
    randomize_adapters(model)
    x = av_inputs(b=2, f=3)
    cache = VideoStreamCache(audio_only=True)
    with torch.no_grad():
        first = model(**x, video_cache=cache)  # a miss: the full call
        assert set(first) == {"video", "audio"}
        for seed in range(2):
            x["audio"] = torch.randn(x["audio"].shape, generator=torch.Generator().manual_seed(seed))
            x["t_audio"] = torch.full((2,), 300.0 * seed)
            plain, sound = model(**x), model(**x, video_cache=cache)
            assert set(sound) == {"audio"}
            assert rel_err(sound["audio"], plain["audio"]) < 1e-5, seed  # float rounding of the query subset
    assert cache.hits == 2


def test_joint_attention_of_a_query_subset_is_those_rows() -> None:
    block = random_backbone(tiny_cfg()).blocks[0]
    h = torch.randn(2, 10, 32)
    bias = torch.randn(1, 2, 10, 10)
    full = block.attention(h, bias=bias)
    part = block.attention(h, pairs=[(slice(6, None), slice(None), bias[..., 6:, :])])
    assert part.shape == (2, 4, 32) and torch.allclose(part, full[:, 6:], atol=1e-6)


def test_video_stream_cache_is_not_used_while_training() -> None:
    model = build().train()
    cache = VideoStreamCache()
    x = av_inputs()
    model(**x, video_cache=cache)
    model(**x, video_cache=cache)
    assert cache.hits == cache.misses == 0

