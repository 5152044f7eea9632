"""benchmarks/gpu_suite.py cannot rot: its CPU smoke mode runs every section's code path at tiny sizes, and its
runner records a failing or overlong section and goes on (what lets one GPU run yield the whole table)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def load_suite() -> ModuleType:
    """The script as a module (its top level imports the standard library only)."""
    if "gpu_suite" in sys.modules:
        return sys.modules["gpu_suite"]
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, float]:
    out = tmp_path_factory.mktemp("gpu_suite")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the tiny models are slower with threads on shared cores
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SUITE), "--cpu-smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, out, time.perf_counter() - t0


def test_cpu_smoke_runs_every_section(smoke: tuple[subprocess.CompletedProcess, Path, float]) -> None:
    proc, out, seconds = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    suite = json.loads((out / "gpu_suite.json").read_text())
    assert list(suite["sections"]) == list(load_suite().SECTIONS)
    for name, res in suite["sections"].items():
        assert res["status"] == "ok", f"{name}: {res.get('error')}\n{res.get('traceback')}"

    def fig(section: str, *path: str) -> object:
        node = suite["sections"][section]["figures"]
        for key in path:
            node = node[key]
        return node

    assert fig("env", "env", "torch") == torch.__version__
    assert fig("denoiser", "eager", "ms_per_clip") > 0 and fig("denoiser", "flops_per_clip") > 0
    assert sum(fig("denoiser", "sdpa_kernels").values()) > 0  # SDPA, not a hand-written softmax
    assert fig("denoiser_compile", "compiled", "ms_per_clip") > 0
    assert fig("dit_vs_diffusers", "parity_rel_err_fp32") < 1e-4  # the same weights really went into both
    assert set(fig("train_step", "rows")) == {"b2-plain", "b2-ckpt"}
    assert fig("generate", "b2", "files") == 2
    assert fig("preprocess", "sd_vae_frames_per_s", "chunk8") > 0 and fig("preprocess", "audio_vae_clips_per_s") > 0
    assert fig("preprocess", "decode", "workers").keys() == {"1", "2"}
    assert 0 < fig("precision", "denoiser", "video", "bf16_vs_fp32") < 0.1
    assert fig("precision", "denoiser", "video", "fp32_vs_fp64") < 1e-5
    assert fig("nccl", "runs") is True and fig("nccl", "probe", "ok") is True
    assert fig("nccl", "metrics_steps") == [1, 2, 3, 4]  # 2 steps, then resumed to 4

    table = (out / "gpu_suite.md").read_text()
    assert "torch " + torch.__version__ in table and "CUDA" in table and "card: " in table
    assert "| figure | value | goal | verdict |" in table and "not measured" not in table
    assert "=====" in (out / "profiles.txt").read_text()  # smoke mode profiles every timed figure
    print(f"gpu_suite --cpu-smoke: {seconds:.1f} s")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CUDA section on a machine without one")
def test_isolated_sections_record_errors_and_time_boxes(tmp_path: Path) -> None:
    gs = load_suite()
    spec = gs.smoke_spec(gs.parse_args(["--cpu-smoke"]))
    (tmp_path / "results").mkdir()
    cuda_spec = tmp_path / "cuda.json"
    gs.write_json(cuda_spec, dataclasses.asdict(dataclasses.replace(spec, device="cuda", isolate="process")))
    res = gs.run_isolated("env", cuda_spec, tmp_path, timeout=120, log=tmp_path / "log")
    assert res["status"] == "error" and "no CUDA device" in res["error"]

    cpu_spec = tmp_path / "cpu.json"
    gs.write_json(cpu_spec, dataclasses.asdict(dataclasses.replace(spec, isolate="process")))
    t0 = time.perf_counter()
    res = gs.run_isolated("denoiser", cpu_spec, tmp_path, timeout=0.5, log=tmp_path / "log")
    assert res["status"] == "timeout" and time.perf_counter() - t0 < 30
    assert "===== denoiser" in (tmp_path / "log").read_text()


def test_a_spent_budget_skips_sections_and_still_writes_the_table(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gs = load_suite()
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "AVDIT_HOME", "AVDIT_RUNS", "PYTHONUNBUFFERED",
                "DIFFUSERS_VERBOSITY", "PYTHONPATH"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # run_suite sets these; undone after the test
    spec = gs.smoke_spec(gs.parse_args(["--cpu-smoke"]))
    rc = gs.run_suite(spec, ["env", "nccl"], tmp_path / "out", tmp_path / "work", budget=0)
    assert rc == 1
    suite = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert [s["status"] for s in suite["sections"].values()] == ["skipped", "skipped"]
    table = (tmp_path / "out" / "gpu_suite.md").read_text()
    assert "not measured" in table and "card unknown" in table
