"""Real-world files (issue 14): each recipe of the issue and its relatives (other codecs, rates, containers,
offsets), read by the same reader that preprocess, eval's reference clips and `generate --audio-from` use.

The source of most files is black video with a white flash and a 1 kHz beep (amplitude 0.5), both on during
[0.4, 0.6) + k * 0.8 s of the file's timeline (``media_factory.make_events``). "Aligned" means: every beep is
where the file puts it, and the flash of the same event starts within one source video frame of it.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from media_factory import (
    BEEP,
    H264,
    event_times,
    ffmpeg,
    make_clip,
    make_events,
    truncate,
)

from avdit_cli.config import DataConfig, load_preset
from avdit_cli.data.clips import AUDIO_PADDED, AUDIO_SILENT, load_clips
from avdit_cli.data.media import MediaError, first_error, probe, read_audio, read_audio_track, read_video
from avdit_cli.data.mixdown import is_silent

SRC_FPS = 30  # make_events' frame rate
RATE = 16000  # the tiny preset's sample rate
PCM = ("-c:a", "pcm_s16le")
AAC = ("-c:a", "aac")
VP9 = ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")
OPUS = ("-c:a", "libopus")


@pytest.fixture(scope="module")
def data_cfg() -> DataConfig:
    return load_preset("tiny").data  # 16 frames at 10 fps, 32x32, 16 kHz: 1.6 s clips


def onsets(x: np.ndarray, rate: float, level: float, gap: float = 0.3) -> list[float]:
    """Times (s) where `x` first rises above `level`, bursts closer than `gap` s counted once."""
    times: list[float] = []
    last = -np.inf
    for i in np.flatnonzero(x > level):
        if i / rate - last > gap:
            times.append(i / rate)
        last = i / rate
    return times


def beeps(audio: np.ndarray, amplitude: float = BEEP) -> list[float]:
    return onsets(np.abs(audio), RATE, amplitude / 2)


def flashes(frames: np.ndarray, fps: float) -> list[float]:
    return onsets(frames.reshape(len(frames), -1).mean(1), fps, 128, gap=EVENT_GAP)


EVENT_GAP = 0.25


def assert_aligned(path: Path, seconds: float = 4.0, audio_from: float = 0.0, amplitude: float = BEEP) -> None:
    """Every beep of the file (those after `audio_from`) within one source frame of where it belongs, every
    flash within one source frame of its beep (frames read at the source rate)."""
    info = probe(path)
    audio = read_audio(path, RATE, info=info)
    frames = read_video(path, SRC_FPS, 16, info=info)
    frame = 1 / SRC_FPS
    expected = event_times(seconds, after=audio_from)  # the muxer's offsets move both streams alike
    got = beeps(audio, amplitude)
    assert len(got) == len(expected), (got, expected)
    assert np.abs(np.subtract(got, expected)).max() < frame, (got, expected)
    flash = [t for t in flashes(frames, SRC_FPS) if t >= audio_from - 0.05]
    assert len(flash) == len(got), (flash, got)
    assert np.abs(np.subtract(flash, got)).max() <= frame + 1e-3, (flash, got)


def clip_events(clip) -> tuple[list[float], list[float]]:
    """(beep times, flash times) inside one clip, seconds from the clip's start (flashes at the clip's 10 fps)."""
    return beeps(clip.audio), flashes(clip.frames, 10)


# ----------------------------------------------------------------------------------------------------------
# 1. Audio that starts after the first video frame (and audio with a hole in it)
# ----------------------------------------------------------------------------------------------------------
LATE = [  # delays between events, so that no beep is cut in two
    pytest.param("mov", PCM, 48000, 1.0, (320, 240), id="recipe-mov-pcm-48k-1.0s"),
    pytest.param("mov", PCM, 44100, 0.9, (64, 48), id="mov-pcm-44k-0.9s"),
    pytest.param("mp4", AAC, 48000, 1.5, (64, 48), id="mp4-aac-48k-1.5s"),
    pytest.param("mp4", AAC, 44100, 1.0, (64, 48), id="mp4-aac-44k-1.0s"),
    pytest.param("mkv", AAC, 44100, 0.7, (64, 48), id="mkv-aac-44k-0.7s"),
    pytest.param("mkv", PCM, 48000, 0.3, (64, 48), id="mkv-pcm-48k-0.3s"),
    pytest.param("webm", OPUS, 48000, 1.1, (64, 48), id="webm-opus-48k-1.1s"),
    pytest.param("ts", AAC, 48000, 0.8, (64, 48), id="ts-aac-48k-0.8s"),
    pytest.param("mp4", AAC, 48000, 0.05, (64, 48), id="mp4-aac-48k-0.05s"),  # below aresample's 0.1 s
]


@pytest.mark.parametrize("ext,acodec,rate,delay,size", LATE)
def test_late_audio_is_silence_then_every_beep_under_its_flash(tmp_path: Path, data_cfg: DataConfig,
                                                               ext, acodec, rate, delay, size):
    video = VP9 if ext == "webm" else H264
    path = make_events(tmp_path / f"late.{ext}", size=size, sample_rate=rate, audio_delay=delay, video=video,
                       audio=acodec)
    info = probe(path)
    assert info.audio_start - info.video_start == pytest.approx(delay, abs=0.03)  # the file is what we meant
    clips = load_clips(path, data_cfg)
    assert len(clips) == 2 and [c.start for c in clips] == pytest.approx([0.0, 1.6])
    lead = info.audio_start - info.video_start
    for clip in clips:
        in_clip = [t for t in event_times(4.0) if clip.start <= t < clip.start + 1.6]
        heard = [round(t - clip.start, 6) for t in in_clip if t >= delay]
        got_beeps, got_flashes = clip_events(clip)
        assert got_flashes == pytest.approx([t - clip.start for t in in_clip], abs=1e-6)  # frame 4 and 12
        assert len(got_beeps) == len(heard)
        assert np.abs(np.subtract(got_beeps, heard)).max(initial=0.0) < 1 / SRC_FPS
        # the beep lands in the 10 fps frame where its flash starts (5 ms of leeway for codec rounding)
        assert [int((b + 0.005) * 10) for b in got_beeps] == \
            [round(f * 10) for f in got_flashes if f + clip.start >= lead]
        silent_until = max(0.0, lead - clip.start)
        assert np.abs(clip.audio[: int(silent_until * RATE)]).max(initial=0.0) == 0.0  # silence, not noise
        assert clip.flags == ((AUDIO_PADDED,) if lead - clip.start > 0.1 else ())  # > 1 frame without audio


def test_late_audio_recipe_times(tmp_path: Path, data_cfg: DataConfig):
    """The issue's numbers: clip 0 has the beep at 1.2 s, clip 1 the beeps at 2.0 and 2.8 s."""
    path = make_events(tmp_path / "late.mov", size=(320, 240), audio_delay=1.0, audio=PCM)
    clips = load_clips(path, data_cfg)
    assert [round(b + c.start, 3) for c in clips for b in beeps(c.audio)] == [1.2, 2.0, 2.8]
    track = read_audio_track(path, RATE)
    assert track.lead == RATE and track.channels == 1 and not track.flipped


