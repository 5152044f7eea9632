"""`avdit eval`: the pipeline and the CLI over the metrics library, with tiny stand-in extractors saved in the
real file formats (a TorchScript module with StyleGAN-V's I3D call signature, a torchvggish state dict)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

import avdit_cli.pipelines.evaluate as ev
from avdit_cli.cli.eval import eval_cmd
from avdit_cli.config import Config, load_preset, to_yaml
from avdit_cli.data.media import write_mp4
from avdit_cli.data.synthetic import make_dataset, render_clip
from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics import FeatureCache
from avdit_cli.metrics.vggish import VGGishNet
from avdit_cli.paths import default_cache_dir

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

FPS, SIZE, RATE = 10.0, 32, 16000  # the tiny preset's protocol: 16 frames, 1.6 s of 16 kHz audio


class StandInI3D(torch.nn.Module):
    """StyleGAN-V's I3D call signature; 400-d features from a pooled (c, f, h, w) grid."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 4 * 4 * 4, 400, generator=g) * 0.3)

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = videos.float()  # (b, 3, f, h, w)
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="nearest")
        pooled = F.adaptive_avg_pool3d(x, (4, 4, 4)).flatten(1)  # (b, 192)
        feats = torch.tanh(pooled @ self.proj)  # (b, 400)
        return feats if return_features else feats.softmax(dim=-1)


def _cfg(**overrides: object) -> Config:
    base = {"eval.num_samples": 4, "eval.seed": 0, "eval.batch_size": 3}
    return load_preset("tiny").replace(**{**base, **overrides})


def _write_generated(folder: Path, n: int, seed: int = 0, start: int = 0) -> list[Path]:
    out = []
    for i in range(start, start + n):
        clip = render_clip(np.random.default_rng([seed, i]), seconds=1.6, size=SIZE, fps=FPS, sample_rate=RATE)
        out.append(write_mp4(folder / f"sample_{i:03d}.mp4", clip.frames, clip.audio, fps=FPS, sample_rate=RATE))
    return out


@pytest.fixture(scope="module")
def extractors(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("extractors")
    i3d = folder / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(StandInI3D()), str(i3d))
    g = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in VGGishNet((4, 8, 8, 8, 16, 16), hidden=32).state_dict().items()}
    vggish = folder / "vggish-10086976.pth"
    torch.save({k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}, vggish)  # released key names
    return {"i3d": i3d, "vggish": vggish}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    gen = root / "gen"
    _write_generated(gen, 4)
    real = root / "real"
    make_dataset(real, 3, seconds=3.2, seed=7, size=SIZE, fps=30, sample_rate=44100, workers=1)  # 2 clips each
    return {"gen": gen, "real": real}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch) -> None:
    # Nothing found (or written) outside the test's folder: no downloaded extractors, a private feature cache.
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _numbers(report: dict) -> dict:
    return {m: r.get("value") for m, r in report["metrics"].items()}


# ----------------------------------------------------------------------------------------------------------
def test_same_inputs_same_numbers_and_second_run_uses_the_cache(media, extractors, tmp_path, monkeypatch) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    for p in media["gen"].glob("*.mp4"):
        (gen / p.name).write_bytes(p.read_bytes())
    cfg = _cfg()
    first_cache = FeatureCache(tmp_path / "features")
    first = ev.evaluate(gen, cfg, media["real"], i3d=extractors["i3d"], vggish=extractors["vggish"],
                        feature_cache=first_cache)
    assert first.path == gen / "metrics.json"
    report = json.loads(first.path.read_text())
    assert report["metrics"] == first.report["metrics"]
    assert set(report["metrics"]) == {"fvd", "kvd", "fad", "av-align"}
    assert all(r["status"] == "ok" for r in report["metrics"].values())
    assert first_cache.misses > 0

    # Every number carries its protocol; KVD's display scale is recorded beside the raw value.
    fvd = report["metrics"]["fvd"]
    assert fvd["protocol"]["weights_sha256"] == hashlib.sha256(extractors["i3d"].read_bytes()).hexdigest()
    assert fvd["protocol"]["n_gen"] == 4 and fvd["protocol"]["n_ref"] == 4
    assert fvd["protocol"]["resolution"] == SIZE and fvd["protocol"]["fps"] == FPS
    assert fvd["protocol"]["sample_rate"] == RATE and fvd["protocol"]["seed"] == 0
    assert "fewer samples than dimensions" in fvd["warning"]  # 4 clips, 400-d features
    assert "fewer samples than dimensions" in report["metrics"]["fad"]["warning"]  # 4 clips, 128-d
    kvd = report["metrics"]["kvd"]
    assert kvd["display_scale"] == 1000.0 and kvd["display_value"] == pytest.approx(kvd["value"] * 1000)
    assert 0.0 <= report["metrics"]["av-align"]["value"] <= 1.0 and "reference" in report["metrics"]["av-align"]
    assert report["reference"]["kind"] == "data" and report["reference"]["clips_available"] == 6
    assert report["versions"]["avdit"] and report["versions"]["torch"]

    # Second run: nothing is decoded (every feature is cached) and the numbers are identical.
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached clip was decoded again")

    monkeypatch.setattr(ev, "read_generated_clip", no_decoding)
    monkeypatch.setattr(ev, "load_clips", no_decoding)
    second_cache = FeatureCache(tmp_path / "features")
    second = ev.evaluate(gen, cfg, media["real"], i3d=extractors["i3d"], vggish=extractors["vggish"],
                         feature_cache=second_cache)
    assert second.report["metrics"] == report["metrics"]
    assert second_cache.misses == 0 and second_cache.hits >= first_cache.misses
    assert second.report["feature_cache"]["hits"] == second_cache.hits

    # Another seed draws other reference clips (6 available, 4 drawn) from the same cache entries.
    monkeypatch.undo()
    other = ev.evaluate(gen, _cfg(**{"eval.seed": 3}), media["real"], i3d=extractors["i3d"],
                        vggish=extractors["vggish"], feature_cache=FeatureCache(tmp_path / "features"), write=False)
    assert other.metrics["fvd"]["protocol"]["seed"] == 3
    assert _numbers(other.report) != _numbers(report)


