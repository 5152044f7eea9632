"""`avdit finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avdit_cli.cli.common import PipedProgress, PresetOption, SetOption, cli_errors, console, is_main_rank
from avdit_cli.config import Config, apply_overrides, load_preset
from avdit_cli.pipelines.finetune import StepInfo, finetune as run_finetune
from avdit_cli.pipelines.runs import latest_run, read_checkpoint_state


@cli_errors
def finetune(
    preset: str = PresetOption,
    set_: Optional[List[str]] = SetOption,
    cache: Optional[Path] = typer.Option(None, "--cache", help="Latent cache (default: where preprocess wrote it; "
                                         "on --resume: the run's).", show_default=False),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name under runs/ (default: preset-time).", show_default=False),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue a run: 'latest' or a run/checkpoint folder. Its config is reused; "
        "--set train.* may change it (e.g. train.steps).", show_default=False),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: the best there is)", show_default=False),
    pretrain: bool = typer.Option(False, "--pretrain", help="Train a whole image DiT (train.mode=pretrain)."),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard",
                                     help="Also log to RUN/tb when the tensorboard package is installed."),
) -> None:
    """Train the AV-DiT adapters on a latent cache (torchrun for several GPUs)."""
    overrides = list(set_ or [])
    if pretrain:
        overrides.append("train.mode=pretrain")
    resume_path: Optional[Path] = None
    start = 0
    if resume is not None:
        resume_path = latest_run() if resume == "latest" else Path(resume)
        _, state = read_checkpoint_state(resume_path)  # the config only; the loop loads the tensors
        cfg = apply_overrides(Config.from_dict(state["config"]), overrides)
        start = int(state["step"])
    else:
        cfg = load_preset(preset, overrides)
    main = is_main_rank()
    columns = [TextColumn("[bold]finetune"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} clips/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not (main and console.is_terminal), transient=True) as bar:
        task = bar.add_task("steps", total=cfg.train.steps, completed=start, loss=float("nan"), rate=0.0)

        piped = PipedProgress(console, enabled=main)

        def on_step(info: StepInfo) -> None:
            bar.update(task, completed=info.step, loss=info.loss, rate=info.clips_per_s)
            piped(f"finetune: step {info.step}/{info.total}, loss {info.loss:.4f}, {info.clips_per_s:.1f} clips/s")

        def on_log(msg: str) -> None:
            if main:
                bar.console.print(msg)

        result = run_finetune(cfg, cache_dir=cache, run_name=name, resume=resume_path, device=device,
                              on_step=on_step, on_log=on_log, tensorboard=tensorboard)
    if not main:
        return
    if result.interrupted:
        console.print(f"[yellow]interrupted at step {result.step}[/yellow]; checkpoint {result.checkpoint}; "
                      f"continue with `avdit finetune --resume {result.run_dir}`", soft_wrap=True)
        raise typer.Exit(130)
    console.print(f"done: {result.step} steps; run {result.run_dir}; checkpoint {result.checkpoint}", soft_wrap=True)
