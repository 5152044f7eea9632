"""The DiT of "Scalable Diffusion Models with Transformers" (Peebles & Xie), with the original numerics.

Written like facebookresearch/DiT ``models.py`` (same module and parameter names, so an original ``.pt`` state
dict loads key for key) but built from timm's ``PatchEmbed``, ``Attention`` and ``Mlp``. Attention always runs
through ``torch.nn.functional.scaled_dot_product_attention`` so flash / memory-efficient kernels are used on a
GPU. ``DiT.from_pretrained`` reads the diffusers layout of ``facebook/DiT-XL-2-256`` and original checkpoints
with an explicit key map (DESIGN section 2); ``DiT.save_pretrained`` writes the diffusers layout.

Axis letters: b batch, n tokens, d hidden, c channels, h w latent grid, p q patch.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avdit_cli.config import ModelConfig
from avdit_cli.fileio import atomic_save_tensors, atomic_write_json, sha256_file
from avdit_cli.errors import ConfigError, WeightsError

FREQUENCY_EMBEDDING_SIZE = 256  # DiT's sinusoidal timestep features: 128 cos + 128 sin


# ----------------------------------------------------------------------------------------------------------
# The size grid of the paper
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTSize:
    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int


DIT_SIZES: dict[str, DiTSize] = {
    f"DiT-{name}/{p}": DiTSize(depth, hidden, heads, p)
    for name, (depth, hidden, heads) in {
        "S": (12, 384, 6),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }.items()
    for p in (2, 4, 8)
}


def _heads_for(depth: int, hidden_size: int) -> int | None:
    """The head count of a paper size, which tensor shapes alone cannot tell."""
    for size in DIT_SIZES.values():
        if (size.depth, size.hidden_size) == (depth, hidden_size):
            return size.num_heads
    return None


# ----------------------------------------------------------------------------------------------------------
# Small pieces shared with the adapters
# ----------------------------------------------------------------------------------------------------------
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with (b, d) modulation broadcast over the tokens of (b, n, d)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0) -> Tensor:
    """(b,) float or int timesteps -> (b, dim) features ``[cos(t f), sin(t f)]``, ``f_k = exp(-ln(P) k / half)``.

    The original DiT numbers: diffusers divides by ``half - 1`` instead (``downscale_freq_shift=1``).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_1d(pos: Tensor, dim: int) -> Tensor:
    """(n,) positions -> (n, dim) features ``[sin(pos w), cos(pos w)]``, ``w_k = 10000^(-k / (dim/2))`` (MAE/DiT)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=-1)


@functools.lru_cache(maxsize=32)
def _sincos_2d_cpu(grid_h: int, grid_w: int, dim: int) -> Tensor:
    # Explicit CPU: under a `torch.device("meta")` context the cache must still hold real numbers.
    rows, cols = torch.meshgrid(torch.arange(grid_h, device="cpu"), torch.arange(grid_w, device="cpu"), indexing="ij")
    # As DiT: the first half of the channels encodes the column (w) index, the second half the row (h) index;
    # tokens are in row-major (h, w) order, matching PatchEmbed's flatten.
    emb = torch.cat([sincos_1d(cols.flatten(), dim // 2), sincos_1d(rows.flatten(), dim // 2)], dim=-1)
    return emb.to(torch.float32)


def sincos_2d(grid_h: int, grid_w: int, dim: int, device: torch.device | str = "cpu") -> Tensor:
    """(grid_h * grid_w, dim) fixed 2-D sin-cos position embedding, computed in float64 like DiT's numpy code."""
    if dim % 4:
        raise ConfigError(f"hidden size {dim} must be a multiple of 4 for 2-D sin-cos position embeddings")
    return _sincos_2d_cpu(grid_h, grid_w, dim).to(device, copy=True)  # a copy: the cached one stays pristine


def _lora_linear(layer: nn.Linear, x: Tensor, delta: nn.Module | None) -> Tensor:
    return layer(x) if delta is None else layer(x) + delta(x)


def _pick(lora: Mapping[str, nn.Module] | None, name: str) -> nn.Module | None:
    return lora[name] if lora is not None and name in lora else None


