"""Helpers for the model tests: tiny random models written in the exact real formats (no real weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from avdit_cli.config import ModelConfig, TemporalPos
from avdit_cli.models import AVDiT, DiT

# A tiny diffusers DiT: 2 layers, 2 heads of 16, 8x8 latents, patch 2, 4 -> 8 channels, 10 classes (+ null).
TINY_DIFFUSERS = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
    patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
)
VIDEO_SHAPE = (3, 4, 8, 8)  # f, c, h, w
AUDIO_SHAPE = (2, 8, 4)  # c_a, T_a, M_a -> 4x2 = 8 audio tokens with patch 2


def tiny_diffusers_dit(seed: int = 0) -> nn.Module:
    """diffusers' DiTTransformer2DModel with every tensor random and the original DiT numerics switched on."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**TINY_DIFFUSERS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # adaLN and final layer too: nothing left at its zero init
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    emb0 = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0  # original DiT frequencies exp(-ln(1e4) k / 128)
        block.norm1.emb.load_state_dict(emb0.state_dict())  # a real checkpoint holds identical copies
    return model.eval()  # eval: diffusers' LabelEmbedding drops labels at random in training mode


def set_original_numerics(model: nn.Module) -> nn.Module:
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model.eval()


def diffusers_to_original(model: nn.Module) -> dict[str, torch.Tensor]:
    """The test's own, independent key map: a diffusers DiT's weights as an original DiT ``.pt`` state dict."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "pos_embed": model.pos_embed.pos_embed.detach().clone(),  # (1, n, d), as the original stores it
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    emb = "transformer_blocks.0.norm1.emb."
    for wb in ("weight", "bias"):
        out[f"t_embedder.mlp.0.{wb}"] = sd[f"{emb}timestep_embedder.linear_1.{wb}"]
        out[f"t_embedder.mlp.2.{wb}"] = sd[f"{emb}timestep_embedder.linear_2.{wb}"]
    out["y_embedder.embedding_table.weight"] = sd[f"{emb}class_embedder.embedding_table.weight"]
    for i in range(len(model.transformer_blocks)):
        s, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        for wb in ("weight", "bias"):
            out[f"{o}attn.qkv.{wb}"] = torch.cat([sd[f"{s}attn1.to_{x}.{wb}"] for x in "qkv"])
            out[f"{o}attn.proj.{wb}"] = sd[f"{s}attn1.to_out.0.{wb}"]
            out[f"{o}mlp.fc1.{wb}"] = sd[f"{s}ff.net.0.proj.{wb}"]
            out[f"{o}mlp.fc2.{wb}"] = sd[f"{s}ff.net.2.{wb}"]
            out[f"{o}adaLN_modulation.1.{wb}"] = sd[f"{s}norm1.linear.{wb}"]
    return out


def write_all_formats(model: nn.Module, root: Path) -> dict[str, Path]:
    """The same weights in every layout DiT.from_pretrained reads."""
    paths = {
        "repo-safetensors": root / "repo_st",  # a repo folder holding transformer/
        "transformer-bin": root / "repo_bin" / "transformer",  # the transformer folder itself, .bin
        "pt": root / "DiT-tiny.pt",
        "ema": root / "0001000.pt",
    }
    model.save_pretrained(paths["repo-safetensors"] / "transformer")
    model.save_pretrained(paths["transformer-bin"], safe_serialization=False)
    sd = diffusers_to_original(model)
    torch.save(sd, paths["pt"])
    noise = {k: torch.randn_like(v) for k, v in sd.items()}  # `model` must not be the one picked
    torch.save({"model": noise, "ema": sd, "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="DiT-tiny", lr=1e-4)}, paths["ema"])
    return paths


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- AV-DiT -------------------------------------------------------------------------------------------------
def tiny_cfg(**overrides: object) -> ModelConfig:
    base = dict(
        backbone_repo="", hidden_size=32, depth=2, num_heads=2, num_classes=10, lora_rank=4, lora_alpha=4.0,
        joint_lora_rank=4, audio_patch_size=2, temporal_pos=TemporalPos.SINCOS, joint=True, joint_after=(0,),
    )
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def random_backbone(cfg: ModelConfig, seed: int = 0) -> DiT:
    """A DiT with every weight random (a zero-initialised adaLN would make the identity test vacuous)."""
    g = torch.Generator().manual_seed(seed)
    dit = DiT.from_config(cfg, input_size=VIDEO_SHAPE[2], in_channels=VIDEO_SHAPE[1], generator=g)
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return dit.eval()


def randomize_adapters(model: AVDiT, seed: int = 1, scale: float = 0.1) -> None:
    """Move every trainable tensor off its initial value (so each one affects the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def av_inputs(b: int = 2, f: int = 3, t_a: int = 8, seed: int = 0, classes: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = VIDEO_SHAPE[1:]
    c_a, _, m_a = AUDIO_SHAPE
    return {
        "video": torch.randn(b, f, c, h, w, generator=g),
        "audio": torch.randn(b, c_a, t_a, m_a, generator=g),
        "t_video": torch.rand(b, generator=g) * 999,
        "t_audio": torch.rand(b, generator=g) * 999,
        "y": torch.randint(0, 11, (b,), generator=g) if classes else None,
    }