@pytest.mark.parametrize("ext,vcodec,acodec", [("mkv", H264, PCM), ("ts", H264, AAC), ("mp4", H264, AAC),
                                               ("webm", VP9, OPUS)])
def test_a_hole_in_the_audio_keeps_later_beeps_in_place(tmp_path: Path, ext, vcodec, acodec):
    path = make_events(tmp_path / f"gap.{ext}", video=vcodec, audio=acodec, audio_gap=(0.65, 0.45))
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert samples / 48000 < 3.65  # the file really has ~0.45 s less audio than its 4 s
    assert_aligned(path)


# ----------------------------------------------------------------------------------------------------------
# 2. Timestamps that do not start at 0 (complete files must not be called truncated)
# ----------------------------------------------------------------------------------------------------------
def test_copyts_mkv_recipe_gives_two_clips(tmp_path: Path, data_cfg: DataConfig):
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=4", "-f", "lavfi", "-i", "sine=f=440:r=48000:d=4",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp_path / "rec.ts"))
    ffmpeg("-copyts", "-i", str(tmp_path / "rec.ts"), "-c", "copy", str(tmp_path / "copyts.mkv"))
    info = probe(tmp_path / "copyts.mkv")
    assert info.start_time > 1.0 and info.duration > 5.0  # Matroska: the duration is the end time
    clips = load_clips(tmp_path / "copyts.mkv", data_cfg)
    assert len(clips) == 2 and all(c.flags == () for c in clips)


