"""How much of what a noisy frame shows does an image backbone keep? The demo's frames-per-frame ceiling.

Real frames (a folder of synthetic bouncing-ball clips, `avdit demo --data-only`) are encoded with the tiny
preset's codec, noised to t0 (seeded: one generator per batch of 64 frames), then brought back with DDIM
(``--steps`` steps evenly over [t0, 0], the x_0 prediction clamped to the codec's range as the demo samples) by
the image backbone alone, each frame on its own, with the tiny preset's noise schedule (a checkpoint's own
schedule for a pretrain run's checkpoint). Per t0 and backbone (the JSON rows also say how many clips were read):

- **kept**: the share of the real frames' balls (:func:`avdit_cli.data.frame_stats.frame_balls`) for which the
  denoised frame holds a ball of the same palette colour within ``KEEP_RADIUS`` frame heights: what the frozen
  frame model carries through from a frame at that noise level on its own, before any temporal layer helps;
- **kept, any colour**: the same, whatever the colour of the ball found: the gap to "kept" is balls that stay in
  place but change colour;
- **1-2 balls** and **noise frames** of the denoised frames;
- **x0 MSE**: the mean squared error, in latent units, of the backbone's first x_0 prediction (at t0, after the
  clamp).

``--run RUN`` (an AV-DiT run or checkpoint folder, or an exported model such as `avdit_cli/assets/demo-avdit`)
makes the same round trip for whole clips through the run's video branch, with the run's own config (frames,
codec, noise schedule; seeded per batch of 8 clips; independent noise per frame; the sound goes in as "not
known", pure noise at T - 1), with its temporal layers on and off. Its rows add the clips' **smooth moves**,
**near moves** and **median step** (:func:`avdit_cli.data.frame_stats.frame_stats`): how much of a clip's path
the temporal layers carry through from that noise level. With the temporal layers off, a model *without* a joint
block treats each frame alone; a joint block still sees every frame.

    python benchmarks/backbone_fidelity.py --real DATA_DIR BACKBONE_DIR [BACKBONE_DIR ...] [-n 24]
        [--t0 100 200 300 400 500] [--steps 25] [--json out.json]
    python benchmarks/backbone_fidelity.py --real DATA_DIR --run RUN [...]

BACKBONE_DIR: a DiT in the diffusers layout (`avdit_cli/assets/tiny-dit`, or a pretrain run's `backbone/`), or a
checkpoint of a pretrain run (`runs/NAME/checkpoints/step_...`, its EMA weights), to follow a pretraining as it
goes. Either must take the tiny preset's latents (16 x 16 x 3 pixels).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from einops import rearrange

from avdit_cli.codecs import Codecs, build_codecs
from avdit_cli.config import Config, load_preset
from avdit_cli.data.frame_stats import frame_balls, frame_stats
from avdit_cli.diffusion import Diffusion
from avdit_cli.models import DiT
from avdit_cli.models.avdit import temporal_off
from avdit_cli.errors import ConfigError
from avdit_cli.fileio import plain
from avdit_cli.pipelines.demo import read_clips, shipped_or_path
from avdit_cli.pipelines.generate import load_run_model, open_checkpoint
from avdit_cli.pipelines.runs import load_checkpoint
from avdit_cli.pipelines.preprocess import encode_clips

KEEP_RADIUS = 0.1  # frame heights: about one ball diameter of the data's largest balls
LEVELS = (100, 200, 300, 400, 500)


def kept_balls(real: list[np.ndarray], frames: list[np.ndarray], same_colour: bool = True) -> float:
    """Share of the balls of the real frames found again in ``frames`` (a ball of the same palette colour, or
    with ``same_colour=False`` of any colour, within ``KEEP_RADIUS`` frame heights); NaN when the real frames
    hold no ball. Both: uint8 frames (h, w, 3), paired; ValueError when their counts differ."""
    found = total = 0
    for a, b in zip(real, frames, strict=True):
        others = frame_balls(b)[0]
        for p in frame_balls(a)[0]:
            total += 1
            found += any((q.colour == p.colour or not same_colour) and math.hypot(q.y - p.y, q.x - p.x) <= KEEP_RADIUS
                         for q in others)
    return found / total if total else math.nan


def load_dit(path: Path) -> tuple[DiT, Config | None]:
    """(the DiT, the config it was trained with or None): a DiT folder in the diffusers layout (no config), or the
    EMA weights of a pretrain run's checkpoint (its run config). Raises WeightsError for neither, ConfigError
    for a checkpoint of another mode (adapters are no image backbone)."""
    if (path / "config.json").exists() or not (path / "state.json").exists():
        return DiT.from_pretrained(path), None
    ckpt = load_checkpoint(path)
    if ckpt.state.get("mode") != "pretrain":
        raise ConfigError(f"{path} is a {ckpt.state.get('mode')} checkpoint; give a pretrain run's checkpoint or a "
                          "DiT folder (diffusers layout)")
    cfg = ckpt.config
    _, c, h, _ = cfg.data.video_latent_shape
    dit = DiT.from_config(cfg.model, input_size=h, in_channels=c)
    dit.load_state_dict(ckpt.ema)
    return dit, cfg


EpsFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> the eps prediction, shaped like x_t


@torch.no_grad()
def round_trip(eps_fn: EpsFn, x0: torch.Tensor, t0: int, diffusion: Diffusion,
               bounds: tuple[float, float] | None, steps: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """x0 latents of any shape noised to t0 (elementwise independent noise), then DDIM back to t = 0 with
    ``eps_fn``: (the result, shaped like x0; the MSE of the first x_0 prediction)."""
    ab = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = math.sqrt(ab[t0]) * x0 + math.sqrt(1 - ab[t0]) * torch.randn(x0.shape, generator=g)
    ts = np.linspace(t0, 0, steps).round().astype(int)
    first_mse = math.nan
    for i, t in enumerate(ts):
        eps = eps_fn(x, int(t))
        a, a_prev = ab[t].item(), (ab[ts[i + 1]].item() if i + 1 < len(ts) else 1.0)
        pred = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if bounds is not None:
            pred = pred.clamp(*bounds)
        if i == 0:
            first_mse = float(((pred - x0) ** 2).mean())
        eps = (x - math.sqrt(a) * pred) / math.sqrt(1 - a)
        x = math.sqrt(a_prev) * pred + math.sqrt(1 - a_prev) * eps
    return x, first_mse


def image_eps(dit: DiT) -> EpsFn:
    """The image backbone alone on latents (n, c, h, w); the learnt variance half of its output is dropped."""
    return lambda x, t: dit(x, torch.full((x.shape[0],), t), None)[:, : x.shape[1]]


def clip_eps(model: torch.nn.Module, audio: torch.Tensor, last: int) -> EpsFn:
    """An AV-DiT's video eps on clips (b, f, c, h, w), the sound fixed as "not known" (``audio`` at ``last``)."""
    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        b = x.shape[0]
        out = model(x, audio[:b], torch.full((b,), t), torch.full((b,), last))
        return out["video"][:, :, : x.shape[2]]
    return eps


