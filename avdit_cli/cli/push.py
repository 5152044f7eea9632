"""`avdit push`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from avdit_cli.cli.common import cli_errors, console, err_console
from avdit_cli.pipelines.push import push as run_push


@cli_errors
def push(
    run: Path = typer.Argument(..., help="Run folder (or one of its checkpoint folders) made by `avdit finetune`."),
    repo: str = typer.Option(..., "--repo", help="Hub model repo to push to, ORG/NAME (made if missing)."),
    private: bool = typer.Option(False, "--private", help="Make a new repo private (an existing one keeps its "
                                 "visibility)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (made from main if "
                                           "missing; default: main)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Push the EMA weights (default) or the raw ones."),
    samples: Optional[Path] = typer.Option(
        None, "--samples", help="A folder `avdit generate` made from this checkpoint: its contact sheet and, "
        "after `avdit eval`, its metrics go on the model card."),
) -> None:
    """Upload a run's adapters, config, metrics and a model card to the Hugging Face Hub (never the backbone)."""
    result = run_push(run, repo, private=private, revision=revision, ema=ema, samples=samples,
                      log=lambda msg: err_console.print(msg, highlight=False, markup=False))
    console.print(f"pushed {len(result.files)} files ({result.weights} weights) to {result.url} at commit "
                  f"{result.commit[:12]}", highlight=False)
    console.print(f"generate from it: avdit generate --run {result.reference} -n 16 -o out/", highlight=False)
