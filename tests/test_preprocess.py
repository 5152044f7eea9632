"""`avdit preprocess` end to end on clips made on the fly with the bundled ffmpeg (tiny preset, pixels codecs,
and a tiny random SD-style VAE): exact clip lengths, bad files, resume after SIGKILL, codec parity, config
refusal, labels, --limit, --stride, worker processes and torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from media_factory import make_clip, make_empty, make_flash_beep, make_text, truncate
from safetensors.torch import load_file
from typer.testing import CliRunner

from avdit_cli.cli.app import app
from avdit_cli.codecs import build_codecs
from avdit_cli.config import load_preset
from avdit_cli.data.cache import LatentCache, read_manifest
from avdit_cli.data.clips import load_clips
from avdit_cli.errors import DataError
from avdit_cli.paths import default_cache_dir
from avdit_cli.pipelines.distributed import DistContext
from avdit_cli.pipelines.preprocess import _on_all_ranks, decode_file, preprocess

runner = CliRunner()
TINY = load_preset("tiny")
ONE_PER_SHARD = ["data.files_per_shard=1"]
GOOD = {"a_land25.mp4": 2, "b_port30.mp4": 1, "c_odd10.mp4": 1}  # file -> clips it gives
BAD = {"d_noaudio.mp4": "no-audio", "e_trunc.mp4": "truncated", "f_empty.mp4": "empty-file",
       "g_text.mp4": "not-a-video", "h_short.mp4": "too-short"}
FLASH_AT = 0.8


# ----------------------------------------------------------------------------------------------------------
# Fixtures: a folder of varied good and bad files, and a folder of many small files for resume / ranks
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mixed")
    # landscape 25 fps 44.1 kHz stereo with a flash + beep at 0.8 s; portrait 30 fps 48 kHz; odd size 10 fps
    make_flash_beep(d / "a_land25.mp4", flash_at=FLASH_AT, seconds=3.4, fps=25, size=(64, 48), sample_rate=44100)
    make_clip(d / "b_port30.mp4", seconds=2.0, fps=30, size=(48, 64), sample_rate=48000)
    make_clip(d / "c_odd10.mp4", seconds=1.7, fps=10, size=(37, 29), sample_rate=44100)
    make_clip(d / "d_noaudio.mp4", seconds=2.0, audio=None)
    truncate(d / "b_port30.mp4", d / "e_trunc.mp4", 0.5)
    make_empty(d / "f_empty.mp4")
    make_text(d / "g_text.mp4")
    make_clip(d / "h_short.mp4", seconds=0.5)
    return d


@pytest.fixture(scope="module")
def mixed_cache(mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixed_cache")
    summary = preprocess(TINY, mixed, out, workers=0, batch_size=3)
    assert summary.clips == sum(GOOD.values()) and summary.files_seen == len(GOOD) + len(BAD)
    assert summary.skipped_by_reason == {reason: 1 for reason in BAD.values()}
    return out


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("many")
    for i in range(6):
        make_clip(d / f"clip_{i}.mp4", seconds=(1.7, 3.3)[i % 2], fps=(25, 30)[i % 2], size=(48, 40))
    make_empty(d / "clip_2b.mp4")  # a bad file in the middle: its record must survive splits and merges
    return d


@pytest.fixture(scope="module")
def many_ref(many: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted single-process result, one file per shard."""
    out = tmp_path_factory.mktemp("many_ref")
    preprocess(load_preset("tiny", ONE_PER_SHARD), many, out, workers=0)
    return out