def to_frames(z: torch.Tensor, codecs: Codecs) -> list[np.ndarray]:
    """Latents (n, c, h, w) -> uint8 frames (h, w, 3)."""
    px = codecs.video.decode(z)
    return list(rearrange(((px.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), "n c h w -> n h w c").numpy())


def fidelity(path: Path, real_frames: list[np.ndarray], latents: torch.Tensor, cfg: Config, codecs: Codecs,
             levels: tuple[int, ...], steps: int, batch: int = 64) -> list[dict[str, Any]]:
    """One row per t0 for the backbone at ``path``; latents (n, c, h, w) are the codec's of ``real_frames``."""
    dit, trained = load_dit(path)
    dit.eval()
    diffusion = Diffusion.from_config((trained or cfg).diffusion, learn_sigma=cfg.model.learn_sigma)
    bounds = codecs.video.latent_range if cfg.sample.clip_denoised else None
    rows = []
    for t0 in levels:
        start = time.perf_counter()
        parts = [round_trip(image_eps(dit), latents[i:i + batch], t0, diffusion, bounds, steps, seed=i)
                 for i in range(0, len(latents), batch)]
        frames = to_frames(torch.cat([p[0] for p in parts]), codecs)
        rows.append({"backbone": str(path), "t0": t0, "clips": len(real_frames) // cfg.data.num_frames,
                     **_frame_row(real_frames, frames, parts),
                     "seconds": round(time.perf_counter() - start, 1)})
    return rows


def _frame_row(real_frames: list[np.ndarray], frames: list[np.ndarray],
               parts: list[tuple[torch.Tensor, float]]) -> dict[str, float]:
    found = [frame_balls(f) for f in frames]
    return {"kept": kept_balls(real_frames, frames),
            "kept_any_colour": kept_balls(real_frames, frames, same_colour=False),
            "one_or_two_balls": float(np.mean([1 <= len(b) <= 2 for b, _ in found])),
            "noise_frames": float(np.mean([noise for _, noise in found])),
            "x0_mse": float(np.average([p[1] for p in parts], weights=[len(p[0]) for p in parts]))}


def clip_fidelity(run: str, files: list[Path], levels: tuple[int, ...], steps: int, batch: int = 8
                  ) -> list[dict[str, Any]]:
    """Rows per t0 and temporal on / off for an AV-DiT run: its own config's clips, codec and schedule. Raises
    ConfigError for a t0 outside its schedule or when no file gives a clip."""
    ckpt = open_checkpoint(shipped_or_path(run))
    cfg = ckpt.config
    if any(not 0 < t < cfg.diffusion.num_timesteps for t in levels):
        raise ConfigError(f"--t0 values must lie in 1..{cfg.diffusion.num_timesteps - 1} for {run}")
    model = load_run_model(ckpt, cfg, torch.device("cpu")).eval()
    codecs = build_codecs(cfg, "cpu")
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    bounds = codecs.video.latent_range if cfg.sample.clip_denoised else None
    clips = read_clips(files, cfg)
    if not clips:
        raise ConfigError(f"none of the {len(files)} files gives a clip of {cfg.data.clip_seconds} s for {run}")
    video_z, audio_z = encode_clips(clips, codecs, batch_size=16)  # (b, f, c, h, w), (b, c_a, T_a, M_a)
    real = [c.frames for c in clips]
    audio = torch.randn(audio_z.shape, generator=torch.Generator().manual_seed(1))  # the "not known" sound
    last = diffusion.num_timesteps - 1
    rows = []
    for t0 in levels:
        for temporal in (True, False):
            start = time.perf_counter()
            with contextlib.nullcontext() if temporal else temporal_off(model):
                parts = [round_trip(clip_eps(model, audio[i:i + batch], last), video_z[i:i + batch], t0, diffusion,
                                    bounds, steps, seed=i) for i in range(0, len(video_z), batch)]
            z = rearrange(torch.cat([p[0] for p in parts]), "b f c h w -> (b f) c h w")
            frames = to_frames(z, codecs)
            f = video_z.shape[1]
            stats = frame_stats([np.stack(frames[k:k + f]) for k in range(0, len(frames), f)])
            rows.append({"run": str(run), "t0": t0, "temporal": temporal, "clips": len(clips),
                         **_frame_row([f for c in real for f in c], frames, parts),
                         "smooth_moves": stats.smooth_moves, "near_moves": stats.near_moves,
                         "median_step": stats.median_step, "seconds": round(time.perf_counter() - start, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backbones", type=Path, nargs="*",
                    help="DiT folders in the diffusers layout, or pretrain-run checkpoints (their EMA weights)")
    ap.add_argument("--run", action="append", default=[],
                    help="an AV-DiT run / checkpoint / exported model (or shipped, shipped-no-joint): whole clips "
                         "through its video branch, temporal layers on and off")
    ap.add_argument("--real", type=Path, required=True, help="a folder of synthetic clips (avdit demo --data-only)")
    ap.add_argument("-n", type=int, default=24, help="real clip files (the first clip of each)")
    ap.add_argument("--t0", type=int, nargs="+", default=list(LEVELS), help="noise levels to start from")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps over [t0, 0]")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_preset("tiny")
    if args.backbones and any(not 0 < t < cfg.diffusion.num_timesteps for t in args.t0):
        ap.error(f"--t0 values must lie in 1..{cfg.diffusion.num_timesteps - 1}")
    if args.steps < 1 or args.n < 1:
        ap.error("--steps and -n must be at least 1")
    if not args.backbones and not args.run:
        ap.error("give a backbone folder or checkpoint, or --run RUN")
    files = sorted(args.real.glob("*.mp4"))[: args.n]
    if not files:
        ap.error(f"no .mp4 in {args.real}; make some with `avdit demo --data-only -o DIR`")
    rows = []
    if args.backbones:
        clips = read_clips(files, cfg)
        if not clips:
            ap.error(f"none of the files in {args.real} gives a clip of {cfg.data.clip_seconds} s")
        codecs = build_codecs(cfg, "cpu")
        video_z, _ = encode_clips(clips, codecs, batch_size=16)
        latents = rearrange(video_z, "b f c h w -> (b f) c h w")
        real_frames = [f for c in clips for f in c.frames]
        print("| backbone | t0 | kept | kept, any colour | 1-2 balls | noise frames | x0 MSE at t0 |")
        print("|---|---|---|---|---|---|---|")
        for path in args.backbones:
            for r in fidelity(path, real_frames, latents, cfg, codecs, tuple(args.t0), args.steps):
                rows.append(r)
                print(f"| {path} | {r['t0']} | {_pct(r['kept'])} | {_pct(r['kept_any_colour'])} | "
                      f"{_pct(r['one_or_two_balls'])} | {_pct(r['noise_frames'])} | {r['x0_mse']:.4f} |", flush=True)
    if args.run:
        print("| run | t0 | temporal | smooth moves | near moves | median step | kept | kept, any colour | 1-2 balls "
              "| noise frames | x0 MSE at t0 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for run in args.run:
            for r in clip_fidelity(run, files, tuple(args.t0), args.steps):
                rows.append(r)
                print(f"| {run} | {r['t0']} | {'on' if r['temporal'] else 'off'} | {_pct(r['smooth_moves'])} | "
                      f"{_pct(r['near_moves'])} | {r['median_step']:.3f} | {_pct(r['kept'])} | "
                      f"{_pct(r['kept_any_colour'])} | {_pct(r['one_or_two_balls'])} | {_pct(r['noise_frames'])} | "
                      f"{r['x0_mse']:.4f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(plain({"rows": rows, "files": len(files), "steps": args.steps,
                                               "torch": torch.__version__}), indent=1, allow_nan=False) + "\n")
    return 0


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.0f} %"


if __name__ == "__main__":
    sys.exit(main())
