"""DiT port: parity with diffusers in every file layout, save/load round trip, refusal of bad weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _models_fixtures import (
    TINY_DIFFUSERS,
    diffusers_to_original,
    rel_err,
    set_original_numerics,
    tiny_diffusers_dit,
    write_all_formats,
)
from safetensors.torch import load_file, save_file

from avdit_cli.errors import WeightsError
from avdit_cli.fileio import sha256_file
from avdit_cli.models import DIT_SIZES, DiT
from avdit_cli.models.dit import timestep_embedding


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    model = tiny_diffusers_dit(seed=0)
    root = tmp_path_factory.mktemp("dit_formats")
    return model, write_all_formats(model, root)


def _inputs(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.tensor([0.0, 417.5, 999.0])[:n]  # float t included
    y = torch.tensor([0, 7, 10])[:n]  # 10 = the null class
    return x, t, y


@torch.no_grad()
def _diffusers_out(model, x, t, y) -> torch.Tensor:
    return model(x, timestep=t, class_labels=y).sample


# ---- numerics and building blocks --------------------------------------------------------------------------
def test_timestep_features_are_the_original_dit_ones() -> None:
    t = torch.tensor([3.0, 250.5])
    # facebookresearch/DiT TimestepEmbedder.timestep_embedding, float32 as there
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(0, 128, dtype=torch.float32) / 128)
    args = t[:, None].float() * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], -1)
    torch.testing.assert_close(timestep_embedding(t), expected, atol=1e-6, rtol=0)
    # and not diffusers' default (downscale_freq_shift=1: divide by 127)
    shifted = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(128.0) / 127)
    assert (timestep_embedding(t)[1, 1:128] - torch.cos(t[1] * shifted)[1:]).abs().max() > 1e-2


def test_attention_goes_through_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=2, num_classes=10)
    model(*_inputs())
    assert len(calls) == 3  # one SDPA call per block: timm's Attention with fused_attn


def test_size_table_and_xl2_parameter_count() -> None:
    assert set(DIT_SIZES) == {f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)}
    xl = DIT_SIZES["DiT-XL/2"]
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size) == (28, 1152, 16, 2)
    with torch.device("meta"):
        model = DiT(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16)
    # From the original checkpoint's shapes (REFERENCES): embedders, 28 blocks, final layer.
    block = (3456 + 1152 + 4608 + 4608 + 6912) * 1152 + 3456 + 1152 + 4608 + 1152 + 6912
    expected = (1152 * 16 + 1152) + (1152 * 256 + 1152 + 1152 * 1152 + 1152) + 1001 * 1152 + 28 * block \
        + (2304 * 1152 + 2304) + (32 * 1152 + 32)
    assert sum(p.numel() for p in model.parameters()) == expected == 674_834_720


def test_null_class_table_and_y_none() -> None:
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=0)
    assert model.y_embedder.embedding_table.weight.shape == (1, 32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x, t, _ = _inputs()
    torch.testing.assert_close(model(x, t, None), model(x, t, torch.zeros(3, dtype=torch.long)), atol=0, rtol=0)


def test_wrong_input_shape_is_a_clear_error() -> None:
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=5)
    x, t, y = _inputs()
    with pytest.raises(ValueError, match=r"expected \(batch, 4, 8, 8\)"):
        model(x[:, :3], t, y)
    with pytest.raises(ValueError, match=r"expected \(batch, 4, 8, 8\)"):
        model(torch.randn(3, 4, 16, 16), t, y)
    with pytest.raises(ValueError, match="t and y"):
        model(x, t[:2], y)


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    model.train()
    x, t, y = _inputs()
    y = y.clamp(max=5)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.grad_checkpointing = ckpt
        model(x, t, y).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- port parity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["repo-safetensors", "transformer-bin", "pt", "ema"])
def test_port_parity_with_diffusers(reference, fmt: str) -> None:
    model, paths = reference
    x, t, y = _inputs()
    expected = _diffusers_out(model, x, t, y)
    assert expected.shape == (3, 8, 8, 8)  # diffusers returns (N, out_channels, H, W)
    # An original checkpoint has no config: the head count of a size outside DIT_SIZES must be given.
    ours, report = DiT.from_pretrained(paths[fmt], num_heads=2 if fmt in ("pt", "ema") else None,
                                       output_loading_info=True)
    assert (ours.input_size, ours.depth, ours.num_heads, ours.hidden_size, ours.num_classes) == (8, 2, 2, 32, 10)
    with torch.no_grad():
        got = ours(x, t, y)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1
    assert rel_err(got, expected) <= 1e-5
    assert report.num_tensors == len(ours.state_dict())
    assert report.format == {"repo-safetensors": "diffusers-safetensors", "transformer-bin": "diffusers-bin",
                             "pt": "original", "ema": "original-ema"}[fmt]


def test_original_checkpoint_with_old_attention_spelling(reference, tmp_path: Path) -> None:
    model, paths = reference
    sd = load_file(str(paths["repo-safetensors"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    old = {k.replace("attn1.to_q.", "attn1.query.").replace("attn1.to_k.", "attn1.key.")
           .replace("attn1.to_v.", "attn1.value.").replace("attn1.to_out.0.", "attn1.proj_attn."): v
           for k, v in sd.items()}
    assert any(".attn1.proj_attn." in k for k in old)
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save(old, folder / "diffusion_pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    ours = DiT.from_pretrained(folder)
    assert isinstance(ours, DiT)  # the model alone, as every Hugging Face from_pretrained returns
    x, t, y = _inputs()
    with torch.no_grad():
        assert rel_err(ours(x, t, y), _diffusers_out(model, x, t, y)) <= 1e-5


def test_hub_style_transformer2dmodel_config(reference, tmp_path: Path) -> None:
    """facebook/DiT-XL-2-256's transformer/config.json predates DiTTransformer2DModel."""
    model, paths = reference
    src = paths["transformer-bin"]
    config = json.loads((src / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"
    config.pop("norm_eps")
    config.update(cross_attention_dim=None, num_vector_embeds=None, only_cross_attention=False,
                  use_linear_projection=False)
    folder = tmp_path / "hub" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.bin").write_bytes((src / "diffusion_pytorch_model.bin").read_bytes())
    ours, report = DiT.from_pretrained(tmp_path / "hub", output_loading_info=True)
    assert report.format == "diffusers-bin"
    x, t, y = _inputs()
    with torch.no_grad():
        assert rel_err(ours(x, t, y), _diffusers_out(model, x, t, y)) <= 1e-5
    config["norm_type"] = "layer_norm"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="not a DiT transformer config"):
        DiT.from_pretrained(folder)


def test_device_dtype_report_and_trainability(reference) -> None:
    _, paths = reference
    ours, report = DiT.from_pretrained(paths["pt"], map_location="cpu", dtype=torch.bfloat16, num_heads=2,
                                       output_loading_info=True)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in ours.parameters())
    assert ours.pos_embed.dtype == torch.bfloat16 and not ours.pos_embed.is_meta
    assert all(p.requires_grad for p in ours.parameters())  # pretrain mode trains the loaded DiT
    digest = hashlib.sha256(paths["pt"].read_bytes()).hexdigest()
    assert report.sha256() == digest == sha256_file(paths["pt"])
    ours = DiT.from_pretrained(paths["pt"], device="cpu", dtype=torch.float64, num_heads=2)
    with torch.no_grad():
        assert ours(*[v.double() if v.is_floating_point() else v for v in _inputs()]).dtype == torch.float64


