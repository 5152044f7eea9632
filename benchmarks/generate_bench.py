"""How long `avdit generate` takes, and where the time goes.

CPU (default): the tiny preset with random weights (a tiny DiT saved in the diffusers layout + a checkpoint in
the layout finetune writes, in a temp folder), through the real ``generate`` pipeline: seconds per clip for each
sampler and step count, split into the denoiser (sampling loop) and decode + mp4 writing.

    python benchmarks/generate_bench.py [--samplers ddpm ddim dpm++] [--steps 10 25] [--num 4] [--json out.json]

GPU (``--gpu``): the denoiser alone for a paper-size preset (``aist``: DiT-XL/2 backbone, 16 frames of 32x32x4
latents + 8x40x16 audio latents), with RANDOM weights (no download; the cost of a forward pass does not depend
on the values), bf16 autocast as generate uses it, batch 8: milliseconds per denoiser call and per clip. Codecs
are not timed in this mode (they need the downloaded VAEs); a sampler adds a few element-wise ops per step.

    python benchmarks/generate_bench.py --gpu [--preset aist] [--batch-size 8] [--calls 20] [--json out.json]

Video-first stages (``--stages``, CPU): one denoiser call of each stage of ``--order video-first`` on the tiny
preset (random weights, the joint block after the last block): the frames' stage (a full call, and with one
timestep per frame as staggered sampling calls it); the sound stage without and with the video stream kept
between calls (``VideoStreamCache``), then kept with the sound alone computed (``audio_only``: what generate
runs); and that with ``--cross-modal-guidance`` (one doubled batch, both halves' frames fixed, so both kept).

    python benchmarks/generate_bench.py --stages [--batch-size 4] [--calls 20] [--json out.json]

``gpu_suite.py`` measures the same denoiser (and the whole ``avdit generate`` with random SD-VAE, AudioLDM VAE
and HiFi-GAN written in their real layouts) in one run with every other GPU figure.

Numbers from a shared machine move with its load: the table says how many threads ran, and each cell is the
best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import benchlib as bl  # beside this script: shared with the other benchmarks and gpu_suite.py
from avdit_cli.config import Sampler, load_preset


# ----------------------------------------------------------------------------------------------------------
# CPU: the whole pipeline on the tiny preset
# ----------------------------------------------------------------------------------------------------------
def bench_cpu(samplers: list[str], steps_list: list[int], num: int, batch_size: int, repeats: int) -> dict[str, Any]:
    from avdit_cli.pipelines.generate import GenerateOptions, generate

    cfg = load_preset("tiny")
    rows = []
    with tempfile.TemporaryDirectory(prefix="avdit-genbench-") as tmp:
        root = Path(tmp)
        run = bl.make_random_run(root, cfg)  # a tiny DiT in the diffusers layout + random adapters

        def once(sampler: str, steps: int, n: int) -> Any:
            return generate(GenerateOptions(out_dir=root / "out", num=n, checkpoint=run, sampler=Sampler(sampler),
                                            steps=steps, batch_size=batch_size, device="cpu", overwrite=True,
                                            contact_sheet=False))

        once("ddim", 1, 1)  # warm-up: first calls pay for kernel selection and lazy imports
        for sampler in samplers:
            for steps in steps_list:
                best = min((once(sampler, steps, num) for _ in range(repeats)), key=lambda r: r.seconds)
                calls = steps * -(-num // batch_size)  # denoiser calls: steps per batch
                work = best.denoise_seconds + best.decode_seconds
                rows.append({
                    "sampler": sampler, "steps": steps, "clips": num, "batch_size": batch_size,
                    "seconds_per_clip": best.seconds / num,
                    "denoise_seconds_per_clip": best.denoise_seconds / num,
                    "decode_write_seconds_per_clip": best.decode_seconds / num,
                    "denoise_share": best.denoise_seconds / work,
                    "ms_per_denoiser_call": 1000 * best.denoise_seconds / calls,
                })
    return {"mode": "cpu", "preset": "tiny", "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "rows": rows}


def cpu_table(result: dict[str, Any]) -> str:
    head = (f"tiny preset, CPU, {result['threads']} thread(s), random weights, {result['rows'][0]['clips']} clips, "
            f"batch {result['rows'][0]['batch_size']} (best of repeats)\n\n")
    lines = ["| sampler | steps | s / clip | denoise s / clip | decode+write s / clip | denoise share | "
             "ms / denoiser call (batch) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['seconds_per_clip']:.2f} | "
                     f"{r['denoise_seconds_per_clip']:.2f} | {r['decode_write_seconds_per_clip']:.2f} | "
                     f"{100 * r['denoise_share']:.0f}% | {r['ms_per_denoiser_call']:.0f} |")
    return head + "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# GPU: the denoiser of a paper-size preset
# ----------------------------------------------------------------------------------------------------------
def bench_gpu(preset: str, batch_size: int, calls: int, warmup: int) -> dict[str, Any]:
    """The paper-size denoiser alone (gpu_suite.py's `denoiser` section measures the same and more)."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device is visible")
    dev = torch.device("cuda")
    cfg = load_preset(preset)
    model = bl.build_avdit(cfg, dev, nontrivial=False).eval()
    x = bl.av_inputs(cfg, batch_size, dev)

    def call() -> None:
        with torch.no_grad(), bl.amp(dev):
            model(x["video"], x["audio"], x["t"], x["t"], None)

    bl.reset_peak(dev)
    s = bl.stats(bl.time_ms(call, dev, warmup, calls))
    n_params = sum(p.numel() for p in model.parameters())
    return {"mode": "gpu", "preset": preset, "device": torch.cuda.get_device_name(dev), "batch_size": batch_size,
            "precision": "bf16 autocast", "weights": "random", "calls": calls,
            "ms_per_call_median": s["median_ms"], "ms_per_call_min": s["min_ms"],
            "ms_per_call_per_clip": s["median_ms"] / batch_size, "peak_memory_gib": bl.peak_gib(dev),
            "params": n_params, "torch": torch.__version__}


def bench_stages(batch_size: int, calls: int, warmup: int) -> dict[str, Any]:
    from avdit_cli.models import VideoStreamCache

    cfg = load_preset("tiny", ["diffusion.independent_timesteps=true"])
    dev = torch.device("cpu")
    model = bl.build_avdit(cfg, dev).eval()
    x = bl.av_inputs(cfg, batch_size, dev)
    zero, last = torch.zeros_like(x["t"]), torch.full_like(x["t"], cfg.diffusion.num_timesteps - 1)
    noise = torch.randn_like(x["video"])
    cache = VideoStreamCache()
    sound_cache, cache2 = VideoStreamCache(audio_only=True), VideoStreamCache(audio_only=True)
    f = x["video"].shape[1]
    staggered_t = torch.linspace(0, cfg.diffusion.num_timesteps - 1, f).round().long().expand(batch_size, f)

    def frames_stage() -> None:  # the frames at t, the sound unseen (noise at T - 1)
        model(x["video"], x["audio"], x["t"], last)

    def frames_staggered() -> None:  # one t per frame (sample.frame_stagger)
        model(x["video"], x["audio"], staggered_t, last)

    def sound_stage(keep: VideoStreamCache | None) -> Callable[[], None]:  # the frames clean at t = 0, the sound at t
        return lambda: model(x["video"], x["audio"], zero, x["t"], video_cache=keep)

    def guided() -> None:  # the doubled batch: the frames given, then "not known"
        model(torch.cat([x["video"], noise]), torch.cat([x["audio"], x["audio"]]), torch.cat([zero, last]),
              torch.cat([x["t"], x["t"]]), video_cache=cache2)

    rows = []
    with torch.no_grad():
        for name, fn in (("frames' stage (full call)", frames_stage),
                         ("frames' stage, one t per frame", frames_staggered),
                         ("sound stage", sound_stage(None)),
                         ("sound stage, video stream kept", sound_stage(cache)),
                         ("sound stage, kept, sound only (what generate runs)", sound_stage(sound_cache)),
                         ("sound stage, kept, sound only, cross-modal guidance", guided)):
            s = bl.stats(bl.time_ms(fn, dev, warmup, calls))
            rows.append({"call": name, "ms_median": s["median_ms"], "ms_min": s["min_ms"]})
    for r in rows:
        r["vs_full"] = r["ms_median"] / rows[0]["ms_median"]
    return {"mode": "stages", "preset": "tiny", "batch_size": batch_size, "threads": torch.get_num_threads(),
            "calls": calls, "torch": torch.__version__, "rows": rows}


def stages_table(r: dict[str, Any]) -> str:
    lines = [f"tiny preset, CPU, {r['threads']} thread(s), random weights, batch {r['batch_size']}, "
             f"{r['calls']} calls each\n", "| denoiser call | ms (median) | ms (min) | vs the full call |",
             "|---|---:|---:|---:|"]
    lines += [f"| {x['call']} | {x['ms_median']:.1f} | {x['ms_min']:.1f} | {x['vs_full']:.2f} |" for x in r["rows"]]
    return "\n".join(lines)


def gpu_table(r: dict[str, Any]) -> str:
    return (f"{r['preset']} denoiser, {r['device']}, {r['precision']}, random weights, batch {r['batch_size']}\n\n"
            "| ms / call (median) | ms / call (min) | ms / call / clip | peak GiB |\n|---:|---:|---:|---:|\n"
            f"| {r['ms_per_call_median']:.1f} | {r['ms_per_call_min']:.1f} | {r['ms_per_call_per_clip']:.2f} | "
            f"{r['peak_memory_gib']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="time the paper-size denoiser on a GPU instead")
    ap.add_argument("--stages", action="store_true", help="time one denoiser call per video-first stage (CPU)")
    ap.add_argument("--samplers", nargs="+", default=[s.value for s in Sampler], choices=[s.value for s in Sampler])
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 25])
    ap.add_argument("--num", type=int, default=4, help="clips per CPU measurement")
    ap.add_argument("--batch-size", type=int, default=None, help="[default: 4 on CPU, 8 with --gpu]")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    ap.add_argument("--preset", default="aist")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu:
        result = bench_gpu(args.preset, args.batch_size or 8, args.calls, args.warmup)
        table = gpu_table(result)
    elif args.stages:
        result = bench_stages(args.batch_size or 4, args.calls, args.warmup)
        table = stages_table(result)
    else:
        t0 = time.perf_counter()
        result = bench_cpu(args.samplers, args.steps, args.num, args.batch_size or 4, args.repeats)
        result["bench_seconds"] = time.perf_counter() - t0
        table = cpu_table(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    else:
        json.dump(result, sys.stdout, indent=2)
        print()


if __name__ == "__main__":
    main()
