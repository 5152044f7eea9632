"""`avdit finetune` on a tiny synthetic cache (CPU): the loss falls, resume (by steps and by a real SIGINT)
replays an uninterrupted run exactly, torchrun x2 (gloo) gives the single-process gradients, a checkpoint
holds only the trained tensors and reloads, a NaN stops the run and keeps the last good checkpoint, an early
error leaves no run folder, and pretrain mode writes a backbone DiT.from_pretrained reads.

Sizes: the tiny preset with 4-frame clips, a 2-block DiT and batch 4, so a step takes ~0.1 s on one core.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from avdit_cli.cli.app import app
from avdit_cli.config import Config, load_preset
from avdit_cli.data.cache import read_manifest
from avdit_cli.data.synthetic import make_dataset
from avdit_cli.errors import ConfigError, TrainingError, WeightsError
from avdit_cli.models import AVDiT, DiT
from avdit_cli.pipelines import finetune as ft
from avdit_cli.pipelines.finetune import FinetuneResult, finetune, step_clip_ids
from avdit_cli.pipelines.preprocess import preprocess
from avdit_cli.fileio import file_mode, sha256_file
from avdit_cli.pipelines.runs import LATEST, load_checkpoint, read_metrics

SMALL = ["data.num_frames=4", "model.depth=2", "train.batch_size=4", "train.log_every=1",
         "train.num_workers=0", "train.checkpoint_every=1000"]
N_STEPS = 24  # the uninterrupted reference run
LOSS_KEYS = ("loss", "video", "audio", "video_mse", "video_vb", "audio_mse", "audio_vb")


@dataclass
class Env:
    root: Path
    cache: Path
    backbone: Path
    pretrain: FinetuneResult

    def cfg(self, *extra: str) -> Config:
        return load_preset("tiny", [*SMALL, f"model.backbone_path={self.backbone}", *extra])

    def sub_env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "AVDIT_RUNS": str(self.root / "runs"),
                "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Env:
    """Synthetic clips -> latent cache (workers=0) -> a small image backbone made by pretrain mode."""
    root = tmp_path_factory.mktemp("finetune")
    make_dataset(root / "data", 6, seconds=2.0)  # 6 files x 5 clips of 0.4 s
    cfg = load_preset("tiny", SMALL)
    preprocess(cfg, root / "data", root / "cache", workers=0)
    # ema_decay 0: the exported backbone is the trained weights themselves (adaLN no longer zero).
    pre_cfg = load_preset("tiny", [*SMALL, "train.mode=pretrain", "train.steps=12", "train.ema_decay=0"])
    pre = finetune(pre_cfg, cache_dir=root / "cache", run_dir=root / "runs" / "pretrain", tensorboard=False)
    return Env(root, root / "cache", pre.run_dir / "backbone", pre)


@pytest.fixture(scope="module")
def full(env: Env) -> FinetuneResult:
    """The uninterrupted reference run of N_STEPS."""
    return finetune(env.cfg(f"train.steps={N_STEPS}"), cache_dir=env.cache, run_dir=env.root / "runs" / "full")


def losses(run_dir: Path) -> list[dict[str, float]]:
    return [{k: row[k] for k in ("step", *LOSS_KEYS)} for row in read_metrics(run_dir)]


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics (loss terms of every step) and the same final trained tensors, EMA and AdamW state."""
    la, lb = losses(a), losses(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, len(la) + 1))
    for ra, rb in zip(la, lb):
        for k in LOSS_KEYS:
            assert abs(ra[k] - rb[k]) <= 1e-6, (ra["step"], k, ra[k], rb[k])
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step
    for part in ("model", "ema", "optim"):
        ta, tb = getattr(ca, part), getattr(cb, part)
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6, msg=f"{part}.{k}")


