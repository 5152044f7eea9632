"""Conventional `--help`: metavars as click and most CLIs spell them (TEXT, INTEGER, PATH, [a|b]) and flags
without a type.

Typer 0.2x labels every value in its own style (`<int range>`, `<path>`, `<str>`, `{gen_dir}`) and gives
on/off flags a `<bool>` type although they take no value. The command and group classes here fill in the
conventional metavar of each parameter before help is drawn; Typer prints an explicit metavar as given.
Older Typer releases (click-based) already print these names; there the classes change nothing.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand, TyperGroup

# Typer's type label (inside its angle brackets) -> click's name for it.
_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN",
          "datetime": "DATETIME", "uuid": "UUID", "file": "FILENAME"}


def conventional_type(label: str) -> str:
    """``<int>`` -> INTEGER, ``<int range>`` -> INTEGER RANGE, ``<list[str]>`` -> TEXT (a repeatable option),
    ``<a|b>`` -> ``[a|b]``; anything unknown is upper-cased."""
    inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
    inner = re.sub(r"^list\[(.*)\]$", r"\1", inner)
    if inner.endswith(" range"):
        return f"{_NAMES.get(inner[:-6], inner[:-6].upper())} RANGE"
    if inner in _NAMES:
        return _NAMES[inner]
    if "|" in inner:
        return f"[{inner}]"
    return inner.upper()


def _conventional_params(params: list[Any], ctx: Any) -> list[Any]:
    for param in params:
        if not hasattr(param, "display_type") or getattr(param, "_avdit_conventional", False):
            continue  # a click-based Typer (conventional already), or done before
        param._avdit_conventional = True
        if getattr(param, "param_type_name", "") == "argument":
            label = conventional_type(param.display_type(ctx))
            if param.metavar is None:
                param.metavar = param.name.upper()  # the name column, the usage line and error messages
            # Typer's arguments take their type column from display_type_rich and ignore the metavar.
            param.display_type_rich = lambda ctx, label=label: label
        elif getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = ""  # an on/off flag takes no value: no type to show
        elif param.metavar is None:
            param.metavar = conventional_type(param.display_type(ctx))
    return params


class AvditCommand(TyperCommand):
    """A Typer command whose help uses conventional metavars."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional_params(super().get_params(ctx), ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``avdit eval [OPTIONS] GEN_DIR``: click's spelling of a required argument (Typer 0.2x writes
        ``{GEN_DIR}``); optional ones stay ``[NAME]``."""
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


class AvditGroup(TyperGroup):
    """The root `avdit` group: conventional metavars for its own options (--debug, --version, --help)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional_params(super().get_params(ctx), ctx)
