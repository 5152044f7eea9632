"""README's demo figure: real clips above generated ones, each row 8 of its 16 frames over its mel spectrogram.

    python scripts/demo_figure.py DEMO_DIR [-o docs/demo.png] [--rows 3]

DEMO_DIR is a folder `avdit demo` wrote (its data/ and samples/). Clips are read back from the mp4 files the
way the demo scores them (10 fps, 32x32, 16 kHz), so the figure shows exactly what was scored; each row is
drawn by the same code as generate's contact sheet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avdit_cli.codecs import build_codecs
from avdit_cli.config import load_preset
from avdit_cli.pipelines.demo import read_clips
from avdit_cli.pipelines.generate import contact_row


def label(text: str, width: int) -> np.ndarray:
    img = Image.new("RGB", (width, 18), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 3), text, fill=(0, 0, 0))
    return np.asarray(img)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo_dir", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/demo.png"))
    ap.add_argument("--rows", type=int, default=3, help="clips of each kind")
    args = ap.parse_args(argv)
    cfg = load_preset("tiny")
    codecs = build_codecs(cfg, "cpu")
    real_files = sorted((args.demo_dir / "data").rglob("*.mp4"), key=lambda p: p.name)[: args.rows]  # class folders
    real = read_clips(real_files, cfg)
    generated = read_clips(sorted((args.demo_dir / "samples").glob("sample_*.mp4"))[: args.rows], cfg)
    samples_json = args.demo_dir / "samples" / "samples.json"
    drawn = json.loads(samples_json.read_text()).get("samples", []) if samples_json.is_file() else []
    names = {"real clips": [p.parent.name for p in real_files],
             "generated clips": [r.get("class_name") for r in drawn[: args.rows]]}
    if not real or not generated:
        print(f"error: {args.demo_dir} has no data/*.mp4 or samples/sample_*.mp4; run `avdit demo` first",
              file=sys.stderr)
        return 1
    parts = []
    for name, clips in (("real clips", real), ("generated clips", generated)):
        rows = [contact_row(c.frames, c.audio, codecs) for c in clips]
        classes = [c for c in names[name] if c]
        title = f"{name} (classes: {', '.join(classes)})" if len(classes) == len(rows) else name
        parts += [label(title, rows[0].shape[1]), *rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(parts, axis=0)).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
