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


PRETRAINED_DEFAULT_N = 16


def _num(v: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.0f}%"


@cli_errors
def demo(
    out: Path = typer.Option(Path("avdit-demo"), "--out", "-o", help="Folder for the demo's data, runs and clips."),
    clips: int = typer.Option(DemoOptions.clips, "--clips", min=2, help="Synthetic source files to make."),
    steps: int = typer.Option(DemoOptions.steps, "--steps", min=1, help="Adapter fine-tuning steps."),
    pretrain_steps: int = typer.Option(DemoOptions.pretrain_steps, "--pretrain-steps", min=0,
                                       help="0: use the tiny backbone avdit ships; N: pretrain one for N steps."),
    num: Optional[int] = typer.Option(None, "--generate", "-n", min=1,
                                      help=f"Clips to generate (default {DemoOptions.generate}; "
                                           f"{PRETRAINED_DEFAULT_N} with --pretrained).", show_default=False),
    no_joint: bool = typer.Option(False, "--no-joint", help="Without the joint block (the ablation): train so, "
                                  "or with --pretrained use the shipped ablation model."),
    pretrained: bool = typer.Option(False, "--pretrained", help="No training: generate from the AV-DiT demo "
                                    "models avdit ships, and score them."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, training and sampling."),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", "-s", help="Override a config value (repeatable): of the tiny preset, or with --pretrained "
                                  "of the shipped model (e.g. sample.steps=50)."),
    seconds: float = typer.Option(DemoOptions.seconds, "--seconds", min=1.6, help="Length of each synthetic file."),
    data_only: bool = typer.Option(False, "--data-only", help="Only make the synthetic dataset (OUT/data), "
                                   "e.g. to preprocess and train on it with the other commands."),
    as_json: bool = typer.Option(False, "--json", help="Print demo.json instead of the table (steps go to stderr)."),
) -> None:
    """Run the whole pipeline (data, preprocess, backbone, finetune, generate, scores) on a CPU."""
    if num is None:
        num = PRETRAINED_DEFAULT_N if pretrained else DemoOptions.generate
    opts = DemoOptions(out_dir=out, clips=clips, steps=steps, pretrain_steps=pretrain_steps, generate=num,
                       joint=not no_joint, seed=seed, overrides=tuple(set_ or ()), seconds=seconds,
                       data_only=data_only, pretrained=pretrained)
    say = err_console if as_json else console  # with --json, stdout holds the JSON only
    result = run_demo(opts, log=lambda msg: say.print(msg, highlight=False))
    if as_json:
        print_json(json.loads((result.out_dir / "demo.json").read_text()))
        return
    if data_only:
        console.print(f"data: {result.out_dir / 'data'}")
        return
    what = "shipped model" if pretrained else f"{steps} steps"
    table = Table(title=f"avdit demo ({'joint block on' if opts.joint else 'no joint block'}, {what})",
                  title_justify="left")
    for name, justify in (("clips", "left"), ("n", "right"), ("sync F1", "right"), ("AV-Align", "right"),
                          ("balls/frame", "right"), ("1-2 balls", "right"), ("noise frames", "right"),
                          ("smooth moves", "right"), ("median step", "right"), ("impacts/clip", "right"),
                          ("onsets/clip", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for g in result.scores:
        note = f" ({g.sync_skipped} left out: no events)" if g.sync_skipped else ""
        table.add_row(g.name, str(g.clips), _num(g.sync_f1) + note, _num(g.av_align), _num(g.balls_per_frame, 2),
                      _pct(g.one_or_two_balls), _pct(g.noise_frames), _pct(g.smooth_moves),
                      _num(g.median_step, 3), _num(g.impacts_per_clip, 2), _num(g.onsets_per_clip, 2))
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
