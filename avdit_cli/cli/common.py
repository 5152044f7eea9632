"""What every command shares: one-line errors, --debug, a console, and the options' types."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from avdit_cli.errors import AvditError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

PresetOption = typer.Option("aist", "--preset", "-p", help="Preset name (aist, landscape, tiny) or a YAML path.")
SetOption = typer.Option(None, "--set", "-s", help="Override a config value: SECTION.FIELD=VALUE (repeatable).")


def debug_enabled() -> bool:
    return os.environ.get("AVDIT_DEBUG", "") not in ("", "0", "false")


def cli_errors(func: F) -> F:
    """Turn library errors into one red line and exit code 1 (the traceback only under --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AvditError as err:
            if debug_enabled():
                raise
            err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def fail(message: str) -> None:
    """Exit 1 with one red line (for problems found in the CLI layer itself)."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


