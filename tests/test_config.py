"""Config: defaults, presets, overrides, round trips and every error path."""

from __future__ import annotations

from pathlib import Path

import pytest

from avdit_cli.config import (
    Config,
    ConfigError,
    Sampler,
    apply_overrides,
    available_presets,
    load_preset,
    to_yaml,
)


def test_presets_are_listed_and_validate() -> None:
    assert {"aist", "landscape", "tiny"} <= set(available_presets())
    for name in available_presets():
        cfg = load_preset(name)
        assert cfg.name == name
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_paper_setting() -> None:
    cfg = load_preset("aist")
    m, d = cfg.model, cfg.data
    assert (m.hidden_size, m.depth, m.num_heads, m.patch_size) == (1152, 28, 16, 2)
    assert m.backbone_repo == "facebook/DiT-XL-2-256"
    assert d.video_latent_shape == (16, 4, 32, 32)
    assert d.audio_latent_shape == (8, 40, 16)
    assert d.clip_samples == 25_600 and d.mel_frames == 160
    assert cfg.diffusion.num_timesteps == 1000 and cfg.sample.steps == 250
    assert load_preset("landscape").data.class_folders


def test_tiny_is_small_but_keeps_the_clip_protocol() -> None:
    cfg = load_preset("tiny")
    assert cfg.data.num_frames == 16 and cfg.data.clip_samples == 25_600
    assert cfg.model.hidden_size < 256 and cfg.data.video_codec.value == "pixels"


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_preset("tiny", ["sample.sampler=dpm++", "model.joint_after=[0, -1]"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_preset(path) == cfg


def test_overrides_are_typed() -> None:
    cfg = load_preset("aist", ["train.lr=1e-4", "train.steps=10", "data.stride_seconds=0.8",
                               "model.lora_targets=[qkv, fc1]", "sample.sampler=ddim", "model.joint=false"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 10
    assert cfg.data.stride_seconds == 0.8
    assert cfg.model.lora_targets == ("qkv", "fc1")
    assert cfg.sample.sampler is Sampler.DDIM
    assert cfg.model.joint is False
    assert apply_overrides(cfg, ["data.stride_seconds=null"]).data.stride_seconds is None
    assert cfg.replace(**{"train.lr": 2e-4}).train.lr == pytest.approx(2e-4)


def test_int_given_for_float_is_accepted() -> None:
    assert load_preset("aist", ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.lr=abc", ["train.lr", "a number"]),
        ("train.steps=1.5", ["train.steps", "an integer"]),
        ("train.nosuch=1", ["train.nosuch", "allowed keys"]),
        ("nosuch.lr=1", ["nosuch.lr", "SECTION.FIELD"]),
        ("train.lr", ["KEY=VALUE"]),
        ("sample.sampler=euler", ["sample.sampler", "'ddim'"]),
        ("model.joint=maybe", ["model.joint", "true/false"]),
        ("data.frame_size=250", ["data.frame_size", "multiple"]),
        ("model.num_heads=5", ["model.hidden_size", "multiple"]),
        ("model.lora_targets=[qkv, bogus]", ["model.lora_targets"]),
        ("model.joint_after=[28]", ["model.joint_after"]),
        ("sample.cross_modal_guidance=-1", ["sample.cross_modal_guidance", ">= 0"]),
        ("sample.cross_modal_guidance=3", ["sample.cross_modal_guidance", "independent_timesteps"]),
        ("sample.steps=2000", ["sample.steps"]),
        ("diffusion.beta_end=0.00001", ["diffusion.beta_end"]),
        ("train.ema_decay=1.5", ["train.ema_decay"]),
        ("data.hop_length=157", ["data.hop_length"]),
        ("data.f_max=9000", ["data.f_max"]),
        ("eval.metrics=[fid]", ["eval.metrics"]),
    ],
)
def test_bad_values_name_the_key(override: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("aist", [override])
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="aist, landscape, tiny"):
        load_preset("nosuch")


def test_preset_file_with_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  learning_rate: 3\n")
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_preset(path)
    path.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_preset(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(tmp_path / "missing.yaml")


def test_preset_name_comes_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n")
    cfg = load_preset(path)
    assert cfg.name == "mine" and cfg.train.lr == 1e-4
    assert cfg.model == Config().model


def test_hash_depends_on_the_section() -> None:
    a = load_preset("aist")
    b = load_preset("aist", ["train.lr=1e-3"])
    assert a.hash("data") == b.hash("data")
    assert a.hash() != b.hash()
    assert a.hash("data") != load_preset("aist", ["data.frame_size=128"]).hash("data")


def test_cache_key_ignores_load_time_settings() -> None:
    a = load_preset("aist")
    assert a.cache_hash() == load_preset("aist", ["data.hflip=false", "data.vocoder=griffin-lim"]).cache_hash()
    assert a.cache_hash() != load_preset("aist", ["data.stride_seconds=0.8"]).cache_hash()
    assert a.cache_hash() != load_preset("aist", ["data.frame_size=128"]).cache_hash()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="train.lr"):
        load_preset("aist", [f"train.lr={value}"])


def test_a_single_value_is_accepted_for_a_list() -> None:
    assert load_preset("aist", ["model.joint_after=5"]).model.joint_after == (5,)
