"""`avdit download`."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from avdit_cli.cli.common import JsonOption, PresetOption, SetOption, cli_errors, console, err_console, print_json
from avdit_cli.config import load_preset
from avdit_cli.errors import WeightsError
from avdit_cli.hub import WeightsGroup
from avdit_cli.pipelines import download as pipeline

_ONLY_HELP = "Comma-separated subset: " + ", ".join(g.value for g in WeightsGroup) + "."


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n}"


@cli_errors
def download(
    preset: str = PresetOption,
    set_: Optional[List[str]] = SetOption,
    only: Optional[str] = typer.Option(None, "--only", help=_ONLY_HELP),
    revision: Optional[str] = typer.Option(None, "--revision",
                                           help="Fetch this revision instead of the pinned one (Hub entries); "
                                                "the loaders still use the pinned one."),
    check: bool = typer.Option(False, "--check", help="Only report what is present and missing (no network)."),
    as_json: bool = JsonOption,
) -> None:
    """Fetch the backbone, codecs and eval extractors from the Hugging Face Hub (pinned, checked)."""
    cfg = load_preset(preset, set_ or [])
    groups = pipeline.parse_only(only)
    say = err_console if as_json else console  # with --json, stdout holds the JSON only
    if check:
        rows = pipeline.check(cfg, groups, revision)
    else:
        rows = pipeline.download(cfg, groups, revision=revision,
                                 progress=lambda msg: say.print(msg, highlight=False, markup=False))
    missing = [r for r in rows if not r.ok]
    fix = None
    if missing:
        only_arg = ",".join(dict.fromkeys(r.group for r in missing))
        fix = f"avdit download --preset {cfg.name} --only {only_arg}"
    if as_json:
        print_json({"preset": cfg.name, "check": check, "weights": [_row_json(r) for r in rows],
                    "missing": len(missing), "fix": fix})
    elif not rows:
        console.print(f"preset {cfg.name} needs no downloaded weights (try --only eval for the eval extractors)")
    else:
        _print_table(cfg.name, rows)
    if missing:
        raise WeightsError(f"{len(missing)} missing; run `{fix}`")


def _row_json(r: pipeline.WeightsStatus) -> dict[str, object]:
    """One entry of `--json`'s "weights" (README: JSON output)."""
    # The pipeline's revision is for display ("main (not pinned)"): split it back into data.
    revision, _, note = r.revision.partition(" (")
    return {"key": r.key, "title": r.title, "group": r.group, "repo": r.repo, "revision": revision,
            "pinned": note != "not pinned)", "commit": r.commit, "size": r.size, "licence": r.licence,
            "status": r.status, "ok": r.ok, "location": r.location, "missing": list(r.missing)}


def _print_table(preset: str, rows: list[pipeline.WeightsStatus]) -> None:
    table = Table(title=f"weights for preset {preset}", title_justify="left")
    for col in ("what", "repo", "revision", "size", "licence", "status", "where"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = "green" if r.ok else "red"
        where = r.location or ("missing: " + ", ".join(r.missing))
        table.add_row(r.title, r.repo, r.revision, _size(r.size), r.licence, f"[{style}]{r.status}[/{style}]", where)
    console.print(table)
