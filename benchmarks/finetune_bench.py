"""Training speed and peak memory of `avdit finetune`.

    python benchmarks/finetune_bench.py [--steps 8] [--warmup 2] [--json out.json]        # CPU, tiny preset
    python benchmarks/finetune_bench.py --gpu [--steps 10] [--compile] [--json out.json]  # GPU, aist setting

CPU mode: the real loop (`finetune()`, data loading and the EMA included, checkpoint writes excluded) on a
synthetic latent cache made first with the tiny preset (untimed), one fresh subprocess per row so each row's
peak resident memory is its own. Rows: finetune with 1 and 2 threads, gradient checkpointing off/on, and the
pretrain mode. Time is measured from the end of the warm-up steps to the end of the last step.

GPU mode: the `aist` configuration (DiT-XL/2 sized backbone with random weights — no weights are downloaded,
the speed does not depend on them — 16 frames of 32x32x4 latents + 8x40x16 audio latents) and random latents
on the GPU instead of a cache: the step the loop runs (per-sample noise/timesteps, forward, hybrid loss,
backward, clipping, AdamW, EMA) under bf16 autocast, batch 4 and 8, gradient checkpointing off/on.
Reports clips/s and peak allocated GiB (torch.cuda.max_memory_allocated); a row that runs out of memory
says so. The step itself is ``benchlib.train_step_row``, which ``gpu_suite.py`` (every GPU figure in one run)
uses too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


# ----------------------------------------------------------------------------------------------------------
# CPU: the real loop on the tiny preset
# ----------------------------------------------------------------------------------------------------------
def make_cache(root: Path) -> tuple[Path, Path]:
    """Synthetic clips -> tiny latent cache -> a backbone made by a few pretrain steps (all untimed)."""
    from avdit_cli.config import load_preset
    from avdit_cli.data.synthetic import make_dataset
    from avdit_cli.pipelines.finetune import finetune
    from avdit_cli.pipelines.preprocess import preprocess

    make_dataset(root / "data", 12, seconds=4.0)  # 24 clips of 1.6 s
    cfg = load_preset("tiny")
    preprocess(cfg, root / "data", root / "cache", workers=0)
    pre = load_preset("tiny", ["train.mode=pretrain", "train.steps=5"])
    finetune(pre, cache_dir=root / "cache", run_dir=root / "runs" / "backbone", tensorboard=False)
    return root / "cache", root / "runs" / "backbone" / "backbone"


def cpu_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row, in this (fresh) process: time steps warmup+1 .. warmup+steps of the real loop."""
    from avdit_cli.config import load_preset
    from avdit_cli.pipelines.finetune import StepInfo, finetune

    torch.set_num_threads(spec["threads"])
    total = spec["warmup"] + spec["steps"]
    overrides = [f"train.steps={total}", "train.log_every=1", f"train.checkpoint_every={total + 1}",
                 f"model.grad_checkpointing={str(spec['ckpt']).lower()}", f"model.backbone_path={spec['backbone']}"]
    if spec["mode"] == "pretrain":
        overrides.append("train.mode=pretrain")
    cfg = load_preset("tiny", overrides)
    marks: dict[int, float] = {}

    def on_step(info: StepInfo) -> None:
        marks[info.step] = time.perf_counter()

    run_dir = Path(spec["runs"]) / spec["name"]
    finetune(cfg, cache_dir=Path(spec["cache"]), run_dir=run_dir, on_step=on_step, tensorboard=False)
    seconds = marks[total] - marks[spec["warmup"]]
    return {**{k: spec[k] for k in ("name", "mode", "threads", "ckpt")},
            "batch": cfg.train.batch_size, "frames": cfg.data.num_frames,
            "steps_per_s": spec["steps"] / seconds, "clips_per_s": spec["steps"] * cfg.train.batch_size / seconds,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_kind": "peak RSS"}


def run_cpu(steps: int, warmup: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, backbone = make_cache(Path(tmp))
        specs = [("finetune", 1, False), ("finetune", 2, False), ("finetune", 1, True), ("pretrain", 1, False)]
        for mode, threads, ckpt in specs:
            spec = {"name": f"{mode}-t{threads}-{'ckpt' if ckpt else 'plain'}", "mode": mode, "threads": threads,
                    "ckpt": ckpt, "steps": steps, "warmup": warmup, "cache": str(cache), "backbone": str(backbone),
                    "runs": str(Path(tmp) / "runs")}
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  {rows[-1]['name']}: {rows[-1]['steps_per_s']:.3f} steps/s", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------------------------------------
# GPU: the aist setting with a random backbone, bf16
# ----------------------------------------------------------------------------------------------------------
def run_gpu(steps: int, warmup: int, compile_: bool) -> list[dict[str, Any]]:
    """The aist rows (gpu_suite.py's `train_step` section runs the same rows with profiles)."""
    import benchlib as bl  # beside this script

    from avdit_cli.config import load_preset

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_preset("aist", ["train.precision=bf16"])
    dev = torch.device("cuda")
    return [bl.train_step_row(cfg, dev, b, ckpt, steps, warmup, compile_) for b in (4, 8) for ckpt in (False, True)]


# ----------------------------------------------------------------------------------------------------------
def print_table(rows: list[dict[str, Any]], device: str) -> None:
    print(f"\nfinetune speed ({device}, torch {torch.__version__})")
    print(f"{'row':<24} {'batch':>5} {'steps/s':>9} {'clips/s':>9} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['name']:<24} {r['batch']:>5} {r['steps_per_s']:>9.3f} {r['clips_per_s']:>9.2f} "
              f"{r['peak_gib']:>9.2f} {r.get('note', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the aist setting on a GPU, bf16, batch 4 and 8")
    parser.add_argument("--steps", type=int, default=None, help="timed steps [CPU 8, GPU 10]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--compile", action="store_true", help="GPU: torch.compile the model")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one CPU row, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(cpu_row(json.loads(args.one))))
        return
    if args.gpu:
        rows, device = run_gpu(args.steps or 10, args.warmup, args.compile), torch.cuda.get_device_name()
    else:
        rows, device = run_cpu(args.steps or 8, args.warmup), f"CPU, {os.cpu_count()} cores"
    print_table(rows, device)
    result = {"device": device, "torch": torch.__version__, "rows": rows}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
