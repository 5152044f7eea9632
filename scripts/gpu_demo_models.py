"""Train demo-model candidates on one GPU inside a fixed wall-clock budget (a device lease), with avdit's own
`finetune` command only, and pack what came out for evaluation on the CPU.

Several small runs share the GPU side by side. Each run gets an absolute deadline and is stopped by SIGTERM, on
which `avdit finetune` finishes its step, saves a checkpoint and exits 130. With a constant learning rate (after
warmup) a run stopped at step N trained exactly as `--set train.steps=N` would, so the packed checkpoints are
reproducible with a plain step count; the joint and no-joint twins of a stream are packed at the same step
(same recipe, same budget). The EMA uses its warmup (train.ema_warmup): a plain EMA at 0.9995 was still 37 %
the initial weights after the 2000 steps a lease allows (benchmarks/RESULTS.md, demo round 6).

Streams:
  A<seed>: adapters over a frozen backbone (default: the shipped avdit_cli/assets/tiny-dit), joint block on (j)
           and off (n); over a class-conditional backbone (the shipped one is) each clip's class goes to its
           class table as in the shipped recipe, so the cache must be labelled (data.class_folders=true);
  B:       a new image backbone pretrained on frames only (pretrain mode) until --pretrain-seconds, then
           adapters over it, joint on and off, until the end (--pretrain-seconds 0: no stream B).

Measured on one H200 (2026-11-29): the tiny preset trained at 1650-2360 clips/s in all, as six runs of batch 64
or two of batch 512, with the GPU reported 100 % busy (about 0.5 ms of GPU time per clip): more runs side by
side do not add throughput.

Usage (repository root):  python3 scripts/gpu_demo_models.py --cache CACHE --out OUT [--seconds 400]
Output: OUT/<stream>.tar (config, metrics, logs, checkpoints at the common step and at 1/4 and 1/2 of it,
rounded down to the checkpoint grid; the new backbone for B), OUT/logs.tar and OUT/summary.json (steps reached,
clips/s, exit codes). A run that fails in the first 90 s stops all of them (a setup error: fix and rerun); what
the runs saved is packed whatever happened, and a run that does not stop within 60 s of its SIGTERM is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, avdit installed or not (as on a lent GPU machine)
from avdit_cli.pipelines.runs import checkpoint_steps, read_metrics  # noqa: E402

SHIPPED = ROOT / "avdit_cli" / "assets" / "tiny-dit"

# The shipped models' recipe (scripts/make_demo_models.sh, step 3) with a GPU's batch and a constant lr, so a
# deadline-stopped run equals a fixed-step one.
ADAPTER_RECIPE = [
    "-p", "tiny", "--no-tensorboard",
    "--set", "model.lora_rank=8", "--set", "model.joint_lora_rank=8",
    "--set", "diffusion.min_snr_gamma=5", "--set", "diffusion.independent_timesteps=true",
    "--set", "diffusion.given_video_prob=0.5",
    "--set", "model.joint_cross_only=true", "--set", "model.joint_time_bias_learned=false",
    "--set", "train.steps=10000000", "--set", "train.batch_size=64", "--set", "train.lr=1e-3",
    "--set", "train.lr_schedule=constant", "--set", "train.warmup_steps=200", "--set", "train.ema_decay=0.9995",
    "--set", "train.ema_warmup=true",
    "--set", "train.checkpoint_every=1000", "--set", "train.keep=100000", "--set", "train.log_every=100",
    "--set", "sample.clip_denoised=true",
]
PRETRAIN_RECIPE = [
    "-p", "tiny", "--pretrain", "--no-tensorboard",
    "--set", "train.steps=10000000", "--set", "train.batch_size=128", "--set", "train.lr=1e-3",
    "--set", "train.lr_schedule=constant", "--set", "train.warmup_steps=500", "--set", "train.ema_decay=0.9995",
    "--set", "train.ema_warmup=true", "--set", "train.checkpoint_every=1000", "--set", "train.keep=3",
    "--set", "train.log_every=100",
]


GRACE_S = 60  # after SIGTERM, how long a run may take to save before it is killed
EARLY_S = 90  # a run failing this soon after the start is a setup error: stop all runs, so the lease can rerun


class Job:
    def __init__(self, name: str, args: list[str], deadline: float, runs: Path, logs: Path) -> None:
        self.name, self.deadline, self.run_dir = name, deadline, runs / name
        self.log = logs / f"{name}.log"
        self.started = time.time()
        cmd = [sys.executable, "-m", "avdit_cli", "finetune", *args, "--name", name]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        self.termed = False
        self.ended: float | None = None

    def stop(self) -> None:
        """SIGTERM: finetune finishes its step, saves a checkpoint and exits 130."""
        if self.proc.poll() is None and not self.termed:
            self.proc.send_signal(signal.SIGTERM)
            self.termed = True
            self.deadline = min(self.deadline, time.time())

    def poll(self, now: float) -> int | None:
        code = self.proc.poll()
        if code is None and not self.termed and now >= self.deadline:
            self.stop()
        elif code is None and self.termed and now >= self.deadline + GRACE_S:
            self.proc.kill()  # it did not stop within the grace period: the lease matters more than its step
        if code is not None and self.ended is None:
            self.ended = now
        return code

    def failed(self) -> bool:
        """Ended on its own before its deadline, other than by finishing its train.steps (exit 0)."""
        code = self.proc.poll()
        return code is not None and code != 0 and not self.termed

    def last_row(self) -> dict:
        rows = read_metrics(self.run_dir)
        return rows[-1] if rows else {}

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def gpu_load() -> str:
    """nvidia-smi's utilisation and memory in one line (how busy the side-by-side runs keep the GPU)."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def steps_saved(run_dir: Path) -> list[int]:
    """The steps of a run's complete checkpoints, in order."""
    return sorted(checkpoint_steps(run_dir))