OFFSETS = [
    pytest.param("mkv", H264, AAC, ("-output_ts_offset", "10"), id="mkv-offset-10"),
    pytest.param("webm", VP9, OPUS, ("-output_ts_offset", "10"), id="webm-offset-10"),
    pytest.param("wmv", ("-c:v", "wmv2", "-q:v", "2"), ("-c:a", "wmav2"), ("-output_ts_offset", "10"),
                 id="wmv-offset-10"),
    pytest.param("mp4", H264, AAC, ("-output_ts_offset", "10"), id="mp4-offset-10"),
    pytest.param("mov", H264, PCM, ("-output_ts_offset", "3.3"), id="mov-offset-3.3"),
    pytest.param("ts", H264, AAC, ("-output_ts_offset", "10"), id="ts-offset-11.4"),
    pytest.param("ogv", ("-c:v", "libtheora", "-q:v", "8"), ("-c:a", "libvorbis"), ("-output_ts_offset", "10"),
                 id="ogv-offset-10"),
    pytest.param("flv", H264, AAC, ("-output_ts_offset", "10"), id="flv-offset-10"),
]


@pytest.mark.parametrize("ext,vcodec,acodec,out", OFFSETS)
def test_files_starting_late_are_complete_and_aligned(tmp_path: Path, data_cfg: DataConfig, ext, vcodec, acodec, out):
    path = make_events(tmp_path / f"offset.{ext}", video=vcodec, audio=acodec, out=out)
    assert probe(path).video_start > 3.0
    clips = load_clips(path, data_cfg)
    assert len(clips) == 2 and [c.start for c in clips] == pytest.approx([0.0, 1.6])
    assert all(AUDIO_SILENT not in c.flags for c in clips)
    assert_aligned(path)


@pytest.mark.parametrize("ext,vcodec,acodec", [("mkv", H264, AAC), ("webm", VP9, OPUS)])
def test_cut_files_starting_late_are_still_truncated(tmp_path: Path, data_cfg: DataConfig, ext, vcodec, acodec):
    path = make_events(tmp_path / f"whole.{ext}", seconds=6.0, video=vcodec, audio=acodec,
                       out=("-output_ts_offset", "10"))
    assert len(load_clips(path, data_cfg)) == 3
    with pytest.raises(MediaError) as err:
        load_clips(truncate(path, tmp_path / f"cut.{ext}", 0.5), data_cfg)
    assert err.value.reason == "truncated"


