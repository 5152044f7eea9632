"""`avdit preprocess`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from avdit_cli.cli.common import (JsonOption, PipedProgress, PresetOption, SetOption, cli_errors, console,
                                  err_console, is_main_rank, print_json)
from avdit_cli.config import load_preset
from avdit_cli.pipelines.preprocess import PreprocessStatus, preprocess as run_preprocess


@cli_errors
def preprocess(
    data_dir: Path = typer.Argument(..., help="Folder of videos with sound (recursive; any format ffmpeg reads)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Cache folder (default: where `finetune` looks for it)."),
    preset: str = PresetOption,
    set_: Optional[List[str]] = SetOption,
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Files decoded at once, each by its own ffmpeg process (0: one at a time)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Clips per encoder batch."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: the best there is)."),
    stride: Optional[float] = typer.Option(None, "--stride",
                                           help="Seconds between clip starts (default: the clip length)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N files."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad file instead of skipping it."),
    as_json: bool = JsonOption,
) -> None:
    """Decode and cut every video into clips and cache their video and audio latents (resumable).

    Every file ffmpeg can decode as video with sound is used; the others are skipped with a reason
    (skipped.jsonl, and counted by type in the summary). A rerun resumes, another config is refused.

    Under `torchrun`, the files are split across ranks.
    """
    overrides = list(set_ or [])
    if stride is not None:
        overrides.append(f"data.stride_seconds={stride}")
    cfg = load_preset(preset, overrides)
    columns = [TextColumn("[bold]preprocess"), BarColumn(), TextColumn("{task.completed}/{task.total} files"),
               TextColumn("{task.fields[clips]} clips, {task.fields[rate]:.1f} clips/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    shown = err_console if as_json else console
    with Progress(*columns, console=shown, transient=True,
                  disable=not (is_main_rank() and shown.is_terminal)) as bar:
        task = bar.add_task("files", total=None, clips=0, rate=0.0)

        piped = PipedProgress(shown, enabled=is_main_rank())

        def on_progress(s: PreprocessStatus) -> None:
            bar.update(task, total=s.files_total, completed=s.files_done, clips=s.clips, rate=s.clips_per_s)
            piped(f"preprocess: {s.files_done}/{s.files_total} files, {s.clips} clips, {s.clips_per_s:.1f} clips/s")

        summary = run_preprocess(cfg, data_dir, out, workers=workers, batch_size=batch_size, device=device,
                                 limit=limit, strict=strict, progress=on_progress)
    if not is_main_rank():
        return
    if as_json:
        print_json({**dataclasses.asdict(summary), "skipped_jsonl": str(summary.cache_dir / "skipped.jsonl")})
        return
    table = Table(title="preprocess", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("files seen", str(summary.files_seen))
    table.add_row("clips made", str(summary.clips))
    skipped = sum(summary.skipped_by_reason.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(summary.skipped_by_reason.items()))
    table.add_row("files skipped", f"{skipped}" + (f" ({detail})" if detail else ""))
    if summary.skipped_by_extension:
        table.add_row("skipped by type", ", ".join(f"{k}: {v}" for k, v in summary.skipped_by_extension.items()))
    if summary.clips_by_flag:
        table.add_row("flagged clips", ", ".join(f"{k}: {v}" for k, v in summary.clips_by_flag.items()))
    table.add_row("audio-video", f"{summary.hours:.3f} h (source time the clips cover)")
    table.add_row("cache", f"{summary.cache_dir} ({summary.cache_bytes / 2**20:.1f} MiB)")
    table.add_row("shards reused", str(summary.shards_reused))
    table.add_row("time", f"{summary.seconds:.1f} s")
    console.print(table)
    if skipped:
        console.print(f"skipped files and reasons: {summary.cache_dir / 'skipped.jsonl'}")