# ----------------------------------------------------------------------------------------------------------
# DiT modules (names as in facebookresearch/DiT)
# ----------------------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> (b, d) via sinusoidal features and a 2-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # (b, 256) float32
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class ids -> (b, d). Row ``num_classes`` is the null class (classifier-free guidance).

    Unlike the original, no label dropout happens in here: the training loop replaces labels by the null class,
    so the model is a deterministic function of its inputs.
    """

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding_table(y)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block.

    ``lora`` (optional) maps the names of frozen linear layers (qkv, proj, fc1, fc2) to modules whose output is
    added to theirs; ``after_attn`` (optional) runs between the attention and the MLP residual branches. Both
    exist for the AV-DiT adapters; without them this is exactly the original block.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        # timm picks SDPA or a hand-written softmax from the TIMM_FUSED_ATTN environment; we always want SDPA.
        self.attn.fused_attn = True
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        approx_gelu = functools.partial(nn.GELU, approximate="tanh")
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio), act_layer=approx_gelu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: Tensor) -> tuple[Tensor, ...]:
        """(b, d) -> shift, scale, gate for attention, then for the MLP: six (b, d)."""
        return self.adaLN_modulation(c).chunk(6, dim=-1)

    def attention(self, h: Tensor, lora: Mapping[str, nn.Module] | None = None,
                  rotary: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Self-attention over the tokens of (b, n, d), via SDPA. ``rotary`` (optional) rotates the queries and
        keys (b, heads, n, e) before the dot products (a rotary position embedding, for the AV-DiT joint block)."""
        qkv_delta, proj_delta = _pick(lora, "qkv"), _pick(lora, "proj")
        if qkv_delta is None and proj_delta is None and rotary is None:
            return self.attn(h)
        # The same computation as timm's Attention.forward, with the LoRA deltas added to qkv and proj.
        attn = self.attn
        qkv = _lora_linear(attn.qkv, h, qkv_delta)
        q, k, v = rearrange(qkv, "b n (three heads e) -> three b heads n e", three=3, heads=attn.num_heads)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        o = F.scaled_dot_product_attention(q, k, v)
        o = rearrange(o, "b heads n e -> b n (heads e)")
        return _lora_linear(attn.proj, o, proj_delta)

    def feed_forward(self, h: Tensor, lora: Mapping[str, nn.Module] | None = None) -> Tensor:
        fc1_delta, fc2_delta = _pick(lora, "fc1"), _pick(lora, "fc2")
        if fc1_delta is None and fc2_delta is None:
            return self.mlp(h)
        mlp = self.mlp
        return _lora_linear(mlp.fc2, mlp.act(_lora_linear(mlp.fc1, h, fc1_delta)), fc2_delta)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        lora: Mapping[str, nn.Module] | None = None,
        after_attn: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        # x (b, n, d), c (b, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa.unsqueeze(1) * self.attention(modulate(self.norm1(x), shift_msa, scale_msa), lora)
        if after_attn is not None:
            x = after_attn(x)
        x = x + gate_mlp.unsqueeze(1) * self.feed_forward(modulate(self.norm2(x), shift_mlp, scale_mlp), lora)
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to p*p*c_out per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Latent diffusion transformer: ``forward(x (b, c, h, w), t (b,), y (b,)) -> (b, 2c, h, w)`` (learned sigma)."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads or hidden_size % 4:
            raise ConfigError(
                f"DiT hidden size {hidden_size} must be a multiple of num_heads ({num_heads}) and of 4"
            )
        if input_size % patch_size:
            raise ConfigError(f"DiT input size {input_size} must be a multiple of the patch size {patch_size}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.grad_checkpointing = False

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        # Fixed, recomputed rather than loaded: non-persistent, so it is never part of a state dict.
        self.register_buffer("pos_embed", self._make_pos_embed(), persistent=False)
        self.initialize_weights(generator)

    # -- construction --------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def _make_pos_embed(self) -> Tensor:
        device = self.x_embedder.proj.weight.device
        return sincos_2d(self.grid_size, self.grid_size, self.hidden_size, device).unsqueeze(0)  # (1, n, d)

    def _reset_pos_embed(self) -> None:
        dtype = self.x_embedder.proj.weight.dtype
        self.register_buffer("pos_embed", self._make_pos_embed().to(dtype), persistent=False)

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """DiT's init: xavier linears, N(0, 0.02) embedders, zero adaLN and final layer (adaLN-Zero)."""
        if self.x_embedder.proj.weight.is_meta:
            return  # nothing to fill; from_pretrained assigns real tensors
        g = {"generator": generator}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, **g)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1), **g)
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02, **g)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02, **g)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02, **g)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(
        cls, model_cfg: ModelConfig, input_size: int, in_channels: int, generator: torch.Generator | None = None
    ) -> "DiT":
        model = cls(
            input_size=input_size,
            patch_size=model_cfg.patch_size,
            in_channels=in_channels,
            hidden_size=model_cfg.hidden_size,
            depth=model_cfg.depth,
            num_heads=model_cfg.num_heads,
            mlp_ratio=model_cfg.mlp_ratio,
            num_classes=model_cfg.num_classes,
            learn_sigma=model_cfg.learn_sigma,
            generator=generator,
        )
        model.grad_checkpointing = model_cfg.grad_checkpointing
        return model

    def arch(self) -> dict[str, Any]:
        """The constructor arguments (plain data)."""
        return {
            "input_size": self.input_size, "patch_size": self.patch_size, "in_channels": self.in_channels,
            "hidden_size": self.hidden_size, "depth": self.depth, "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio, "num_classes": self.num_classes, "learn_sigma": self.learn_sigma,
        }

    # -- forward -------------------------------------------------------------------------------------------
    def check_input(self, x: Tensor, what: str = "DiT input") -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"{what} has shape {tuple(x.shape)}; expected (batch, {self.in_channels}, {self.input_size}, "
                f"{self.input_size}) latents for this backbone"
            )

    def embed(self, x: Tensor) -> Tensor:
        """(b, c, h, w) latents -> (b, n, d) tokens + fixed 2-D sin-cos positions."""
        tokens = self.x_embedder(x.to(self.x_embedder.proj.weight.dtype))
        # No cast: under bf16 autocast the conv gives bf16 tokens, and adding the float32 table keeps the residual
        # stream in float32 through every block, as the original DiT does.
        return tokens + self.pos_embed

    def condition(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """c = t_embedder(t) + y_embedder(y): (b, d). ``y=None`` means the null class."""
        if y is None:
            y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
        return self.t_embedder(t) + self.y_embedder(y)

    def unpatchify(self, x: Tensor, grid_h: int, grid_w: int, out_channels: int | None = None) -> Tensor:
        """(b, n, p*p*c) -> (b, c, h, w), DiT's (p q c) order."""
        p = self.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_h, w=grid_w, p=p, q=p,
                         c=out_channels or self.out_channels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_input(x)
        if t.shape != (x.shape[0],) or (y is not None and y.shape != (x.shape[0],)):
            raise ValueError(f"t and y must have shape ({x.shape[0]},); got {tuple(t.shape)} and "
                             f"{None if y is None else tuple(y.shape)}")
        h = self.embed(x)  # (b, n, d)
        c = self.condition(t, y)  # (b, d)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        h = self.final_layer(h, c)  # (b, n, p*p*2c)
        return self.unpatchify(h, self.grid_size, self.grid_size)  # (b, 2c, h, w)

    # -- weights -------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        map_location: torch.device | str | None = None,
        num_heads: int | None = None,
        input_size: int | None = None,
    ) -> tuple["DiT", "LoadReport"]:
        """Load a DiT from a diffusers folder (repo root or its ``transformer/``) or an original checkpoint.

        ``map_location`` is an alias of ``device``. ``num_heads`` / ``input_size`` are needed only for an
        original checkpoint of a size outside ``DIT_SIZES`` / without a ``pos_embed`` tensor.
        Returns the model (in eval mode) and a :class:`LoadReport`.
        """
        if device is not None and map_location is not None and torch.device(device) != torch.device(map_location):
            raise ValueError(f"device={device} and map_location={map_location} disagree; give one of them")
        target = torch.device(device if device is not None else (map_location or "cpu"))
        source = Path(path).expanduser()
        weights_file, config, fmt = _locate(source)
        tensors, fmt = _read_tensors(weights_file, fmt, target)
        if any(k.startswith("transformer_blocks.") for k in tensors):
            state, problems = _map_diffusers(tensors)
            fmt = fmt if fmt.startswith("diffusers") else f"diffusers-keys ({fmt})"
        else:
            state, problems = _map_original(tensors)
        if config:
            arch = _arch_from_config(config, state)
        else:
            arch = _arch_from_shapes(state, num_heads, input_size, problems.pos_shape)
        if config and input_size is not None:
            arch["input_size"] = input_size
        if problems.disagreeing:
            raise WeightsError(
                f"{weights_file}: the per-block copies of the timestep/class embedders disagree with block 0 "
                f"({', '.join(problems.disagreeing[:6])}); the file is corrupt or not a DiT"
            )
        with torch.device("meta"):  # no memory for the random init: real tensors are assigned below
            model = cls(**arch)
        _check_state(model, state, problems, weights_file)
        model.load_state_dict(state, strict=True, assign=True)
        model._reset_pos_embed()
        model.to(device=target, dtype=dtype)
        model.eval()
        report = LoadReport(source=source, weights_file=weights_file, format=fmt, num_tensors=len(state),
                            arch=model.arch())
        return model, report

    def diffusers_config(self) -> dict[str, Any]:
        """``config.json`` of the diffusers ``DiTTransformer2DModel`` with these sizes and our numerics."""
        try:
            diffusers_version = version("diffusers")
        except PackageNotFoundError:
            diffusers_version = "0.28.0"
        return {
            "_class_name": "DiTTransformer2DModel",
            "_diffusers_version": diffusers_version,
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.hidden_size // self.num_heads,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_layers": self.depth,
            "dropout": 0.0,
            "norm_num_groups": 32,
            "attention_bias": True,
            "sample_size": self.input_size,
            "patch_size": self.patch_size,
            "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": self.num_classes,
            "upcast_attention": False,
            "norm_type": "ada_norm_zero",
            "norm_elementwise_affine": False,
            "norm_eps": 1e-6,
        }

    def diffusers_state_dict(self) -> dict[str, Tensor]:
        """Our weights under diffusers' names (embedders repeated per block, qkv split), contiguous copies."""
        return {k: v.detach().contiguous().clone() for k, v in _to_diffusers(self.state_dict(), self.depth).items()}

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write the diffusers layout (config.json + diffusion_pytorch_model.safetensors) atomically."""
        if int(self.mlp_ratio * self.hidden_size) != 4 * self.hidden_size:
            raise ConfigError(f"diffusers' DiT has mlp_ratio 4; this model has {self.mlp_ratio}")
        out = Path(folder)
        # Weights first, config last: a folder with a config.json is complete.
        atomic_save_tensors(out / SAFETENSORS_NAME, self.diffusers_state_dict(), metadata={"format": "pt"})
        atomic_write_json(out / "config.json", self.diffusers_config())
        return out


# ----------------------------------------------------------------------------------------------------------
# Loading: locate, read, map keys, check
# ----------------------------------------------------------------------------------------------------------
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


@dataclass
class LoadReport:
    """What ``DiT.from_pretrained`` loaded. ``sha256()`` hashes the weights file on request (it may be 3 GB)."""

    source: Path
    weights_file: Path
    format: str  # diffusers-safetensors | diffusers-bin | original | original-ema | original-model
    num_tensors: int
    arch: dict[str, Any] = field(default_factory=dict)
    _sha256: str | None = field(default=None, repr=False)

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.weights_file)
        return self._sha256


@dataclass
class _Problems:
    missing: list[str] = field(default_factory=list)  # names in the file's own spelling
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    disagreeing: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # our key -> the file's key(s), for messages
    pos_shape: tuple[int, ...] | None = None  # an original checkpoint's pos_embed: tells the input size


def _locate(path: Path) -> tuple[Path, dict[str, Any] | None, str]:
    """-> (weights file, diffusers config or None, format guess)."""
    if not path.exists():
        raise WeightsError(f"{path} does not exist; give a DiT folder (diffusers layout) or a .pt/.safetensors file")
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise WeightsError(f"{folder} has no config.json; expected a diffusers DiT folder (repo or transformer/)")
        for name, fmt in ((SAFETENSORS_NAME, "diffusers-safetensors"), (BIN_NAME, "diffusers-bin")):
            if (folder / name).is_file():
                return folder / name, _read_config(config_file), fmt
        raise WeightsError(f"{folder} has no {SAFETENSORS_NAME} or {BIN_NAME}; re-download the backbone")
    sibling = path.parent / "config.json"
    config = _read_config(sibling) if sibling.is_file() and path.name in (SAFETENSORS_NAME, BIN_NAME) else None
    fmt = "safetensors" if path.suffix == ".safetensors" else "original"
    return path, config, fmt


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{config_file}: cannot read the JSON config ({err})") from err
    # facebook/DiT-XL-2-256 predates DiTTransformer2DModel: its config says Transformer2DModel (+ ada_norm_zero).
    norm_type = config.get("norm_type", "ada_norm_zero")
    if config.get("_class_name") not in DIFFUSERS_CLASSES or norm_type != "ada_norm_zero" \
            or config.get("num_embeds_ada_norm") is None:
        raise WeightsError(
            f"{config_file}: not a DiT transformer config (_class_name {config.get('_class_name')!r}, norm_type "
            f"{config.get('norm_type')!r}; expected DiTTransformer2DModel with ada_norm_zero and num_embeds_ada_norm)"
        )
    return config


def _read_tensors(file: Path, fmt: str, device: torch.device) -> tuple[dict[str, Tensor], str]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device=str(device)), fmt
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{file}: not a readable safetensors file ({err})") from err
    try:
        # DiT's training checkpoints also hold `args` (an argparse.Namespace): plain data, safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(file, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise WeightsError(
            f"{file}: cannot be read as a plain tensor checkpoint (weights_only=True): {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{file}: expected a state dict, found {type(obj).__name__}")
    if fmt == "original":
        for entry in ("ema", "model"):  # a training checkpoint: prefer the EMA weights DiT samples with
            if isinstance(obj.get(entry), Mapping):
                obj, fmt = obj[entry], f"original-{entry}"
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
        raise WeightsError(
            f"{file}: entries that are not tensors: {', '.join(map(str, bad[:6]))}; not a DiT state dict"
        )
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from a DDP wrapper
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, fmt


_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _map_original(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], _Problems]:
    state = dict(tensors)
    pos = state.pop("pos_embed", None)  # fixed sin-cos, recomputed (its shape still tells the input size)
    return state, _Problems(pos_shape=None if pos is None else tuple(pos.shape))


def _diffusers_map(depth: int) -> dict[str, list[str]]:
    """our key -> the diffusers keys it is made of (qkv: the concatenation of q, k, v)."""
    m: dict[str, list[str]] = {}
    emb = "transformer_blocks.0.norm1.emb"
    for wb in ("weight", "bias"):
        m[f"x_embedder.proj.{wb}"] = [f"pos_embed.proj.{wb}"]
        m[f"t_embedder.mlp.0.{wb}"] = [f"{emb}.timestep_embedder.linear_1.{wb}"]
        m[f"t_embedder.mlp.2.{wb}"] = [f"{emb}.timestep_embedder.linear_2.{wb}"]
        m[f"final_layer.adaLN_modulation.1.{wb}"] = [f"proj_out_1.{wb}"]
        m[f"final_layer.linear.{wb}"] = [f"proj_out_2.{wb}"]
        for i in range(depth):
            src = f"transformer_blocks.{i}"
            m[f"blocks.{i}.adaLN_modulation.1.{wb}"] = [f"{src}.norm1.linear.{wb}"]
            m[f"blocks.{i}.attn.qkv.{wb}"] = [f"{src}.attn1.to_{x}.{wb}" for x in "qkv"]
            m[f"blocks.{i}.attn.proj.{wb}"] = [f"{src}.attn1.to_out.0.{wb}"]
            m[f"blocks.{i}.mlp.fc1.{wb}"] = [f"{src}.ff.net.0.proj.{wb}"]
            m[f"blocks.{i}.mlp.fc2.{wb}"] = [f"{src}.ff.net.2.{wb}"]
    m["y_embedder.embedding_table.weight"] = [f"{emb}.class_embedder.embedding_table.weight"]
    return m


def _block_count(keys: Any) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(r"(?:transformer_)?blocks\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _map_diffusers(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], _Problems]:
    src: dict[str, Tensor] = {}
    old = re.compile(r"\.attn1\.(query|key|value|proj_attn)\.")
    for k, v in tensors.items():  # old diffusers spelling of attention: query/key/value/proj_attn
        src[old.sub(lambda m: f".attn1.{_OLD_ATTENTION_NAMES[m.group(1)]}.", k)] = v
    src.pop("pos_embed.pos_embed", None)  # fixed, recomputed
    depth = _block_count(src)
    problems = _Problems()
    # diffusers keeps a copy of the timestep and class embedders in every block: use block 0's, check the rest.
    for i in range(1, depth):
        prefix = f"transformer_blocks.{i}.norm1.emb."
        for key in [k for k in src if k.startswith(prefix)]:
            ref = src.get("transformer_blocks.0.norm1.emb." + key[len(prefix):])
            copy = src.pop(key)
            if ref is not None and (ref.shape != copy.shape or not torch.equal(ref, copy)):
                problems.disagreeing.append(key)
    state: dict[str, Tensor] = {}
    for ours, theirs in _diffusers_map(depth).items():
        problems.sources[ours] = " + ".join(theirs)  # messages name the file's keys
        absent = [k for k in theirs if k not in src]
        if absent:
            problems.missing += absent
            for k in theirs:
                src.pop(k, None)
            continue
        parts = [src.pop(k) for k in theirs]
        if len({p.shape for p in parts}) != 1:
            problems.mismatched.append(", ".join(f"{k}: {tuple(p.shape)}" for k, p in zip(theirs, parts)))
            continue
        state[ours] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    problems.unexpected += sorted(src)
    return state, problems


def _to_diffusers(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for ours, theirs in _diffusers_map(depth).items():
        if len(theirs) == 1:
            out[theirs[0]] = state[ours]
        else:
            for name, part in zip(theirs, state[ours].chunk(len(theirs), dim=0)):
                out[name] = part
    for i in range(1, depth):  # diffusers expects the embedders in every block
        for key in [k for k in out if k.startswith("transformer_blocks.0.norm1.emb.")]:
            out[key.replace("transformer_blocks.0.", f"transformer_blocks.{i}.", 1)] = out[key]
    return out


def _arch_from_config(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Any]:
    try:
        heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
        in_channels = int(config["in_channels"])
        out_channels = int(config.get("out_channels") or in_channels)
        arch = {
            "input_size": int(config["sample_size"]),
            "patch_size": int(config["patch_size"]),
            "in_channels": in_channels,
            "hidden_size": heads * head_dim,
            "depth": int(config["num_layers"]),
            "num_heads": heads,
            "num_classes": int(config["num_embeds_ada_norm"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"the DiT config.json lacks or mangles a field ({err}); re-download the backbone") from err
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise WeightsError(
            f"the DiT config uses activation {config['activation_fn']!r}; only gelu-approximate is supported"
        )
    arch["learn_sigma"] = _learn_sigma(in_channels, out_channels)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    arch["mlp_ratio"] = fc1.shape[0] / arch["hidden_size"] if fc1 is not None else 4.0
    return arch


def _learn_sigma(in_channels: int, out_channels: int) -> bool:
    if out_channels not in (in_channels, 2 * in_channels):
        raise WeightsError(
            f"DiT with {in_channels} input and {out_channels} output channels: expected out = in or 2 x in"
        )
    return out_channels == 2 * in_channels


def _arch_from_shapes(
    state: Mapping[str, Tensor], num_heads: int | None, input_size: int | None, pos_shape: tuple[int, ...] | None
) -> dict[str, Any]:
    needed = ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight",
              "blocks.0.mlp.fc1.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise WeightsError(f"not a DiT state dict: missing {', '.join(absent)}")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    depth = _block_count(state)
    heads = num_heads or _heads_for(depth, hidden)
    if heads is None:
        raise WeightsError(f"DiT with depth {depth} and hidden size {hidden} is not a paper size: pass num_heads")
    if input_size is None and pos_shape is not None and len(pos_shape) == 3:
        input_size = math.isqrt(pos_shape[1]) * int(patch)
    if input_size is None:
        raise WeightsError("the checkpoint has no pos_embed to tell the input size: pass input_size")
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    return {
        "input_size": input_size, "patch_size": int(patch), "in_channels": int(in_channels),
        "hidden_size": int(hidden), "depth": depth, "num_heads": int(heads),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1,
        "learn_sigma": _learn_sigma(int(in_channels), int(out_channels)),
    }


def _check_state(model: DiT, state: Mapping[str, Tensor], problems: _Problems, file: Path) -> None:
    """Refuse a partial, padded or mis-shaped backbone, naming every offending key."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = problems.missing + sorted(k for k in expected if k not in state and k not in problems.sources)
    unexpected = problems.unexpected + sorted(k for k in state if k not in expected)
    mismatched = problems.mismatched + [
        f"{problems.sources.get(k, k)}: {tuple(v.shape)} vs expected {tuple(expected[k])}"
        for k, v in state.items() if k in expected and v.shape != expected[k]
    ]
    pos_expected = (1, model.grid_size**2, model.hidden_size)
    if problems.pos_shape is not None and problems.pos_shape != pos_expected:
        mismatched.append(f"pos_embed: {problems.pos_shape} vs expected {pos_expected}")
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if keys:
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            parts.append(f"{label}: {', '.join(keys[:8])}{more}")
    if parts:
        raise WeightsError(f"{file} does not fit a DiT {model.arch()}: " + "; ".join(parts))
