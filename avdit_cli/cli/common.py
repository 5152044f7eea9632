"""What every command shares: one-line errors, --debug, the consoles, --json, and the options' types."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

from avdit_cli.errors import AvditError
from avdit_cli.fileio import plain  # noqa: F401  (re-exported: CLI modules import it from here)

# Wide enough for any table row or log line a command prints; Rich sizes a table to its content, not to this.
UNWRAPPED_WIDTH = 100_000


class PipeFriendlyConsole(Console):
    """A Rich console that neither wraps nor folds when its stream is not a terminal (a pipe, a file, a test
    runner). Rich lays out for 80 columns when it cannot ask a terminal, so `avdit download --check | cat`
    split a repo id over three table lines and a long log line over two; piped, every table row and every
    line is printed whole, so repo ids, file names and paths survive `grep`, `cut` and copy-paste.
    In a terminal nothing changes. A COLUMNS variable (CI systems set one) does not narrow piped output; an
    explicit ``width=`` does."""

    def __init__(self, *args: Any, width: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, width=width, **kwargs)
        self._explicit_width = width

    @property  # type: ignore[override]
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self.is_terminal or self._explicit_width is not None:
            return size
        return ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console = PipeFriendlyConsole()
err_console = PipeFriendlyConsole(stderr=True)
JsonOption = typer.Option(False, "--json", help="Print one JSON object instead of the table (schema in README).")

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


PIPED_PROGRESS_EVERY_S = 20.0


class PipedProgress:
    """What replaces a progress bar when the output is not a terminal (a log file, a pipe, CI): one plain line
    at most every ``PIPED_PROGRESS_EVERY_S`` seconds, so a long step is never silent. Does nothing on a terminal
    (the bar is shown there) or when ``enabled`` is false (another rank, or --json)."""

    def __init__(self, out: Console, enabled: bool = True) -> None:
        self.out = out
        self.enabled = enabled and not out.is_terminal
        self._last = time.monotonic()

    def __call__(self, line: str, final: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (final or now - self._last >= PIPED_PROGRESS_EVERY_S):
            self._last = now
            self.out.print(line, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    """One JSON document on stdout (whatever else a command says goes to stderr when it prints JSON)."""
    typer.echo(json.dumps(plain(obj), indent=2, allow_nan=False))