def test_identical_sets_give_zero_distance(media, extractors, tmp_path) -> None:
    # The reference is the generated folder itself, cut into clips as a data folder: the same 4 clips.
    cache = FeatureCache(tmp_path / "features")
    result = ev.evaluate(media["gen"], _cfg(), media["gen"], i3d=extractors["i3d"], vggish=extractors["vggish"],
                         feature_cache=cache, write=False)
    m = result.metrics
    assert m["fvd"]["protocol"]["n_gen"] == m["fvd"]["protocol"]["n_ref"] == 4
    assert abs(m["fvd"]["value"]) < 1e-2
    assert abs(m["fad"]["value"]) < 1e-2
    assert m["av-align"]["value"] == pytest.approx(m["av-align"]["reference"])
    # ...while the distance to other clips is clearly larger.
    other = ev.evaluate(media["gen"], _cfg(), media["real"], i3d=extractors["i3d"], vggish=extractors["vggish"],
                        feature_cache=cache, write=False)
    assert other.metrics["fvd"]["value"] > 100 * max(abs(m["fvd"]["value"]), 1e-6)


def test_reference_from_a_cache_manifest_and_from_samples_json(media, extractors, tmp_path) -> None:
    cfg = _cfg()
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    clips = [{"source": f"clip_{i:04d}.mp4", "start": s, "flags": []} for i in range(3) for s in (0.0, 1.6)]
    manifest = {"version": 1, "config_hash": cfg.cache_hash(), "data": cfg.to_dict()["data"],
                "data_dir": str(media["real"].resolve()), "num_clips": len(clips), "clips": clips}
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    features = FeatureCache(tmp_path / "features")

    by_cache = ev.evaluate(media["gen"], cfg, cache_dir, i3d=extractors["i3d"], vggish=extractors["vggish"],
                           feature_cache=features, write=False)
    assert by_cache.report["reference"]["kind"] == "cache"
    assert by_cache.report["reference"]["clips_available"] == 6
    by_folder = ev.evaluate(media["gen"], cfg, media["real"], i3d=extractors["i3d"], vggish=extractors["vggish"],
                            feature_cache=features, write=False)
    assert _numbers(by_cache.report) == _numbers(by_folder.report)  # same clips, same draw

    # Clips whose source file has gone are listed and skipped; the draw goes on with the remaining ones.
    holey = tmp_path / "holey"
    holey.mkdir()
    gone = [{"source": "gone.mp4", "start": s, "flags": []} for s in (0.0, 1.6)]
    (holey / "manifest.json").write_text(json.dumps({**manifest, "clips": gone + clips}))
    result = ev.evaluate(media["gen"], _cfg(**{"eval.num_samples": 8}), holey, i3d=extractors["i3d"],
                         vggish=extractors["vggish"], feature_cache=features, write=False)
    assert result.report["reference"]["used"] == 6
    assert {(s["file"], s["reason"]) for s in result.report["reference"]["skipped"]} == {
        ("gone.mp4@0s", "missing"), ("gone.mp4@1.6s", "missing")}
    # With 5 of 8 drawn by a seed whose first 5 include a gone clip, the next clip of the draw replaces it.
    seed = next(s for s in range(100) if {0, 1} & set(np.random.default_rng(s).choice(8, 8, replace=False)[:5]))
    result = ev.evaluate(media["gen"], _cfg(**{"eval.num_samples": 5, "eval.seed": seed}), holey,
                         i3d=extractors["i3d"], vggish=extractors["vggish"], feature_cache=features, write=False)
    assert result.report["reference"]["used"] == 5 and result.report["reference"]["skipped"]

    # Without --ref: samples.json names the run's cache (and carries the config the clips were made with).
    gen = tmp_path / "gen"
    gen.mkdir()
    for p in media["gen"].glob("*.mp4"):
        (gen / p.name).write_bytes(p.read_bytes())
    with pytest.raises(DataError, match="--ref"):
        ev.evaluate(gen, cfg, None, i3d=extractors["i3d"], vggish=extractors["vggish"], feature_cache=features)
    (gen / "samples.json").write_text(json.dumps({"config": cfg.to_dict(), "cache_dir": str(cache_dir)}))
    resolved, source = ev.resolve_config(gen)
    assert resolved.data == cfg.data and source.endswith("samples.json")
    default = ev.evaluate(gen, resolved.replace(**{"eval.num_samples": 4, "eval.batch_size": 3}), None,
                          i3d=extractors["i3d"], vggish=extractors["vggish"], feature_cache=features)
    assert default.report["reference"]["kind"] == "cache"
    assert _numbers(default.report) == _numbers(by_cache.report)

    # samples.json naming the run folder: its config.yaml gives the protocol and the default cache location.
    run = tmp_path / "runs" / "tiny-run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    default_cache = default_cache_dir(cfg)  # under AVDIT_HOME, set to this test's folder
    default_cache.mkdir(parents=True)
    (default_cache / "manifest.json").write_text(json.dumps(manifest))
    (gen / "samples.json").write_text(json.dumps({"run_dir": str(run)}))
    resolved, source = ev.resolve_config(gen)
    assert resolved == cfg and source == str(run / "config.yaml")
    assert ev.reference_folder(None, gen) == default_cache
    (gen / "samples.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(DataError, match="--ref"):
        ev.reference_folder(None, gen)
    # a reference named by whoever made the samples (the demo), relative to the samples folder, comes first
    (gen / "samples.json").write_text(json.dumps({"run_dir": str(run), "reference": "../real"}))
    with pytest.raises(DataError, match="names is not there.*--ref"):
        ev.reference_folder(None, gen)
    (gen.parent / "real").mkdir()
    assert ev.reference_folder(None, gen) == (gen.parent / "real").resolve()


def test_bad_inputs_are_clear_and_good_files_still_score(extractors, tmp_path) -> None:
    cfg = _cfg()
    kw = {"i3d": extractors["i3d"], "vggish": extractors["vggish"],
          "feature_cache": FeatureCache(tmp_path / "features")}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .mp4 files"):
        ev.evaluate(empty, cfg, empty, **kw)

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (16, SIZE, SIZE, 3), dtype=np.uint8)
    silent = tmp_path / "silent"
    for i in range(2):
        write_mp4(silent / f"s{i}.mp4", frames, None, fps=FPS)
    with pytest.raises(DataError, match=r"none of the 2 .mp4 files .* \(no-audio: 2\)"):
        ev.evaluate(silent, cfg, silent, **kw)

    short = tmp_path / "short"
    audio = (0.1 * rng.standard_normal(RATE * 3)).astype(np.float32)
    write_mp4(short / "short.mp4", frames[:10], audio, fps=FPS, sample_rate=RATE)  # 1.0 s
    long_frames = np.concatenate([frames, frames[:8]])
    write_mp4(short / "long.mp4", long_frames, audio, fps=FPS, sample_rate=RATE)  # 2.4 s
    with pytest.raises(DataError, match=r"\(wrong-length: 2\)"):
        ev.evaluate(short, cfg, short, **kw)

    # A partly bad folder: the 3 good files are scored, the others listed with their reasons.
    mixed = tmp_path / "mixed"
    good = _write_generated(mixed, 3, seed=5)
    write_mp4(mixed / "no_audio.mp4", frames, None, fps=FPS)
    write_mp4(mixed / "too_short.mp4", frames[:10], audio, fps=FPS, sample_rate=RATE)
    (mixed / "garbage.mp4").write_bytes(b"this is not a video")
    (mixed / "empty.mp4").write_bytes(b"")
    result = ev.evaluate(mixed, cfg, mixed, **kw)
    gen = result.report["generated"]
    assert gen["files"] == 7 and gen["used"] == 3
    reasons = {s["file"]: s["reason"] for s in gen["skipped"]}
    assert reasons == {"no_audio.mp4": "no-audio", "too_short.mp4": "wrong-length", "garbage.mp4": "not-a-video",
                       "empty.mp4": "empty-file"}
    assert result.metrics["fvd"]["protocol"]["n_gen"] == 3
    assert ev.skipped_summary(gen["skipped"]) == "empty-file: 1, no-audio: 1, not-a-video: 1, wrong-length: 1"
    # As a reference folder, the same files give 3 clips and the other 4 are listed with their reasons.
    assert result.report["reference"]["clips_available"] == len(good)
    ref_reasons = {s["file"]: s["reason"] for s in result.report["reference"]["skipped"]}
    assert ref_reasons == {**reasons, "too_short.mp4": "too-short"}
    assert json.loads((mixed / "metrics.json").read_text())["generated"]["used"] == 3


