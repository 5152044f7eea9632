"""Media I/O with the bundled ffmpeg: probing, frame/audio reading, alignment, clip cutting, errors, writing."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from media_factory import (
    make_clip,
    make_empty,
    make_flash_beep,
    make_framed,
    make_text,
    rotate,
    truncate,
)

from avdit_cli.config import DataConfig, load_preset
from avdit_cli.data.clips import AUDIO_PADDED, cut_clips, load_clips
from avdit_cli.data.media import MediaError, probe, read_audio, read_video, write_mp4
from avdit_cli.errors import DataError


@pytest.fixture(scope="module")
def data_cfg() -> DataConfig:
    return load_preset("tiny").data  # 16 frames at 10 fps, 32x32, 16 kHz: 25,600 samples per clip


# ----------------------------------------------------------------------------------------------------------
# probe / read / cut on many shapes
# ----------------------------------------------------------------------------------------------------------
SHAPES = [
    (25, (320, 240), 44100, 2),  # landscape
    (30, (240, 320), 48000, 2),  # portrait
    (10, (333, 187), 44100, 1),  # odd sizes, already at the clip rate
]


@pytest.mark.parametrize("fps,size,rate,channels", SHAPES)
def test_probe_and_clips_have_exact_lengths(tmp_path: Path, data_cfg: DataConfig, fps, size, rate, channels):
    path = make_clip(tmp_path / "in.mp4", seconds=3.4, fps=fps, size=size, sample_rate=rate, channels=channels)
    info = probe(path)
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == size
    assert info.fps == pytest.approx(fps)
    assert info.audio_rate == rate and info.audio_channels == channels
    assert info.duration == pytest.approx(3.4, abs=0.05)
    assert info.video_start == pytest.approx(0.0, abs=1e-6)

    clips = load_clips(path, data_cfg)
    assert len(clips) == 2  # 34 frames at 10 fps: two non-overlapping 16-frame windows
    for i, clip in enumerate(clips):
        assert clip.start == pytest.approx(1.6 * i)
        assert clip.frames.shape == (16, 32, 32, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.shape == (25600,) and clip.audio.dtype == np.float32
        assert clip.flags == ()
        assert np.abs(clip.audio).max() > 0.05  # the sine is there


def test_read_video_samples_by_timestamp(tmp_path: Path):
    path = make_clip(tmp_path / "in.mp4", seconds=2.0, fps=25, size=(64, 64))
    frames = read_video(path, fps=10, size=16)
    assert frames.shape == (20, 16, 16, 3)
    audio = read_audio(path, 16000)
    assert abs(len(audio) - 32000) <= 1024 // 2  # 2 s, within one AAC frame at the source rate


@pytest.mark.parametrize(
    "size,sar,inner",
    [
        ((320, 240), None, None),  # landscape: the sides go
        ((240, 320), None, None),  # portrait: top and bottom go
        ((333, 187), None, None),  # odd sizes
        ((160, 240), "2/1", (120, 240)),  # anamorphic: shown as 320x240, the centre 240x240 is 120x240 stored
    ],
)
def test_short_side_resize_and_centre_crop(tmp_path: Path, size, sar, inner):
    """A red frame whose centre square (as displayed) is green: the crop must keep only green."""
    path = make_framed(tmp_path / "framed.mp4", size=size, sar=sar, inner=inner)
    frames = read_video(path, fps=10, size=32)
    assert frames.shape == (10, 32, 32, 3)
    interior = frames[:, 2:-2, 2:-2].reshape(-1, 3).astype(int)  # edges may blend with the red border
    assert interior[:, 1].min() > 180 and interior[:, 0].max() < 90  # green, no red
    # and the crop is not too tight: the outermost columns/rows still show some green (not all red)
    assert frames[:, :, 0, 1].mean() > 100 and frames[:, 0, :, 1].mean() > 100


def test_rotated_video_is_read_upright(tmp_path: Path):
    """Stored 320x240 with a 90 degree display rotation: shown (and read) as 240x320 portrait."""
    stored = make_framed(tmp_path / "stored.mp4", size=(320, 240))
    path = rotate(stored, tmp_path / "rotated.mp4", 90)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (240, 320, 90.0)
    frames = read_video(path, fps=10, size=32, info=info)
    assert frames.shape == (10, 32, 32, 3)
    interior = frames[:, 2:-2, 2:-2].reshape(-1, 3).astype(int)
    assert interior[:, 1].min() > 180 and interior[:, 0].max() < 90


# ----------------------------------------------------------------------------------------------------------
# Alignment: a white flash and a beep at the same moment stay together after reading
# ----------------------------------------------------------------------------------------------------------
def _flash_and_beep_times(path: Path) -> tuple[float, float]:
    frames = read_video(path, fps=10, size=16)
    audio = read_audio(path, 16000)
    lum = frames.reshape(len(frames), -1).mean(1)
    assert lum.max() > 200 and lum.min() < 30, "the flash must be visible"
    k = int(np.argmax(lum > 128))
    n = int(np.argmax(np.abs(audio) > 0.3))
    assert np.abs(audio).max() > 0.3, "the beep must be audible"
    return k / 10, n / 16000


@pytest.mark.parametrize("fps", [25, 30, 10])
@pytest.mark.parametrize("rate", [44100, 48000])
def test_flash_and_beep_stay_aligned(tmp_path: Path, fps, rate):
    path = make_flash_beep(tmp_path / "fb.mp4", flash_at=1.23, fps=fps, sample_rate=rate, channels=2)
    flash, beep = _flash_and_beep_times(path)
    # frame k shows what is on screen at k / 10: the first white frame comes at or after the beep, by < 1 frame
    assert beep == pytest.approx(1.23, abs=0.005)
    assert -0.02 <= flash - beep < 0.1


@pytest.mark.parametrize(
    "video_offset,audio_offset",
    [(0.5, 0.0), (0.0, 0.4), (0.3, 0.1)],  # video starts late / audio starts late / both, differently
)
def test_alignment_when_streams_start_at_different_times(tmp_path: Path, video_offset, audio_offset):
    path = make_flash_beep(tmp_path / "fb.mp4", flash_at=1.23, fps=25, sample_rate=48000,
                           video_offset=video_offset, audio_offset=audio_offset)
    info = probe(path)
    assert info.video_start == pytest.approx(video_offset, abs=0.03)
    flash, beep = _flash_and_beep_times(path)
    # the clip timeline starts at the first video frame; the audio follows it
    assert beep == pytest.approx(1.23 - info.video_start, abs=0.005)
    assert -0.02 <= flash - beep < 0.1


def test_stereo_downmix_keeps_unit_gain(tmp_path: Path):
    path = make_flash_beep(tmp_path / "fb.mp4", flash_at=0.5, seconds=1.5, channels=2)  # beep amplitude 0.8
    audio = read_audio(path, 16000)
    assert np.abs(audio).max() == pytest.approx(0.8, abs=0.08)


# ----------------------------------------------------------------------------------------------------------
# Clip cutting
# ----------------------------------------------------------------------------------------------------------
def test_cut_clips_exact_counts_stride_and_padding(data_cfg: DataConfig):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (50, 32, 32, 3), dtype=np.uint8)  # 5.0 s
    audio = rng.standard_normal(int(4.0 * 16000)).astype(np.float32)  # audio ends at 4.0 s
    clips = cut_clips(frames, audio, data_cfg)
    assert [c.start for c in clips] == pytest.approx([0.0, 1.6, 3.2])
    assert all(c.frames.shape == (16, 32, 32, 3) and c.audio.shape == (25600,) for c in clips)
    np.testing.assert_array_equal(clips[1].frames, frames[16:32])
    np.testing.assert_array_equal(clips[1].audio, audio[25600:51200])  # starts at its first frame's time
    assert clips[0].flags == () and clips[1].flags == () and clips[2].flags == (AUDIO_PADDED,)
    assert np.all(clips[2].audio[int(0.8 * 16000):] == 0)  # 3.2 s + 0.8 s = 4.0 s: zeros after that

    overlapping = cut_clips(frames, audio, data_cfg, stride_seconds=0.8)
    assert [c.start for c in overlapping] == pytest.approx([0.0, 0.8, 1.6, 2.4, 3.2])
    np.testing.assert_array_equal(overlapping[1].frames, frames[8:24])


def test_cut_clips_too_short(data_cfg: DataConfig):
    frames = np.zeros((15, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(MediaError) as err:
        cut_clips(frames, np.zeros(30000, np.float32), data_cfg)
    assert err.value.reason == "too-short"


def test_load_clips_flags_audio_shorter_than_video(tmp_path: Path, data_cfg: DataConfig):
    path = make_clip(tmp_path / "short_audio.mp4", seconds=3.4, audio_seconds=2.6)
    clips = load_clips(path, data_cfg)
    assert len(clips) == 2
    assert clips[0].flags == () and clips[1].flags == (AUDIO_PADDED,)
    assert clips[1].audio.shape == (25600,)
    assert np.all(clips[1].audio[int(1.1 * 16000):] == 0)
    assert np.abs(clips[1].audio[: int(0.9 * 16000)]).max() > 0.05


def test_load_clips_with_stride(tmp_path: Path, data_cfg: DataConfig):
    path = make_clip(tmp_path / "in.mp4", seconds=3.4)
    clips = load_clips(path, data_cfg, stride_seconds=0.5)
    assert [c.start for c in clips] == pytest.approx([0.0, 0.5, 1.0, 1.5])


# ----------------------------------------------------------------------------------------------------------
# Bad input: every case is a DataError with a reason and a one-line message
# ----------------------------------------------------------------------------------------------------------
def _reason(path: Path, data_cfg: DataConfig) -> str:
    with pytest.raises(DataError) as err:
        load_clips(path, data_cfg)
    message = str(err.value)
    assert "\n" not in message and str(path.name) in message
    return err.value.reason  # type: ignore[attr-defined]


def test_error_reasons(tmp_path: Path, data_cfg: DataConfig):
    good = make_clip(tmp_path / "good.mp4", seconds=4.0)
    plain = make_clip(tmp_path / "plain.mp4", seconds=4.0, faststart=False)  # index (moov) at the end
    assert _reason(make_clip(tmp_path / "silent.mp4", seconds=2.0, audio=None), data_cfg) == "no-audio"
    assert _reason(make_clip(tmp_path / "sound.m4a", seconds=2.0, video=None), data_cfg) == "not-a-video"
    assert _reason(make_clip(tmp_path / "short.mp4", seconds=0.5), data_cfg) == "too-short"
    assert _reason(truncate(good, tmp_path / "cut_faststart.mp4"), data_cfg) == "truncated"
    assert _reason(truncate(plain, tmp_path / "cut_plain.mp4"), data_cfg) == "truncated"
    assert _reason(make_empty(tmp_path / "empty.mp4"), data_cfg) == "empty-file"
    assert _reason(make_text(tmp_path / "notes.mp4"), data_cfg) == "not-a-video"
    assert _reason(tmp_path / "missing.mp4", data_cfg) == "missing"
    assert len(load_clips(good, data_cfg)) == 2  # the intact originals are fine
    assert len(load_clips(plain, data_cfg)) == 2


def test_readers_raise_reasons(tmp_path: Path):
    silent = make_clip(tmp_path / "silent.mp4", seconds=1.0, audio=None)
    with pytest.raises(MediaError) as err:
        read_audio(silent, 16000)
    assert err.value.reason == "no-audio"
    assert read_video(silent, 10, 16).shape == (10, 16, 16, 3)
    sound = make_clip(tmp_path / "sound.m4a", seconds=1.0, video=None)
    with pytest.raises(MediaError) as err:
        read_video(sound, 10, 16)
    assert err.value.reason == "not-a-video"


def test_file_name_with_colon_is_not_a_protocol(tmp_path: Path, data_cfg: DataConfig):
    path = make_clip(tmp_path / "x.mp4", seconds=1.7)
    odd = path.rename(tmp_path / "http:odd name.mp4")
    assert len(load_clips(odd, data_cfg)) == 1


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------
def _sine(n: int, rate: int, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_write_mp4_reads_back_with_pyav(tmp_path: Path, rate: int):
    rng = np.random.default_rng(0)
    frames = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None, None], 16, 0)
    frames = np.broadcast_to(frames, (16, 48, 64, 3)).copy()  # (f, h, w, c): a smooth vertical ramp
    frames[:, :, :, 2] = rng.integers(100, 110, (16, 48, 64), dtype=np.uint8)
    audio = _sine(round(1.6 * rate), rate)
    out = write_mp4(tmp_path / "sub" / "clip.mp4", frames, audio, fps=10, sample_rate=rate)
    assert out.exists() and not [p for p in out.parent.iterdir() if p.name != "clip.mp4"]  # no temp files left

    with av.open(str(out)) as container:
        vs, as_ = container.streams.video[0], container.streams.audio[0]
        assert vs.codec_context.name == "h264" and vs.codec_context.pix_fmt == "yuv420p"
        assert (vs.codec_context.width, vs.codec_context.height) == (64, 48)
        assert float(vs.average_rate) == pytest.approx(10.0)
        assert as_.codec_context.name == "aac" and as_.codec_context.sample_rate == rate
        assert as_.codec_context.layout.nb_channels == 1
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 16
    assert np.abs(decoded[5].astype(int) - frames[5].astype(int)).mean() < 4
    with av.open(str(out)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        a_stream = container.streams.audio[0]
        duration = float(a_stream.duration * a_stream.time_base)
    assert abs(len(samples) - round(1.6 * rate)) <= 1024
    assert duration == pytest.approx(1.6, abs=1024 / rate)
    # and our own readers agree
    info = probe(out)
    assert info.duration == pytest.approx(1.6, abs=0.07)
    assert read_video(out, 10, 48).shape == (16, 48, 48, 3)
    back = read_audio(out, 16000)
    assert abs(len(back) - 25600) <= 1024
    assert np.corrcoef(back[2000:20000], _sine(25600, 16000)[2000:20000])[0, 1] > 0.95


def test_write_mp4_fits_audio_to_the_video_and_is_deterministic(tmp_path: Path):
    frames = np.full((16, 32, 32, 3), 128, dtype=np.uint8)
    a = write_mp4(tmp_path / "a.mp4", frames, _sine(20000, 16000), fps=10)  # short audio: padded to 1.6 s
    b = write_mp4(tmp_path / "b.mp4", frames, _sine(20000, 16000), fps=10)
    assert a.read_bytes() == b.read_bytes()
    back = read_audio(a, 16000)
    assert abs(len(back) - 25600) <= 1024
    long = write_mp4(tmp_path / "long.mp4", frames, _sine(40000, 16000), fps=10)  # long audio: cut
    assert abs(len(read_audio(long, 16000)) - 25600) <= 1024
    mute = write_mp4(tmp_path / "mute.mp4", frames, None, fps=10)
    assert not probe(mute).has_audio


def test_write_mp4_rejects_bad_frames(tmp_path: Path):
    with pytest.raises(MediaError) as err:
        write_mp4(tmp_path / "odd.mp4", np.zeros((16, 33, 32, 3), np.uint8), None, fps=10)
    assert err.value.reason == "bad-frames"
    with pytest.raises(MediaError):
        write_mp4(tmp_path / "float.mp4", np.zeros((16, 32, 32, 3), np.float32), None, fps=10)
    assert not list(tmp_path.iterdir())