def assert_same_cache(a: Path, b: Path) -> None:
    """Same manifest (but the absolute data folder), same skipped.jsonl, same shard files, equal tensors."""
    ma, mb = read_manifest(a), read_manifest(b)
    ma.pop("data_dir"), mb.pop("data_dir")
    assert ma == mb
    assert (a / "skipped.jsonl").read_text() == (b / "skipped.jsonl").read_text()
    names = sorted(p.name for p in (a / "shards").iterdir())
    assert names == sorted(p.name for p in (b / "shards").iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            ta, tb = load_file(a / "shards" / name), load_file(b / "shards" / name)
            assert ta.keys() == tb.keys()
            for key in ta:
                assert torch.equal(ta[key], tb[key]), (name, key)
        else:
            assert (a / "shards" / name).read_text() == (b / "shards" / name).read_text()


def cli(*args: str) -> object:
    return runner.invoke(app, ["preprocess", *args])


# ----------------------------------------------------------------------------------------------------------
# Clip protocol and bad files
# ----------------------------------------------------------------------------------------------------------
def test_every_input_gives_exact_clips(mixed: Path) -> None:
    """25 / 30 / 10 fps, landscape / portrait / odd sizes, 44.1 / 48 kHz stereo: 16 frames, 25,600 samples."""
    for name, n in GOOD.items():
        decoded = decode_file(str(mixed / name), TINY.data, TINY.data.stride_seconds)  # as the workers do
        clips = decoded.clips
        assert decoded.problem is None and len(clips) == n, name
        assert decoded.streams == {"video": 0, "audio": 1}
        for clip in clips:
            assert clip.frames.shape == (16, 32, 32, 3) and clip.frames.dtype.name == "uint8"
            assert clip.audio.shape == (25_600,) and clip.audio.dtype.name == "float32"
            assert not clip.flags
        assert [c.start for c in clips] == [1.6 * k for k in range(n)]


def test_bad_files_are_skipped_with_reasons(mixed: Path, mixed_cache: Path) -> None:
    skipped = [json.loads(line) for line in (mixed_cache / "skipped.jsonl").read_text().splitlines()]
    assert {s["source"]: s["reason"] for s in skipped} == BAD
    assert all(s["message"] and "\n" not in s["message"] for s in skipped)
    manifest = read_manifest(mixed_cache)
    sources = [c["source"] for c in manifest["clips"]]
    assert {s: sources.count(s) for s in set(sources)} == GOOD
    assert [c["start"] for c in manifest["clips"] if c["source"] == "a_land25.mp4"] == [0.0, 1.6]
    shard = load_file(mixed_cache / "shards" / "shard_00000.safetensors")
    assert tuple(shard["video"].shape) == (4, *TINY.data.video_latent_shape) == (4, 16, 3, 16, 16)
    assert tuple(shard["audio"].shape) == (4, *TINY.data.audio_latent_shape) == (4, 1, 40, 16)
    assert shard["label"].tolist() == [-1] * 4 and shard["flags"].tolist() == [0] * 4
    ds = LatentCache(mixed_cache, expect={"config_hash": TINY.cache_hash()})
    assert len(ds) == 4 and ds[3]["label"].item() == -1 and ds[3]["audio_ok"].item()


def test_rerun_reuses_and_never_duplicates(mixed: Path, mixed_cache: Path) -> None:
    before = (mixed_cache / "manifest.json").read_text()
    summary = preprocess(TINY, mixed, mixed_cache, workers=0)
    assert summary.shards_reused == 1 and summary.clips == 4
    assert (mixed_cache / "manifest.json").read_text() == before
    # The same rerun through the CLI, as JSON for scripts: the summary's fields, nothing else on stdout.
    result = cli(str(mixed), "-o", str(mixed_cache), "-p", "tiny", "-j", "0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"cache_dir", "files_seen", "clips", "skipped_by_reason", "skipped_by_extension",
                         "clips_by_flag", "hours", "cache_bytes",
                         "shards_reused", "seconds", "skipped_jsonl"}
    assert data["cache_dir"] == str(mixed_cache) and data["clips"] == 4 and data["shards_reused"] == 1
    assert data["skipped_by_reason"] == {r: list(BAD.values()).count(r) for r in set(BAD.values())}
    assert (mixed_cache / "manifest.json").read_text() == before


def test_a_limited_run_then_a_full_run_equals_a_full_run(mixed: Path, mixed_cache: Path, tmp_path: Path) -> None:
    """--limit makes shard 0 from fewer files: the full rerun must redo it, not take it as done."""
    preprocess(TINY, mixed, tmp_path / "c", workers=0, batch_size=3, limit=2)
    assert read_manifest(tmp_path / "c")["num_clips"] == 3
    summary = preprocess(TINY, mixed, tmp_path / "c", workers=0, batch_size=3)
    assert summary.shards_reused == 0
    assert_same_cache(tmp_path / "c", mixed_cache)


def test_flash_and_beep_line_up_in_the_cache(mixed_cache: Path) -> None:
    item = LatentCache(mixed_cache)[0]  # a_land25.mp4 from 0 s: flash and beep at 0.8 s
    brightness = item["video"].mean(dim=(1, 2, 3))  # (f,)
    loudness = item["audio"].mean(dim=(0, 2))  # (T_a,)

    def onset(x: torch.Tensor) -> int:
        return int(torch.nonzero(x > (x.min() + x.max()) / 2)[0])

    assert onset(brightness) == round(FLASH_AT * TINY.data.fps)
    seconds_per_step = TINY.data.audio_pixel_downsample * TINY.data.hop_length / TINY.data.sample_rate
    assert abs(onset(loudness) * seconds_per_step - FLASH_AT) <= 2 * seconds_per_step


def test_strict_stops_at_the_first_bad_file(mixed: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"d_noaudio\.mp4.*no-audio.*--strict"):
        preprocess(load_preset("tiny", ONE_PER_SHARD), mixed, tmp_path / "c", workers=0, strict=True)


def test_only_bad_files_fail_with_one_line(mixed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("f_empty.mp4", "g_text.mp4"):
        shutil.copy(mixed / name, bad / name)
    result = cli(str(bad), "-o", str(tmp_path / "c"), "-p", "tiny", "-j", "0")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no clip could be made" in errors[0] and "skipped.jsonl" in errors[0]
    assert "Traceback" not in result.output


def test_another_config_is_refused_not_mixed(mixed: Path, mixed_cache: Path) -> None:
    before = (mixed_cache / "manifest.json").read_text()
    result = cli(str(mixed), "-o", str(mixed_cache), "-p", "tiny", "--set", "data.frame_size=64", "-j", "0")
    assert result.exit_code == 1 and "another data config" in result.output
    assert (mixed_cache / "manifest.json").read_text() == before
    other = mixed.parent / "other_folder"
    shutil.copytree(mixed, other, dirs_exist_ok=True)
    with pytest.raises(DataError, match="another folder"):
        preprocess(TINY, other, mixed_cache, workers=0)


# ----------------------------------------------------------------------------------------------------------
# Latents equal direct encoding
# ----------------------------------------------------------------------------------------------------------
def test_cached_latents_equal_direct_pixels_encoding(mixed: Path, mixed_cache: Path) -> None:
    (clip,) = load_clips(mixed / "c_odd10.mp4", TINY.data)
    i = next(k for k, c in enumerate(read_manifest(mixed_cache)["clips"]) if c["source"] == "c_odd10.mp4")
    item = LatentCache(mixed_cache)[i]
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (f, c, h, w)
    assert torch.allclose(item["video"], F.avg_pool2d(frames, 2), atol=1e-6)
    codecs = build_codecs(TINY, "cpu")
    audio = codecs.audio.encode(codecs.mel(torch.from_numpy(clip.audio)[None]))[0]
    assert torch.allclose(item["audio"], audio, atol=1e-5)


def test_cached_latents_equal_direct_sd_vae_encoding(mixed: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from avdit_cli.codecs.video_vae import SDVideoVAE

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
                        scaling_factor=0.18215)
    vae.save_pretrained(tmp_path / "vae")
    cfg = load_preset("tiny", ["data.video_codec=sd-vae"])
    codec = SDVideoVAE(tmp_path / "vae")
    codecs = dataclasses.replace(build_codecs(TINY, "cpu"), video=codec)
    summary = preprocess(cfg, mixed, tmp_path / "c", workers=0, limit=1, codecs=codecs)
    assert summary.files_seen == 1 and summary.clips == 2
    assert read_manifest(tmp_path / "c")["codecs"]["video"]["kind"] == "SDVideoVAE"
    ds = LatentCache(tmp_path / "c")
    for k, clip in enumerate(load_clips(mixed / "a_land25.mp4", cfg.data)):
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (f, c, h, w)
        direct = codec.encode(frames)  # (f, 4, 4, 4)
        assert ds[k]["video"].shape == direct.shape == (16, 4, 4, 4)
        assert torch.allclose(ds[k]["video"], direct, atol=1e-5)
        assert direct.std() > 0  # not a degenerate encoder


# ----------------------------------------------------------------------------------------------------------
# Labels, --limit, default folder, --stride
# ----------------------------------------------------------------------------------------------------------
def test_class_folders_limit_and_default_folder(mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "landscape"
    for rel in ("beach/1.mp4", "beach/2.mp4", "forest/3.mp4", "top.mp4"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mixed / "c_odd10.mp4", data / rel)
    result = cli(str(data), "-o", str(tmp_path / "c"), "-p", "tiny", "--set", "data.class_folders=true", "-j", "0")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "c")
    assert manifest["classes"] == ["beach", "forest"]
    assert [(c["source"], c["label"]) for c in manifest["clips"]] == \
        [("beach/1.mp4", 0), ("beach/2.mp4", 0), ("forest/3.mp4", 1), ("top.mp4", -1)]
    assert [LatentCache(tmp_path / "c")[i]["label"].item() for i in range(4)] == [0, 0, 1, -1]
    # --limit, and no -o: the cache goes where finetune with the same preset looks for it
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "home"))
    result = cli(str(data), "-p", "tiny", "--set", "data.class_folders=true", "--limit", "2", "-j", "0")
    assert result.exit_code == 0, result.output
    where = default_cache_dir(load_preset("tiny", ["data.class_folders=true"]))
    assert where.is_relative_to(tmp_path / "home")
    manifest = read_manifest(where)
    assert [c["source"] for c in manifest["clips"]] == ["beach/1.mp4", "beach/2.mp4"]
    assert manifest["classes"] == ["beach", "forest"]  # from the whole folder: labels agree with a full run


