"""The DiT of "Scalable Diffusion Models with Transformers" (Peebles & Xie), with the original numerics.

Written like facebookresearch/DiT ``models.py`` (same module and parameter names, so an original ``.pt`` state
dict loads key for key) but built from timm's ``PatchEmbed``, ``Attention`` and ``Mlp``. Attention always runs
through ``torch.nn.functional.scaled_dot_product_attention`` so flash / memory-efficient kernels are used on a
GPU. This file is the architecture only; ``DiT.from_pretrained`` / ``DiT.save_pretrained`` hand over to the
checkpoint formats in ``dit_loading.py`` beside it (the diffusers layout of ``facebook/DiT-XL-2-256`` and
original ``.pt`` checkpoints, with an explicit key map: DESIGN section 2).

Axis letters: b batch, n tokens, d hidden, c channels, h w latent grid, p q patch.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence, overload

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avdit_cli.config import ModelConfig
from avdit_cli.errors import ConfigError

if TYPE_CHECKING:
    from avdit_cli.models.dit_loading import LoadReport

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


# ----------------------------------------------------------------------------------------------------------
# Small pieces shared with the adapters
# ----------------------------------------------------------------------------------------------------------
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` for x (b, n, d), with (b, d) modulation broadcast over the tokens, or
    modulation already shaped per token, (b, 1 or n, d) (the joint block's per-frame modulation)."""
    if shift.ndim == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


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
                  rotary: Callable[[Tensor], Tensor] | None = None, bias: Tensor | None = None,
                  pairs: Sequence[tuple[slice, slice, Tensor | None]] | None = None) -> Tensor:
        """Self-attention over the tokens of (b, n, d), via SDPA. For the AV-DiT joint block: ``rotary``
        (optional) rotates the queries and keys (b, heads, n, e) before the dot products; ``bias`` (optional,
        broadcastable to (b, heads, n, n)) is added to the attention scores.

        ``pairs`` (optional, instead of ``bias``): attention in blocks, each (query slice, key slice, bias
        broadcastable to (b, heads, n_q, n_k) or None) one SDPA call over those keys alone; the outputs are
        concatenated in the order given, (b, sum of n_q, d). The same result as one call whose bias is -inf
        outside the blocks, without computing (or storing) the scores that would be masked; one block of some
        queries against every key gives just those queries' rows."""
        qkv_delta, proj_delta = _pick(lora, "qkv"), _pick(lora, "proj")
        if pairs is not None and bias is not None:
            raise ValueError("attention: give pairs, or bias, not both")
        if qkv_delta is None and proj_delta is None and rotary is None and bias is None and pairs is None:
            return self.attn(h)
        # The same computation as timm's Attention.forward, with the LoRA deltas added to qkv and proj.
        attn = self.attn
        qkv = _lora_linear(attn.qkv, h, qkv_delta)
        q, k, v = rearrange(qkv, "b n (three heads e) -> three b heads n e", three=3, heads=attn.num_heads)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        every = slice(None)
        o = torch.cat([F.scaled_dot_product_attention(q[:, :, qs], k[:, :, ks], v[:, :, ks],
                                                      attn_mask=None if b is None else b.to(q.dtype))
                       for qs, ks, b in (pairs if pairs is not None else [(every, every, bias)])], dim=2)
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

    # -- weights (the formats live in dit_loading.py; imported on use, as that module builds on this one) ----
    @overload
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, device: torch.device | str | None = ..., dtype: torch.dtype = ...,
        map_location: torch.device | str | None = ..., num_heads: int | None = ..., input_size: int | None = ...,
        output_loading_info: Literal[False] = ...,
    ) -> "DiT": ...

    @overload
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, device: torch.device | str | None = ..., dtype: torch.dtype = ...,
        map_location: torch.device | str | None = ..., num_heads: int | None = ..., input_size: int | None = ...,
        output_loading_info: Literal[True],
    ) -> tuple["DiT", "LoadReport"]: ...

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
        output_loading_info: bool = False,
    ) -> "DiT | tuple[DiT, LoadReport]":
        """Load a DiT from a diffusers folder (repo root or its ``transformer/``) or an original checkpoint.

        Returns the model in eval mode, as every Hugging Face ``from_pretrained`` does; with
        ``output_loading_info=True``, ``(model, report)`` where the :class:`LoadReport` says which file and format
        were read and hashes the weights on request. ``map_location`` is an alias of ``device``. ``num_heads`` /
        ``input_size`` are needed only for an original checkpoint of a size outside ``DIT_SIZES`` / without a
        ``pos_embed`` tensor. A partial, padded or mis-shaped checkpoint is refused with every offending key named.
        """
        from avdit_cli.models.dit_loading import load_pretrained

        model, report = load_pretrained(cls, path, device=device, dtype=dtype, map_location=map_location,
                                        num_heads=num_heads, input_size=input_size)
        return (model, report) if output_loading_info else model

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write the diffusers layout (config.json + diffusion_pytorch_model.safetensors) atomically."""
        from avdit_cli.models.dit_loading import save_pretrained

        return save_pretrained(self, folder)
