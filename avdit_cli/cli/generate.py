"""`avdit generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avdit_cli.cli.common import PipedProgress, cli_errors, console, is_main_rank
from avdit_cli.config import SampleOrder, Sampler
from avdit_cli.pipelines.generate import GenerateOptions, generate as run_generate
from avdit_cli.pipelines.hub_run import HF_SCHEME


@cli_errors
def generate(
    num: int = typer.Option(16, "--num", "-n", min=1, help="How many clips."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Folder for sample_*.mp4, samples.json, contact sheet."),
    run: Optional[str] = typer.Option(
        None, "--run", "--checkpoint", metavar="PATH|hf://REPO",
        help="Run or checkpoint folder (default: latest run), or hf://ORG/NAME(@REVISION): adapters pushed "
             "by `avdit push`. Under torchrun spell it --checkpoint (torchrun reads --run as an abbreviation of "
             "its own --run-path)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    sampler: Optional[Sampler] = typer.Option(None, "--sampler", help="Sampler (default: the run's sample.sampler)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps (default: the run's)."),
    eta: Optional[float] = typer.Option(None, "--eta", min=0.0, max=1.0, help="DDIM eta."),
    order: Optional[SampleOrder] = typer.Option(
        None, "--order", help="joint: both tracks together; video-first: the frames, then the sound for them "
                              "(2x the steps; runs trained with independent timesteps) (default: the run's)."),
    noise_correlation: Optional[float] = typer.Option(
        None, "--noise-correlation", min=0.0, max=0.99, metavar="RHO",
        help="Correlation of the frames' initial noise, 0 = independent (default: the run's sample setting)."),
    cross_modal_guidance: Optional[float] = typer.Option(
        None, "--cross-modal-guidance", min=0.0, metavar="S",
        help="Guide the drawn track towards the given one (the sound stage of video-first, --video-from, "
             "--audio-from); 1 = none (default: the run's sample setting)."),
    frame_stagger: Optional[float] = typer.Option(
        None, "--frame-stagger", min=0.0, metavar="SPREAD",
        help="Staggered (pyramid) DDIM over the frames: frame i starts SPREAD x i/(f-1) of the chain after the "
             "first, so it is drawn after the frames before it (runs trained with diffusion.frame_stagger_prob; "
             "(1 + SPREAD) x the steps; 0 = off) (default: the run's sample setting)."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg-scale", min=0.0,
                                              help="Classifier-free guidance scale towards each clip's class "
                                                   "(class-conditional runs; default: the run's sample.cfg_scale)."),
    class_id: Optional[int] = typer.Option(None, "--class", min=0,
                                           help="Class id, the row of the run's class names (class-conditional "
                                                "runs; default: each clip's class drawn from the training clips' "
                                                "class frequencies, seeded)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sample i uses seed + i (default: the run's sample.seed)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Clips per sampler batch."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: best)"),
    audio_from: Optional[Path] = typer.Option(None, "--audio-from", help="Make video for the sound of this file."),
    video_from: Optional[Path] = typer.Option(None, "--video-from", help="Make sound for the frames of this file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace clips in a non-empty output folder."),
    save_latents: bool = typer.Option(False, "--save-latents", help="Also write latents.safetensors (sample order)."),
) -> None:
    """Sample clips with sound from a fine-tuned run and write them as mp4 files."""
    # Kept as text for hf:// (a Path would fold its "//").
    checkpoint = run if run is None or run.startswith(HF_SCHEME) else Path(run)
    opts = GenerateOptions(out_dir=out, num=num, checkpoint=checkpoint, ema=ema, sampler=sampler, steps=steps, eta=eta,
                           order=order, video_noise_correlation=noise_correlation,
                           cross_modal_guidance=cross_modal_guidance, frame_stagger=frame_stagger,
                           cfg_scale=cfg_scale, class_id=class_id, seed=seed, batch_size=batch_size, device=device,
                           audio_from=audio_from, video_from=video_from, overwrite=overwrite,
                           save_latents=save_latents)
    columns = [TextColumn("[bold]generate"), BarColumn(), TextColumn("{task.fields[clips]}/{task.total} clips"),
               TextColumn("{task.fields[rate]:.1f} steps/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    shown = is_main_rank() and console.is_terminal  # piped: no bar (it would leave blank lines)
    with Progress(*columns, console=console, transient=True, disable=not shown) as bar:
        task = bar.add_task("clips", total=num, rate=0.0, clips=0)

        piped = PipedProgress(console, enabled=is_main_rank())

        def on_progress(done: float, total: int, rate: float) -> None:
            # `done` is fractional inside a batch, so the ETA moves with the denoiser steps
            bar.update(task, total=total, completed=done, clips=int(done), **({"rate": rate} if rate else {}))
            piped(f"generate: {done:.1f}/{total} clips")

        result = run_generate(opts, progress=on_progress)
    if is_main_rank():
        console.print(f"{len(result.files)} clips in {result.seconds:.1f} s (denoise {result.denoise_seconds:.1f} s, "
                      f"decode+write {result.decode_seconds:.1f} s) -> {result.out_dir}")
        if result.contact_sheet:
            console.print(f"contact sheet: {result.contact_sheet}")
        if result.gallery:
            console.print(f"gallery: {result.gallery} (open it in a browser)")
