"""`avdit eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from avdit_cli.cli.common import SetOption, cli_errors, console, err_console, print_json
from avdit_cli.config import METRICS
from avdit_cli.pipelines.eval_protocols import ProtocolName, get_protocol
from avdit_cli.pipelines.evaluate import EvalStatus, evaluate, resolve_config, skipped_summary


def _metric_list(text: str) -> list[str]:
    return [m.strip().lower() for m in text.split(",") if m.strip()]


@cli_errors
def eval_cmd(
    gen_dir: Path = typer.Argument(..., help="Folder of generated .mp4 clips (from `avdit generate -o`)."),
    ref: Optional[Path] = typer.Option(
        None, "--ref", "-r", help="Real clips: a data folder or an `avdit preprocess` cache folder "
        "(default: the cache of the run that made the samples)."),
    num: Optional[int] = typer.Option(None, "--num", "-n", min=2, help="Clips per set (default: eval.num_samples)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the reference draw (default: eval.seed)."),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", "-m", help=f"Comma-separated subset of {','.join(METRICS)} (default: all)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Clips per extractor batch."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: best)"),
    preset: Optional[str] = typer.Option(
        None, "--preset", "-p", help="Clip protocol when samples.json records none (default: recorded, else aist)."),
    set_: Optional[List[str]] = SetOption,
    protocol: ProtocolName = typer.Option(
        ProtocolName.AVDIT.value, "--protocol", help="avdit (StyleGAN-V I3D, VGGish) or mm-diffusion (the "
        "papers' evaluator: I3D-400 logits, AudioCLIP FAD x1e4, 2048 clips from the training folder)."),
    i3d: Optional[Path] = typer.Option(
        None, "--i3d", help="i3d_torchscript.pt (avdit) or i3d_pretrained_400.pt (mm-diffusion); default: downloaded."),
    vggish: Optional[Path] = typer.Option(None, "--vggish", help="vggish-10086976.pth (avdit; default: downloaded)."),
    audioclip: Optional[Path] = typer.Option(
        None, "--audioclip", help="AudioCLIP-Full-Training.pt (mm-diffusion; default: downloaded)."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
) -> None:
    """FVD, KVD, FAD and AV-Align of generated clips against real clips; writes GEN_DIR/metrics.json."""
    proto = get_protocol(protocol.value)
    overrides = list(set_ or [])
    if num is None and proto.num_samples is not None:
        num = proto.num_samples  # the protocol fixes its sample count unless --num is given
    if num is not None:
        overrides.append(f"eval.num_samples={num}")
    if seed is not None:
        overrides.append(f"eval.seed={seed}")
    if batch_size is not None:
        overrides.append(f"eval.batch_size={batch_size}")
    if metrics is not None:
        overrides.append(f"eval.metrics={json.dumps(_metric_list(metrics))}")
    cfg, source = resolve_config(gen_dir, preset, overrides)

    columns = [TextColumn("[bold]eval {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn()]
    shown = not as_json and err_console.is_terminal
    with Progress(*columns, console=err_console, transient=True, disable=not shown) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(s: EvalStatus) -> None:
            if s.stage not in tasks:
                tasks[s.stage] = bar.add_task(s.stage, total=s.total)
            bar.update(tasks[s.stage], total=s.total, completed=s.done)

        result = evaluate(gen_dir, cfg, ref, protocol=proto, device=device, i3d=i3d, vggish=vggish,
                          audioclip=audioclip, config_source=source, progress=on_progress)
    report = result.report
    if as_json:
        print_json(report)
        return
    notes = _print_table(report)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    gen = report["generated"]
    if gen["skipped"]:
        console.print(f"skipped {len(gen['skipped'])} of {gen['files']} generated files "
                      f"({skipped_summary(gen['skipped'])}): " + ", ".join(s["file"] for s in gen["skipped"]),
                      highlight=False, soft_wrap=True)
    if result.path is not None:
        console.print(f"metrics: {result.path}", highlight=False, soft_wrap=True)


def _print_table(report: dict[str, Any]) -> list[str]:
    """The metrics table; returns the notes (warnings, skip reasons such as the download command) to print
    under it in full, so the table stays narrow."""
    p = report["protocol"]
    ref = report["reference"]
    if p.get("name", "avdit") == "avdit":
        setting = f"{p['num_frames']} frames at {p['fps']:g} fps, {p['frame_size']}px, {p['sample_rate']} Hz"
    else:
        setting = f"protocol {p['name']} ({p['summary']}), N {p['num_samples']}"
    title = f"eval: {setting}, seed {p['seed']}; reference: " + (f"{ref['kind']} {ref['path']}" if ref else "none")
    table = Table(title=title, title_justify="left")
    for col in ("metric", "value", "reference", "gen / ref", "extractor", "note"):
        table.add_column(col, justify="left" if col in ("metric", "extractor", "note") else "right")
    notes: list[str] = []
    for name, r in report["metrics"].items():
        if r["status"] != "ok":
            notes.append(f"{name} skipped: {r['reason']}")
            table.add_row(name, "-", "", "", "", f"skipped [{len(notes)}]", style="dim")
            continue
        scale = r["display_scale"]
        label = name if scale == 1 else f"{name} (x{scale:g})"  # the protocol's print scale
        proto = r["protocol"]
        reference = f"{r['reference'] * scale:.4g}" if "reference" in r else ""
        extractor = proto["feature"]
        if "weights_sha256" in proto:
            extractor += f" {proto['weights_sha256'][:8]}"
        note = ""
        if r.get("warning"):
            notes.append(r["warning"])
            unreliable = "fewer samples" in r["warning"] or "repeated" in r["warning"]
            note = f"unreliable [{len(notes)}]" if unreliable else f"see [{len(notes)}]"
        table.add_row(label, f"{r['display_value']:.4g}", reference, f"{proto['n_gen']} / {proto['n_ref']}",
                      extractor, note)
    console.print(table)
    return [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