def test_missing_extractor_weights_skip_their_metrics(media, extractors, tmp_path) -> None:
    cfg = _cfg()
    # No --i3d / --vggish and nothing downloaded: FVD, KVD and FAD are skipped, AV-Align runs (no reference
    # needed for it alone, so GEN_DIR without samples.json and without --ref is fine).
    result = ev.evaluate(media["gen"], cfg, None, feature_cache=FeatureCache(tmp_path / "f"), write=False)
    m = result.metrics
    for name in ("fvd", "kvd", "fad"):
        assert m[name]["status"] == "skipped" and "avdit download --only eval" in m[name]["reason"]
    assert m["av-align"]["status"] == "ok" and "reference" not in m["av-align"]
    assert result.report["reference"] is None

    # With a reference, AV-Align is also computed on the real clips for comparison; FAD runs with its weights.
    partial = ev.evaluate(media["gen"], cfg, media["real"], vggish=extractors["vggish"],
                          feature_cache=FeatureCache(tmp_path / "f"), write=False)
    assert partial.metrics["fad"]["status"] == "ok" and partial.metrics["fvd"]["status"] == "skipped"
    assert "reference" in partial.metrics["av-align"]

    with pytest.raises(WeightsError, match="avdit download --only eval"):
        ev.evaluate(media["gen"], _cfg(**{"eval.metrics": ["fvd"]}), media["real"], write=False)
    with pytest.raises(WeightsError, match="--i3d"):  # a path given explicitly must exist
        ev.evaluate(media["gen"], cfg, media["real"], i3d=tmp_path / "nope.pt", write=False)


