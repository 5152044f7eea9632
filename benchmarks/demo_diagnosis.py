"""Diagnose the demo's models part by part: which branch falls short, and the method or the budget?

For each fine-tuned run (a run or checkpoint folder made by `avdit finetune`, or `shipped` / `shipped-no-joint`
for the models in the package), on N real clips of a synthetic bouncing-ball folder (`avdit demo --data-only`):

- **joint**: both tracks generated from noise (what `avdit generate` does);
- **video branch**: frames generated for the real audio of each clip (the audio is the sampler's known
  modality, noised to every step's t; the generated video keeps the real audio in the written clip);
- **audio branch**: audio generated for the real frames of each clip, likewise;
- each scored like the demo's table: sync F1, AV-Align, balls per frame, frames with one or two balls, noise
  frames, smooth moves and audio onsets per clip (``avdit_cli.pipelines.demo.score_group``).

`--backbone PATH` adds the frozen image backbone alone: N x 16 single images, scored as frames. Real clips in
class folders (the demo's data) lend their class to what is made beside them: a class-conditional backbone or
run draws clip i in real clip i's class, guided by `sample.cfg_scale`, and "class_match" is the share of frames
whose balls are exactly that class's colours. After the table, each run folder's logged loss per modality is
printed at a few steps (its metrics.jsonl; also in `--json`). `--set sample.KEY=VALUE` changes a
sampling setting of every run (e.g. `sample.cross_modal_guidance=3`); `--parts audio` makes only the sound for
the real frames (also `joint`, `video`; comma-separated). Rows print as a table and, with `--json`,
as JSON.

    python benchmarks/demo_diagnosis.py --real DATA_DIR --run runs/x [--run runs/y] [-n 32] [--backbone DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from avdit_cli.codecs import Codecs, build_codecs
from avdit_cli.config import Config, apply_overrides
from avdit_cli.data.clips import Clip
from avdit_cli.diffusion import Diffusion, sample
from avdit_cli.errors import ConfigError
from avdit_cli.models import DiT
from avdit_cli.pipelines.demo import GroupScore, read_clips, score_group, shipped_or_path
from avdit_cli.pipelines.generate import VOCODER_SEED, decode, load_run_model, open_checkpoint, sample_latents
from avdit_cli.pipelines.preprocess import encode_clips

COLUMNS = ("sync_f1", "av_align", "balls_per_frame", "one_or_two_balls", "noise_frames", "smooth_moves",
           "median_step", "impacts_per_clip", "onsets_per_clip", "class_match")


def class_match(frames: list[np.ndarray], classes: list[str | None]) -> float:
    """The share of frames whose balls are exactly the colours their clip's class names (``red+blue``: one red
    and one blue ball, nothing else); NaN when no clip has a class."""
    from avdit_cli.data.frame_stats import frame_balls
    from avdit_cli.data.synthetic import COLOUR_NAMES

    hits = total = 0
    for clip, name in zip(frames, classes):
        if name is None:
            continue
        want = sorted(name.split("+"))
        for frame in clip:
            balls, _ = frame_balls(frame)
            hits += sorted(COLOUR_NAMES[b.colour] for b in balls) == want
            total += 1
    return hits / total if total else math.nan


def guided(model_fn_y: Any, y: torch.Tensor | None, null: int, scale: float) -> Any:
    """A sampler model_fn: the class-conditional model guided towards each clip's class y (or y None: plain)."""
    from avdit_cli.diffusion.samplers import classifier_free_guidance
    from avdit_cli.pipelines.generate import CHANNEL_DIMS

    if y is None:
        return lambda x, t: model_fn_y(x, t, None)
    return classifier_free_guidance(model_fn_y, y, null, scale, {**CHANNEL_DIMS, "image": 1})  # image: (b, c, h, w)