# ----------------------------------------------------------------------------------------------------------
# 3. Which stream: the default one, else the first (audio and video alike)
# ----------------------------------------------------------------------------------------------------------
def _two_audio_tracks(path: Path, dispositions: tuple[str, str]) -> Path:
    """The issue's recipe: track 1 digital silence, track 2 a 1 kHz sine (amplitude 0.125)."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=30:d=4", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
           "-f", "lavfi", "-i", "sine=f=1000:r=48000:d=4", "-map", "0:v", "-map", "1:a", "-map", "2:a", "-t", "4",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-disposition:a:0", dispositions[0], "-disposition:a:1", dispositions[1], str(path))
    return path


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_the_default_audio_track_is_used(tmp_path: Path, data_cfg: DataConfig, ext):
    path = _two_audio_tracks(tmp_path / f"two_tracks.{ext}", ("0", "default"))
    info = probe(path)
    assert (info.video_index, info.audio_index, info.audio_streams) == (0, 2, 2)
    clips = load_clips(path, data_cfg, info=info)
    assert len(clips) == 2
    for clip in clips:
        assert clip.flags == ()
        assert np.sqrt(np.mean(clip.audio**2)) == pytest.approx(0.125 / np.sqrt(2), rel=0.1)  # the sine's level
        spectrum = np.abs(np.fft.rfft(clip.audio))
        assert np.argmax(spectrum) * RATE / len(clip.audio) == pytest.approx(1000, abs=2)


def test_without_a_default_the_first_audio_track_is_used(tmp_path: Path, data_cfg: DataConfig):
    path = _two_audio_tracks(tmp_path / "no_default.mkv", ("0", "0"))
    assert probe(path).audio_index == 1
    clips = load_clips(path, data_cfg)
    assert all(c.flags == (AUDIO_SILENT,) and not c.audio.any() for c in clips)  # and it is flagged


def test_the_default_video_stream_is_used_and_cover_art_never(tmp_path: Path):
    events = make_events(tmp_path / "events.mkv", audio=PCM)
    plain = make_clip(tmp_path / "plain.mp4", seconds=4.0, fps=30, size=(64, 48), video="color")
    cover = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:s=32x32", "-frames:v", "1", str(cover))
    two = tmp_path / "two_videos.mkv"  # a plain video first, the events video second and default
    ffmpeg("-i", str(plain), "-i", str(events), "-map", "0:v", "-map", "1:v", "-map", "1:a", "-c", "copy",
           "-disposition:v:0", "0", "-disposition:v:1", "default", str(two))
    art = tmp_path / "cover_art.mp4"  # a music-video style file: cover art beside the video
    ffmpeg("-i", str(cover), "-i", str(events), "-map", "0:v", "-map", "1:v", "-map", "1:a", "-c:v:0", "png",
           "-c:v:1", "copy", "-c:a", "aac", "-disposition:v:0", "attached_pic", str(art))
    for path, index, count in ((two, 1, 2), (art, 0, 1)):
        info = probe(path)
        assert (info.video_index, info.video_streams) == (index, count)
        assert_aligned(path)


# ----------------------------------------------------------------------------------------------------------
# 4. Any channel count, averaged; ffmpeg's first error line
# ----------------------------------------------------------------------------------------------------------
CHANNELS = [
    pytest.param("mkv", PCM, (1.0,) * 9, BEEP, id="9ch-no-layout-mkv"),
    pytest.param("mkv", PCM, (1.0,) * 11, BEEP, id="11ch-no-layout-mkv"),
    pytest.param("mov", PCM, (1.0,) * 9, BEEP, id="9ch-mov"),
    pytest.param("mkv", PCM, (0, 0, 0, 0, 1.0, 0, 0, 0, 0), BEEP / 9, id="9ch-one-loud-channel"),
    pytest.param("mkv", PCM, (1.0,) * 6, BEEP, id="5.1-pcm"),
    pytest.param("mp4", AAC, (1.0,) * 6, BEEP * 5 / 6, id="5.1-aac"),  # AAC's LFE channel keeps no 1 kHz
    pytest.param("mkv", PCM, (1.0,) * 8, BEEP, id="7.1-pcm"),
    pytest.param("mov", PCM, (1.0, 1.0, 1.0), BEEP, id="3ch-mov"),
]


@pytest.mark.parametrize("ext,acodec,gains,amplitude", CHANNELS)
def test_any_channel_count_is_averaged(tmp_path: Path, data_cfg: DataConfig, ext, acodec, gains, amplitude):
    path = make_events(tmp_path / f"ch.{ext}", gains=gains, audio=acodec)
    info = probe(path)
    track = read_audio_track(path, RATE, info=info)
    assert track.channels == len(gains)
    assert np.abs(track.samples).max() == pytest.approx(amplitude, rel=0.07)  # the mean of the channels
    assert len(load_clips(path, data_cfg, info=info)) == 2
    assert_aligned(path, amplitude=amplitude)


def test_first_error_is_the_cause_on_one_line():
    stderr = (  # what the former reader got from ffmpeg for a 9-channel track; its last line is unrelated
        "[Parsed_aresample_0 @ 0x7fa7] [SWR @ 0x7fa7] [error] Rematrix is needed between 9 channels and mono but "
        "there is not enough information to do it\n"
        "[Parsed_aresample_0 @ 0x7fa7] [error] Failed to configure output pad on Parsed_aresample_0\n"
        "[af#0:0 @ 0x5600] [error] Error reinitializing filters!\n"
        "[out#0/f32le @ 0x5600] [error] Nothing was written into output file, because at least one of its "
        "streams received no packets.\n")
    assert first_error(stderr) == ("Rematrix is needed between 9 channels and mono but there is not enough "
                                   "information to do it")
    assert first_error("[info] Input #0\n[warning] odd\n[fatal] At least one output file must be specified\n") == \
        "At least one output file must be specified"
    assert first_error("[error] " + "x" * 500).endswith("...") and len(first_error("[error] " + "x" * 500)) == 200
    assert first_error("") == "ffmpeg failed without a message"


def test_a_failing_ffmpeg_reports_its_first_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import avdit_cli.data.media as media

    path = make_clip(tmp_path / "in.mp4", seconds=1.0)
    real = media._run

    def broken_filter(args, stdin=None):  # a decode whose filter ffmpeg does not have
        return real([a.replace("asetpts=", "nosuchfilter,asetpts=") for a in args], stdin)

    monkeypatch.setattr(media, "_run", broken_filter)
    with pytest.raises(MediaError) as err:
        read_audio(path, RATE, info=probe(path))
    assert err.value.reason == "unreadable" and "\n" not in str(err.value)
    assert "No such filter: 'nosuchfilter'" in err.value.detail


# ----------------------------------------------------------------------------------------------------------
# 5. Silent tracks, and stereo that would cancel
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext,acodec,gains", [("mp4", AAC, (0.0,)), ("mkv", PCM, (0.0, 0.0)),
                                              ("mov", PCM, (0.0,) * 6)])
def test_an_all_zero_track_flags_every_clip(tmp_path: Path, data_cfg: DataConfig, ext, acodec, gains):
    clips = load_clips(make_events(tmp_path / f"zero.{ext}", gains=gains, audio=acodec), data_cfg)
    assert len(clips) == 2 and all(c.flags == (AUDIO_SILENT,) for c in clips)


def test_a_quiet_window_in_a_track_with_sound_is_not_silent(tmp_path: Path, data_cfg: DataConfig):
    path = make_clip(tmp_path / "one_beep.mp4", seconds=3.4, audio="aevalsrc=exprs='if(lt(t,0.5),0.5*sin(6283*t),0)'")
    clips = load_clips(path, data_cfg)
    assert not is_silent(clips[0].audio) and clips[0].flags == ()
    assert is_silent(clips[1].audio) and clips[1].flags == ()  # a real pause, not a muted track


@pytest.mark.parametrize("ext,acodec,gains,amplitude,flips", [
    pytest.param("mp4", AAC, (1.0, -1.0), BEEP, {1}, id="antiphase-aac"),
    pytest.param("mkv", PCM, (1.0, -1.0), BEEP, {1}, id="antiphase-pcm"),
    pytest.param("mkv", PCM, (1.0, -0.5), 0.75 * BEEP, {1}, id="antiphase-half-gain"),
    # the loudest channel is the reference: flipping the other five inverts the whole mix, which is inaudible
    pytest.param("mkv", PCM, (-1.0, 1.0, 1.0, 1.0, 1.0, 1.0), BEEP, {1, 5}, id="5.1-one-inverted"),
    pytest.param("mkv", PCM, (1.0, 0.0), BEEP / 2, {0}, id="one-side-only"),
])
def test_opposite_polarity_does_not_cancel(tmp_path: Path, data_cfg: DataConfig, ext, acodec, gains, amplitude,
                                           flips):
    path = make_events(tmp_path / f"polarity.{ext}", gains=gains, audio=acodec)
    track = read_audio_track(path, RATE)
    assert np.abs(track.samples).max() == pytest.approx(amplitude, rel=0.05)
    assert len(track.flipped) in flips
    clips = load_clips(path, data_cfg)
    assert len(clips) == 2 and all(c.flags == () for c in clips)
    assert_aligned(path, amplitude=amplitude)


# ----------------------------------------------------------------------------------------------------------
# 6. Containers: every one ffmpeg reads, codecs as they are found in them
# ----------------------------------------------------------------------------------------------------------
MPEG2 = ("-c:v", "mpeg2video", "-q:v", "2")
CONTAINERS = [
    ("mp4", H264, AAC, ()),
    ("mov", H264, PCM, ()),
    ("mkv", H264, PCM, ()),
    ("webm", VP9, OPUS, ()),
    ("avi", ("-c:v", "mpeg4", "-q:v", "2"), PCM, ()),
    ("m4v", H264, AAC, ()),
    ("3gp", H264, ("-c:a", "libopencore_amrnb", "-ar", "8000", "-b:a", "12.2k"), ()),  # phones: AMR-NB at 8 kHz
    ("3g2", H264, AAC, ()),
    ("ts", H264, AAC, ()),
    ("mts", H264, ("-c:a", "ac3"), ("-f", "mpegts")),
    ("m2ts", H264, ("-c:a", "ac3"), ("-f", "mpegts", "-mpegts_m2ts_mode", "1")),
    ("mpg", MPEG2, ("-c:a", "mp2"), ()),
    ("mpeg", ("-c:v", "mpeg1video", "-q:v", "2"), ("-c:a", "mp2"), ("-f", "mpeg")),
    ("vob", MPEG2, ("-c:a", "ac3"), ()),
    ("flv", H264, ("-c:a", "mp3"), ()),
    ("wmv", ("-c:v", "wmv2", "-q:v", "2"), ("-c:a", "wmav2"), ()),
    ("ogv", ("-c:v", "libtheora", "-q:v", "8"), ("-c:a", "libvorbis"), ()),
    ("f4v", H264, AAC, ()),
]


@pytest.mark.parametrize("ext,vcodec,acodec,out", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_container_gives_aligned_clips(tmp_path: Path, data_cfg: DataConfig, ext, vcodec, acodec, out):
    path = make_events(tmp_path / f"events.{ext}", video=vcodec, audio=acodec, out=out)
    clips = load_clips(path, data_cfg)
    assert len(clips) == 2
    assert all(AUDIO_SILENT not in c.flags for c in clips)
    amplitude = BEEP / 2 if ext == "3gp" else BEEP  # AMR-NB at 12.2 kb/s keeps the beep, not its level
    assert_aligned(path, amplitude=amplitude)


# ----------------------------------------------------------------------------------------------------------
# The same reader behind preprocess, eval's reference clips and `generate --audio-from`
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hard_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the issue's recipes (and some files that are not videos with sound)."""
    d = tmp_path_factory.mktemp("hard")
    make_events(d / "late.mov", size=(320, 240), audio_delay=1.0, audio=PCM)
    make_events(d / "offset.mkv", audio=AAC, out=("-output_ts_offset", "10"))
    _two_audio_tracks(d / "two_tracks.mkv", ("0", "default"))
    (d / "notes.txt").write_text("not a video\n")
    return d