def test_stride_gives_overlapping_clips(mixed: Path, tmp_path: Path) -> None:
    result = cli(str(mixed), "-o", str(tmp_path / "c"), "-p", "tiny", "--stride", "0.8", "--limit", "1", "-j", "0")
    assert result.exit_code == 0, result.output
    assert [c["start"] for c in read_manifest(tmp_path / "c")["clips"]] == [0.0, 0.8, 1.6]
    ds = LatentCache(tmp_path / "c")
    first, second = ds[0], ds[1]
    assert torch.equal(first["video"][8:], second["video"][:8])  # the same source frames
    # the same source audio, away from the clip edges (mel frames near an edge see reflect padding)
    assert torch.allclose(first["audio"][:, 21:39], second["audio"][:, 1:19], atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Resume after SIGKILL, worker processes, torchrun
# ----------------------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("AVDIT_DEBUG", None)
    return env


def test_sigkill_then_rerun_equals_uninterrupted_run(many: Path, many_ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "avdit_cli", "preprocess", str(many), "-o", str(out), "-p", "tiny",
           "--set", ONE_PER_SHARD[0], "-j", "0"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "shards" / "shard_00000.json"
    deadline = time.monotonic() + 180
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert first.exists() and not (out / "manifest.json").exists()  # really stopped mid-run
    done = len(list((out / "shards").glob("shard_*.json")))
    assert 1 <= done < 7
    summary = preprocess(load_preset("tiny", ONE_PER_SHARD), many, out, workers=0)
    assert summary.shards_reused == done
    assert_same_cache(out, many_ref)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_worker_pools_give_the_same_cache(kind: str, many: Path, many_ref: Path, tmp_path: Path) -> None:
    preprocess(load_preset("tiny", ONE_PER_SHARD), many, tmp_path / "c", workers=2, worker_kind=kind)
    assert_same_cache(tmp_path / "c", many_ref)


def test_torchrun_two_ranks_equal_one_process(many: Path, many_ref: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "avdit_cli", "preprocess", str(many),
           "-o", str(tmp_path / "c"), "-p", "tiny", "--set", ONE_PER_SHARD[0], "-j", "0"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().count("clips made") == 1  # one summary, from rank 0
    assert_same_cache(tmp_path / "c", many_ref)


def test_an_error_on_one_rank_stops_every_rank() -> None:
    """Rank 0 refusing a cache (or --strict) must stop rank 1 too, not leave it waiting at a barrier."""

    class OtherRankFailed(DistContext):
        def all_reduce_max(self, value: float) -> float:  # what gloo returns when rank 0 reported 1.0
            return max(value, 1.0)

    def fine() -> None:
        pass

    with pytest.raises(DataError, match="stopped on another rank"):
        _on_all_ranks(OtherRankFailed(rank=1, world_size=2), fine)
    _on_all_ranks(DistContext(), fine)  # one process, no error: nothing raised

    def refuse() -> None:
        raise DataError("refused")

    with pytest.raises(DataError, match="refused"):
        _on_all_ranks(DistContext(), refuse)


# ----------------------------------------------------------------------------------------------------------
# Real-world folders (issue 14): any container, the streams used, flags and what was skipped, by type
# ----------------------------------------------------------------------------------------------------------
def test_every_file_ffmpeg_reads_is_taken_and_the_rest_counted_by_type(tmp_path: Path) -> None:
    from media_factory import H264, ffmpeg, make_events

    data = tmp_path / "data"
    data.mkdir()
    make_events(data / "late.mov", audio_delay=1.0, audio=("-c:a", "pcm_s16le"))  # clip 0 starts silent
    make_events(data / "offset.mkv", audio=("-c:a", "aac"), out=("-output_ts_offset", "10"))
    make_events(data / "muted.mp4", gains=(0.0, 0.0))  # an all-zero stereo track
    make_events(data / "dvd.vob", video=("-c:v", "mpeg2video", "-q:v", "2"), audio=("-c:a", "ac3"))
    make_events(data / "phone.3gp", video=H264, audio=("-c:a", "libopencore_amrnb", "-ar", "8000"))
    make_events(data / "no_extension", out=("-f", "mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=30:d=4", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
           "-f", "lavfi", "-i", "sine=f=1000:r=48000:d=4", "-map", "0:v", "-map", "1:a", "-map", "2:a", "-t", "4",
           *H264, "-c:a", "aac", "-disposition:a:0", "0", "-disposition:a:1", "default", str(data / "two.mkv"))
    shutil.copy(data / "late.mov", data / ".hidden.mov")  # hidden: not read at all
    (data / "notes.txt").write_text("not a video\n")
    (data / "list.m3u8").write_text("#EXTM3U\nlate.mov\n")  # a playlist: it would read late.mov a second time
    (data / "junk.bin").write_bytes(bytes(range(256)) * 40)
    ffmpeg("-f", "lavfi", "-i", "color=red:s=32x32", "-frames:v", "1", str(data / "cover.jpg"))
    ffmpeg("-f", "lavfi", "-i", "sine=d=2", str(data / "sound.wav"))
    out = data / "cache"  # inside the data folder: must not be read as data on a rerun

    result = cli(str(data), "-o", str(out), "-p", "tiny", "-j", "0")
    assert result.exit_code == 0, result.output
    rows = {cells[1].strip(): cells[2].strip() for line in result.output.splitlines()
            if len(cells := line.split("│")) == 4}  # the summary table's rows
    assert rows["skipped by type"] == ".bin: 1, .jpg: 1, .m3u8: 1, .txt: 1, .wav: 1"
    assert rows["flagged clips"] == "audio-padded: 1, audio-silent: 2"
    assert rows["files seen"] == "12" and rows["clips made"] == "14"
    manifest = read_manifest(out)
    sources = [c["source"] for c in manifest["clips"]]
    assert sorted(set(sources)) == ["dvd.vob", "late.mov", "muted.mp4", "no_extension", "offset.mkv",
                                    "phone.3gp", "two.mkv"]
    assert all(sources.count(s) == 2 for s in set(sources))
    assert {s["source"]: s["reason"] for s in manifest["skipped"]} == {
        "cover.jpg": "not-a-video", "junk.bin": "no-audio", "list.m3u8": "not-a-video",  # ffmpeg: "a raw video"
        "notes.txt": "not-a-video", "sound.wav": "not-a-video"}
    by_source = {(c["source"], c["start"]): c for c in manifest["clips"]}
    assert by_source[("two.mkv", 0.0)]["streams"] == {"video": 0, "audio": 2}
    assert by_source[("late.mov", 0.0)]["streams"] == {"video": 0, "audio": 1}
    assert by_source[("late.mov", 0.0)]["flags"] == ["audio-padded"] and by_source[("late.mov", 1.6)]["flags"] == []
    assert [by_source[("muted.mp4", s)]["flags"] for s in (0.0, 1.6)] == [["audio-silent"]] * 2
    ds = LatentCache(out)
    ok = {(c["source"], c["start"]): bool(ds[i]["audio_ok"]) for i, c in enumerate(manifest["clips"])}
    assert [k for k, v in ok.items() if not v] == [("late.mov", 0.0), ("muted.mp4", 0.0), ("muted.mp4", 1.6)]
    shard = load_file(out / "shards" / "shard_00000.safetensors")
    assert shard["flags"].tolist()[sources.index("muted.mp4")] == 2  # the audio-silent bit

    again = preprocess(TINY, data, out, workers=0)  # the cache's own files are not taken as data
    assert again.shards_reused == 2 and again.clips == 14 and again.files_seen == 12
    assert again.skipped_by_extension == {".bin": 1, ".jpg": 1, ".m3u8": 1, ".txt": 1, ".wav": 1}
    assert again.clips_by_flag == {"audio-padded": 1, "audio-silent": 2}
