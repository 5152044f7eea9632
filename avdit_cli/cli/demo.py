"""`avdit demo`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from avdit_cli.cli.common import JsonOption, cli_errors, console, err_console, print_json
from avdit_cli.pipelines.demo import DemoOptions, demo as run_demo


@cli_errors
def demo(
    out: Path = typer.Option(Path("avdit-demo"), "--out", "-o", help="Folder for the demo's data, runs and clips."),
    clips: int = typer.Option(DemoOptions.clips, "--clips", min=2, help="Synthetic source files to make."),
    steps: int = typer.Option(DemoOptions.steps, "--steps", min=1, help="Adapter fine-tuning steps."),
    pretrain_steps: int = typer.Option(DemoOptions.pretrain_steps, "--pretrain-steps", min=0,
                                       help="0: use the tiny backbone avdit ships; N: pretrain one for N steps."),
    num: int = typer.Option(DemoOptions.generate, "--generate", "-n", min=1, help="Clips to generate."),
    no_joint: bool = typer.Option(False, "--no-joint", help="Train without the joint block (the ablation)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, training and sampling."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Override a tiny-preset value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print demo.json instead of the table (steps go to stderr)."),
) -> None:
    """Run the whole pipeline (data, preprocess, backbone, finetune, generate, scores) on a CPU."""
    opts = DemoOptions(out_dir=out, clips=clips, steps=steps, pretrain_steps=pretrain_steps, generate=num,
                       joint=not no_joint, seed=seed, overrides=tuple(set_ or ()))
    say = err_console if as_json else console  # with --json, stdout holds the JSON only
    result = run_demo(opts, log=lambda msg: say.print(msg, highlight=False))
    if as_json:
        print_json(json.loads((result.out_dir / "demo.json").read_text()))
        return
    table = Table(title=f"avdit demo ({'joint block on' if opts.joint else 'no joint block'}, {steps} steps)",
                  title_justify="left")
    table.add_column("clips")
    table.add_column("n", justify="right")
    table.add_column("sync F1", justify="right")
    table.add_column("AV-Align", justify="right")
    for g in result.scores:
        f1 = "n/a" if math.isnan(g.sync_f1) else f"{g.sync_f1:.3f}"
        note = f" ({g.sync_skipped} without events)" if g.sync_skipped else ""
        table.add_row(g.name, str(g.clips), f1 + note, f"{g.av_align:.3f}")
    console.print(table)
    for name, m in result.eval_metrics.items():
        if m.get("status") == "ok":
            console.print(f"eval {name}: {m['display_value']:.4g} (generated vs real; {result.samples_dir}/metrics.json)")
        else:
            console.print(f"eval {name}: skipped, {m.get('reason', 'unavailable')}", highlight=False)
    total = sum(v for k, v in result.seconds.items())
    console.print(f"time: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + ")")
    console.print(f"clips: {result.samples_dir}/sample_*.mp4")
    if result.contact_sheet:
        console.print(f"contact sheet: {result.contact_sheet}")
    if (result.samples_dir / "index.html").is_file():
        console.print(f"gallery: {result.samples_dir / 'index.html'} (open it in a browser)")
    console.print(f"everything: {result.out_dir}/demo.json")
