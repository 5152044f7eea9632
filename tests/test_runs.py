"""Run folders, checkpoints, the optimiser state round trip, lr schedules and the EMA (no model, fast)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from avdit_cli.config import LrSchedule, load_preset
from avdit_cli.errors import TrainingError
from avdit_cli.pipelines.optim import EMA, lr_at
from avdit_cli.fileio import atomic_write_bytes, file_mode
from avdit_cli.pipelines.runs import (
    CHECKPOINTS,
    LATEST,
    append_metrics,
    checkpoint_steps,
    latest_run,
    load_checkpoint,
    new_run_dir,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_checkpoint_state,
    read_metrics,
    remove_stale_temps,
    resolve_checkpoint,
    save_checkpoint,
    truncate_metrics,
)

CFG = load_preset("tiny")


def params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.nn.Parameter(torch.randn(3, 4, generator=g)),
            "b.bias": torch.nn.Parameter(torch.randn(5, generator=g))}


def adam_steps(named: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, steps: range) -> None:
    for s in steps:
        opt.zero_grad()
        loss = sum(((p - s) ** 2).sum() for p in named.values())
        loss.backward()
        opt.step()


def save(run: Path, step: int, keep: int = 3) -> Path:
    named = params()
    return save_checkpoint(run, step, {k: p.detach() for k, p in named.items()},
                           {k: p.detach() * 2 for k, p in named.items()}, {}, {"config": CFG.to_dict()}, keep)


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoint_round_trip_and_permissions(tmp_path: Path, umask022: None) -> None:
    named = params()
    opt = torch.optim.AdamW(list(named.values()), lr=0.1, weight_decay=0.01)
    adam_steps(named, opt, range(3))
    optim_tensors, meta = optimizer_to_tensors(opt)
    run = tmp_path / "run"
    path = save_checkpoint(run, 3, {k: p.detach() for k, p in named.items()}, {"a.weight": torch.ones(3, 4)},
                           optim_tensors, {"config": CFG.to_dict(), "optimizer": meta}, keep=2)
    assert path == run / CHECKPOINTS / "step_00000003"
    assert (run / LATEST).read_text() == "step_00000003\n"
    for f in [run / LATEST, *path.iterdir()]:
        assert f.stat().st_mode & 0o777 == 0o644 == file_mode(), f
    ckpt = load_checkpoint(run)
    assert ckpt.step == 3 and ckpt.config == CFG and ckpt.run_dir == run
    torch.testing.assert_close(ckpt.model["a.weight"], named["a.weight"].detach(), rtol=0, atol=0)
    assert set(ckpt.ema) == {"a.weight"}
    assert read_checkpoint_state(run)[1]["step"] == 3

    # The optimiser continues exactly: 2 more steps from the restored state == 5 steps straight.
    straight = params()
    opt_s = torch.optim.AdamW(list(straight.values()), lr=0.1, weight_decay=0.01)
    adam_steps(straight, opt_s, range(5))
    restored = {k: torch.nn.Parameter(v.clone()) for k, v in ckpt.model.items()}
    opt_r = torch.optim.AdamW(list(restored.values()), lr=0.1, weight_decay=0.01)
    optimizer_from_tensors(opt_r, ckpt.optim, json.loads(json.dumps(ckpt.state["optimizer"])))
    adam_steps(restored, opt_r, range(3, 5))
    for k in straight:
        torch.testing.assert_close(restored[k], straight[k], rtol=0, atol=0)


def test_optimizer_state_that_does_not_fit_is_a_training_error(tmp_path: Path) -> None:
    named = params()
    opt = torch.optim.AdamW(list(named.values()), lr=0.1)
    adam_steps(named, opt, range(1))
    tensors, meta = optimizer_to_tensors(opt)
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(TrainingError, match="optimiser state"):
        optimizer_from_tensors(other, tensors, meta)


def test_keep_prunes_old_and_abandoned_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (10, 20, 30, 40):
        save(run, step, keep=2)
    assert sorted(checkpoint_steps(run)) == [30, 40]
    # Resumed from 30 and saved at 35: 40 belongs to the abandoned future and goes; `latest` follows.
    save(run, 35, keep=2)
    assert sorted(checkpoint_steps(run)) == [30, 35]
    assert resolve_checkpoint(run).name == "step_00000035"
    save(run, 35, keep=1)  # the same step again replaces it
    assert sorted(checkpoint_steps(run)) == [35]


def test_resolve_checkpoint_errors_and_latest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    monkeypatch.setenv("AVDIT_RUNS", str(tmp_path / "runs"))
    with pytest.raises(TrainingError, match="no run with a checkpoint"):
        latest_run()
    save(tmp_path / "runs" / "a", 1)
    save(tmp_path / "runs" / "b", 1)
    old = time.time() - 100
    os.utime(tmp_path / "runs" / "a" / LATEST, (old, old))
    assert latest_run() == tmp_path / "runs" / "b"
    assert load_checkpoint().run_dir == tmp_path / "runs" / "b"  # None: the latest run
    (tmp_path / "runs" / "b" / LATEST).write_text("step_00000099\n")
    with pytest.raises(TrainingError, match="missing"):
        resolve_checkpoint(tmp_path / "runs" / "b")
    ckpt = tmp_path / "runs" / "a" / CHECKPOINTS / "step_00000001"
    (ckpt / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot be read"):
        load_checkpoint(ckpt)


def test_new_run_dir_refuses_a_used_folder(tmp_path: Path) -> None:
    run = new_run_dir(CFG, "x", root=tmp_path)
    assert run == tmp_path / "x" and run.is_dir()
    new_run_dir(CFG, "x", root=tmp_path)  # empty: fine
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(TrainingError, match="already exists"):
        new_run_dir(CFG, "x", root=tmp_path)
    assert new_run_dir(CFG, root=tmp_path).name.startswith("tiny-")


def test_metrics_truncate_and_torn_lines(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")


def test_stale_temps_are_removed(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS / ".step_00000005.tmp").mkdir(parents=True)
    (tmp_path / ".latest.abc.tmp").write_text("x")
    atomic_write_bytes(tmp_path / "keep.txt", b"ok")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [CHECKPOINTS, "keep.txt"]


def test_lr_schedules() -> None:
    const = CFG.train.__class__(lr=1.0, warmup_steps=4, steps=20)
    assert [lr_at(s, const) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = CFG.train.__class__(lr=1.0, warmup_steps=0, steps=10, lr_schedule=LrSchedule.COSINE)
    assert lr_at(0, cos) == 1.0
    assert lr_at(5, cos) == pytest.approx(0.5)
    assert lr_at(10, cos) == pytest.approx(0.0, abs=1e-12)
    assert all(lr_at(s, cos) >= lr_at(s + 1, cos) for s in range(10))
    assert math.isclose(lr_at(3, CFG.train.__class__(lr=2.0, warmup_steps=0)), 2.0)


def test_ema() -> None:
    named = params()
    ema = EMA(named, decay=0.75)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in named.values():
            p.add_(4.0)
    ema.update(0)
    for k, p in named.items():
        torch.testing.assert_close(ema.shadow[k], 0.75 * start[k] + 0.25 * p.detach())
    other = EMA(params(1), decay=0.75)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.shadow["b.bias"], ema.shadow["b.bias"])
    with pytest.raises(KeyError):
        other.load_state_dict({"a.weight": torch.zeros(3, 4)})
    with pytest.raises(KeyError):
        other.load_state_dict({"a.weight": torch.zeros(3, 4), "b.bias": torch.zeros(6)})


def test_ema_warmup_follows_the_diffusers_rule_and_forgets_the_start() -> None:
    named = params()
    ema = EMA(named, decay=0.75, warmup=True)
    # diffusers' EMAModel: 0 for the first update, then min(decay, (1 + n) / (10 + n))
    assert [ema.decay_at(n) for n in (0, 1, 20, 30)] == [0.0, 2 / 11, 0.7, 0.75]
    with torch.no_grad():
        for p in named.values():
            p.add_(4.0)
    ema.update(0)  # the first update replaces the start with the weights
    for k, p in named.items():
        torch.testing.assert_close(ema.shadow[k], p.detach())
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in named.values():
            p.add_(1.0)
    ema.update(1)
    for k, p in named.items():
        torch.testing.assert_close(ema.shadow[k], 2 / 11 * before[k] + 9 / 11 * p.detach())
    assert ema.initial_share(0) == 1.0 and ema.initial_share(3) == 0.0
    plain = EMA(params(), decay=0.9995)
    assert plain.decay_at(0) == plain.decay_at(5) == 0.9995
    assert plain.initial_share(2000) == pytest.approx(0.9995 ** 2000)


def test_resume_refuses_changes_that_would_alter_the_data_order(tmp_path: Path) -> None:
    from avdit_cli.config import load_preset
    from avdit_cli.errors import ConfigError
    from avdit_cli.pipelines.finetune import _check_resume
    from avdit_cli.pipelines.runs import Checkpoint

    cfg = load_preset("tiny")
    ckpt = Checkpoint(tmp_path / "checkpoints" / "step_00000001", {"step": 1, "config": cfg.to_dict()}, {}, {}, {})
    _check_resume(ckpt, cfg.replace(**{"train.steps": 999, "train.grad_accum": 2}))  # allowed
    for change in ({"train.seed": 1}, {"train.batch_size": 4}, {"model.lora_rank": 2}):
        with pytest.raises(ConfigError, match="--resume"):
            _check_resume(ckpt, cfg.replace(**change))
