"""AV-DiT: one frozen image DiT shared by video and audio, plus small trainable adapters (DESIGN section 2).

```
video (b, f, c, h, w) --x_embedder (frozen)--> (b f) n_v d + 2-D sin-cos pos
audio (b, c_a, T_a, M_a) --audio_embedder (new)--> b n_a d + 2-D sin-cos pos
c = t_embedder(t) + y_embedder(y) (+ trainable class offset)              frozen
for each frozen block k:
    video: spatial attn -> temporal attn (new, zero out) -> MLP         (b f) n_v d
    audio: the same block with audio LoRA (new, B zero)                   b n_a d
    if k in joint_after: joint block over b (f n_v + n_a) d               (frozen block k + new adapter;
                         each token's time on one clock: rotary queries/keys, time-distance score bias)
video: final_layer (frozen) -> (b, f, 2c, h, w);  audio: audio_final_layer (new, zero) -> (b, 2c_a, T_a, M_a)
```

Frozen versus trainable is decided by module ownership: everything under ``self.backbone`` is frozen, every
other module is new and trained. At initialisation the video output equals the frozen DiT on each frame alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from einops import rearrange, repeat
from timm.layers import PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avdit_cli.config import Config, ModelConfig, TemporalPos
from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.models.adapters import JointBlockAdapter, TemporalAttention, block_lora
from avdit_cli.models.dit import DiT, FinalLayer, sincos_1d, sincos_2d


@dataclass
class VideoStreamCache:
    """The video tokens entering the first joint block (all blocks' output when there is none), kept between
    calls of :meth:`AVDiT.forward` that see the same frames, video timestep and class.

    Up to its first joint block the video stream depends on those three only, so when the frames are given
    and fixed (the sound stage of video-first sampling) every sampler step after the first reuses it and runs
    just the audio branch and the joint block. Exact: a call reuses the tokens only when its inputs are
    ``torch.equal`` to the stored ones, and never while autograd records. Use one cache per batch of samples.

    ``audio_only``: a call that reuses the stream computes the sound alone and returns no ``"video"`` (the
    frames are given, so nobody reads their denoiser output): the last joint block then runs the audio queries
    only (all tokens stay keys), and the video blocks after it and the video final layer are skipped. The sound
    is the same as a full call's, up to float rounding.
    """

    audio_only: bool = False
    inputs: tuple[Tensor, ...] = ()  # video, t_video, y (or an empty tensor for None)
    tokens: Tensor | None = None  # (b f) n d
    hits: int = 0  # calls that reused the tokens
    misses: int = 0  # calls that ran the video stream

    def lookup(self, inputs: tuple[Tensor, ...]) -> Tensor | None:
        same = (self.tokens is not None and len(inputs) == len(self.inputs)
                and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(inputs, self.inputs)))
        self.hits += same
        self.misses += not same
        return self.tokens if same else None

    def store(self, inputs: tuple[Tensor, ...], tokens: Tensor) -> None:
        self.inputs, self.tokens = tuple(t.detach().clone() for t in inputs), tokens.detach()


class AVDiT(nn.Module):
    """The frozen ``backbone`` (a :class:`DiT`) + temporal attention, audio adapters and joint block(s).

    ``video_shape`` is (f, c, h, w) of one clip's latents (f: the most frames a learned temporal position
    embedding supports), ``audio_shape`` is (c_a, T_a, M_a). Without a backbone a randomly initialised DiT of
    the config's sizes is built (for tests and parameter counts); normally pass ``DiT.from_pretrained(...)``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        video_shape: tuple[int, int, int, int],
        audio_shape: tuple[int, int, int],
        backbone: DiT | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        num_frames, c, h, w = video_shape
        c_a, t_a, m_a = audio_shape
        p_a = cfg.audio_patch_size
        if h != w:
            raise ConfigError(f"video latents must be square for the DiT backbone; got {h}x{w}")
        if t_a % p_a or m_a % p_a:
            raise ConfigError(f"audio latents {t_a}x{m_a} do not divide into model.audio_patch_size={p_a} patches")
        if backbone is None:
            backbone = DiT.from_config(cfg, input_size=h, in_channels=c, generator=generator)
        _check_backbone(backbone, cfg, c, h)
        self.cfg = cfg
        self.video_shape = tuple(video_shape)
        self.audio_shape = tuple(audio_shape)
        self.grad_checkpointing = cfg.grad_checkpointing

        # Frozen: the backbone is the only owner of pretrained weights.
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        d, heads = backbone.hidden_size, backbone.num_heads

        # Video branch: temporal attention in every block, one shared temporal position embedding.
        self.temporal = nn.ModuleList(TemporalAttention(d, heads, generator) for _ in range(backbone.depth))
        self.temporal_pos: nn.Parameter | None = None
        if cfg.temporal_pos is TemporalPos.LEARNED:
            self.temporal_pos = nn.Parameter(torch.zeros(num_frames, d))
            if not self.temporal_pos.is_meta:
                nn.init.normal_(self.temporal_pos, std=0.02, generator=generator)

        # Audio branch: new patch embedding and final layer, LoRA on the frozen blocks (audio tokens only).
        self.audio_embedder = PatchEmbed((t_a, m_a), p_a, c_a, d, bias=True, strict_img_size=False)
        self.audio_lora = nn.ModuleList(
            block_lora(block, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, generator) for block in backbone.blocks
        )
        self.audio_out_channels = c_a * cfg.out_channels_factor
        self.audio_final_layer = FinalLayer(d, p_a, self.audio_out_channels)
        self._init_audio(generator)

        # Joint block(s): the trainable parts; the frozen block is looked up in the backbone when called.
        after = sorted({k % backbone.depth for k in cfg.joint_after}) if cfg.joint else []
        self.joint = nn.ModuleDict({
            str(k): JointBlockAdapter(backbone.blocks[k], cfg.lora_targets, cfg.joint_lora_rank, cfg.lora_alpha,
                                      generator, time_rope=cfg.joint_time_rope, time_bias=cfg.joint_time_bias,
                                      learned_slopes=cfg.joint_time_bias_learned,
                                      cross_only=cfg.joint_cross_only)
            for k in after
        })

        # Optional class-conditional fine-tuning: a zero offset on the frozen class table.
        self.class_offset: nn.Embedding | None = None
        if cfg.trainable_class_table:
            self.class_offset = nn.Embedding(backbone.num_classes + 1, d)
            nn.init.zeros_(self.class_offset.weight)

    @classmethod
    def from_config(cls, cfg: Config, backbone: DiT | None = None, generator: torch.Generator | None = None) -> "AVDiT":
        return cls(cfg.model, cfg.data.video_latent_shape, cfg.data.audio_latent_shape, backbone, generator)

    @torch.no_grad()
    def _init_audio(self, generator: torch.Generator | None) -> None:
        if self.audio_embedder.proj.weight.is_meta:
            return
        w = self.audio_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1), generator=generator)  # as DiT's x_embedder
        nn.init.zeros_(self.audio_embedder.proj.bias)
        for layer in (self.audio_final_layer.adaLN_modulation[-1], self.audio_final_layer.linear):  # adaLN-Zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- ownership -----------------------------------------------------------------------------------------
    def adapter_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The new parameters: every one not owned by the backbone module."""
        frozen = {id(p) for p in self.backbone.parameters()}
        return [(name, p) for name, p in self.named_parameters() if id(p) not in frozen]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.adapter_named_parameters()]

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Only the trained tensors (no backbone weights), detached."""
        return {name: p.detach() for name, p in self.adapter_named_parameters()}

    @torch.no_grad()
    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strict: every adapter tensor must be present with its exact shape, and nothing else."""
        expected = dict(self.adapter_named_parameters())
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = [
            f"{k}: {tuple(state[k].shape)} vs expected {tuple(expected[k].shape)}"
            for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape
        ]
        parts = [f"{label}: {', '.join(keys[:8])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys]
        if parts:
            raise WeightsError("adapter weights do not fit this model (check the config they were trained with): "
                               + "; ".join(parts))
        for name, p in expected.items():
            p.copy_(state[name])

    # -- forward -------------------------------------------------------------------------------------------
    def _check_inputs(
        self, video: Tensor, audio: Tensor, t_video: Tensor, t_audio: Tensor | None, y: Tensor | None
    ) -> None:
        bb = self.backbone
        s, c_a, p_a = bb.input_size, self.audio_shape[0], self.cfg.audio_patch_size
        if video.ndim != 5 or video.shape[2] != bb.in_channels or video.shape[-2:] != (s, s):
            raise ValueError(
                f"video has shape {tuple(video.shape)}; expected (batch, frames, {bb.in_channels}, {s}, {s})"
            )
        if audio.ndim != 4 or audio.shape[1] != c_a or audio.shape[2] % p_a or audio.shape[3] % p_a:
            raise ValueError(f"audio has shape {tuple(audio.shape)}; expected (batch, {c_a}, T_a, M_a) with T_a and "
                             f"M_a multiples of the audio patch size {p_a}")
        b = video.shape[0]
        for name, v in (("audio", audio), ("t_video", t_video), ("t_audio", t_audio), ("y", y)):
            if v is not None and (v.shape[0] != b or (name != "audio" and v.ndim != 1)):
                if name == "t_video" and tuple(v.shape) == tuple(video.shape[:2]):
                    continue  # one timestep per frame
                raise ValueError(f"{name} has shape {tuple(v.shape)}; expected a batch of {b} like the video"
                                 + (f" (or {tuple(video.shape[:2])}, one per frame)" if name == "t_video" else ""))
        if self.temporal_pos is not None and video.shape[1] > self.temporal_pos.shape[0]:
            raise ValueError(f"{video.shape[1]} frames given; the learned temporal position embedding has "
                             f"{self.temporal_pos.shape[0]} (model.temporal_pos=sincos or none allows any count)")

    def _condition(self, t: Tensor, y: Tensor | None) -> Tensor:
        c = self.backbone.condition(t, y)  # (b, d), frozen
        if self.class_offset is not None:
            if y is None:
                y = torch.full_like(t, self.backbone.num_classes, dtype=torch.long)
            c = c + self.class_offset(y)
        return c

    def _temporal_pos(self, num_frames: int, device: torch.device) -> Tensor | None:
        if self.cfg.temporal_pos is TemporalPos.LEARNED:
            return self.temporal_pos[:num_frames]
        if self.cfg.temporal_pos is TemporalPos.SINCOS:
            pos = torch.arange(num_frames, device="cpu")
            return sincos_1d(pos, self.backbone.hidden_size).to(device=device, dtype=torch.float32)
        return None

    def _video_block(self, k: int, xv: Tensor, cv: Tensor, num_frames: int, tpos: Tensor | None) -> Tensor:
        temporal = self.temporal[k]
        return self.backbone.blocks[k](xv, cv, after_attn=lambda x: x + temporal(x, num_frames, tpos))

    def _audio_block(self, k: int, xa: Tensor, ca: Tensor) -> Tensor:
        lora = self.audio_lora[k]
        return self.backbone.blocks[k](xa, ca, lora=lora if len(lora) else None)

    def joint_token_times(self, num_frames: int, audio_rows: int, audio_cols: int, device: torch.device) -> Tensor:
        """(f n_v + n_a,) the time of every token of the joint sequence, in video frames.

        Frame k's tokens are at time k. The audio latents cover the same span as the frames (the clip
        protocol: ``num_frames / fps`` seconds both), so audio token row r (of ``audio_rows``) covers
        ``[r, r + 1) x num_frames / audio_rows`` frames and sits at its middle."""
        n_v = self.backbone.grid_size ** 2
        video = torch.arange(num_frames, device=device, dtype=torch.float32).repeat_interleave(n_v)
        audio = ((torch.arange(audio_rows, device=device, dtype=torch.float32) + 0.5) * num_frames / audio_rows
                 ).repeat_interleave(audio_cols)  # tokens in row-major (rows, cols) order, as PatchEmbed's
        return torch.cat([video, audio])

    def _joint_block(self, k: int, xv: Tensor, xa: Tensor, cv: Tensor, ca: Tensor, num_frames: int,
                     times: Tensor | None, video_out: bool = True) -> tuple[Tensor, Tensor]:
        n = xv.shape[1]
        clip = rearrange(xv, "(b f) n d -> b (f n) d", f=num_frames)  # all tokens of one clip in one sequence
        clip, xa = self.joint[str(k)](self.backbone.blocks[k], clip, xa, cv, ca, times, video_out)
        return rearrange(clip, "b (f n) d -> (b f) n d", n=n), xa

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one block's step, through activation checkpointing when switched on and training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(
        self,
        video: Tensor,
        audio: Tensor,
        t_video: Tensor,
        t_audio: Tensor | None = None,
        y: Tensor | None = None,
        video_cache: VideoStreamCache | None = None,
    ) -> dict[str, Tensor]:
        """video (b, f, c, h, w), audio (b, c_a, T_a, M_a), timesteps (b,) -> {"video": (b, f, 2c, h, w),
        "audio": (b, 2c_a, T_a, M_a)}. ``t_video`` may also be (b, f), one timestep per frame (frames at
        different noise levels, as staggered training and sampling use: each frame's adaLN takes its own).
        ``t_audio=None`` uses ``t_video`` (which must then be (b,)); ``y=None`` is the null class.
        ``video_cache`` reuses the video stream of an earlier call with the same frames (no-grad only; with
        ``video_cache.audio_only`` such a call returns ``"audio"`` alone)."""
        self._check_inputs(video, audio, t_video, t_audio, y)
        bb = self.backbone
        b, f = video.shape[:2]
        p_a = self.cfg.audio_patch_size
        gh, gw = audio.shape[2] // p_a, audio.shape[3] // p_a

        xv = bb.embed(rearrange(video, "b f c h w -> (b f) c h w"))  # (b f) n_v d
        xa = self.audio_embedder(audio.to(self.audio_embedder.proj.weight.dtype))  # b n_a d
        # In the weights' dtype (float32 unless the model was cast): under autocast the stream stays float32.
        xa = xa + sincos_2d(gh, gw, bb.hidden_size, xa.device).to(self.audio_embedder.proj.weight.dtype)
        if t_video.ndim == 2:  # per frame: (b, f) -> cv (b, f, d), the joint block modulates frame by frame
            if t_audio is None:
                raise ValueError("per-frame t_video (b, f) needs its own t_audio (b,)")
            y_frames = None if y is None else repeat(y, "b -> (b f)", f=f)
            cv_frames = self._condition(rearrange(t_video, "b f -> (b f)"), y_frames)  # (b f) d
            cv = rearrange(cv_frames, "(b f) d -> b f d", b=b)
        else:
            cv = self._condition(t_video, y)  # (b, d)
            cv_frames = repeat(cv, "b d -> (b f) d", f=f)
        ca = cv if t_audio is None else self._condition(t_audio, y)
        tpos = self._temporal_pos(f, xv.device)
        times = self.joint_token_times(f, gh, gw, xv.device) if len(self.joint) else None

        # The video stream through block `fixed` depends on the frames, t_video and y only (see VideoStreamCache).
        fixed = min((int(k) for k in self.joint), default=bb.depth - 1)
        key = (video, t_video, y if y is not None else video.new_empty(0))
        use_cache = video_cache is not None and not torch.is_grad_enabled()
        cached = video_cache.lookup(key) if use_cache else None
        # Sound only (a reused stream of given frames): the video tokens matter up to the last joint block.
        audio_only = cached is not None and video_cache.audio_only
        last_joint = max((int(k) for k in self.joint), default=-1)
        for k in range(bb.depth):
            read = not (audio_only and k > last_joint)  # the video tokens of block k are read by someone
            if read and (cached is None or k > fixed):
                xv = self._call(self._video_block, k, xv, cv_frames, f, tpos)
            elif read and k == fixed:
                xv = cached
            if use_cache and cached is None and k == fixed:
                video_cache.store(key, xv)
            xa = self._call(self._audio_block, k, xa, ca)
            if str(k) in self.joint:
                video_out = not (audio_only and k == last_joint)
                xv, xa = self._call(self._joint_block, k, xv, xa, cv, ca, f, times, video_out)

        audio_out = rearrange(
            self.audio_final_layer(xa, ca), "b (h w) (p q c) -> b c (h p) (w q)",
            h=gh, w=gw, p=p_a, q=p_a, c=self.audio_out_channels,
        )
        if audio_only:
            return {"audio": audio_out}
        frames_out = bb.unpatchify(bb.final_layer(xv, cv_frames), bb.grid_size, bb.grid_size)  # (b f) 2c h w
        return {"video": rearrange(frames_out, "(b f) c h w -> b f c h w", b=b), "audio": audio_out}


@contextlib.contextmanager
def temporal_off(model: AVDiT) -> Iterator[None]:
    """Within the block, every temporal attention's output projection is zero, as at initialisation (a diagnosis
    of what the temporal layers add). Without a joint block each frame then goes through the video branch alone;
    a joint block still attends over every frame (and the sound). The weights are restored on exit, also after
    an error."""
    saved = [(m.attn.proj.weight.detach().clone(), m.attn.proj.bias.detach().clone()) for m in model.temporal]
    try:
        with torch.no_grad():
            for m in model.temporal:
                m.attn.proj.weight.zero_()
                m.attn.proj.bias.zero_()
        yield
    finally:
        with torch.no_grad():
            for m, (w, b) in zip(model.temporal, saved):
                m.attn.proj.weight.copy_(w)
                m.attn.proj.bias.copy_(b)


def _check_backbone(backbone: DiT, cfg: ModelConfig, channels: int, size: int) -> None:
    want = {
        "hidden_size": cfg.hidden_size, "depth": cfg.depth, "num_heads": cfg.num_heads,
        "patch_size": cfg.patch_size, "num_classes": cfg.num_classes, "learn_sigma": cfg.learn_sigma,
        "mlp_ratio": cfg.mlp_ratio,
        "in_channels": channels, "input_size": size,
    }
    have = backbone.arch()
    wrong = [f"{k}={have[k]} (config/data say {v})" for k, v in want.items() if have[k] != v]
    if wrong:
        raise ConfigError("the backbone does not match the config: " + ", ".join(wrong)
                          + "; set the model.* fields to the backbone's sizes")
