"""`avdit demo` end to end with tiny settings: every stage runs through the same pipeline functions as the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from avdit_cli.cli.app import app
from avdit_cli.errors import DataError
from avdit_cli.pipelines.demo import DemoOptions, demo, prepare_demo_dir, shipped_run


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("demo") / "run"
    opts = DemoOptions(out_dir=out, clips=6, seconds=3.2, steps=4, pretrain_steps=4, generate=2, sample_steps=4)
    return out, demo(opts)


def test_short_demo_runs_every_stage(short_demo: tuple[Path, object]) -> None:
    out, result = short_demo
    assert sorted(p.name for p in (out / "samples").glob("sample_*.mp4")) == ["sample_00000.mp4",
                                                                             "sample_00001.mp4"]
    with av.open(str(out / "samples" / "sample_00000.mp4")) as f:
        assert f.streams.video[0].frames == 16 and f.streams.audio[0].channels == 1
    assert (out / "samples" / "contact_sheet.png").stat().st_size > 0
    assert (out / "runs" / "pretrain" / "backbone" / "config.json").exists()
    report = json.loads((out / "demo.json").read_text())
    assert [g["name"] for g in report["scores"]] == ["real", "real, audio shuffled", "generated",
                                                     "generated, audio shuffled"]
    assert report["eval_metrics"]["av-align"]["status"] == "ok"
    # the demo downloads nothing: the extractor-based metrics say how to get them
    assert "avdit download --only eval" in report["eval_metrics"]["fvd"]["reason"]
    assert set(report["seconds"]) >= {"dataset", "preprocess", "pretrain", "finetune", "generate", "eval"}
    # the data sit in colour-class folders and every model is conditioned on the class; each clip draws one
    from avdit_cli.data.synthetic import colour_classes

    folders = {p.parent.name for p in (out / "data").rglob("*.mp4")}
    assert folders and folders <= set(colour_classes())
    samples = json.loads((out / "samples" / "samples.json").read_text())["samples"]
    assert all(s["class_name"] in folders for s in samples)


def test_real_clips_are_in_sync_and_shuffled_ones_are_not(short_demo: tuple[Path, object]) -> None:
    _, result = short_demo
    scores = {g.name: g for g in result.scores}
    real, shuffled = scores["real"], scores["real, audio shuffled"]
    assert real.clips == shuffled.clips == 6
    assert real.sync_f1 > 0.8
    assert shuffled.sync_f1 < real.sync_f1 - 0.2
    assert not math.isnan(scores["generated"].sync_f1) or scores["generated"].sync_skipped > 0
    # every heard hit of the data is a seen floor impact: the frames' event count matches the sound's
    assert real.impacts_per_clip >= 1
    assert abs(real.impacts_per_clip - real.onsets_per_clip) <= 0.25 * real.onsets_per_clip
    assert shuffled.impacts_per_clip == real.impacts_per_clip


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an earlier demo"):
        prepare_demo_dir(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_demo_cli_reports_a_bad_folder_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--steps", "1"])
    assert result.exit_code == 1
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_the_shipped_tiny_backbone_loads_and_fits_the_tiny_preset() -> None:
    from avdit_cli.data.synthetic import colour_classes
    from avdit_cli.models import AVDiT, DiT
    from avdit_cli.models.dit_loading import read_class_names
    from avdit_cli.pipelines.demo import SHIPPED_BACKBONE, demo_config, shipped_backbone

    cfg = demo_config(DemoOptions(out_dir=Path("unused")))  # the tiny preset, class-conditional on the colours
    assert shipped_backbone(cfg) == SHIPPED_BACKBONE
    assert shipped_backbone(cfg.replace(**{"model.depth": 2})) is None  # another size: the demo pretrains
    assert shipped_backbone(cfg.replace(**{"model.num_classes": 0, "model.class_conditional": False})) is None
    dit, report = DiT.from_pretrained(SHIPPED_BACKBONE, output_loading_info=True)
    assert report.format == "diffusers-safetensors"
    assert read_class_names(SHIPPED_BACKBONE) == colour_classes()  # row i is the i-th colour class
    model = AVDiT.from_config(cfg, backbone=dit)
    assert sum(p.numel() for p in model.backbone.parameters()) == 330_136 + 21 * 64  # + a row per class
    provenance = json.loads((SHIPPED_BACKBONE / "provenance.json").read_text())
    assert any("--pretrain" in step for step in provenance["made_with"])


def test_demo_cli_json_is_demo_json_and_stdout_holds_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "-o", str(out), "--clips", "2", "--steps", "1", "-n", "1",
                                      "--set", "sample.steps=2", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # the step lines went to stderr
    assert "1/6" in result.stderr and "1/6" not in result.stdout
    saved = json.loads((out / "demo.json").read_text())
    assert set(printed) == set(saved) >= {"options", "out_dir", "scores", "samples_dir", "contact_sheet", "seconds",
                                          "final_loss", "eval_metrics"}
    assert printed["options"] == saved["options"] and printed["scores"][0]["name"] == "real"
    assert printed["eval_metrics"]["av-align"]["status"] == "ok"


@pytest.mark.parametrize("joint", [True, False])
def test_the_shipped_demo_models_are_small_exports_over_the_shipped_backbone(joint: bool) -> None:
    from avdit_cli.pipelines.demo import SHIPPED_BACKBONE
    from avdit_cli.pipelines.generate import open_checkpoint
    from avdit_cli.pipelines.runs import backbone_reference

    run = shipped_run(joint)
    ckpt = open_checkpoint(run)
    assert ckpt.config.model.joint is joint
    # the paper's method: the backbone frozen, only adapter tensors (EMA) in the file
    assert ckpt.state["mode"] == "finetune"
    keys = list(safe_open(str(run / "trainable.safetensors"), framework="pt").keys())
    assert keys and all(k.startswith("ema.") and ".backbone." not in k for k in keys)
    assert any(k.startswith("ema.temporal.") for k in keys) and any(k.startswith("ema.joint.") for k in keys) is joint
    assert backbone_reference(ckpt) == SHIPPED_BACKBONE.resolve()  # relative: it travels with the package
    assert "/work" not in (run / "state.json").read_text()  # no path of the machine that trained it
    assert ckpt.run_dir == run  # an export is a run folder of its own (samples.json names it)
    assert sum(p.stat().st_size for p in run.iterdir()) < 3_000_000  # a few MB at most, EMA adapters only
    provenance = json.loads((run / "provenance.json").read_text())
    assert any(step.startswith("avdit finetune") for step in provenance["made_with"])
    assert any(step.startswith("avdit export") for step in provenance["made_with"])
    assert provenance["seconds_wall"] > 0


def test_demo_pretrained_generates_from_the_shipped_models_without_training(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--pretrained", "--no-joint", "-o", str(out), "--clips", "2",
                                      "--seconds", "1.6", "-n", "2", "--set", "sample.steps=2", "--set",
                                      "sample.eta=0.5", "--set", "sample.batch_size=1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "demo.json").read_text())
    assert report["options"]["pretrained"] is True and report["options"]["joint"] is False
    assert "finetune" not in report["seconds"] and not (out / "runs").exists()  # nothing was trained
    assert report["model"] == str(shipped_run(False)) and report["final_loss"] is None  # strict JSON: no NaN
    assert [g["name"] for g in report["scores"]] == ["real", "real, audio shuffled", "generated",
                                                     "generated, audio shuffled"]
    assert report["scores"][2]["clips"] == report["scores"][3]["clips"] == 2
    samples = json.loads((out / "samples" / "samples.json").read_text())
    assert samples["steps"] == 2 and samples["sampler"] == "ddim"  # the demo's --set reaches the shipped model
    assert samples["eta"] == 0.5 and samples["batch_size"] == 1  # every sampling setting does (eta once did not)
    assert samples["clip_denoised"] is True
    # ... and the shipped model's own sampling defaults hold where --set does not name them
    assert samples["order"] == "video-first" and samples["video_noise_correlation"] == 0.3
    assert samples["checkpoint"] == str(shipped_run(False).resolve())
    # the demo names its real clips, so `avdit eval DEMO/samples` needs no --ref, even after the folder moved
    assert samples["reference"] == "../data"
    moved = tmp_path / "moved"
    out.rename(moved)
    result = CliRunner().invoke(app, ["eval", str(moved / "samples"), "--metrics", "av-align", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["av-align"]["status"] == "ok"


def test_pretrained_demo_checks_sampling_settings_against_the_shipped_model(tmp_path: Path) -> None:
    """Video-first order and cross-modal guidance need a model trained with independent timesteps: the shipped
    ones were, the tiny preset the training demo starts from is not."""
    from avdit_cli.errors import ConfigError
    from avdit_cli.pipelines.demo import demo_config

    sets = ("sample.order=video-first", "sample.cross_modal_guidance=2")
    cfg = demo_config(DemoOptions(out_dir=tmp_path, pretrained=True, overrides=sets))
    assert cfg.sample.cross_modal_guidance == 2 and cfg.diffusion.independent_timesteps
    with pytest.raises(ConfigError, match="independent_timesteps"):
        demo_config(DemoOptions(out_dir=tmp_path, overrides=sets))
    # guidance towards given frames with joint sampling is refused before any training starts
    joint = ("diffusion.independent_timesteps=true", "sample.cross_modal_guidance=2")
    with pytest.raises(ConfigError, match="video-first"):
        demo_config(DemoOptions(out_dir=tmp_path, overrides=joint))


def test_the_shipped_joint_model_hears_the_frames_and_the_ablation_does_not(short_demo: tuple[Path, object]) -> None:
    """Audio eps-MSE with each clip's own clean frames (t_video = 0) against another clip's frames: the joint
    block makes the sound depend on what is seen; without it the frames cannot change the sound at all."""
    import torch

    from avdit_cli.data.cache import LatentCache
    from avdit_cli.diffusion import Diffusion
    from avdit_cli.pipelines.generate import load_run_model, open_checkpoint

    out, _ = short_demo
    cache = LatentCache(out / "cache")
    video = torch.stack([cache[i]["video"] for i in range(len(cache))])  # (n, f, c, h, w)
    audio = torch.stack([cache[i]["audio"] for i in range(len(cache))])
    other = torch.roll(torch.arange(len(cache)), 1)
    n = len(cache)
    losses = {}
    for joint in (True, False):
        ckpt = open_checkpoint(shipped_run(joint))
        model = load_run_model(ckpt, ckpt.config, torch.device("cpu"))
        diffusion = Diffusion.from_config(ckpt.config.diffusion, learn_sigma=True)
        t = torch.tensor([100, 300] * n)[:n]
        eps = torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
        noisy = diffusion.q_sample(audio, t, eps)
        with torch.no_grad():
            own, wrong = (float(((model(v, noisy, torch.zeros(n, dtype=torch.long), t)["audio"][:, :1] - eps) ** 2)
                                .mean()) for v in (video, video[other]))
        losses[joint] = own, wrong
    assert losses[True][0] < 0.85 * losses[True][1], losses
    assert abs(losses[False][0] - losses[False][1]) < 1e-6 * losses[False][1], losses


def test_shipped_names_resolve_to_the_packaged_models_and_anything_else_to_a_path(tmp_path: Path) -> None:
    from avdit_cli.pipelines.demo import shipped_or_path

    assert shipped_or_path("shipped") == shipped_run(True)
    assert shipped_or_path("shipped-no-joint") == shipped_run(False)
    assert shipped_or_path(tmp_path / "run") == tmp_path / "run" and shipped_or_path("runs/x") == Path("runs/x")