# ---- save_pretrained ----------------------------------------------------------------------------------------
def test_save_pretrained_round_trip_and_diffusers_reads_it(reference, tmp_path: Path) -> None:
    from diffusers import DiTTransformer2DModel

    _, paths = reference
    ours = DiT.from_pretrained(paths["pt"], num_heads=2)
    out = ours.save_pretrained(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel"
    assert {k: config[k] for k in TINY_DIFFUSERS} == TINY_DIFFUSERS
    again, report = DiT.from_pretrained(out, output_loading_info=True)
    assert report.format == "diffusers-safetensors"
    x, t, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, y), ours(x, t, y), atol=0, rtol=0)
        theirs = set_original_numerics(DiTTransformer2DModel.from_pretrained(out))
        assert rel_err(_diffusers_out(theirs, x, t, y), ours(x, t, y)) <= 1e-5


# ---- refusing bad weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, key",
    [
        ("drop", "blocks.1.mlp.fc2.bias"),
        ("extra", "blocks.0.attn.lora_A.weight"),
        ("reshape", "blocks.0.attn.proj.weight"),
    ],
)
def test_bad_original_state_dict_names_the_key(reference, tmp_path: Path, edit: str, key: str) -> None:
    model, _ = reference
    sd = diffusers_to_original(model)
    if edit == "drop":
        del sd[key]
    elif edit == "extra":
        sd[key] = torch.zeros(4, 32)
    else:
        sd[key] = torch.zeros(32, 31)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        DiT.from_pretrained(tmp_path / "bad.pt", num_heads=2)


@pytest.mark.parametrize(
    "edit, key",
    [
        ("drop", "transformer_blocks.1.attn1.to_k.weight"),
        ("extra", "transformer_blocks.0.attn2.to_q.weight"),
        ("reshape", "transformer_blocks.1.ff.net.2.weight"),
        ("disagree", "transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.weight"),
    ],
)
def test_bad_diffusers_weights_name_the_key(reference, tmp_path: Path, edit: str, key: str) -> None:
    _, paths = reference
    src = paths["repo-safetensors"] / "transformer"
    sd = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    if edit == "drop":
        del sd[key]
    elif edit == "extra":
        sd[key] = torch.zeros(32, 32)
    elif edit == "reshape":
        sd[key] = torch.zeros(32, 64)
    else:
        sd[key] = sd[key] + 1e-3
    folder = tmp_path / "bad"
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")) as info:
        DiT.from_pretrained(folder)
    if edit == "disagree":
        assert "disagree" in str(info.value)


def test_missing_files_and_sizes_are_weights_errors(reference, tmp_path: Path) -> None:
    model, _ = reference
    with pytest.raises(WeightsError, match="does not exist"):
        DiT.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        DiT.from_pretrained(tmp_path / "empty")
    sd = diffusers_to_original(model)
    del sd["pos_embed"]
    torch.save(sd, tmp_path / "nopos.pt")
    with pytest.raises(WeightsError, match="input_size"):
        DiT.from_pretrained(tmp_path / "nopos.pt", num_heads=2)
    with pytest.raises(WeightsError, match="num_heads"):  # hidden 32, depth 2: not a paper size
        DiT.from_pretrained(tmp_path / "nopos.pt", input_size=8)
    ours = DiT.from_pretrained(tmp_path / "nopos.pt", input_size=8, num_heads=2)
    assert (ours.input_size, ours.num_heads) == (8, 2)
