"""The new, trainable parts of AV-DiT (DESIGN section 2). Every one starts as an exact no-op on the video path.

- ``LoRA``: a low-rank delta added to a frozen linear layer's output, ``B`` zero-initialised.
- ``TemporalAttention``: attention over the frames of each spatial token, output projection zero-initialised.
- ``JointBlockAdapter``: the trainable parameters of a joint block that reuses a frozen DiT block over the
  concatenated audio + video tokens of one clip (modality embeddings, joint LoRA, zero gates), optionally
  with a rotary embedding of each token's time on the clip's shared clock (``TimeRotary``) and a learnable
  time-distance bias on the attention scores (``time_slopes``).

Axis letters: b batch, f frames, n tokens, d hidden.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from timm.layers import Attention
from torch import Tensor, nn

from avdit_cli.models.dit import DiTBlock, modulate

class LoRA(nn.Module):
    """``x -> up(down(x)) * alpha / rank``: the delta of a frozen ``nn.Linear``. ``up`` starts at zero."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        self.scaling = alpha / rank
        if not self.down.weight.is_meta:
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)  # as peft
            nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x)) * self.scaling


def block_lora(
    block: DiTBlock, targets: tuple[str, ...], rank: int, alpha: float, generator: torch.Generator | None = None
) -> nn.ModuleDict:
    """LoRA deltas for the named frozen linear layers of one block (empty when rank is 0)."""
    layers: dict[str, nn.Linear] = {
        "qkv": block.attn.qkv, "proj": block.attn.proj, "fc1": block.mlp.fc1, "fc2": block.mlp.fc2,
    }
    if rank <= 0:
        return nn.ModuleDict()
    return nn.ModuleDict({
        name: LoRA(layers[name].in_features, layers[name].out_features, rank, alpha, generator) for name in targets
    })


class TemporalAttention(nn.Module):
    """Attention across frames, per spatial position: ``(b f) n d -> (b f) n d`` delta (zero at init).

    The temporal position embedding is added to this layer's input only, never to the residual stream, so a
    zero output projection leaves the frozen DiT's per-frame computation untouched.
    """

    def __init__(self, hidden_size: int, num_heads: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.attn.fused_attn = True  # SDPA regardless of TIMM_FUSED_ATTN
        if not self.attn.qkv.weight.is_meta:
            nn.init.xavier_uniform_(self.attn.qkv.weight, generator=generator)
            nn.init.zeros_(self.attn.qkv.bias)
            nn.init.zeros_(self.attn.proj.weight)
            nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: Tensor, num_frames: int, pos: Tensor | None) -> Tensor:
        # x (b f) n d; pos (f, d) or None
        n = x.shape[1]
        h = rearrange(self.norm(x), "(b f) n d -> (b n) f d", f=num_frames)
        if pos is not None:
            h = h + pos.to(h.dtype)
        h = self.attn(h)
        return rearrange(h, "(b n) f d -> (b f) n d", n=n)


