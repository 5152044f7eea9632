"""How much sync can the frames of a demo run hold? Event counts of the seen and heard impacts, and the best
sync F1 that a physically faithful sound could reach on the frames.

The sync score (``avdit_cli.data.sync``) takes every peak of a ball's height as a floor impact. In the data
that is true: a rigid ball's height peaks only when it meets the floor. Generated balls also jitter in
mid-air, and each jitter that rises past ``min_rise`` is a peak that no sound made by the data's rule (a hit
when a ball meets the floor) can match. So for each group of clips this reports:

- **impacts/clip**: the seen impacts, every height peak (what the sync score counts);
- **low share**: the share of those peaks whose ball centre lies in the lowest part of the frame
  (``--lowest``, default 0.6 frame heights from the top). Every impact of the data lies there, with room to
  spare: of 613 peaks in 200 of the demo's training files the highest was at 0.67 (1 % above 0.68), the floor
  line being at 0.92 and a ball's centre a frame before it lands up to 0.2 above it;
- **ceiling**: the mean sync F1 of an ideal sound with an onset at exactly those low peaks, scored against all
  peaks by the sync score's own matching. A sound that follows these frames as the data's sound follows its
  frames can score no more than this; 1.0 for the data.
- **onsets/clip** and **sync F1**: the clips' own sound, for comparison.

    python benchmarks/sync_ceiling.py DEMO_DIR [DEMO_DIR ...] [--lowest 0.6] [--json out.json]

DEMO_DIR: an ``avdit demo`` output folder (``data/`` real clips, ``samples/`` generated ones). CPU only, a few
seconds per folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from avdit_cli.config import Config, load_preset
from avdit_cli.data.clips import Clip
from avdit_cli.data.sync import audio_onsets, clip_events_score, height_peaks, mean_f1
from avdit_cli.pipelines.demo import read_clips


def group_row(name: str, clips: list[Clip], cfg: Config, lowest: float) -> dict[str, Any]:
    """Event counts, low share, ceiling and own sync F1 of one group of decoded clips (see the module doc)."""
    fps, sr = cfg.data.fps, cfg.data.sample_rate
    ceilings, own, n_low, n_all, onsets = [], [], 0, 0, []
    for c in clips:
        frames, audio = np.asarray(c.frames), np.asarray(c.audio)
        times, rows = height_peaks(frames, fps)  # every seen impact, and how far down its ball is
        low = times[rows >= lowest]  # the ideal sound: a hit at each peak low enough to be a floor contact
        heard = audio_onsets(audio, sr)
        n_low, n_all = n_low + len(low), n_all + len(times)
        ceilings.append(clip_events_score(times, low, len(frames), len(audio), fps, sr))
        own.append(clip_events_score(times, heard, len(frames), len(audio), fps, sr))
        onsets.append(len(heard))
    return {"name": name, "clips": len(clips), "impacts_per_clip": n_all / max(len(clips), 1),
            "low_share": n_low / n_all if n_all else float("nan"), "ceiling": mean_f1(ceilings)[0],
            "onsets_per_clip": float(np.mean(onsets)) if onsets else float("nan"), "sync_f1": mean_f1(own)[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo_dirs", nargs="+", type=Path, help="avdit demo output folders")
    ap.add_argument("--lowest", type=float, default=0.6,
                    help="a peak is a floor contact when its ball centre is this far down (frame heights)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not 0 < args.lowest < 1:
        ap.error(f"--lowest is a fraction of the frame height in (0, 1); got {args.lowest}")
    cfg = load_preset("tiny")
    rows = []
    print("| folder | clips | n | impacts/clip | low share | ceiling | onsets/clip | sync F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for d in args.demo_dirs:
        if not (d / "samples").is_dir() or not (d / "data").is_dir():
            ap.error(f"{d} is not an avdit demo output folder (it needs data/ and samples/)")
        for name, files in (("real", sorted((d / "data").rglob("*.mp4"))),
                            ("generated", sorted((d / "samples").glob("*.mp4")))):
            row = {"folder": str(d), **group_row(name, read_clips(files, cfg), cfg, args.lowest)}
            rows.append(row)
            print(f"| {d.name} | {name} | {row['clips']} | {row['impacts_per_clip']:.2f} | {row['low_share']:.0%} | "
                  f"{row['ceiling']:.3f} | {row['onsets_per_clip']:.2f} | {row['sync_f1']:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "lowest": args.lowest}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
