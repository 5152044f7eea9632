"""How well does a run's video branch predict the clean frames at each noise level? The x_0-space error of the
denoiser on real clips from a latent cache, the second half of each clip's frames scored (8..15 of 16), in
three settings:

- every frame at t (what plain sampling asks of it);
- the first half of the frames given clean (t = 0), the rest at t: can the temporal layers carry what they see
  to the noisy frames (what staggered sampling asks of it)?
- the same with the temporal attention switched off (its output projection zeroed): the frozen image backbone
  on each frame alone.

The error is ``mean((x0_hat - x0)^2)`` with ``x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab)``; predicting
the data's mean scores the data's variance (printed), the line a useful prediction has to beat. An eps loss
weighs this error by SNR(t), nearly zero at high t: there a model can be far worse than the mean while its eps
loss looks perfect (benchmarks/RESULTS.md, demo round 4).

    python benchmarks/x0_error.py RUN --cache CACHE_DIR [-n 32] [--no-ema] [--fit-steps 300] [--json out.json]

``--fit-steps N`` then asks whether the temporal layers *can* carry a clean frame's content: starting from the
run's weights it trains them alone (Adam, lr ``--fit-lr``, batches of 8 other clips of the cache, gradient
clipping at 1) for N steps directly on that task, frames 0..7 clean and the rest at t ~ U[400, 900), loss
the x_0-space MSE of the noisy frames, and measures "first half clean" again on the same held-out clips.

RUN: a run or checkpoint folder (or an exported model such as avdit_cli/assets/demo-avdit). The sound goes
in as pure noise at T - 1 ("not known"). CPU, one thread; about 30 s for 32 clips of the tiny preset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from avdit_cli.data.cache import LatentCache
from avdit_cli.diffusion import Diffusion
from avdit_cli.models.avdit import temporal_off
from avdit_cli.pipelines.generate import load_run_model, open_checkpoint

LEVELS = (100, 300, 500, 700, 900, 999)


@torch.no_grad()
def x0_error(model: torch.nn.Module, diffusion: Diffusion, video: torch.Tensor, audio_shape: tuple[int, ...],
             t: int, given: int, scored: int) -> float:
    """x_0-space MSE of frames ``scored..`` of ``video`` (b, f, c, h, w) at timestep t, frames ``..given``
    clean (t = 0). The same seeded noise for every call."""
    b, f, c = video.shape[:3]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(video.shape, generator=g)
    t_video = torch.full((b, f), t, dtype=torch.long)
    t_video[:, :given] = 0
    x_t = diffusion.q_sample(video, t_video, noise)
    x_t[:, :given] = video[:, :given]
    audio = torch.randn((b, *audio_shape), generator=g)
    out = model(x_t, audio, t_video, torch.full((b,), diffusion.num_timesteps - 1, dtype=torch.long))
    x0_hat = diffusion.predict_x0_from_eps(x_t, t_video, out["video"][:, :, :c])
    return float(((x0_hat - video)[:, scored:] ** 2).mean())


def measure(run: str, cache: Path, n: int, ema: bool = True) -> dict[str, Any]:
    torch.set_num_threads(1)
    ckpt = open_checkpoint(run)
    cfg = ckpt.config
    model = load_run_model(ckpt, cfg, torch.device("cpu"), ema=ema).eval()
    diffusion = Diffusion.from_config(cfg.diffusion)
    data = LatentCache(cache)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    video = torch.stack([data[int(i)]["video"] for i in pick]).float()
    f = video.shape[1]
    half = f // 2
    shape = cfg.data.audio_latent_shape
    rows = []
    for t in LEVELS:
        row = {"t": t, "all_at_t": x0_error(model, diffusion, video, shape, t, 0, half),
               "first_half_clean": x0_error(model, diffusion, video, shape, t, half, half)}
        with temporal_off(model):
            row["first_half_clean_temporal_off"] = x0_error(model, diffusion, video, shape, t, half, half)
        rows.append(row)
    return {"run": str(run), "clips": len(pick), "frames_scored": f"{half}..{f - 1}",
            "data_variance": float(video[:, half:].var()), "rows": rows, "torch": torch.__version__}


def fit_temporal(run: str, cache: Path, n: int, steps: int, lr: float, ema: bool = True) -> dict[str, Any]:
    """Train only the temporal layers on the copy task (see the module doc); x_0 errors at t = 500 and 700 of
    the first-half-clean setting on the ``n`` held-out clips, before and after."""
    torch.set_num_threads(1)
    ckpt = open_checkpoint(run)
    cfg = ckpt.config
    model = load_run_model(ckpt, cfg, torch.device("cpu"), ema=ema)
    diffusion = Diffusion.from_config(cfg.diffusion)
    data = LatentCache(cache)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g)
    held = torch.stack([data[int(i)]["video"] for i in order[:n]]).float()
    pool = order[n:]
    half, shape = held.shape[1] // 2, cfg.data.audio_latent_shape
    params = [p for name, p in model.named_parameters() if name.startswith("temporal.")]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)

    def held_errors() -> dict[int, float]:
        model.eval()
        return {t: x0_error(model, diffusion, held, shape, t, half, half) for t in (500, 700)}

    before = held_errors()
    model.train()
    for step in range(steps):
        ids = pool[torch.randint(len(pool), (8,), generator=g)]
        video = torch.stack([data[int(i)]["video"] for i in ids]).float()
        b, f, c = video.shape[:3]
        t_video = torch.zeros((b, f), dtype=torch.long)
        t_video[:, half:] = torch.randint(400, 900, (b, 1), generator=g)
        noise = torch.randn(video.shape, generator=g)
        x_t = diffusion.q_sample(video, t_video, noise)
        x_t[:, :half] = video[:, :half]
        out = model(x_t, torch.randn((b, *shape), generator=g), t_video,
                    torch.full((b,), diffusion.num_timesteps - 1, dtype=torch.long))
        x0_hat = diffusion.predict_x0_from_eps(x_t, t_video, out["video"][:, :, :c])
        loss = ((x0_hat - video)[:, half:] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return {"steps": steps, "lr": lr, "before": before, "after": held_errors()}


def table(r: dict[str, Any]) -> str:
    lines = [f"{r['run']}: x_0-space MSE of frames {r['frames_scored']}, {r['clips']} clips; the data's variance "
             f"(the mean's error) {r['data_variance']:.4f}\n",
             "| t | every frame at t | first half clean | first half clean, temporal off |", "|---:|---:|---:|---:|"]
    lines += [f"| {x['t']} | {x['all_at_t']:.4f} | {x['first_half_clean']:.4f} | "
              f"{x['first_half_clean_temporal_off']:.4f} |" for x in r["rows"]]
    if "fit" in r:
        fit = r["fit"]
        lines += [f"\ntemporal layers alone fitted to the copy task ({fit['steps']} steps, lr {fit['lr']}): first half "
                  "clean, before -> after", *(f"- t = {t}: {fit['before'][t]:.4f} -> {fit['after'][t]:.4f}"
                                               for t in fit["before"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run or checkpoint folder, or an exported model folder")
    ap.add_argument("--cache", type=Path, required=True, help="a latent cache of real clips (avdit preprocess)")
    ap.add_argument("-n", type=int, default=32, help="clips")
    ap.add_argument("--no-ema", action="store_true", help="the raw weights instead of their EMA")
    ap.add_argument("--fit-steps", type=int, default=0, help="also fit the temporal layers to the copy task")
    ap.add_argument("--fit-lr", type=float, default=1e-3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    r = measure(a.run, a.cache, a.n, ema=not a.no_ema)
    if a.fit_steps > 0:
        r["fit"] = fit_temporal(a.run, a.cache, a.n, a.fit_steps, a.fit_lr, ema=not a.no_ema)
    print(table(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
