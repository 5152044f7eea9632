"""Throughput of `avdit preprocess` on synthetic data: clips per second for decoding only and for decoding +
encoding (the whole pipeline), tiny preset, on the CPU by default.

    python benchmarks/preprocess_bench.py [--clips 32] [--workers 2] [--device cpu] [--json out.json]

The data (bouncing-ball mp4s, 30 fps 64x64, 44.1 kHz, two clips per file) is made in a temp folder first
and not timed. Decoders are inline (0 workers), threads or spawned processes. "decode only" rows time a warm
pool and show its start-up apart ("pool start s"); "decode + encode" rows are the whole `preprocess` call,
start-up included, as a user sees it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from avdit_cli.config import load_preset
from avdit_cli.data.synthetic import make_dataset
from avdit_cli.pipelines.preprocess import decode_executor, decode_file, preprocess

CLIPS_PER_FILE = 2
SECONDS_PER_FILE = 3.3  # two 1.6 s clips


def bench_decode(files: list[Path], workers: int, kind: str) -> tuple[int, float, float]:
    """(clips, seconds, start seconds) for decoding and cutting every file with `workers` decoders of `kind`
    (0: inline). `seconds` excludes starting the pool, which is timed on its own (one trivial task per worker)."""
    cfg = load_preset("tiny")
    t0 = time.perf_counter()
    executor = decode_executor(workers, kind)
    try:
        for f in [executor.submit(time.sleep, 0.2) for _ in range(workers)]:
            f.result()
        t1 = time.perf_counter()
        futures = [executor.submit(decode_file, str(p), cfg.data, cfg.data.stride_seconds) for p in files]
        clips = sum(len(f.result().clips) for f in futures)
        t2 = time.perf_counter()
    finally:
        executor.shutdown(wait=True)
    return clips, t2 - t1, max(0.0, t1 - t0 - 0.2 * bool(workers))


def bench_pipeline(data: Path, cache: Path, workers: int, kind: str, device: str) -> tuple[int, float, float]:
    start = time.perf_counter()
    summary = preprocess(load_preset("tiny"), data, cache, workers=workers, device=device,
                         worker_kind="process" if kind == "inline" else kind)
    return summary.clips, time.perf_counter() - start, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips to make (two per synthetic file)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes for the pool rows")
    parser.add_argument("--device", default="cpu", help="encoding device")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="avdit-bench-") as tmp:
        data = Path(tmp) / "data"
        files = make_dataset(data, math.ceil(args.clips / CLIPS_PER_FILE), seconds=SECONDS_PER_FILE, seed=0)
        w = args.workers
        plan = [("decode only", 0, "inline"), ("decode only", w, "thread"), ("decode only", w, "process"),
                ("decode + encode", 0, "inline"), ("decode + encode", w, "thread"), ("decode + encode", w, "process")]
        rows = []
        for i, (stage, workers, kind) in enumerate(plan):
            if stage == "decode only":
                clips, seconds, start = bench_decode(files, workers, kind)
            else:
                clips, seconds, start = bench_pipeline(data, Path(tmp) / f"cache{i}", workers, kind, args.device)
            rows.append({"stage": stage, "workers": workers, "kind": kind,
                         "device": args.device if "encode" in stage else "-", "clips": clips,
                         "seconds": round(seconds, 3), "pool_start_s": None if math.isnan(start) else round(start, 3),
                         "clips_per_s": round(clips / seconds, 2)})

    header = (f"{'stage':<16} {'workers':>7} {'kind':>8} {'device':>6} {'clips':>6} {'seconds':>8} {'clips/s':>8} "
              f"{'pool start s':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        start = "incl." if r["pool_start_s"] is None else f"{r['pool_start_s']:.2f}"
        print(f"{r['stage']:<16} {r['workers']:>7} {r['kind']:>8} {r['device']:>6} {r['clips']:>6} "
              f"{r['seconds']:>8.2f} {r['clips_per_s']:>8.2f} {start:>12}")
    result = {"preset": "tiny", "cpu_count": os.cpu_count(), "rows": rows}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
