"""The `avdit` command: one Typer app, one thin typed function per command (each in its own module)."""

from __future__ import annotations

import os
from typing import Optional

import typer

from avdit_cli import __version__
from avdit_cli.cli.demo import demo
from avdit_cli.cli.download import download
from avdit_cli.cli.eval import eval_cmd
from avdit_cli.cli.export import export
from avdit_cli.cli.finetune import finetune
from avdit_cli.cli.generate import generate
from avdit_cli.cli.help import AvditCommand, AvditGroup
from avdit_cli.cli.info import info
from avdit_cli.cli.preprocess import preprocess
from avdit_cli.cli.push import push

app = typer.Typer(
    name="avdit",
    cls=AvditGroup,
    help="AV-DiT: joint audio-video generation with a frozen image DiT and small trainable adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avdit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (same as AVDIT_DEBUG=1)."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """AV-DiT: joint audio-video generation with a frozen image DiT and small trainable adapters."""
    if debug:
        os.environ["AVDIT_DEBUG"] = "1"


# Commands arrive with the issue that makes them work; `--help` never lists one that does not.
app.command(cls=AvditCommand)(info)
app.command(cls=AvditCommand)(download)
app.command(cls=AvditCommand)(preprocess)
app.command(cls=AvditCommand)(finetune)
app.command(cls=AvditCommand)(generate)
app.command("eval", cls=AvditCommand)(eval_cmd)
app.command(cls=AvditCommand)(demo)
app.command(cls=AvditCommand)(push)
app.command(cls=AvditCommand)(export)


def main() -> None:
    app()
