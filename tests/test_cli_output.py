"""Output for people and for scripts: conventional `--help`, `--json` with a stable schema, and tables that keep
identifiers whole when stdout is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avdit_cli.cli.app import app
from avdit_cli.cli.help import conventional_type
from avdit_cli.config import load_preset
from avdit_cli.hub import entries_for, required_groups

runner = CliRunner()
DOWNLOAD_ROW_KEYS = {"key", "title", "group", "repo", "revision", "pinned", "commit", "size", "licence", "status",
                     "ok", "location", "missing"}


def command_names() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.fixture()
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "avdit"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: --check must not ask
    return tmp_path


# ----------------------------------------------------------------------------------------------------------
# --help
# ----------------------------------------------------------------------------------------------------------
def test_conventional_type_names() -> None:
    assert conventional_type("<int>") == "INTEGER"
    assert conventional_type("<int range>") == "INTEGER RANGE"
    assert conventional_type("<float range>") == "FLOAT RANGE"
    assert conventional_type("<str>") == "TEXT"
    assert conventional_type("<list[str]>") == "TEXT"
    assert conventional_type("<path>") == "PATH"
    assert conventional_type("<ddpm|ddim|dpm++>") == "[ddpm|ddim|dpm++]"


@pytest.mark.parametrize("name", [None, *command_names()])
def test_help_uses_conventional_metavars(name: str | None) -> None:
    result = runner.invoke(app, [name, "--help"] if name else ["--help"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert not re.search(r"<(bool|int|float|str|path|list)", out), out  # Typer's own labels
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage  # `GEN_DIR`, not Typer's `{gen_dir}`
    for flag in ("--help", "--json", "--overwrite", "--ema", "--debug", "--check", "--strict"):
        for line in out.splitlines():
            if re.search(rf"{flag}\b(?!-)", line):
                assert "BOOLEAN" not in line, line  # a flag takes no value: no type next to it


def test_help_examples() -> None:
    gen = runner.invoke(app, ["generate", "--help"]).output
    assert re.search(r"--num\s+-n\s+INTEGER RANGE", gen) and re.search(r"--out\s+-o\s+PATH", gen)
    assert "[ddpm|ddim|dpm++]" in gen and re.search(r"--device\s+TEXT", gen)
    ev = runner.invoke(app, ["eval", "--help"]).output
    assert "Usage: avdit eval [OPTIONS] GEN_DIR" in ev and re.search(r"GEN_DIR\s+PATH", ev)
    missing = runner.invoke(app, ["eval"])
    assert missing.exit_code == 2 and "GEN_DIR" in missing.output


# ----------------------------------------------------------------------------------------------------------
# download --check: JSON and piped tables
# ----------------------------------------------------------------------------------------------------------
def test_download_check_json_schema(empty_caches: Path) -> None:
    result = runner.invoke(app, ["download", "--preset", "aist", "--check", "--json"])
    assert result.exit_code == 1  # something is missing: the same exit code as the table
    data = json.loads(result.stdout)  # stdout holds the JSON alone; the error line goes to stderr
    assert set(data) == {"preset", "check", "weights", "missing", "fix"}
    assert data["preset"] == "aist" and data["check"] is True and data["missing"] == len(data["weights"]) == 6
    assert data["fix"] == "avdit download --preset aist --only backbone,video-vae,audio-vae,vocoder,eval"
    rows = {r["key"] + ":" + r["repo"]: r for r in data["weights"]}
    for row in data["weights"]:
        assert set(row) == DOWNLOAD_ROW_KEYS
        assert row["status"] == "missing" and row["ok"] is False and row["location"] is None
    backbone = rows["backbone:facebook/DiT-XL-2-256"]
    assert backbone["pinned"] is True and re.fullmatch(r"[0-9a-f]{40}", backbone["revision"])
    assert backbone["missing"] == ["transformer/config.json", "transformer/diffusion_pytorch_model.bin"]
    vae = rows["audio-vae:cvssp/audioldm-s-full-v2"]
    assert vae["revision"] == "main" and vae["pinned"] is False
    assert "error:" in result.stderr and "error:" not in result.stdout

    tiny = runner.invoke(app, ["download", "--preset", "tiny", "--check", "--json"])
    assert tiny.exit_code == 0 and json.loads(tiny.stdout) == {"preset": "tiny", "check": True, "weights": [],
                                                                 "missing": 0, "fix": None}


def _identifiers() -> list[str]:
    """What the --check table shows that must never be cut: repo ids, file paths, revisions."""
    out: list[str] = []
    cfg = load_preset("aist")
    for e in entries_for(cfg, required_groups(cfg)):  # what `download --preset aist --check` lists
        out += [e.display_repo, e.revision, *(e.repo_path(f.name) for f in e.files)]
    return out


def test_download_check_table_keeps_identifiers_whole_when_piped(empty_caches: Path) -> None:
    # A real pipe (`avdit download --check | cat`), with a narrow COLUMNS that Rich would otherwise obey.
    env = {**os.environ, "COLUMNS": "60", "HF_HOME": str(empty_caches / "hf")}
    out = subprocess.run([sys.executable, "-m", "avdit_cli", "download", "--preset", "aist", "--check"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "missing" in out.stdout
    for ident in _identifiers():
        assert any(ident in line for line in out.stdout.splitlines()), ident
    # The error line is one line too, its command whole.
    assert "avdit download --preset aist --only backbone,video-vae,audio-vae,vocoder,eval" in out.stderr


def test_long_paths_and_log_lines_stay_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 6) / "avdit-home"
    monkeypatch.setenv("AVDIT_HOME", str(deep))
    result = runner.invoke(app, ["info", "--preset", "tiny"])  # a table with paths, under a non-terminal
    assert result.exit_code == 0, result.output
    assert any(str(deep) in line for line in result.output.splitlines())

    from avdit_cli.cli.common import console

    line = "3/6 pretrain the tiny image backbone " + "x" * 150
    printed = runner.invoke(_printer(console, line), [])
    assert printed.output.rstrip("\n") == line


def _printer(console, text: str):  # type: ignore[no-untyped-def]
    import typer

    one = typer.Typer()

    @one.command()
    def main() -> None:
        console.print(text, highlight=False)

    return one


def test_piped_progress_is_a_plain_line_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A piped log of a long step (finetune, generate, preprocess) gets a line now and then, never a bar."""
    import io

    from rich.console import Console

    from avdit_cli.cli import common

    out = io.StringIO()
    progress = common.PipedProgress(Console(file=out, force_terminal=False, width=40))
    monkeypatch.setattr(common, "PIPED_PROGRESS_EVERY_S", 0.0)
    progress("finetune: step 10/100, a line longer than the forty columns of this console")
    monkeypatch.setattr(common, "PIPED_PROGRESS_EVERY_S", 3600.0)
    progress("finetune: step 20/100")  # too soon: dropped
    progress("finetune: step 100/100", final=True)
    assert out.getvalue().splitlines() == ["finetune: step 10/100, a line longer than the forty columns of this "
                                           "console", "finetune: step 100/100"]
    on_terminal = io.StringIO()
    monkeypatch.setattr(common, "PIPED_PROGRESS_EVERY_S", 0.0)
    common.PipedProgress(Console(file=on_terminal, force_terminal=True))("step 1")
    assert on_terminal.getvalue() == ""  # the bar is shown there instead