def pack(out: Path, stream: str, jobs: list[Job], extra: list[Path], summary: dict, every: int) -> None:
    """OUT/<stream>.tar: each job's config, metrics and log, its checkpoints at the common step of the stream's
    jobs (the largest multiple of checkpoint_every all reached) and at 1/4 and 1/2 of it, plus `extra` paths."""
    common = None
    for job in jobs:
        saved = {s for s in steps_saved(job.run_dir) if s % every == 0}
        common = saved if common is None else common & saved
    top = max(common) if common else 0
    picks = sorted({s for s in (top, top // 4 // every * every, top // 2 // every * every) if s > 0})
    summary.setdefault("packed", {})[stream] = picks
    with tarfile.open(out / f"{stream}.tar", "w") as tar:
        for job in jobs:
            base = job.run_dir
            for name in ("config.yaml", "metrics.jsonl"):
                if (base / name).exists():
                    tar.add(base / name, arcname=f"{job.name}/{name}")
            if job.log.exists():
                tar.add(job.log, arcname=f"{job.name}/train.log")
            for s in picks:
                ckpt = base / "checkpoints" / f"step_{s:08d}"
                if ckpt.exists():
                    tar.add(ckpt, arcname=f"{job.name}/checkpoints/{ckpt.name}")
        for path in extra:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(path.parents[1])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/avdit_gpu"))
    ap.add_argument("--seconds", type=float, default=400, help="wall-clock budget from start to the last SIGTERM")
    ap.add_argument("--pretrain-seconds", type=float, default=170, help="0: no stream B")
    ap.add_argument("--batch", type=int, default=64, help="adapter runs' train.batch_size")
    ap.add_argument("--ema", type=float, default=0.9995, help="adapter runs' train.ema_decay")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of stream A")
    ap.add_argument("--every", type=int, default=1000, help="checkpoint every N steps (the packed steps' grid)")
    ap.add_argument("--backbone", type=Path, default=SHIPPED, help="stream A's frozen backbone")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="also for every run")
    ap.add_argument("--check-after", type=float, default=45, help="warn when a run has logged nothing by then")
    args = ap.parse_args()

    t0 = time.time()
    end = t0 + args.seconds
    runs, logs = args.work / "runs", args.work / "logs"
    shutil.rmtree(args.work, ignore_errors=True)
    runs.mkdir(parents=True)
    logs.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["AVDIT_RUNS"] = str(runs)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    common = ["--cache", str(args.cache.resolve()), "--device", args.device,
              "--set", f"train.checkpoint_every={args.every}", *[a for kv in args.set for a in ("--set", kv)]]
    adapter = [*ADAPTER_RECIPE, "--set", f"train.batch_size={args.batch}", "--set", f"train.ema_decay={args.ema}"]

    jobs: dict[str, Job] = {}
    summary: dict = {"seconds": args.seconds, "pretrain_seconds": args.pretrain_seconds, "jobs": {}}
    code = 0
    try:
        code = supervise(args, jobs, adapter, common, runs, logs, t0, end)
    finally:  # whatever happened, the lease's results come back
        for job in jobs.values():
            job.stop()
        while any(job.poll(time.time()) is None for job in jobs.values()):
            time.sleep(0.5)
        finish(args, jobs, runs, logs, summary, t0)
    return code


def class_sets(backbone: Path, user_sets: list[str]) -> list[str]:
    """The `--set` arguments that give stream A's runs each clip's class, as the shipped recipe does
    (scripts/make_demo_models.sh step 3), when the backbone is class-conditional: its folder has the
    `class_names.json` that `finetune --pretrain` writes beside a class table. Empty for an unconditional
    backbone, and leaves out any key the user set. The cache must then be labelled (preprocess with
    data.class_folders=true)."""
    names = backbone / "class_names.json"
    if not names.is_file():
        return []
    wanted = {"data.class_folders": "true", "model.class_conditional": "true",
              "model.num_classes": str(len(json.loads(names.read_text())))}
    given = {kv.split("=", 1)[0] for kv in user_sets}
    return [a for key, value in wanted.items() if key not in given for a in ("--set", f"{key}={value}")]


def supervise(args: argparse.Namespace, jobs: dict[str, Job], adapter: list[str], common: list[str], runs: Path,
              logs: Path, t0: float, end: float) -> int:
    """Start the runs, stop each at its deadline, start stream B once its backbone exists; 1 on an early failure."""
    for seed in args.seeds:
        for tag, joint in (("j", "true"), ("n", "false")):
            name = f"A{seed}{tag}"
            jobs[name] = Job(name, [*adapter, *common, "--set", f"model.backbone_path={args.backbone.resolve()}",
                                    *class_sets(args.backbone, args.set),
                                    "--set", f"model.joint={joint}", "--set", f"train.seed={seed}"], end, runs, logs)
    with_b = args.pretrain_seconds > 0
    if with_b:
        jobs["Bpre"] = Job("Bpre", [*PRETRAIN_RECIPE, *common, "--set", "train.seed=0"],
                           t0 + args.pretrain_seconds, runs, logs)
    b_pending = with_b
    last_print = 0.0
    checked = False
    failed: set[str] = set()
    while True:
        now = time.time()
        for job in jobs.values():
            job.poll(now)
        for name in [n for n, j in jobs.items() if j.failed() and n not in failed]:
            failed.add(name)
            print(f"== {name} exited {jobs[name].proc.returncode} before its deadline; its log ends:\n"
                  f"{jobs[name].tail()}", flush=True)
            if now - t0 < EARLY_S:  # a setup error: the other runs would fail alike; stop them, rerun at once
                return 1
        if not checked and now - t0 > args.check_after:
            checked = True
            quiet = [n for n, j in jobs.items() if j.proc.poll() is None and not j.last_row()]
            if quiet:
                print(f"== warning: no metrics yet from {quiet} after {args.check_after:.0f} s", flush=True)
        if b_pending and jobs["Bpre"].proc.poll() is not None:
            b_pending = False
            backbone = runs / "Bpre" / "backbone"
            print(f"== {now - t0:.0f} s: Bpre ended ({jobs['Bpre'].proc.returncode}) at step "
                  f"{jobs['Bpre'].last_row().get('step')}", flush=True)
            if not (backbone / "config.json").exists():
                print(f"== no backbone at {backbone}: stream B skipped", flush=True)
            else:
                for tag, joint in (("j", "true"), ("n", "false")):
                    jobs[f"B{tag}"] = Job(f"B{tag}", [*adapter, *common, "--set", f"model.backbone_path={backbone}",
                                                      "--set", f"model.joint={joint}", "--set", "train.seed=0"],
                                          end, runs, logs)
        if now - last_print > 30:
            last_print = now
            row = {n: (r.get("step"), r.get("clips_per_s")) for n, r in ((n, j.last_row()) for n, j in jobs.items())}
            print(f"== {now - t0:.0f} s: (step, clips/s) {row}; GPU {gpu_load()}", flush=True)
        if not b_pending and all(job.proc.poll() is not None for job in jobs.values()):
            return 0
        time.sleep(1)


def finish(args: argparse.Namespace, jobs: dict[str, Job], runs: Path, logs: Path, summary: dict, t0: float) -> None:
    """OUT/summary.json, OUT/logs.tar and a tar per stream of what the runs saved."""
    for name, job in jobs.items():
        rows = read_metrics(job.run_dir)
        rates = [r["clips_per_s"] for r in rows[1:]]
        summary["jobs"][name] = {"exit": job.proc.returncode, "seconds": round((job.ended or time.time()) - job.started),
                                 "last_step": rows[-1]["step"] if rows else 0,
                                 "median_clips_per_s": sorted(rates)[len(rates) // 2] if rates else None,
                                 "final_loss": rows[-1]["loss"] if rows else None,
                                 "checkpoints": steps_saved(job.run_dir)[-3:]}
    for seed in args.seeds:
        pack(args.out, f"A{seed}", [j for n, j in jobs.items() if n in (f"A{seed}j", f"A{seed}n")], [], summary,
             args.every)
    if "Bpre" in jobs:
        pack(args.out, "B", [jobs[n] for n in ("Bj", "Bn") if n in jobs],
             [runs / "Bpre" / "backbone", runs / "Bpre" / "metrics.jsonl", runs / "Bpre" / "config.yaml"], summary,
             args.every)
    with tarfile.open(args.out / "logs.tar", "w") as tar:
        tar.add(logs, arcname="logs")
    summary["failed"] = sorted(n for n, j in jobs.items() if j.failed())
    summary["wall_seconds"] = round(time.time() - t0)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