@torch.no_grad()
def generate_tracks(model: torch.nn.Module, cfg: Config, codecs: Codecs, n: int, known: dict[str, torch.Tensor],
                    batch_size: int, y: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n clips (seeds 0..n-1, as `avdit generate`), given `known` latents (b = n) or none: frames, waves.
    ``y`` (n,): each clip's class for a class-conditional model, guided with ``sample.cfg_scale``."""
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    f, c, h, w = cfg.data.video_latent_shape
    shapes = {"video": (f, c, h, w), "audio": cfg.data.audio_latent_shape}
    frames, waves = [], []
    for lo in range(0, n, batch_size):
        idx = list(range(lo, min(n, lo + batch_size)))
        gens = [torch.Generator().manual_seed(cfg.sample.seed + i) for i in idx]
        kn = {k: v[idx] for k, v in known.items()}
        fn = guided(lambda x, t, yy: model(x["video"], x["audio"], t["video"], t["audio"], yy),
                    None if y is None else y[idx], cfg.model.num_classes, cfg.sample.cfg_scale)
        z = sample_latents(fn, cfg, codecs, diffusion, {k: (len(idx), *v) for k, v in shapes.items()}, kn,
                           generator=gens)
        fr, wv = decode(z, codecs, cfg.data.clip_samples)
        frames.extend(fr)
        waves.extend(wv)
    return np.stack(frames), np.stack(waves)


def class_ids(names: list[str] | None, classes: list[str | None], null: int) -> torch.Tensor | None:
    """Each real clip's class as a row of a model's class table, the `null` row for a clip whose class the
    model lacks (None: the model has no classes)."""
    if not names:
        return None
    return torch.tensor([names.index(c) if c in names else null for c in classes])


PARTS = {"joint": "joint", "video": "video branch (given real audio)", "audio": "audio branch (given real frames)"}


def diagnose_run(name: str, run: Path | str, real: list[Clip], batch_size: int, ema: bool = True,
                 sample_sets: tuple[str, ...] = (), classes: list[str | None] | None = None,
                 parts: tuple[str, ...] = tuple(PARTS)) -> list[dict[str, Any]]:
    """Joint generation, frames for the real sound, sound for the real frames (``parts``: keys of PARTS); a
    class-conditional run gets each real clip's class (its folder's name) as the class of the clip made
    beside it."""
    from avdit_cli.pipelines.generate import training_classes

    ckpt = open_checkpoint(shipped_or_path(run))
    cfg = apply_overrides(ckpt.config, sample_sets)
    model = load_run_model(ckpt, cfg, torch.device("cpu"), ema=ema)
    classes = classes or [None] * len(real)
    names = training_classes(ckpt.state, cfg.model.num_classes)[0] if cfg.model.uses_labels else None
    y = class_ids(names, classes, cfg.model.num_classes)
    codecs = build_codecs(cfg.replace(**{"sample.seed": VOCODER_SEED}), "cpu")
    n = len(real)
    video_z, audio_z = encode_clips(real, codecs, batch_size=batch_size)
    real_frames = [c.frames for c in real]
    real_audio = [c.audio for c in real]
    rows = []
    given = {"joint": {}, "video": {"audio": audio_z}, "audio": {"video": video_z}}
    for part, known in ((PARTS[k], given[k]) for k in parts):
        t0 = time.perf_counter()
        frames, waves = generate_tracks(model, cfg, codecs, n, known, batch_size, y)
        fr = real_frames if "video" in known else list(frames)
        au = real_audio if "audio" in known else list(waves)
        score = score_group(f"{name}: {part}", fr, au, cfg)
        rows.append({**asdict(score), "class_match": class_match(fr, classes) if y is not None else math.nan,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(_row(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def diagnose_backbone(path: Path, cfg: Config, n: int, classes: list[str | None] | None = None) -> dict[str, Any]:
    """n x f single images from the frozen image backbone alone, with the run's sampler; scored as frames. A
    class-conditional backbone draws clip i's 16 images in real clip i's class (``sample.cfg_scale`` guidance)."""
    from avdit_cli.models.dit_loading import read_class_names

    dit = DiT.from_pretrained(path)
    dit.eval()
    classes = classes or [None] * n
    y = class_ids(read_class_names(path), classes, dit.num_classes)
    codecs = build_codecs(cfg, "cpu")
    diffusion = Diffusion.from_config(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    f, c, h, w = cfg.data.video_latent_shape
    images = []
    for lo in range(0, n * f, 64):
        idx = range(lo, min(n * f, lo + 64))
        gens = [torch.Generator().manual_seed(cfg.sample.seed + i) for i in idx]
        yy = None if y is None else torch.tensor([int(y[i // f]) for i in idx])
        fn = guided(lambda x, t, lab: {"image": dit(x["image"], t["image"], lab)}, yy, dit.num_classes,
                    cfg.sample.cfg_scale)
        z = sample(fn, {"image": (len(idx), c, h, w)}, {"image": 1}, diffusion, sampler=cfg.sample.sampler,
                   steps=cfg.sample.steps, generator=gens,
                   clip_denoised={"image": codecs.video.latent_range} if cfg.sample.clip_denoised else False)
        px = codecs.video.decode(z["image"])
        images.append(((px.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    frames = rearrange(torch.cat(images), "(n f) c h w -> n f h w c", f=f).numpy()
    silent = [np.zeros(cfg.data.clip_samples, np.float32)] * n
    score = score_group("backbone alone (single images)", list(frames), silent, cfg)
    # frame statistics only: single images have no motion or sound (smooth moves between independent images
    # is what random placement gives)
    row = {**asdict(score), "sync_f1": math.nan, "av_align": math.nan, "onsets_per_clip": math.nan,
           "class_match": class_match(list(frames), classes) if y is not None else math.nan}
    print(_row(row), flush=True)
    return row


def loss_rows(run: Path, windows: int = 5) -> list[dict[str, Any]]:
    """The logged losses per modality (eps MSE and the variational bound term), each the mean over one of
    `windows` equal stretches of the run's logged steps: single logged values swing with the batch's timesteps."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for part in np.array_split(np.arange(len(rows)), min(windows, len(rows))):
        chunk = [rows[i] for i in part]
        row: dict[str, Any] = {"steps": f"{chunk[0]['step']}-{chunk[-1]['step']}"}
        for key in ("loss", "video_mse", "audio_mse", "video_vb", "audio_vb"):
            logged = [r[key] for r in chunk if r.get(key) is not None]
            row[key] = float(np.mean(logged)) if logged else None  # None: not logged in this stretch
        out.append(row)
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _row(r: dict[str, Any]) -> str:
    return f"| {r['name']} | {r['clips']} | " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, required=True, help="a folder of synthetic clips (avdit demo --data-only)")
    ap.add_argument("--run", action="append", default=[], help="run folder, or shipped / shipped-no-joint")
    ap.add_argument("--name", action="append", default=[], help="a name per --run for the table")
    ap.add_argument("-n", type=int, default=32, help="clips per row")
    ap.add_argument("--backbone", type=Path, help="also sample this image backbone alone")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-ema", action="store_true", help="the raw weights instead of their EMA")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"which parts of each run to generate, comma-separated from {','.join(PARTS)}")
    ap.add_argument("--set", action="append", default=[], metavar="sample.KEY=VALUE",
                    help="a sampling setting for every run, e.g. sample.cross_modal_guidance=3")
    args = ap.parse_args(argv)
    if any(not item.startswith("sample.") for item in args.set):
        ap.error("--set takes sampling settings only (sample.KEY=VALUE)")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or any(p not in PARTS for p in parts):
        ap.error(f"--parts takes a comma-separated list of {', '.join(PARTS)}; got {args.parts!r}")
    torch.set_num_threads(1)

    from avdit_cli.config import load_preset

    # the preset reads and scores the real clips and samples the backbone alone; a setting it cannot take
    # (cross-modal guidance needs a model trained with independent timesteps) is for the runs only
    cfg = load_preset("tiny")
    for item in args.set:
        try:
            cfg = apply_overrides(cfg, [item])
        except ConfigError as e:
            print(f"note: {item} applies to the runs only ({e})", file=sys.stderr)
    files = sorted(args.real.rglob("*.mp4"), key=lambda p: p.name)[: args.n]  # flat or in class folders
    real = read_clips(files, cfg)
    # a file in a class folder (avdit demo --data-only) has that class; one directly in --real has none
    classes = [p.parent.name if p.parent != args.real else None for p in files]
    print("| group | n | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 2))
    real_frames = [c.frames for c in real]
    real_row = {**asdict(score_group("real clips", real_frames, [c.audio for c in real], cfg)),
                "class_match": class_match(real_frames, classes)}
    print(_row(real_row), flush=True)
    rows: list[dict[str, Any]] = [real_row]
    losses = {}
    if args.backbone:
        rows.append(diagnose_backbone(args.backbone, cfg, args.n, classes))
    for i, run in enumerate(args.run):
        name = args.name[i] if i < len(args.name) else Path(run).name
        rows.extend(diagnose_run(name, run, real, args.batch_size, ema=not args.no_ema,
                                 sample_sets=tuple(args.set), classes=classes, parts=parts))
        if Path(run).is_dir() and (Path(run) / "metrics.jsonl").exists():
            losses[name] = loss_rows(Path(run))
    for name, lr in losses.items():
        print(f"\nloss per modality, {name}:")
        for r in lr:
            print("  " + ", ".join(f"{k} {v if k == 'steps' else ('n/a' if v is None else f'{v:.4f}')}"
                                   for k, v in r.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "losses": losses, "n": args.n,
                                         "torch": torch.__version__}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
