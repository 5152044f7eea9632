"""Paired before/after timing of preprocess's decoding (probe + read + cut, as one inline worker does) for two
avdit source trees, on a noisy shared machine.

    git worktree add /tmp/avdit-before <commit>      # or: git archive <commit> | tar -x -C /tmp/avdit-before
    python benchmarks/preprocess_ab.py /tmp/avdit-before . [--rounds 12] [--json out.json]

One warm Python process per tree decodes the same synthetic files (the data of preprocess_bench.py: 16 files,
30 fps 64x64, 44.1 kHz stereo, two clips each) on request; passes alternate A B B A / B A A B, so both trees
see the same machine load, and each round gives a ratio. Reported: median wall seconds and CPU seconds
(ffmpeg children included) per pass, and the median of the per-round ratios (after / before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import avdit_cli
from avdit_cli.config import load_preset
from avdit_cli.data.clips import load_clips
if not avdit_cli.__file__.startswith(sys.argv[1]):
    sys.exit(f"imported {avdit_cli.__file__}, not the tree {sys.argv[1]}")
cfg = load_preset("tiny").data
files = sorted(Path(sys.argv[2]).glob("*.mp4"))
print("ready", flush=True)
for _ in sys.stdin:
    t = time.perf_counter()
    c0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    n = sum(len(load_clips(p, cfg)) for p in files)
    c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    cpu = sum(b - a for a, b in ((c0.ru_utime, c1.ru_utime), (c0.ru_stime, c1.ru_stime),
                                  (s0.ru_utime, s1.ru_utime), (s0.ru_stime, s1.ru_stime)))
    print(time.perf_counter() - t, cpu, n, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="source tree of the version before (holds avdit_cli/)")
    parser.add_argument("after", type=Path, help="source tree of the version after")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from avdit_cli.data.synthetic import make_dataset

    with tempfile.TemporaryDirectory(prefix="avdit-ab-") as tmp:
        make_dataset(Path(tmp) / "data", 16, seconds=3.3, seed=0)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("PYTHONPATH", None)
        workers = {name: subprocess.Popen([sys.executable, "-c", WORKER, str(tree.resolve()), str(Path(tmp) / "data")],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                   for name, tree in (("before", args.before), ("after", args.after))}
        for proc in workers.values():
            if proc.stdout.readline().strip() != "ready":
                sys.exit("a worker did not start; see its error above")

        def one_pass(name: str) -> tuple[float, float]:
            workers[name].stdin.write("go\n")
            workers[name].stdin.flush()
            wall, cpu, _ = workers[name].stdout.readline().split()
            return float(wall), float(cpu)

        for name in workers:  # warm-up: imports, page cache
            one_pass(name)
        wall: dict[str, list[float]] = {"before": [], "after": []}
        cpu: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            order = ("before", "after", "after", "before") if r % 2 == 0 else ("after", "before", "before", "after")
            got: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for name in order:
                got[name].append(one_pass(name))
            for name, passes in got.items():
                wall[name].append(statistics.mean(p[0] for p in passes))
                cpu[name].append(statistics.mean(p[1] for p in passes))
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()

    result = {"rounds": args.rounds, "files": 16, "cpu_count": os.cpu_count(),
              "wall_s": {k: statistics.median(v) for k, v in wall.items()},
              "cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
              "wall_ratio": statistics.median(a / b for a, b in zip(wall["after"], wall["before"])),
              "cpu_ratio": statistics.median(a / b for a, b in zip(cpu["after"], cpu["before"]))}
    print(f"{'':8} {'wall s/pass':>12} {'cpu s/pass':>11}")
    for name in ("before", "after"):
        print(f"{name:8} {result['wall_s'][name]:12.3f} {result['cpu_s'][name]:11.3f}")
    print(f"{'ratio':8} {result['wall_ratio']:12.3f} {result['cpu_ratio']:11.3f}  (median of per-round after / before)")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
