"""DESIGN section 6: the dependency direction between the package's layers, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "avdit_cli"

# layer -> packages it must never import
FORBIDDEN = {
    "models": {"avdit_cli.diffusion", "avdit_cli.pipelines", "avdit_cli.cli", "avdit_cli.data"},
    "diffusion": {"avdit_cli.models", "avdit_cli.pipelines", "avdit_cli.cli"},
    "data": {"avdit_cli.models", "avdit_cli.pipelines", "avdit_cli.cli"},
    "codecs": {"avdit_cli.pipelines", "avdit_cli.cli"},
    "metrics": {"avdit_cli.pipelines", "avdit_cli.cli"},
    "pipelines": {"avdit_cli.cli"},
}
UI = {"typer", "rich", "click"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path: Path) -> None:
    parts = path.relative_to(ROOT).parts
    layer = parts[0] if len(parts) > 1 else ""
    names = imports_of(path)
    if layer != "cli":
        ui = sorted(n for n in names if n.split(".")[0] in UI)
        assert ui == [], f"only avdit_cli/cli imports {ui}"
    for bad in FORBIDDEN.get(layer, ()):
        hits = sorted(n for n in names if n == bad or n.startswith(bad + "."))
        assert hits == [], f"{layer}/ must not import {hits}"