def test_eval_reference_clips_read_the_hard_files(hard_files: Path, tmp_path: Path):
    import avdit_cli.pipelines.evaluate as ev
    from avdit_cli.metrics import FeatureCache

    cfg = load_preset("tiny")
    ref = ev._reference_from_folder(hard_files, hard_files, cfg, FeatureCache(tmp_path / "features"), None)
    assert sorted((c.label, c.start) for c in ref.clips) == [(name, s) for name in
                                                            ("late.mov", "offset.mkv", "two_tracks.mkv")
                                                            for s in (0.0, 1.6)]
    assert [(s.file, s.reason) for s in ref.skipped] == [("notes.txt", "not-a-video")]
    loaded = ev._ReferenceLoader(cfg.data, None)([c for c in ref.clips if c.label == "late.mov"])
    assert [round(b + c.start, 3) for c in loaded for b in beeps(c.audio)] == [1.2, 2.0, 2.8]
    loaded = ev._ReferenceLoader(cfg.data, None)([c for c in ref.clips if c.label == "two_tracks.mkv"])
    assert all(c.flags == () and np.abs(c.audio).max() > 0.1 for c in loaded)


def test_generate_audio_from_reads_the_hard_files(hard_files: Path):
    from avdit_cli.pipelines.generate import load_given_clip

    data = load_preset("tiny").data
    late = load_given_clip(hard_files / "late.mov", data, "audio")
    assert late.audio.shape == (data.clip_samples,) and beeps(late.audio) == pytest.approx([1.2], abs=1 / SRC_FPS)
    assert np.abs(late.audio[:RATE]).max() == 0.0  # silence until the audio starts at 1.0 s
    two = load_given_clip(hard_files / "two_tracks.mkv", data, "audio")
    assert np.abs(two.audio).max() > 0.1  # the default track's sine, not the first track's silence
    offset = load_given_clip(hard_files / "offset.mkv", data, "audio")
    assert beeps(offset.audio) == pytest.approx([0.4, 1.2], abs=1 / SRC_FPS)
    with pytest.raises(MediaError, match="not-a-video"):
        load_given_clip(hard_files / "notes.txt", data, "audio")


