"""`avdit eval --protocol mm-diffusion`: the evaluator's reading (windows, letterbox, uint8 round trip, audio
span) against hand-computed values, and the pipeline and CLI end to end on tiny random weights saved in the
published layouts (tests/test_paper_extractors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import avdit_cli.pipelines.eval_mmdiffusion as mmd
import avdit_cli.pipelines.evaluate as ev
from avdit_cli.cli.eval import eval_cmd
from avdit_cli.config import load_preset
from avdit_cli.data.media import write_mp4
from avdit_cli.data.synthetic import make_dataset, render_clip
from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.metrics import FeatureCache
from avdit_cli.metrics import audioclip as ac
from avdit_cli.metrics import i3d_400 as i3d
from avdit_cli.pipelines.eval_protocols import AVDIT, MM_DIFFUSION, get_protocol
from test_paper_extractors import TINY_AUDIO, TINY_I3D, _randomised  # tests/ is on sys.path


# ------------------------------------------------------------------------------------------- the reading
def test_windows_of_a_30_fps_file() -> None:
    # 96 frames at 30 fps, pts in 1/15360 s (512 a frame): every 3rd frame is kept (a whole step), 32 frames,
    # 17 windows of 16.
    line = mmd.FileTimeline(pts=np.arange(96) * 512, fps=30.0, duration=3.2)
    assert len(line.resampled) == 32 and line.windows == 17
    assert line.frame_indices(3).tolist() == list(range(9, 57, 3))
    t0, t1 = line.time_span(3)  # frames 9 .. 54: from 9/30 s to 55/30 s, in float32
    assert t0 == float(np.float32(9) / np.float32(30)) == pytest.approx(0.3, abs=1e-7)
    assert t1 == float(np.float32(55) / np.float32(30))
    # A whole step keeps ceil(n / step) frames (torchvision slices), not floor(n * 10 / fps).
    assert len(mmd.FileTimeline(pts=np.arange(64) * 512, fps=30.0, duration=2.2).resampled) == 22


def test_windows_of_a_25_fps_file() -> None:
    # step 2.5: source frame floor(k * 2.5) for k < floor(50 * 10 / 25) = 20
    line = mmd.FileTimeline(pts=np.arange(50) * 40, fps=25.0, duration=2.0)
    assert line.resampled.tolist() == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 30, 32, 35, 37, 40, 42, 45, 47]
    assert line.windows == 5


def test_letterbox_and_uint8_round_trip_hand_computed() -> None:
    # 32 x 64 frames fit 64 x 64 at ratio 1: no resampling, 16 black rows above and below.
    wide = np.full((1, 32, 64, 3), 200, dtype=np.uint8)
    boxed = mmd.letterbox(wide)
    assert boxed.shape == (1, 64, 64, 3) and boxed.dtype == torch.uint8
    assert torch.all(boxed[0, :16] == 0) and torch.all(boxed[0, 16:48] == 200) and torch.all(boxed[0, 48:] == 0)
    # 128 x 96 -> ratio 0.5 -> 64 x 48, 8 black columns each side; a constant frame stays constant.
    tall = np.full((2, 128, 96, 3), 77, dtype=np.uint8)
    boxed = mmd.letterbox(tall)
    assert torch.all(boxed[:, :, :8] == 0) and torch.all(boxed[:, :, 8:56] == 77) and torch.all(boxed[:, :, 56:] == 0)
    # A 2x downscale without antialias: output column j samples source position 2j + 0.5 with the bicubic
    # weights (-0.09375, 0.59375, 0.59375, -0.09375) on columns 2j-1 .. 2j+2 (a = -0.75). Columns alternate
    # in pairs (0, 0, 255, 255, ...): j = 0 gets -0.09375 * 255 -> clamped to 0, j = 1 gets
    # 2 * 0.59375 * 255 = 302.8 -> clamped to 255. An antialiased resize would give grey instead.
    stripes = np.zeros((1, 128, 128, 3), dtype=np.uint8)
    stripes[:, :, 2::4] = stripes[:, :, 3::4] = 255
    assert mmd.letterbox(stripes)[0, 0, :4, 0].tolist() == [0, 255, 0, 255]
    # The round trip x / 127.5 - 1 -> ((x + 1) * 127.5).to(uint8) in float32: 1 comes back as 0.99999994,
    # which truncates to 0; 3 as 2.9999998 -> 2; 0, 128 and 255 are exact.
    levels = torch.tensor([0, 1, 3, 64, 128, 200, 255], dtype=torch.uint8)
    assert mmd.uint8_round_trip(levels).tolist() == [0, 0, 2, 64, 128, 200, 255]
    assert int((mmd.uint8_round_trip(torch.arange(256, dtype=torch.uint8)) != torch.arange(256)).sum()) == 63


def test_window_audio_hand_computed() -> None:
    track = np.arange(1, 200_001, dtype=np.float32)  # sample values = index + 1
    t0, t1 = float(np.float32(9) / np.float32(30)), float(np.float32(55) / np.float32(30))
    audio = mmd.window_audio(track, duration=10.0, t0=t0, t1=t1)
    # round(44100 * 0.3000000119) = 13230; int(44100 * (1.8333333731 - 0.3000000119)) = int(67620.0012) = 67620
    assert audio.shape == (70560,) and audio.dtype == np.float32
    assert audio[0] == 13231 and audio[67619] == 13230 + 67620 and np.all(audio[67620:] == 0)
    # Past the file's duration moviepy returns silence.
    short = mmd.window_audio(track, duration=0.5, t0=t0, t1=t1)
    assert short[round(0.2 * 44100) - 1] > 0 and np.all(short[round(0.2 * 44100) + 1:] == 0)


# ------------------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("paper-weights")
    state = {k: v for k, v in i3d.InceptionI3d(TINY_I3D).state_dict().items() if "num_batches" not in k}
    torch.save(_randomised(state, 0), folder / "i3d_pretrained_400.pt")
    head = ac.AudioCLIPAudioHead(TINY_AUDIO)
    torch.save({ac.PREFIX + k: v for k, v in _randomised(head.state_dict(), 1).items()},
               folder / "AudioCLIP-Full-Training.pt")
    return {"i3d": folder / "i3d_pretrained_400.pt", "audioclip": folder / "AudioCLIP-Full-Training.pt"}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paper-media")
    for i in range(3):
        clip = render_clip(np.random.default_rng([0, i]), seconds=1.6, size=32, fps=10.0, sample_rate=16000)
        write_mp4(root / "gen" / f"sample_{i:03d}.mp4", clip.frames, clip.audio, fps=10.0, sample_rate=16000)
    make_dataset(root / "real", 2, seconds=3.2, seed=7, size=32, fps=30, sample_rate=44100, workers=1)
    return {"gen": root / "gen", "real": root / "real"}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _cfg(n: int = 10):
    return load_preset("tiny").replace(**{"eval.num_samples": n, "eval.seed": 0})


def test_mm_diffusion_protocol_end_to_end_and_cached(media, weights, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "features")
    first = ev.evaluate(media["gen"], _cfg(), media["real"], protocol="mm-diffusion", i3d=weights["i3d"],
                        audioclip=weights["audioclip"], feature_cache=cache, write=False)
    report = first.report
    assert {m: r["status"] for m, r in report["metrics"].items()} == {"fvd": "ok", "kvd": "ok", "fad": "ok"}
    assert report["protocol"]["name"] == "mm-diffusion" and report["protocol"]["num_samples"] == 10
    assert report["protocol"]["display_scale"] == {"fvd": 1.0, "kvd": 1.0, "fad": 1e4}
    fad = report["metrics"]["fad"]
    assert fad["display_value"] == pytest.approx(fad["value"] * 1e4)
    assert fad["protocol"]["feature"] == "audioclip" and "batch statistics" in fad["protocol"]["batchnorm"]
    fvd = report["metrics"]["fvd"]["protocol"]
    assert fvd["name"] == "mm-diffusion" and len(fvd["weights_sha256"]) == 64 and "letterbox" in fvd["reading"]
    # 3 generated clips are repeated up to 10, as the evaluator's endless loader does, and it is said.
    assert report["generated"]["unique"] == 3 and report["generated"]["used"] == 10
    assert "repeated" in report["metrics"]["fvd"]["warning"]
    # 2 files x 17 windows at 10 fps; 10 distinct ones drawn.
    assert report["reference"]["clips_available"] == 34 and report["reference"]["unique"] == 10

    again = FeatureCache(tmp_path / "features")
    second = ev.evaluate(media["gen"], _cfg(), media["real"], protocol="mm-diffusion", i3d=weights["i3d"],
                         audioclip=weights["audioclip"], feature_cache=again, write=False)
    assert again.misses == 0 and again.hits > 0  # nothing decoded or computed again
    assert {m: r["value"] for m, r in second.report["metrics"].items()} == \
        {m: r["value"] for m, r in report["metrics"].items()}
    # Another seed draws other reference clips: other numbers.
    other = ev.evaluate(media["gen"], _cfg().replace(**{"eval.seed": 1}), media["real"], protocol="mm-diffusion",
                        i3d=weights["i3d"], audioclip=weights["audioclip"], feature_cache=again, write=False)
    assert other.report["metrics"]["fvd"]["value"] != report["metrics"]["fvd"]["value"]


def test_missing_paper_weights_skip_with_the_download_command(media, weights, tmp_path) -> None:
    result = ev.evaluate(media["gen"], _cfg(4), media["real"], protocol="mm-diffusion", i3d=weights["i3d"],
                         feature_cache=FeatureCache(tmp_path / "f"))
    metrics = result.report["metrics"]
    assert metrics["fvd"]["status"] == "ok"
    assert metrics["fad"]["status"] == "skipped" and "avdit download --only eval-paper" in metrics["fad"]["reason"]
    on_disk = json.loads((media["gen"] / "metrics.json").read_text())
    assert on_disk["protocol"]["name"] == "mm-diffusion" and on_disk["metrics"]["fvd"]["protocol"]["seed"] == 0
    with pytest.raises(WeightsError, match="eval-paper"):
        ev.evaluate(media["gen"], _cfg(4), media["real"], protocol="mm-diffusion", write=False)


def test_protocol_arguments_are_checked(media, weights) -> None:
    with pytest.raises(ConfigError, match="mm-diffusion"):
        ev.evaluate(media["gen"], _cfg().replace(**{"eval.metrics": ["av-align"]}), media["real"],
                    protocol="mm-diffusion", i3d=weights["i3d"], write=False)
    with pytest.raises(ConfigError, match="--audioclip"):
        ev.evaluate(media["gen"], _cfg(), media["real"], protocol="mm-diffusion", vggish=weights["i3d"])
    with pytest.raises(ConfigError, match="--protocol mm-diffusion"):
        ev.evaluate(media["gen"], _cfg(), media["real"], audioclip=weights["audioclip"])
    with pytest.raises(ConfigError, match="avdit, mm-diffusion"):
        get_protocol("stylegan")
    assert get_protocol("avdit") is AVDIT and AVDIT.display_scale["kvd"] == 1000.0
    assert MM_DIFFUSION.num_samples == 2048 and "x1000 before" in MM_DIFFUSION.notes[0]


def test_cli_mm_diffusion(media, weights) -> None:
    app = typer.Typer()
    app.command()(eval_cmd)
    args = [str(media["gen"]), "--ref", str(media["real"]), "--protocol", "mm-diffusion", "-n", "9",
            "--i3d", str(weights["i3d"]), "--audioclip", str(weights["audioclip"]), "--device", "cpu"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "protocol mm-diffusion" in result.output and "fad (x10000)" in result.output
    report = json.loads((media["gen"] / "metrics.json").read_text())
    assert report["protocol"]["num_samples"] == 9 and report["metrics"]["kvd"]["display_scale"] == 1.0
    bad = CliRunner().invoke(app, [*args, "--vggish", str(weights["i3d"])], terminal_width=200)
    assert bad.exit_code == 1 and "--audioclip" in bad.output
