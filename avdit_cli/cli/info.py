"""`avdit info`."""

from __future__ import annotations

import dataclasses
import json
from typing import List, Optional

import typer
import yaml
from rich.table import Table

from avdit_cli.cli.common import PresetOption, SetOption, cli_errors, console
from avdit_cli.config import Config, load_preset
from avdit_cli.models.params import parameter_counts
from avdit_cli.pipelines.info import gather


@cli_errors
def info(
    preset: str = PresetOption,
    set_: Optional[List[str]] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
    params: bool = typer.Option(False, "--params", help="Parameter counts per module (no weights, no memory)."),
) -> None:
    """Versions, device, cache locations and the fully resolved config of a preset."""
    cfg = load_preset(preset, set_ or [])
    if params:
        _print_params(cfg, as_json)
        return
    data = gather(cfg)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"avdit {data['versions']['avdit']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, ver in data["versions"].items():
        table.add_row(name, ver)
    dev = data["device"]
    where = dev["default"] + (f" ({', '.join(dev['devices'])})" if dev["devices"] else "")
    table.add_row("device", f"{where}, bf16 {'yes' if dev['bf16'] else 'no'}, {dev['cpu_threads']} CPU threads")
    for name, path in data["locations"].items():
        table.add_row(name, path)
    console.print(table)
    console.print(f"[bold]config[/bold] (preset {cfg.name}):")
    typer.echo(yaml.safe_dump(data["config"], sort_keys=False).rstrip())


def _print_params(cfg: Config, as_json: bool) -> None:
    rows = parameter_counts(cfg)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    m = cfg.model
    table = Table(title=f"AV-DiT parameters, preset {cfg.name} (backbone hidden {m.hidden_size}, depth {m.depth}, "
                  f"patch {m.patch_size})", title_justify="left")
    for col in ("module", "total", "frozen", "trainable"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for r in rows:
        style = "bold" if r.name == "total" else None
        table.add_row(r.name, f"{r.total:,}", f"{r.frozen:,}", f"{r.trainable:,}", style=style)
    console.print(table)
