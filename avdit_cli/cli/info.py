"""`avdit info`."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
import yaml
from rich.table import Table

from avdit_cli.cli.common import PresetOption, SetOption, cli_errors, console
from avdit_cli.config import load_preset
from avdit_cli.pipelines.info import gather


@cli_errors
def info(
    preset: str = PresetOption,
    set_: Optional[List[str]] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
) -> None:
    """Versions, device, cache locations and the fully resolved config of a preset."""
    cfg = load_preset(preset, set_ or [])
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