class TimeRotary:
    """A rotary position embedding (Su et al., RoFormer) of each token's *time*, for attention over the audio
    and video tokens of a clip.

    Video tokens and audio tokens live on different grids (frames at 10 fps; audio latent rows every 80 ms in
    the tiny and paper settings), and the frozen block's 2-D position embeddings say nothing about when a
    token happens. Rotating queries and keys by the time on one clock, in video frames, makes every query-key
    score a function of the time difference (the "aligned RoPE" MMAudio uses for sync), so an audio token can
    find the frame it sounds in. It has no parameters and costs no memory beyond the (n, e) tables.

    times: (n,) token times in frames; head_dim e (even). Frequencies ``ROPE_BASE^(-2k/e)`` per frame: periods
    from 2π frames (the fastest pairs tell neighbouring frames apart) to about 100 x 2π (content matching
    across the whole clip is barely changed). ``__call__``: (b, heads, n, e) -> the same, rotated.
    """

    ROPE_BASE = 100.0

    def __init__(self, times: Tensor, head_dim: int) -> None:
        if head_dim % 2:
            raise ValueError(f"a rotary embedding needs an even head size, got {head_dim}")
        k = torch.arange(head_dim // 2, dtype=torch.float64, device=times.device)
        freqs = self.ROPE_BASE ** (-2 * k / head_dim)  # (e/2,)
        angles = times.to(torch.float64)[:, None] * freqs[None]  # (n, e/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, e): the two halves are the pairs (x_i, x_{i + e/2})
        self.cos, self.sin = angles.cos().float(), angles.sin().float()

    def __call__(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        rotated_half = torch.cat([-x2, x1], dim=-1)
        return x * self.cos.to(x.dtype) + rotated_half * self.sin.to(x.dtype)


class JointBlockAdapter(nn.Module):
    """Trainable parts of a joint block; the frozen DiT block is passed in at call time.

    The block is reused by reference, not copied: it is frozen, so sharing it is exact and costs no memory, and
    the backbone stays the only owner of its weights (freezing and checkpoints go by module ownership).
    Both residual branches are scaled by per-modality gates that start at zero, so at initialisation the
    joint block is an exact identity; modality embeddings (zero) are added to the attention's input only.

    Time (``times``, each token's time in frames on the clip's one clock): with ``time_rope`` the queries and
    keys are rotated by it (:class:`TimeRotary`); with ``time_bias`` every score gets ``-slope_h |t_i - t_j|``
    (ALiBi, Press et al. 2022, on time rather than sequence position), one slope per head,
    initialised from 2 (a token one frame away loses e^-2) to 1/8 per frame, learned or (``learned_slopes=False``)
    kept fixed as in ALiBi. A sound is caused by what happens
    when it is heard: the bias starts every audio token looking at its own frames, out of the thousands of
    tokens of a clip, and the slopes learn how far to look. It costs a (heads, n, n) score bias. Learned slopes
    need the score matrix for their gradient, so on a CPU that attention runs unfused (about 3x slower); fixed
    slopes are a plain mask, which the fused kernels take.

    With ``cross_only`` a token attends to the other modality's tokens only (video to audio, audio to video):
    the joint block then cannot serve as extra self-attention for either modality, which training otherwise
    finds easier to use than the cross-modal path it exists for. Only those two blocks of scores are computed
    (``DiTBlock.attention(pairs=...)``), with their blocks of the time bias: 2 n_v n_a scores instead of
    (n_v + n_a)^2, the same result as the full attention with the pairs within a modality masked.
    """

    SLOPE_RANGE = (2.0, 0.125)  # per frame: the sharpest and the broadest head at initialisation

    def __init__(
        self, block: DiTBlock, lora_targets: tuple[str, ...], rank: int, alpha: float,
        generator: torch.Generator | None = None, time_rope: bool = False, time_bias: bool = False,
        cross_only: bool = False, learned_slopes: bool = True,
    ) -> None:
        super().__init__()
        d = block.norm1.normalized_shape[0]
        self.num_heads = block.attn.num_heads
        self.time_rope = time_rope
        self.cross_only = cross_only
        self.modality_embed = nn.Parameter(torch.zeros(2, d))  # row 0 video, row 1 audio
        self.attn_gate = nn.Parameter(torch.zeros(2, d))
        self.mlp_gate = nn.Parameter(torch.zeros(2, d))
        self.lora = block_lora(block, lora_targets, rank, alpha, generator)
        # time_slopes: log of the per-head slopes; a parameter, or ALiBi's fixed slopes as a buffer (neither
        # trained nor saved), or None without the time bias
        hi, lo = self.SLOPE_RANGE
        log_slopes = torch.linspace(math.log(hi), math.log(lo), self.num_heads)
        if not time_bias:
            self.time_slopes: Tensor | None = None
        elif learned_slopes:
            self.time_slopes = nn.Parameter(log_slopes)
        else:
            self.register_buffer("time_slopes", log_slopes, persistent=False)

    def time_score_bias(self, times: Tensor, key_times: Tensor | None = None) -> Tensor:
        """(1, heads, n_q, n_k) ``-slope_h |t_i - t_j|`` for query times (n_q,) and key times (n_k,) in frames
        (the keys' default: the queries')."""
        assert self.time_slopes is not None
        key_times = times if key_times is None else key_times
        distance = (times[:, None] - key_times[None, :]).abs()  # (n_q, n_k)
        return -(self.time_slopes.exp()[:, None, None] * distance).unsqueeze(0)

    def forward(self, block: DiTBlock, xv: Tensor, xa: Tensor, cv: Tensor, ca: Tensor,
                times: Tensor | None = None, video_out: bool = True) -> tuple[Tensor, Tensor]:
        # xv (b, f*n_v, d) all frames of a clip; xa (b, n_a, d); cv (b, d) or per frame (b, f, d); ca (b, d);
        # times (f*n_v + n_a,) in frames. video_out=False: the video tokens are keys only and come back
        # unchanged (nobody reads them: given frames, the last joint block), the audio ones exactly as always.
        # Each modality keeps its own adaLN modulation (its own timestep); only attention mixes them.
        sv = _per_token(block.modulation(cv), xv.shape[1])  # shift/scale/gate msa, then mlp: six (b, 1 or n, d)
        sa = _per_token(block.modulation(ca), xa.shape[1])
        lora = self.lora if len(self.lora) else None
        hv = modulate(block.norm1(xv), sv[0], sv[1]) + self.modality_embed[0].to(xv.dtype)
        ha = modulate(block.norm1(xa), sa[0], sa[1]) + self.modality_embed[1].to(xa.dtype)
        rotary = None
        if times is not None and self.time_rope:
            rotary = TimeRotary(times, xv.shape[-1] // self.num_heads)
        timed = times is not None and self.time_slopes is not None
        nv = xv.shape[1]
        v_, a_, every = slice(0, nv), slice(nv, None), slice(None)
        # (queries, keys) blocks of scores. Cross-only: video queries x audio keys and audio x video, instead of
        # all (n, n) with -inf within a modality, the same result with 2 n_v n_a scores rather than
        # (n_v + n_a)^2 (about a quarter for the tiny preset's 1024 + 160 tokens). Else every token x every
        # token. video_out=False: the audio queries alone (n_a rows of scores).
        if self.cross_only:
            blocks = ([(v_, a_)] if video_out else []) + [(a_, v_)]
        else:
            blocks = [(every if video_out else a_, every)]
        pairs = [(q, k, self.time_score_bias(times[q], times[k]) if timed else None)  # type: ignore[index]
                 for q, k in blocks]
        o = block.attention(torch.cat([hv, ha], dim=1), lora, rotary, pairs=pairs)
        if not video_out:  # o (b, n_a, d): the audio tokens' alone
            xa = xa + self.attn_gate[1] * (sa[2] * o)
            oa = block.feed_forward(modulate(block.norm2(xa), sa[3], sa[4]), lora)
            return xv, xa + self.mlp_gate[1] * (sa[5] * oa)
        ov, oa = o.split([nv, xa.shape[1]], dim=1)  # o (b, f*n_v + n_a, d)
        xv = xv + self.attn_gate[0] * (sv[2] * ov)
        xa = xa + self.attn_gate[1] * (sa[2] * oa)
        ov = block.feed_forward(modulate(block.norm2(xv), sv[3], sv[4]), lora)
        oa = block.feed_forward(modulate(block.norm2(xa), sa[3], sa[4]), lora)
        xv = xv + self.mlp_gate[0] * (sv[5] * ov)
        xa = xa + self.mlp_gate[1] * (sa[5] * oa)
        return xv, xa


def _per_token(modulation: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
    """adaLN chunks (b, d) -> (b, 1, d), broadcast over all n tokens; per frame (b, f, d) -> (b, n, d), each
    frame's row repeated over its n / f tokens (frame-major, as the joint sequence is laid out)."""
    if modulation[0].ndim == 2:
        return tuple(m.unsqueeze(1) for m in modulation)
    f = modulation[0].shape[1]
    return tuple(m.repeat_interleave(n // f, dim=1) for m in modulation)
