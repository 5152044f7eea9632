"""The CLI through Typer's CliRunner: help of every command, `info`, and the error contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from avdit_cli.cli.app import app

runner = CliRunner()


def command_names() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_root_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in command_names():
        assert name in result.output


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("avdit ")


def test_info_prints_the_resolved_paper_setting() -> None:
    result = runner.invoke(app, ["info", "--preset", "aist"])
    assert result.exit_code == 0, result.output
    assert "facebook/DiT-XL-2-256" in result.output
    assert "hidden_size: 1152" in result.output
    assert "torch" in result.output


def test_info_json() -> None:
    result = runner.invoke(app, ["info", "--preset", "tiny", "--set", "train.lr=0.01", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["config"]["train"]["lr"] == 0.01
    assert data["config"]["name"] == "tiny"
    assert {"versions", "device", "locations"} <= set(data)


def test_unknown_preset_is_one_line_exit_1() -> None:
    result = runner.invoke(app, ["info", "--preset", "nosuch"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "aist" in lines[0] and "tiny" in lines[0]


def test_bad_override_names_key_and_type() -> None:
    result = runner.invoke(app, ["info", "--preset", "aist", "--set", "train.lr=abc"])
    assert result.exit_code == 1
    assert "train.lr" in result.output and "a number" in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback() -> None:
    result = runner.invoke(app, ["--debug", "info", "--preset", "nosuch"])
    os.environ.pop("AVDIT_DEBUG", None)
    assert result.exit_code == 1
    assert result.exception is not None and type(result.exception).__name__ == "ConfigError"


def test_bad_usage_is_exit_2() -> None:
    result = runner.invoke(app, ["info", "--no-such-flag"])
    assert result.exit_code == 2


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "avdit_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("avdit ")


def test_info_params_counts_the_paper_model_without_weights() -> None:
    result = runner.invoke(app, ["info", "--preset", "aist", "--params", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    total = rows["total"]
    assert rows["backbone"]["total"] == 674_834_720 and rows["backbone"]["trainable"] == 0
    assert total["total"] == total["frozen"] + total["trainable"]
    assert 0 < total["trainable"] < total["total"] / 4


def test_bad_device_is_one_line_everywhere(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AVDIT_RUNS", str(tmp_path / "runs"))
    result = runner.invoke(app, ["finetune", "-p", "tiny", "--device", "foo"])
    assert result.exit_code == 1
    assert "--device" in result.output and "Traceback" not in result.output
    from avdit_cli.errors import ConfigError
    from avdit_cli.pipelines.distributed import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