def test_cut_clips_flags_lead_and_silent_tracks(data_cfg: DataConfig):
    frames = np.zeros((50, 32, 32, 3), dtype=np.uint8)  # 5.0 s
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(30000, np.float32), 0.3 * rng.standard_normal(50000).astype(np.float32)])
    from avdit_cli.data.clips import cut_clips

    clips = cut_clips(frames, audio, data_cfg, audio_lead=30000)  # the stream starts at 1.875 s
    assert [c.flags for c in clips] == [(AUDIO_PADDED,), (AUDIO_PADDED,), ()]  # windows at 0, 1.6, 3.2 s
    sound = 0.3 * rng.standard_normal(80000).astype(np.float32)
    for lead, first in ((1600, ()), (1601, (AUDIO_PADDED,))):  # one frame (0.1 s) late is tolerated, no more
        late = cut_clips(frames, np.concatenate([np.zeros(lead, np.float32), sound]), data_cfg, audio_lead=lead)
        assert [c.flags for c in late] == [first, (), ()]
    silent = cut_clips(frames, np.zeros(80000, np.float32), data_cfg)
    assert [c.flags for c in silent] == [(AUDIO_SILENT,)] * 3
    # silence put in front does not make a sounding track silent, even where a window holds only that
    assert cut_clips(frames, audio, data_cfg, stride_seconds=0.1, audio_lead=30000)[0].flags == (AUDIO_PADDED,)