# ---- pretrain mode ---------------------------------------------------------------------------------------
def test_pretrain_writes_a_loadable_backbone(env: Env) -> None:
    model, report = DiT.from_pretrained(env.backbone, output_loading_info=True)
    assert report.format.startswith("diffusers")
    assert (model.hidden_size, model.depth, model.in_channels, model.input_size) == (64, 2, 3, 16)
    ckpt = load_checkpoint(env.pretrain.run_dir)
    assert ckpt.state["mode"] == "pretrain"
    assert set(ckpt.model) == set(model.state_dict())  # every DiT weight is trained in this mode
    # The exported weights are the EMA (= live here, decay 0) weights of the last step.
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, ckpt.ema["blocks.0.attn.qkv.weight"])
    assert model.blocks[0].adaLN_modulation[-1].weight.abs().max() > 0
    for f in [*env.backbone.iterdir(), *ckpt.path.iterdir(), env.pretrain.run_dir / LATEST]:
        assert f.stat().st_mode & 0o777 == file_mode(), f  # not mkstemp's 0600


# ---- learning --------------------------------------------------------------------------------------------
def test_loss_falls(full: FinetuneResult) -> None:
    rows = read_metrics(full.run_dir)
    assert len(rows) == N_STEPS
    first = sum(r["loss"] for r in rows[:4]) / 4
    last = sum(r["loss"] for r in rows[-4:]) / 4
    assert last < 0.85 * first, (first, last)
    for key in ("lr", "grad_norm", "clips_per_s", "peak_mem_gib", "video", "audio"):
        assert key in rows[-1]


# ---- resume ----------------------------------------------------------------------------------------------
def test_resume_by_steps_matches_uninterrupted(env: Env, full: FinetuneResult) -> None:
    run = env.root / "runs" / "split"
    first = finetune(env.cfg("train.steps=9"), cache_dir=env.cache, run_dir=run)
    assert first.step == 9 and first.checkpoint is not None
    rest = finetune(env.cfg(f"train.steps={N_STEPS}"), resume=run)  # the cache folder comes from the run
    assert rest.step == N_STEPS and rest.run_dir == run
    assert_same_run(full.run_dir, run)