def test_cli_table_json_and_one_line_errors(media, extractors, tmp_path) -> None:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is called by name as in `avdit eval`
    app.command("eval")(eval_cmd)
    runner = CliRunner()
    gen = tmp_path / "gen"
    gen.mkdir()
    for p in sorted(media["gen"].glob("*.mp4"))[:3]:
        (gen / p.name).write_bytes(p.read_bytes())
    common = ["--ref", str(media["real"]), "--preset", "tiny", "--num", "3", "--seed", "1", "--batch-size", "2",
              "--i3d", str(extractors["i3d"]), "--vggish", str(extractors["vggish"])]
    result = runner.invoke(app, ["eval", str(gen), *common])
    assert result.exit_code == 0, result.output
    for word in ("fvd", "kvd (x1000)", "fad", "av-align", "3 / 3", "metrics.json"):
        assert word in result.output
    saved = json.loads((gen / "metrics.json").read_text())
    assert saved["protocol"]["seed"] == 1 and saved["metrics"]["fvd"]["protocol"]["n_ref"] == 3

    as_json = runner.invoke(app, ["eval", str(gen), *common, "--metrics", "fvd,av-align", "--json"])
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.stdout)
    assert list(printed["metrics"]) == ["fvd", "av-align"]
    assert printed["metrics"]["fvd"]["value"] == saved["metrics"]["fvd"]["value"]

    skipped = runner.invoke(app, ["eval", str(gen), "--preset", "tiny", "--metrics", "fvd,av-align"])
    assert skipped.exit_code == 0, skipped.output
    assert "avdit download --only eval" in skipped.output

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = runner.invoke(app, ["eval", str(empty), "--preset", "tiny"])
    assert failed.exit_code == 1
    lines = [ln for ln in failed.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no .mp4 files" in lines[0]

    bad_metric = runner.invoke(app, ["eval", str(gen), *common, "--metrics", "fid"])
    assert bad_metric.exit_code == 1 and "eval.metrics" in bad_metric.output
