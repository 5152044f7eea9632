"""`avdit export`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from avdit_cli.cli.common import cli_errors, console
from avdit_cli.pipelines.runs import export_checkpoint, latest_run


@cli_errors
def export(
    run: Optional[Path] = typer.Argument(None, help="Run or checkpoint folder (default: the latest run).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the exported checkpoint."),
    backbone: Optional[Path] = typer.Option(
        None, "--backbone", help="Reference this backbone folder (checked by sha256) by a path relative to OUT, "
        "for a checkpoint that travels with its backbone."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", metavar="sample.KEY=VALUE",
        help="Sampling default for the exported model, e.g. --set sample.steps=50 (repeatable; sample.* only)."),
) -> None:
    """Write a run's EMA adapters as a small checkpoint (no optimiser state) that generate and demo read."""
    path = export_checkpoint(run if run is not None else latest_run(), out, backbone, sample=overrides or ())
    size = sum(p.stat().st_size for p in path.iterdir())
    console.print(f"exported to {path} ({size / 2**20:.2f} MiB)", soft_wrap=True)