def test_sigint_saves_and_resume_matches(env: Env, full: FinetuneResult) -> None:
    run = env.root / "runs" / "sig"
    args = [sys.executable, "-m", "avdit_cli", "finetune", "-p", "tiny", "--cache", str(env.cache), "--name", "sig",
            *[a for kv in SMALL for a in ("--set", kv)], "--set", f"model.backbone_path={env.backbone}",
            "--set", f"train.steps={N_STEPS}"]
    proc = subprocess.Popen(args, env=env.sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(run)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    ckpt = load_checkpoint(run)  # loadable, and it is the step the run stopped at
    assert 3 <= ckpt.step < N_STEPS, out
    assert len(read_metrics(run)) == ckpt.step
    assert "interrupted" in out
    # the tiny preset's EMA (0.99) is still mostly its start this early: said again at the stop
    assert f"the initial weights at step {ckpt.step} (train.ema_decay=0.99)" in out.replace("\n", " "), out
    finetune(env.cfg(f"train.steps={N_STEPS}"), resume=run)
    assert_same_run(full.run_dir, run)


def test_ema_warmup_resumes_exactly_and_the_start_share_is_noted(env: Env) -> None:
    """Update n's decay comes from the step, so a resumed warmup run equals an uninterrupted one; a plan whose
    EMA would still be mostly the initial weights is said before training, and a run stopped early says it."""
    whole, notes = env.root / "runs" / "ema_whole", []
    finetune(env.cfg("train.steps=6", "train.ema_warmup=true"), cache_dir=env.cache, run_dir=whole,
             on_log=notes.append)
    assert not [n for n in notes if "EMA" in n]  # warmup: nothing of the start is left to note
    split = env.root / "runs" / "ema_split"
    finetune(env.cfg("train.steps=3", "train.ema_warmup=true"), cache_dir=env.cache, run_dir=split)
    finetune(env.cfg("train.steps=6", "train.ema_warmup=true"), resume=split)
    assert_same_run(whole, split)
    plain = load_checkpoint(whole).ema
    one = finetune(env.cfg("train.steps=1", "train.ema_warmup=true"), cache_dir=env.cache,
                   run_dir=env.root / "runs" / "ema_one")
    ckpt = load_checkpoint(one.run_dir)  # update 0 has decay 0: the EMA is the weights after step 1
    for k, v in ckpt.ema.items():
        torch.testing.assert_close(v, ckpt.model[k].float(), rtol=0, atol=0, msg=k)
    notes = []
    finetune(env.cfg("train.steps=6", "train.ema_decay=0.999"), cache_dir=env.cache,
             run_dir=env.root / "runs" / "ema_plain", on_log=notes.append)
    assert [n for n in notes if "will still be 99% the initial weights after train.steps=6" in n and "ema_warmup" in n], notes
    assert any((plain[k] - v).abs().max() > 1e-4 for k, v in load_checkpoint(env.root / "runs" / "ema_plain").ema.items())


# ---- checkpoints -----------------------------------------------------------------------------------------
def test_checkpoint_holds_only_trained_tensors_and_reloads(env: Env, full: FinetuneResult) -> None:
    ckpt = load_checkpoint(full.run_dir)
    model = full.model
    assert isinstance(model, AVDiT)
    adapter = dict(model.adapter_named_parameters())
    backbone_names = {f"backbone.{k}" for k in model.backbone.state_dict()}
    assert set(ckpt.model) == set(ckpt.ema) == set(adapter)
    assert not backbone_names & set(ckpt.model)
    n_train = sum(p.numel() for p in adapter.values())
    assert ckpt.state["trainable_params"] == n_train
    # float32 x (weights + EMA + 2 AdamW slots), plus the header and AdamW's step counters.
    size = (ckpt.path / "trainable.safetensors").stat().st_size
    assert 16 * n_train <= size <= 16 * n_train + 64 * 1024, (size, n_train)
    ref = ckpt.state["backbone"]
    assert ref["sha256"] == sha256_file(env.backbone / "diffusion_pytorch_model.safetensors")
    assert Path(ref["path"]) == env.backbone.resolve()
    assert ckpt.config == env.cfg(f"train.steps={N_STEPS}")

    backbone = DiT.from_pretrained(env.backbone)
    fresh = AVDiT.from_config(ckpt.config, backbone=backbone, generator=torch.Generator().manual_seed(7)).eval()
    fresh.load_adapter_state_dict(ckpt.model)
    model.eval()
    g = torch.Generator().manual_seed(1)
    f, c, h, w = ckpt.config.data.video_latent_shape
    video, audio = torch.randn(2, f, c, h, w, generator=g), torch.randn(2, *ckpt.config.data.audio_latent_shape,
                                                                       generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        want, got = model(video, audio, t), fresh(video, audio, t)
    for k in ("video", "audio"):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert want["audio"].abs().max() > 0  # trained: the zero-initialised audio head moved


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(env: Env, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(env.cache, cache)
    cfg = env.cfg("train.steps=5", "train.checkpoint_every=1")
    manifest = read_manifest(cache)
    victim = manifest["clips"][step_clip_ids(len(manifest["clips"]), cfg.train.seed, 1, cfg.train.batch_size)[0]]
    shard = cache / manifest["shards"][victim["shard"]]["file"]
    tensors = load_file(str(shard))
    tensors["video"][victim["row"], 0, 0, 0, 0] = float("nan")  # one latent value of a clip of step 2
    save_file(tensors, str(shard))

    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite at step 2") as info:
        finetune(cfg, cache_dir=cache, run_dir=run)
    assert "step_00000001" in str(info.value)
    ckpt = load_checkpoint(run)
    assert ckpt.step == 1 and (run / LATEST).read_text().strip() == "step_00000001"
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())
    assert [r["step"] for r in read_metrics(run)] == [1]


# ---- failures leave nothing half-made --------------------------------------------------------------------
def test_early_errors_leave_no_run_folder(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="train.batch_size"):
        finetune(env.cfg("train.batch_size=64"), cache_dir=env.cache, run_dir=run)
    with pytest.raises(WeightsError, match="backbone"):
        finetune(load_preset("tiny", [*SMALL, f"model.backbone_path={tmp_path / 'nope'}"]), cache_dir=env.cache,
                 run_dir=run)
    assert not run.exists()

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom in the first forward")

    monkeypatch.setattr(ft, "_step_terms", broken)
    with pytest.raises(RuntimeError, match="boom"):
        finetune(env.cfg("train.steps=2"), cache_dir=env.cache, run_dir=run)
    assert not run.exists()  # made, then removed: it failed before its first step

    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(TrainingError, match="already exists"):
        finetune(env.cfg("train.steps=2"), cache_dir=env.cache, run_dir=run)
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_resume_refuses_a_changed_model(env: Env, full: FinetuneResult) -> None:
    with pytest.raises(ConfigError, match="model"):
        finetune(env.cfg(f"train.steps={N_STEPS + 1}", "model.lora_rank=2"), resume=full.run_dir)
    result = CliRunner().invoke(app, ["finetune", "--resume", str(env.root / "nowhere")])
    assert result.exit_code == 1 and "does not exist" in result.output


# ---- several processes -----------------------------------------------------------------------------------
def test_torchrun_two_ranks_match_one_process(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = env.cfg("train.steps=1")
    monkeypatch.setenv(ft.DUMP_GRADS_ENV, str(tmp_path / "g1.safetensors"))
    single = finetune(one, cache_dir=env.cache, run_dir=tmp_path / "single")
    monkeypatch.setenv(ft.DUMP_GRADS_ENV, str(tmp_path / "accum.safetensors"))
    finetune(env.cfg("train.steps=1", "train.grad_accum=2"), cache_dir=env.cache, run_dir=tmp_path / "accum")
    monkeypatch.delenv(ft.DUMP_GRADS_ENV)

    sub_env = {**env.sub_env(), ft.DUMP_GRADS_ENV: str(tmp_path / "g2.safetensors"), "AVDIT_RUNS": str(tmp_path)}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "avdit_cli", "finetune", "-p", "tiny", "--cache", str(env.cache), "--name", "ddp",
            *[a for kv in SMALL for a in ("--set", kv)], "--set", f"model.backbone_path={env.backbone}",
            "--set", "train.steps=1"]
    proc = subprocess.run(args, env=sub_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    g1 = load_file(str(tmp_path / "g1.safetensors"))
    assert set(g1) == {k for k, _ in single.model.adapter_named_parameters()}
    assert max(v.abs().max() for v in g1.values()) > 0
    for other in ("g2", "accum"):
        g = load_file(str(tmp_path / f"{other}.safetensors"))
        assert g.keys() == g1.keys()
        for k in g1:
            torch.testing.assert_close(g[k], g1[k], rtol=1e-5, atol=1e-5, msg=f"{other}: {k}")
    # Only rank 0 wrote: one metrics row (the global batch's loss) and one checkpoint.
    rows = read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in rows] == [1]
    assert abs(rows[0]["loss"] - read_metrics(single.run_dir)[0]["loss"]) <= 1e-5
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["step_00000001"]



# ---- TensorBoard is optional -----------------------------------------------------------------------------
def test_tensorboard_is_skipped_when_missing_and_gets_every_metric(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if `tensorboard` were not installed
    assert ft._tensorboard(tmp_path, True) is None
    assert ft._tensorboard(tmp_path, False) is None

    class Recorder:
        def __init__(self) -> None:
            self.scalars: dict[str, tuple[float, int]] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars[tag] = (value, step)

    writer = Recorder()
    ft._log_row(tmp_path, writer, ft.StepInfo(3, 10, 1.5, {"video": 1.0, "audio": 0.5}, 1e-3, 0.7, 12.0, 0.1))
    assert writer.scalars["train/loss"] == (1.5, 3) and writer.scalars["train/audio"] == (0.5, 3)
    assert read_metrics(tmp_path)[0]["video"] == 1.0


def test_batch_shares_add_up_to_the_masked_batch_loss() -> None:
    """Split over ranks / micro-batches, the shares sum to training_losses' loss of the whole batch, also
    when some clips' audio does not count (a per-part masked mean would weigh them wrongly)."""
    g = torch.Generator().manual_seed(0)
    terms = {k: torch.rand(6, generator=g) for k in ("video", "video_mse", "audio", "audio_mse")}
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    weights = {"video": 1.0, "audio": 0.5}
    whole = terms["video"].mean() + 0.5 * (terms["audio"] * mask).sum() / mask.sum()
    counts = {"video": 6, "audio": 3}
    parts = [ft._batch_share({k: v[i:i + 2] for k, v in terms.items()}, {"audio": mask[i:i + 2]}, counts, weights)
             for i in (0, 2, 4)]
    torch.testing.assert_close(sum(p["loss"] for p in parts), whole)
    torch.testing.assert_close(sum(p["audio_mse"] for p in parts), (terms["audio_mse"] * mask).sum() / 3)


# ---- full mode: the upper bound (every weight trained) -------------------------------------------------------
def test_full_mode_trains_the_backbone_too_and_generates(env: Env, tmp_path: Path) -> None:
    from avdit_cli.pipelines.generate import GenerateOptions, generate, load_run_model, open_checkpoint

    before = DiT.from_pretrained(env.backbone).state_dict()
    result = finetune(env.cfg("train.mode=full", "train.steps=3"), cache_dir=env.cache, run_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt.state["mode"] == "full"
    assert any(k.startswith("backbone.") for k in ckpt.model) and any(k.startswith("temporal.") for k in ckpt.model)
    moved = [k for k, v in before.items() if not torch.equal(ckpt.model[f"backbone.{k}"], v)]
    assert moved, "the backbone did not train"
    # generate loads every weight from the checkpoint (the backbone file is the starting point only)
    model = load_run_model(open_checkpoint(result.run_dir), ckpt.config, torch.device("cpu"), ema=False)
    torch.testing.assert_close(model.backbone.state_dict()[moved[0]], ckpt.model[f"backbone.{moved[0]}"])
    out = generate(GenerateOptions(out_dir=tmp_path / "gen", num=1, checkpoint=result.run_dir, steps=2))
    assert len(out.files) == 1 and out.files[0].stat().st_size > 0


def _step_inputs(env: Env, cfg: Config, step: int, monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What one training step of 4 cached clips hands `training_losses` (noise, t) and its loss masks."""
    from avdit_cli.data.cache import LatentCache
    from avdit_cli.diffusion import Diffusion

    seen: dict[str, dict[str, torch.Tensor]] = {}

    def capture(diffusion, model_fn, x0, t, channel_dims, *, noise, **kw):
        seen.update(noise=dict(noise), t=dict(t))
        return {"loss": torch.zeros(())}

    monkeypatch.setattr(ft, "training_losses", capture)
    cache = LatentCache(env.cache)
    batch = {k: torch.stack([cache[i][k] for i in range(4)]) for k in ("video", "audio", "audio_ok")}
    _, masks = ft._step_terms(lambda *a: None, Diffusion.from_config(cfg.diffusion), cfg, batch, torch.arange(4),
                              step, torch.device("cpu"), pretrain=False)
    return seen["noise"], seen["t"], masks


def test_video_noise_correlation_reaches_the_training_noise(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for rho, low, high in ((0.0, -0.3, 0.3), (0.9, 0.8, 1.0)):
        noise, _, _ = _step_inputs(env, env.cfg(f"diffusion.video_noise_correlation={rho}"), 0, monkeypatch)
        v = noise["video"]  # (b, f, c, h, w)
        corr = float(torch.corrcoef(torch.stack([v[:, 0].flatten(), v[:, -1].flatten()]))[0, 1])
        assert low < corr < high, (rho, corr)


def test_given_video_clips_go_in_clean_without_a_video_loss_and_are_counted_out(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from avdit_cli.data.cache import LatentCache

    cfg = env.cfg("diffusion.independent_timesteps=true", "diffusion.given_video_prob=0.5")
    share = sum(ft.given_video(cfg, step, slot) for step in range(100) for slot in range(8)) / 800
    assert 0.42 < share < 0.58
    assert not any(ft.given_video(env.cfg(), step, slot) for step in range(20) for slot in range(8))  # off

    for step in range(6):
        _, t, masks = _step_inputs(env, cfg, step, monkeypatch)
        given = torch.tensor([ft.given_video(cfg, step, i) for i in range(4)])
        assert masks["video"].tolist() == (~given).float().tolist()
        assert (t["video"][given] == 0).all() and (t["audio"] >= 0).all()
    # the planner divides the video loss by the clips that carry one
    dataset = LatentCache(env.cache)
    per_step = cfg.train.batch_size
    plan = ft._batches(dataset, cfg, ft.dist_context(), 0, len(dataset) // per_step, per_step, pretrain=False)
    for step in range(3):
        _, slot, counts = next(plan)
        assert counts["video"] == sum(not ft.given_video(cfg, step, int(i)) for i in slot)


def test_staggered_frames_are_drawn_after_everything_else(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    base = env.cfg("diffusion.independent_timesteps=true", "diffusion.given_video_prob=0.25")
    stag = env.cfg("diffusion.independent_timesteps=true", "diffusion.given_video_prob=0.25",
                   "diffusion.frame_stagger_prob=1.0")
    for step in range(3):
        noise0, t0, masks0 = _step_inputs(env, base, step, monkeypatch)
        noise1, t1, masks1 = _step_inputs(env, stag, step, monkeypatch)
        # the same noise and audio t as without staggering: its draws come last
        assert all(torch.equal(noise0[m], noise1[m]) for m in noise0) and torch.equal(t0["audio"], t1["audio"])
        assert t0["video"].shape == (4,) and t1["video"].shape == (4, base.data.num_frames)
        given = masks0["video"] == 0
        assert (t1["video"][given] == 0).all() and torch.equal(masks0["video"], masks1["video"])
        assert all((row[1:] >= row[:-1]).all() for row in t1["video"][~given])  # later frames noisier


def test_staggered_frames_train_end_to_end(env: Env, tmp_path: Path) -> None:
    result = finetune(env.cfg("diffusion.independent_timesteps=true", "diffusion.frame_stagger_prob=0.5",
                              "train.steps=3"), cache_dir=env.cache, run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) and math.isfinite(r["video"]) for r in rows)


def test_x0_error_benchmark_runs_on_a_run(env: Env, tmp_path: Path) -> None:
    """benchmarks/x0_error.py (the diagnosis of what the temporal layers carry) on a tiny run, fit included."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("x0_error", Path(__file__).parents[1] / "benchmarks" / "x0_error.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    run = finetune(env.cfg("diffusion.independent_timesteps=true", "train.steps=2"), cache_dir=env.cache,
                   run_dir=tmp_path / "run").run_dir
    out = tmp_path / "x0.json"
    assert bench.main([str(run), "--cache", str(env.cache), "-n", "2", "--fit-steps", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [row["t"] for row in r["rows"]] == list(bench.LEVELS) and r["data_variance"] > 0
    values = [v for row in r["rows"] for k, v in row.items() if k != "t"]
    values += [*r["fit"]["before"].values(), *r["fit"]["after"].values()]
    assert all(math.isfinite(v) and v >= 0 for v in values)


def test_backbone_fidelity_reads_a_pretrain_checkpoint_as_its_ema_backbone(env: Env, tmp_path: Path) -> None:
    """benchmarks/backbone_fidelity.py follows a pretraining: a pretrain run's checkpoint loads as the DiT its
    EMA weights make (decay 0 here: the exported backbone itself); an adapter run's checkpoint is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "backbone_fidelity", Path(__file__).parents[1] / "benchmarks" / "backbone_fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    ckpt = env.pretrain.run_dir / "checkpoints" / (env.pretrain.run_dir / "latest").read_text().strip()
    dit, trained = bench.load_dit(ckpt)
    got, want = dit.state_dict(), DiT.from_pretrained(env.backbone).state_dict()
    assert got.keys() == want.keys() and trained == load_checkpoint(ckpt).config
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    # with a real EMA (decay 0.5) the weights read are the EMA ones, not the live ones
    pre_cfg = load_preset("tiny", [*SMALL, "train.mode=pretrain", "train.steps=2", "train.ema_decay=0.5"])
    pre = finetune(pre_cfg, cache_dir=env.cache, run_dir=tmp_path / "pre").run_dir
    saved = load_checkpoint(pre)
    read = bench.load_dit(pre / "checkpoints" / (pre / "latest").read_text().strip())[0].state_dict()
    assert any(not torch.equal(saved.ema[k], saved.model[k]) for k in saved.ema)
    for k in saved.ema:
        assert torch.equal(read[k], saved.ema[k]), k
    run = finetune(env.cfg("train.steps=1"), cache_dir=env.cache, run_dir=tmp_path / "run").run_dir
    adapters = run / "checkpoints" / (run / "latest").read_text().strip()
    with pytest.raises(ConfigError, match="pretrain run's checkpoint"):
        bench.load_dit(adapters)


def test_backbone_fidelity_runs_whole_clips_through_a_run_with_and_without_temporal_layers(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backbone_fidelity.py --run: one row per t0 with the temporal layers on and one with them off, the clip
    statistics included, written as JSON."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "backbone_fidelity", Path(__file__).parents[1] / "benchmarks" / "backbone_fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    run = finetune(env.cfg("diffusion.independent_timesteps=true", "train.steps=2"), cache_dir=env.cache,
                   run_dir=tmp_path / "run").run_dir
    # which rows ran with the temporal layers off: a spy on the real temporal_off, seen from round_trip
    off, seen = [False], []
    real_off, real_trip = bench.temporal_off, bench.round_trip

    @contextlib.contextmanager
    def spy_off(model):  # type: ignore[no-untyped-def]
        with real_off(model):
            off[0] = True
            try:
                yield
            finally:
                off[0] = False

    def spy_trip(*a, **kw):  # type: ignore[no-untyped-def]
        seen.append(off[0])
        return real_trip(*a, **kw)

    monkeypatch.setattr(bench, "temporal_off", spy_off)
    monkeypatch.setattr(bench, "round_trip", spy_trip)
    out = tmp_path / "fid.json"
    assert bench.main(["--run", str(run), "--real", str(env.root / "data"), "-n", "2", "--t0", "5", "7",
                       "--steps", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["t0"], r["temporal"], r["clips"]) for r in rows] == [(5, True, 2), (5, False, 2), (7, True, 2),
                                                                      (7, False, 2)]
    assert seen == [False, True, False, True]  # one batch per row: off exactly in the rows marked off
    for r in rows:
        assert set(r) >= {"smooth_moves", "near_moves", "median_step", "kept", "kept_any_colour", "x0_mse"}
        assert 0 <= r["x0_mse"] < 0.05  # nearly clean in: the video branch hands it back


def test_given_video_runs_end_to_end_and_needs_independent_timesteps(env: Env, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="independent_timesteps"):
        env.cfg("diffusion.given_video_prob=0.3")
    result = finetune(env.cfg("diffusion.independent_timesteps=true", "diffusion.given_video_prob=0.5",
                              "train.steps=3"), cache_dir=env.cache, run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)


def test_gpu_lease_script_stops_twins_by_deadline_and_packs_them_at_a_common_step(env: Env, tmp_path: Path) -> None:
    """scripts/gpu_demo_models.py on a CPU with a short deadline: both runs are stopped by SIGTERM (exit 130), and
    the joint and no-joint twins are packed at the same checkpoint step, trained with the EMA warmup."""
    import tarfile

    out = tmp_path / "out"
    sets = [kv for kv in SMALL if not kv.startswith("train.checkpoint_every")]
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "gpu_demo_models.py"),
           "--cache", str(env.cache), "--out", str(out), "--work", str(tmp_path / "work"), "--seconds", "25",
           "--pretrain-seconds", "0", "--seeds", "0", "--device", "cpu", "--every", "1", "--batch", "4",
           "--backbone", str(env.backbone), "--check-after", "15", *[a for kv in sets for a in ("--set", kv)]]
    proc = subprocess.run(cmd, env=env.sub_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert all(summary["jobs"][n]["exit"] == 130 for n in ("A0j", "A0n")), summary
    step = summary["packed"]["A0"][-1]
    assert step >= 1 and step <= min(summary["jobs"][n]["checkpoints"][-1] for n in ("A0j", "A0n"))
    with tarfile.open(out / "A0.tar") as tar:
        names = tar.getnames()
        state = json.load(tar.extractfile(f"A0j/checkpoints/step_{step:08d}/state.json"))  # type: ignore[arg-type]
    for name in ("A0j", "A0n"):
        assert f"{name}/checkpoints/step_{step:08d}/trainable.safetensors" in names
        assert f"{name}/metrics.jsonl" in names and f"{name}/train.log" in names
    assert state["config"]["train"]["ema_warmup"] is True and state["config"]["model"]["joint"] is True


def test_demo_diagnosis_loss_rows_are_window_means(tmp_path: Path) -> None:
    """benchmarks/demo_diagnosis.py's loss curves: each row is the mean of one of five equal stretches of the
    logged steps (a key a stretch never logged is None), so one noisy logged value does not stand for a stretch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "demo_diagnosis", Path(__file__).parents[1] / "benchmarks" / "demo_diagnosis.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    lines = [{"step": 10 * (i + 1), "loss": float(i), "video_mse": 2.0 * i, "audio_mse": 1.0} for i in range(10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = bench.loss_rows(tmp_path)
    assert [r["steps"] for r in rows] == ["10-20", "30-40", "50-60", "70-80", "90-100"]
    assert [r["loss"] for r in rows] == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert [r["video_mse"] for r in rows] == [1.0, 5.0, 9.0, 13.0, 17.0]
    assert all(r["audio_mse"] == 1.0 and r["audio_vb"] is None for r in rows)


def test_gpu_lease_script_gives_a_class_conditional_backbone_its_classes(tmp_path: Path) -> None:
    """Over the shipped class-conditional backbone, the lease script's adapter runs get each clip's class as the
    shipped recipe does; an unconditional backbone gets nothing, and a key the user set is left to the user."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_demo_models", Path(__file__).parents[1] / "scripts" / "gpu_demo_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    shipped = Path(__file__).parents[1] / "avdit_cli" / "assets" / "tiny-dit"
    n = len(json.loads((shipped / "class_names.json").read_text()))
    assert script.class_sets(shipped, []) == ["--set", "data.class_folders=true", "--set",
                                              "model.class_conditional=true", "--set", f"model.num_classes={n}"]
    assert "data.class_folders=true" not in script.class_sets(shipped, ["data.class_folders=false"])
    assert script.class_sets(tmp_path, []) == []
