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
from typing import Any

import torch

from avdit_cli.config import Config, Sampler, load_preset


# ----------------------------------------------------------------------------------------------------------
# CPU: the whole pipeline on the tiny preset
# ----------------------------------------------------------------------------------------------------------
def make_random_run(root: Path, cfg: Config, seed: int = 0) -> Path:
    """A run folder with a random tiny backbone and random adapters, as finetune would write it."""
    from avdit_cli.models import AVDiT, DiT
    from avdit_cli.pipelines.runs import save_checkpoint

    g = torch.Generator().manual_seed(seed)
    _, c, h, _ = cfg.data.video_latent_shape
    dit = DiT.from_config(cfg.model, input_size=h, in_channels=c, generator=g)
    folder = dit.save_pretrained(root / "backbone")
    backbone, report = DiT.from_pretrained(folder, output_loading_info=True)
    model = AVDiT.from_config(cfg, backbone=backbone, generator=g)
    with torch.no_grad():
        for _, p in model.adapter_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    sd = model.adapter_state_dict()
    state = {"config": cfg.to_dict(), "mode": "finetune", "backbone": {"path": str(folder), "sha256": report.sha256()},
             "optimizer": {"param_groups": []}}
    save_checkpoint(root / "run", 1, sd, {k: v.clone() for k, v in sd.items()}, {}, state, keep=1)
    return root / "run"


def bench_cpu(samplers: list[str], steps_list: list[int], num: int, batch_size: int, repeats: int) -> dict[str, Any]:
    from avdit_cli.pipelines.generate import GenerateOptions, generate

    cfg = load_preset("tiny")
    rows = []
    with tempfile.TemporaryDirectory(prefix="avdit-genbench-") as tmp:
        root = Path(tmp)
        run = make_random_run(root, cfg)

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
    from avdit_cli.models import AVDiT

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device is visible")
    dev = torch.device("cuda")
    cfg = load_preset(preset)
    torch.manual_seed(0)
    with dev:  # build on the GPU directly: DiT-XL's random init on a CPU takes a while
        model = AVDiT.from_config(cfg).to(dev).eval()  # .to: buffers made on the CPU on purpose
    b = batch_size
    video = torch.randn(b, *cfg.data.video_latent_shape, device=dev)
    audio = torch.randn(b, *cfg.data.audio_latent_shape, device=dev)
    t = torch.randint(0, cfg.diffusion.num_timesteps, (b,), device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16)

    def call() -> None:
        with torch.no_grad(), amp:
            model(video, audio, t, t, None)

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(calls):
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    median = times[len(times) // 2]
    n_params = sum(p.numel() for p in model.parameters())
    return {"mode": "gpu", "preset": preset, "device": torch.cuda.get_device_name(dev), "batch_size": b,
            "precision": "bf16 autocast", "weights": "random", "calls": calls,
            "ms_per_call_median": median, "ms_per_call_min": times[0], "ms_per_call_per_clip": median / b,
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30, "params": n_params,
            "torch": torch.__version__}


def gpu_table(r: dict[str, Any]) -> str:
    return (f"{r['preset']} denoiser, {r['device']}, {r['precision']}, random weights, batch {r['batch_size']}\n\n"
            "| ms / call (median) | ms / call (min) | ms / call / clip | peak GiB |\n|---:|---:|---:|---:|\n"
            f"| {r['ms_per_call_median']:.1f} | {r['ms_per_call_min']:.1f} | {r['ms_per_call_per_clip']:.2f} | "
            f"{r['peak_memory_gib']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="time the paper-size denoiser on a GPU instead")
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
