"""`avdit generate` on the tiny preset, on a CPU: files that read back as the clip protocol, seeds, batch and
rank independence (torchrun, gloo), conditioning on a given track, and the refusals.

The run sampled from is a tiny random DiT saved in the diffusers layout plus adapters written by
``runs.save_checkpoint``, every trainable tensor nudged off its initial value so the model is not the backbone's
identity and the audio branch does not output zeros. A random model predicts large eps, so the latents come out
large (std ~1e2) and the decoded pixels/audio saturate: the tests check the plumbing, not the quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from avdit_cli.cli.app import app
from avdit_cli.config import Config, load_preset
from avdit_cli.data.media import read_audio, read_video
from avdit_cli.errors import ConfigError, DataError, TrainingError, WeightsError
from avdit_cli.fileio import sha256_file
from avdit_cli.models import AVDiT, DiT
from avdit_cli.pipelines.generate import GenerateOptions, GenerateResult, generate, load_given_clip, plan_batches
from avdit_cli.pipelines.runs import save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from media_factory import ffmpeg, make_clip  # noqa: E402

STEPS = 4  # DDIM steps: enough to exercise the sampler, cheap on a CPU
runner = CliRunner()


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_run(root: Path, overrides: dict | None = None, mode: str = "finetune", seed: int = 0) -> tuple[Path, Config]:
    """A tiny run folder with one checkpoint, in the formats finetune writes."""
    cfg = load_preset("tiny")
    if overrides:
        cfg = cfg.replace(**overrides)
    g = torch.Generator().manual_seed(seed)
    f, c, h, w = cfg.data.video_latent_shape
    dit = DiT.from_config(cfg.model, input_size=h, in_channels=c, generator=g)
    with torch.no_grad():  # off DiT's zero init (adaLN, final layer), so the backbone does something
        for p in dit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    folder = dit.save_pretrained(root / "backbone")
    backbone, report = DiT.from_pretrained(folder, output_loading_info=True)
    model = AVDiT.from_config(cfg, backbone=backbone, generator=g)
    with torch.no_grad():  # off the adapters' zero init: temporal attention, audio final layer, gates
        for _, p in model.adapter_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    raw = model.adapter_state_dict()
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in raw.items()}
    run = root / "run"
    state = {"config": cfg.to_dict(), "mode": mode, "backbone": {"path": str(folder), "sha256": report.sha256()},
             "optimizer": {"param_groups": []}}
    save_checkpoint(run, 7, raw, ema, {}, state, keep=1)
    return run, cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    return make_run(tmp_path_factory.mktemp("tiny"))


def gen(run: Path, out: Path, **kw) -> GenerateResult:
    kw.setdefault("num", 3)
    kw.setdefault("batch_size", 2)
    kw.setdefault("steps", STEPS)
    return generate(GenerateOptions(out_dir=out, checkpoint=run, save_latents=True, **kw))


@pytest.fixture(scope="module")
def base(tiny: tuple[Path, Config], tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    """3 clips, seed 0, batches [0, 1] and [2]."""
    return gen(tiny[0], tmp_path_factory.mktemp("gen") / "base", seed=0)


# ----------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------
def test_plan_batches_split_without_duplicates_or_gaps() -> None:
    for num in range(1, 12):
        for bs in range(1, 5):
            single = plan_batches(num, bs)
            for world in range(1, 4):
                parts = [plan_batches(num, bs, r, world) for r in range(world)]
                flat = sorted(i for part in parts for batch in part for i in batch)
                assert flat == list(range(num))
                # the same batches as one process, whatever the world size
                assert sorted(tuple(b) for part in parts for b in part) == sorted(tuple(b) for b in single)


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def test_files_read_back_as_the_clip_protocol(base: GenerateResult, tiny: tuple[Path, Config]) -> None:
    cfg = tiny[1]
    d = cfg.data
    assert [p.name for p in base.files] == ["sample_00000.mp4", "sample_00001.mp4", "sample_00002.mp4"]
    one_aac_frame = 1024
    for path in base.files:
        with av.open(str(path)) as container:
            v, a = container.streams.video[0], container.streams.audio[0]
            assert v.codec_context.name == "h264" and v.format.name == "yuv420p"
            assert (v.width, v.height) == (d.frame_size, d.frame_size)
            assert v.average_rate == d.fps
            assert a.codec_context.name == "aac" and a.rate == d.sample_rate and a.layout.name == "mono"
            frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
        with av.open(str(path)) as container:
            audio = np.concatenate([fr.to_ndarray() for fr in container.decode(audio=0)], axis=-1)
        assert len(frames) == d.num_frames and frames[0].shape == (d.frame_size, d.frame_size, 3)
        assert audio.shape[0] == 1
        assert abs(audio.shape[1] - d.clip_samples) <= one_aac_frame  # 1.6 s +- one AAC frame
        assert np.abs(audio).max() > 0.01  # the audio branch made sound, not silence


def test_samples_json_and_contact_sheet(base: GenerateResult, tiny: tuple[Path, Config]) -> None:
    from PIL import Image

    meta = json.loads(base.samples_json.read_text())
    sha = sha256_file(tiny[0] / "checkpoints" / "step_00000007" / "trainable.safetensors")
    assert meta["checkpoint_sha256"] == sha and meta["step"] == 7 and meta["weights"] == "ema"
    assert [s["file"] for s in meta["samples"]] == [p.name for p in base.files]
    for i, s in enumerate(meta["samples"]):
        assert s["seed"] == i and s["sampler"] == "ddim" and s["steps"] == STEPS
        assert s["checkpoint_sha256"] == sha and Path(s["run"]) == tiny[0].resolve()
        assert s["denoise_seconds"] > 0 and s["decode_seconds"] > 0
    sheet = Image.open(base.contact_sheet)
    assert sheet.size == (8 * 96, 3 * (96 + 48 + 4))  # one row per clip: 8 frames over the mel


# ----------------------------------------------------------------------------------------------------------
# Seeds, batches, ranks
# ----------------------------------------------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_seeds_differ(base: GenerateResult, tiny: tuple[Path, Config],
                                                     tmp_path: Path) -> None:
    again = gen(tiny[0], tmp_path / "again", seed=0)
    for k in ("video", "audio"):
        assert torch.equal(again.latents[k], base.latents[k])
        assert not torch.equal(base.latents[k][0], base.latents[k][1])  # seeds 0 and 1
    assert [p.read_bytes() for p in again.files] == [p.read_bytes() for p in base.files]
    assert base.files[0].read_bytes() != base.files[1].read_bytes()
    assert not np.array_equal(read_video(base.files[0], 10.0, 32), read_video(base.files[1], 10.0, 32))
    # --seed S+i -n 1 redraws sample i alone (here i = 2, in a batch of its own both times): the same file
    alone = gen(tiny[0], tmp_path / "alone", seed=2, num=1)
    assert torch.equal(alone.latents["video"][0], base.latents["video"][2])
    assert alone.files[0].read_bytes() == base.files[2].read_bytes()


def test_sample_does_not_depend_on_batch_size(base: GenerateResult, tiny: tuple[Path, Config], tmp_path: Path) -> None:
    ones = gen(tiny[0], tmp_path / "bs1", seed=0, batch_size=1)
    three = gen(tiny[0], tmp_path / "bs3", seed=0, batch_size=3)
    for other in (ones, three):
        for k in ("video", "audio"):
            ref = base.latents[k]
            # Same noise per sample; only float rounding of matmuls of another height differs (~1e-7 relative per
            # call on this CPU). A per-batch generator would make these differ at the scale of the latents.
            assert (other.latents[k] - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_torchrun_two_ranks_write_the_same_files(base: GenerateResult, tiny: tuple[Path, Config],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    # --checkpoint, not --run: torchrun's own parser takes `--run` for an ambiguous abbreviation of --run-path
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "avdit_cli", "generate", "-n", "3",
           "-b", "2", "--steps", str(STEPS), "--seed", "0", "--checkpoint", str(tiny[0]), "-o", str(out),
           "--save-latents", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "samples.json").read_text())
    assert meta["world_size"] == 2
    assert [s["index"] for s in meta["samples"]] == [0, 1, 2]
    for name in ("sample_00000.mp4", "sample_00001.mp4", "sample_00002.mp4", "contact_sheet.png"):
        assert (out / name).read_bytes() == (base.out_dir / name).read_bytes(), name
    saved = load_file(str(out / "latents.safetensors"))
    for k in ("video", "audio"):
        assert torch.equal(saved[k], base.latents[k])


def test_decode_is_per_clip(tiny: tuple[Path, Config]) -> None:
    """A clip decodes to the same frames and waveform alone or in a batch (Griffin-Lim's seeded initial phase is
    drawn per vocoder call: a batched call would give each place in the batch another phase)."""
    from avdit_cli.codecs import build_codecs
    from avdit_cli.pipelines.generate import decode

    cfg = tiny[1]
    codecs = build_codecs(cfg, "cpu")
    g = torch.Generator().manual_seed(3)
    lat = {"video": torch.randn(3, *cfg.data.video_latent_shape, generator=g),
           "audio": torch.randn(3, *cfg.data.audio_latent_shape, generator=g)}
    frames, waves = decode(lat, codecs, cfg.data.clip_samples)
    f1, w1 = decode({k: v[1:2] for k, v in lat.items()}, codecs, cfg.data.clip_samples)
    assert np.array_equal(frames[1:2], f1) and np.array_equal(waves[1:2], w1)
    assert waves.shape == (3, cfg.data.clip_samples) and frames.shape == (3, 16, 32, 32, 3)


# ----------------------------------------------------------------------------------------------------------
# Conditioning on a given track
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 44.1 kHz stereo, 25 fps, 64x64: generate must resample / resize it to the clip protocol
    return make_clip(tmp_path_factory.mktemp("src") / "src.mp4", seconds=2.0, size=(64, 64))


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def test_audio_from_keeps_the_given_audio(tiny: tuple[Path, Config], source_clip: Path, tmp_path: Path) -> None:
    cfg = tiny[1]
    res = gen(tiny[0], tmp_path / "a2v", num=2, audio_from=source_clip)
    given = load_given_clip(source_clip, cfg.data, "audio")
    for path in res.files:
        written = read_audio(path, cfg.data.sample_rate)[: cfg.data.clip_samples]
        assert len(written) == cfg.data.clip_samples
        # AAC at 96 kb/s keeps a 440 Hz tone at > 30 dB SNR; a shift of a single sample would already cap the SNR
        # at -20 log10(2 sin(pi 440 / 16000)) = 15 dB, so this also proves the track is sample-aligned.
        assert snr_db(given.audio, written) > 30
    # the generated video differs per sample, the audio latents are exactly the given clip's
    assert not torch.equal(res.latents["video"][0], res.latents["video"][1])
    assert torch.equal(res.latents["audio"][0], res.latents["audio"][1])
    meta = json.loads(res.samples_json.read_text())
    assert meta["audio_from"] == str(source_clip) and meta["known_mode"] == "replace"


def test_video_from_keeps_the_given_frames(tiny: tuple[Path, Config], source_clip: Path, tmp_path: Path) -> None:
    cfg = tiny[1]
    res = gen(tiny[0], tmp_path / "v2a", num=2, video_from=source_clip)
    given = load_given_clip(source_clip, cfg.data, "video")
    luma = np.array([0.299, 0.587, 0.114])
    ref = given.frames.astype(np.float64) @ luma
    for path in res.files:
        written = read_video(path, cfg.data.fps, cfg.data.frame_size).astype(np.float64) @ luma
        assert written.shape == ref.shape
        # Luma PSNR: yuv420p halves the chroma resolution, which on this 32x32 colour test card caps RGB PSNR at
        # ~23 dB even losslessly. Measured on luma: 37 dB lossless, 35 dB at crf 18; the frames shifted by one
        # give 25 dB and the generated (saturated) video < 10 dB, so > 30 dB means "the given frames, in place".
        psnr = 10 * np.log10(255**2 / np.mean((written - ref) ** 2))
        assert psnr > 30, psnr
    assert not torch.equal(res.latents["audio"][0], res.latents["audio"][1])
    assert torch.equal(res.latents["video"][0], res.latents["video"][1])


def test_given_clip_from_a_sound_file_or_a_silent_video(tmp_path: Path, tiny: tuple[Path, Config]) -> None:
    d = tiny[1].data
    wav = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=330:sample_rate=22050:duration=2", str(wav))
    silent = make_clip(tmp_path / "silent.mp4", seconds=2.0, audio=None)
    assert load_given_clip(wav, d, "audio").audio.shape == (d.clip_samples,)
    assert load_given_clip(silent, d, "video").frames.shape == (d.num_frames, d.frame_size, d.frame_size, 3)
    short = make_clip(tmp_path / "short.mp4", seconds=1.0)
    with pytest.raises(DataError, match="too-short"):
        load_given_clip(short, d, "audio")
    with pytest.raises(DataError, match="too-short"):
        load_given_clip(short, d, "video")


# ----------------------------------------------------------------------------------------------------------
# Refusals and errors
# ----------------------------------------------------------------------------------------------------------
def test_refuses_a_non_empty_folder_and_overwrite_replaces(tiny: tuple[Path, Config], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_00009.mp4").write_bytes(b"old clip")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="--overwrite"):
        gen(tiny[0], out, num=1, steps=1)
    assert (out / "sample_00009.mp4").read_bytes() == b"old clip"
    res = gen(tiny[0], out, num=1, steps=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "index.html", "latents.safetensors",
                                                     "notes.txt", "sample_00000.mel.png", "sample_00000.mp4",
                                                     "samples.json"]
    assert res.files == [out / "sample_00000.mp4"]


def one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_missing_run_is_one_line_naming_finetune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVDIT_RUNS", str(tmp_path / "runs"))
    assert "avdit finetune" in one_line_error(["generate", "-o", str(tmp_path / "o1")])  # no run at all
    assert "avdit finetune" in one_line_error(["generate", "--run", str(tmp_path / "nope"), "-o", str(tmp_path / "o2")])
    (tmp_path / "empty_run").mkdir()
    assert "avdit finetune" in one_line_error(["generate", "--run", str(tmp_path / "empty_run"),
                                               "-o", str(tmp_path / "o3")])
    assert not (tmp_path / "o1").exists()


def test_wrong_options_for_the_run(tiny: tuple[Path, Config], tmp_path: Path, source_clip: Path) -> None:
    with pytest.raises(ConfigError, match="unconditional"):
        gen(tiny[0], tmp_path / "c", class_id=0)
    with pytest.raises(ConfigError, match="unconditional"):
        gen(tiny[0], tmp_path / "s", cfg_scale=4.0)
    with pytest.raises(ConfigError, match="exclude"):
        gen(tiny[0], tmp_path / "x", audio_from=source_clip, video_from=source_clip)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "samples.json").write_text("{}")
    with pytest.raises(DataError, match="missing"):
        gen(tiny[0], tmp_path / "m", audio_from=tmp_path / "no.wav", overwrite=True)
    assert (tmp_path / "m" / "samples.json").read_text() == "{}"
    line = one_line_error(["generate", "--run", str(tiny[0]), "--class", "1", "-o", str(tmp_path / "cli")])
    assert "unconditional" in line


def test_pretrain_run_is_refused(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, overrides={"train.mode": "pretrain"}, mode="pretrain")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_00000.mp4").write_bytes(b"kept")
    with pytest.raises(ConfigError, match="pretrain"):
        gen(run, out, num=1, overwrite=True)
    assert (out / "sample_00000.mp4").read_bytes() == b"kept"  # a failed start touches nothing


def test_class_conditional_run_samples_the_class(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, overrides={"model.num_classes": 3, "model.trainable_class_table": True}, seed=1)
    one = gen(run, tmp_path / "c1", num=1, steps=2, class_id=1, cfg_scale=3.0)
    two = gen(run, tmp_path / "c2", num=1, steps=2, class_id=2, cfg_scale=3.0)
    weak = gen(run, tmp_path / "c1w", num=1, steps=2, class_id=1, cfg_scale=1.0)
    assert not torch.equal(one.latents["video"], two.latents["video"])  # the class matters
    assert not torch.equal(one.latents["video"], weak.latents["video"])  # and so does the guidance scale
    meta = json.loads(one.samples_json.read_text())
    assert meta["class"] == 1 and meta["cfg_scale"] == 3.0
    with pytest.raises(ConfigError, match="0..2"):
        gen(run, tmp_path / "c5", num=1, class_id=5)


def test_missing_backbone_is_a_weights_error(tmp_path: Path) -> None:
    from avdit_cli.errors import WeightsError

    run, _ = make_run(tmp_path)
    for f in (tmp_path / "backbone").iterdir():
        f.unlink()
    (tmp_path / "backbone").rmdir()
    with pytest.raises(WeightsError, match="gone"):
        gen(run, tmp_path / "out", num=1)


def test_checkpoint_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="avdit finetune"):
        gen(tmp_path / "runs" / "nope", tmp_path / "out")


def test_eta_is_refused_for_samplers_that_ignore_it(tmp_path: Path) -> None:
    from avdit_cli.config import Sampler

    run, _ = make_run(tmp_path)
    with pytest.raises(ConfigError, match="--eta"):
        gen(run, tmp_path / "o", num=1, sampler=Sampler.DDPM, eta=0.5)
    assert not (tmp_path / "o").exists()


def test_a_whole_sampling_section_replaces_the_runs_and_single_options_apply_on_top(tiny: tuple[Path, Config]
                                                                                    ) -> None:
    """GenerateOptions.sample hands over every sampling setting at once (the demo's way: none can be left
    behind); steps and seed given alone still win; a section the run cannot take is refused."""
    import dataclasses

    from avdit_cli.pipelines.generate import open_checkpoint, resolve_config

    run, cfg = tiny
    ckpt = open_checkpoint(run)
    section = dataclasses.replace(cfg.sample, eta=0.5, batch_size=1, clip_denoised=not cfg.sample.clip_denoised,
                                  steps=7, seed=3)
    out = resolve_config(ckpt, GenerateOptions(out_dir=run, sample=section, steps=2))
    assert out.sample == dataclasses.replace(section, steps=2)
    assert resolve_config(ckpt, GenerateOptions(out_dir=run)).sample == ckpt.config.sample
    with pytest.raises(ConfigError, match="independent_timesteps"):  # the tiny run was trained without them
        resolve_config(ckpt, GenerateOptions(out_dir=run, sample=dataclasses.replace(section,
                                                                                   cross_modal_guidance=2.0)))


# ----------------------------------------------------------------------------------------------------------
# Exported checkpoints (avdit export): EMA only, a backbone that travels with them
# ----------------------------------------------------------------------------------------------------------
def test_an_exported_checkpoint_generates_the_same_clips(tiny: tuple[Path, Config], tmp_path: Path) -> None:
    import shutil

    from avdit_cli.pipelines.runs import export_checkpoint, load_checkpoint

    run, _ = tiny
    travels = tmp_path / "pack"
    shutil.copytree(run.parent / "backbone", travels / "backbone")
    out = export_checkpoint(run, travels / "model", backbone=travels / "backbone")
    ckpt = load_checkpoint(out)
    assert ckpt.model == {} and ckpt.optim == {} and set(ckpt.ema) == set(load_checkpoint(run).ema)
    assert ckpt.state["backbone"]["path"] == "../backbone"  # relative: the pack can move
    moved = tmp_path / "moved"
    shutil.move(str(travels), str(moved))
    a = gen(run, tmp_path / "a", num=2)
    b = gen(moved / "model", tmp_path / "b", num=2)
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)
    with pytest.raises(WeightsError, match="EMA weights only"):
        gen(moved / "model", tmp_path / "c", num=1, ema=False)


def test_export_refuses_another_backbone_and_a_used_folder(tiny: tuple[Path, Config], tmp_path: Path) -> None:
    from avdit_cli.pipelines.runs import export_checkpoint

    run, cfg = tiny
    other = DiT.from_config(cfg.model, input_size=16, in_channels=3).save_pretrained(tmp_path / "other")
    with pytest.raises(WeightsError, match="not the backbone"):
        export_checkpoint(run, tmp_path / "x", backbone=other)
    assert not (tmp_path / "x").exists()  # nothing half-written
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not empty"):
        export_checkpoint(run, tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


def test_export_cli(tiny: tuple[Path, Config], tmp_path: Path) -> None:
    run, _ = tiny
    result = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "exported to" in result.output and (tmp_path / "e" / "state.json").is_file()


def test_not_known_inputs_get_the_training_prior_while_frames_get_the_sampling_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """sample_latents gives the sampler sample.video_noise_correlation for the generated frames and
    diffusion.video_noise_correlation for "not known" inputs (guidance, absent modalities)."""
    import avdit_cli.pipelines.generate as gen_mod

    seen = {}
    monkeypatch.setattr(gen_mod, "sample", lambda *a, **kw: seen.update(kw) or {})
    for train_rho, want in ((0.0, {}), (0.5, {"video": (1, 0.5)})):
        cfg = load_preset("tiny", [f"diffusion.video_noise_correlation={train_rho}",
                                   "sample.video_noise_correlation=0.3", "sample.order=joint"])
        known = {"audio": torch.zeros(1)}
        gen_mod.sample_latents(lambda x, t: {}, cfg, None, None, {}, known,  # type: ignore[arg-type]
                               generator=[torch.Generator()])
        assert seen["noise_correlation"] == {"video": (1, 0.3)} and seen["unknown_correlation"] == want


def test_video_first_order_and_noise_correlation_are_options_recorded_in_samples_json(tmp_path: Path) -> None:
    from avdit_cli.config import SampleOrder

    run, _ = make_run(tmp_path / "indep", {"diffusion.independent_timesteps": True})
    joint = gen(run, tmp_path / "joint", num=2)
    first = gen(run, tmp_path / "first", num=2, order=SampleOrder.VIDEO_FIRST)
    assert not torch.equal(joint.latents["audio"], first.latents["audio"])
    meta = json.loads((tmp_path / "first" / "samples.json").read_text())
    assert meta["samples"][0]["order"] == "video-first" and meta["samples"][0]["video_noise_correlation"] == 0.0
    alike = gen(run, tmp_path / "alike", num=2, video_noise_correlation=0.9)
    v = alike.latents["video"]  # (n, f, c, h, w): frames of one clip now start from alike noise
    assert json.loads((tmp_path / "alike" / "samples.json").read_text())["samples"][0]["video_noise_correlation"] == 0.9
    assert not torch.equal(v, joint.latents["video"])
    result = runner.invoke(app, ["generate", "--run", str(run), "-o", str(tmp_path / "cli"), "-n", "1", "--steps", "2",
                                 "--order", "video-first", "--noise-correlation", "0.5"])
    assert result.exit_code == 0, result.output
    # a run trained with one t for both tracks cannot be sampled video-first
    plain, _ = make_run(tmp_path / "plain")
    with pytest.raises(ConfigError, match="independent_timesteps"):
        gen(plain, tmp_path / "no", num=1, order=SampleOrder.VIDEO_FIRST)
    assert not (tmp_path / "no").exists()


def test_video_first_sound_stage_reuses_the_frames_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 2 of video-first sampling runs the video stream once per batch, and the clips do not change."""
    from avdit_cli.config import SampleOrder
    from avdit_cli.models import VideoStreamCache

    run, _ = make_run(tmp_path / "indep", {"diffusion.independent_timesteps": True})
    calls: list[bool] = []
    lookup = VideoStreamCache.lookup

    def counted(self: VideoStreamCache, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        calls.append(lookup(self, inputs) is not None)
        return self.tokens if calls[-1] else None

    monkeypatch.setattr(VideoStreamCache, "lookup", counted)
    cached = gen(run, tmp_path / "cached", num=3, order=SampleOrder.VIDEO_FIRST)
    # 2 batches x 2 stages x STEPS calls; in stage 2 all but the first call of a batch reuse the stream
    assert len(calls) == 2 * 2 * STEPS and sum(calls) == 2 * (STEPS - 1)
    monkeypatch.setattr(VideoStreamCache, "lookup", lambda self, inputs: None)
    plain = gen(run, tmp_path / "plain", num=3, order=SampleOrder.VIDEO_FIRST)
    assert torch.equal(cached.latents["video"], plain.latents["video"])
    # the reused calls run the sound alone (audio queries of the joint block): the same up to float rounding
    assert torch.allclose(cached.latents["audio"], plain.latents["audio"], atol=1e-5)


def test_cross_modal_guidance_guides_the_sound_stage_and_needs_a_given_track(tmp_path: Path) -> None:
    from avdit_cli.config import SampleOrder

    run, _ = make_run(tmp_path / "indep", {"diffusion.independent_timesteps": True})
    plain = gen(run, tmp_path / "plain", num=2, order=SampleOrder.VIDEO_FIRST)
    guided = gen(run, tmp_path / "guided", num=2, order=SampleOrder.VIDEO_FIRST, cross_modal_guidance=3.0)
    assert torch.equal(plain.latents["video"], guided.latents["video"])  # the frames' stage has nothing given
    assert not torch.equal(plain.latents["audio"], guided.latents["audio"])
    meta = json.loads((tmp_path / "guided" / "samples.json").read_text())
    assert meta["samples"][0]["cross_modal_guidance"] == 3.0
    with pytest.raises(ConfigError, match="--cross-modal-guidance"):
        gen(run, tmp_path / "joint", num=1, order=SampleOrder.JOINT, cross_modal_guidance=3.0)
    assert not (tmp_path / "joint").exists()
    result = runner.invoke(app, ["generate", "--run", str(run), "-o", str(tmp_path / "cli"), "-n", "1", "--steps", "2",
                                 "--order", "video-first", "--cross-modal-guidance", "2"])
    assert result.exit_code == 0, result.output


def test_staggered_frames_are_an_option_recorded_in_samples_json(tmp_path: Path, source_clip: Path) -> None:
    from avdit_cli.config import SampleOrder

    run, _ = make_run(tmp_path / "stagger", {"diffusion.independent_timesteps": True,
                                             "diffusion.frame_stagger_prob": 0.5, "diffusion.frame_stagger_max": 60.0})
    plain = gen(run, tmp_path / "plain", num=2, order=SampleOrder.VIDEO_FIRST)
    staggered = gen(run, tmp_path / "staggered", num=2, order=SampleOrder.VIDEO_FIRST, frame_stagger=1.0)
    assert not torch.equal(plain.latents["video"], staggered.latents["video"])
    meta = json.loads((tmp_path / "staggered" / "samples.json").read_text())
    assert meta["samples"][0]["frame_stagger"] == 1.0
    again = gen(run, tmp_path / "again", num=2, order=SampleOrder.VIDEO_FIRST, frame_stagger=1.0)
    assert all(torch.equal(again.latents[m], staggered.latents[m]) for m in ("video", "audio"))
    result = runner.invoke(app, ["generate", "--run", str(run), "-o", str(tmp_path / "cli"), "-n", "1", "--steps", "2",
                                 "--frame-stagger", "0.5"])
    assert result.exit_code == 0, result.output
    # a spread wider than the frames' offsets (rows in which no frame moves) samples too
    wide = gen(run, tmp_path / "wide", num=1, order=SampleOrder.VIDEO_FIRST, frame_stagger=60.0, steps=1)
    assert wide.latents["video"].shape[0] == 1
    # frames drawn staggered for a given sound are not guided towards it
    with pytest.raises(ConfigError, match="--frame-stagger"):
        gen(run, tmp_path / "guided", num=1, frame_stagger=1.0, cross_modal_guidance=2.0, audio_from=source_clip)
    assert not (tmp_path / "guided").exists()
    # a run trained on frames at one t is not sampled staggered
    plain_run, _ = make_run(tmp_path / "plain_run", {"diffusion.independent_timesteps": True})
    with pytest.raises(ConfigError, match="frame_stagger"):
        gen(plain_run, tmp_path / "no", num=1, frame_stagger=1.0)
    assert not (tmp_path / "no").exists()


def test_export_sets_sampling_defaults_only(tiny: tuple[Path, Config], tmp_path: Path) -> None:
    from avdit_cli.pipelines.runs import export_checkpoint, load_checkpoint

    run, _ = tiny
    out = export_checkpoint(run, tmp_path / "e", sample=["sample.steps=3", "sample.video_noise_correlation=0.5"])
    cfg = load_checkpoint(out).config
    assert cfg.sample.steps == 3 and cfg.sample.video_noise_correlation == 0.5
    assert cfg.replace(**{"sample.steps": tiny[1].sample.steps, "sample.video_noise_correlation": None}) == tiny[1]
    gen(out, tmp_path / "g", num=1, steps=None)
    assert json.loads((tmp_path / "g" / "samples.json").read_text())["samples"][0]["steps"] == 3
    result = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "bad"), "--set", "train.lr=1"])
    assert result.exit_code == 1 and "sampling defaults only" in result.output
    assert not (tmp_path / "bad").exists()
