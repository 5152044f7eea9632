"""The synthetic bouncing-ball data and its sync score, through the real media path (mp4 -> 10 fps / 16 kHz)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from avdit_cli.config import load_preset
from avdit_cli.data import synthetic
from avdit_cli.data.clips import Clip, load_clips
from avdit_cli.data.media import probe
from avdit_cli.data.sync import (
    audio_onsets,
    clip_events_score,
    derangement,
    height_peaks,
    match_events,
    mean_f1,
    score_events,
    shuffled_baseline,
    sync_score,
    video_impacts,
)

NUM_FILES, SECONDS = 10, 3.2  # 20 clips of 1.6 s


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthetic.make_dataset(tmp_path_factory.mktemp("synthetic"), NUM_FILES, seconds=SECONDS, seed=3)


@pytest.fixture(scope="module")
def decoded(dataset: list[Path]) -> tuple[list[Clip], list[np.ndarray]]:
    """Clips read the way preprocess reads them (tiny preset: 32x32 at 10 fps, 16 kHz) + their true impacts."""
    cfg = load_preset("tiny").data
    clips, truth = [], []
    for path in dataset:
        impacts = synthetic.read_impacts(path)
        for clip in load_clips(path, cfg):
            clips.append(clip)
            truth.append(np.asarray([t - clip.start for t in impacts if clip.start <= t < clip.start + 1.6]))
    return clips, truth


# ----------------------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------------------
def test_dataset_files_and_sidecars(dataset: list[Path]):
    assert [p.name for p in dataset] == [f"clip_{i:04d}.mp4" for i in range(NUM_FILES)]
    info = probe(dataset[0])
    assert (info.width, info.height, info.fps, info.audio_rate) == (64, 64, 30, 44100)
    assert info.duration == pytest.approx(SECONDS, abs=0.05)
    rates = []
    for path in dataset:
        side = json.loads(path.with_suffix(".json").read_text())
        assert 1 <= len(side["balls"]) <= 2
        assert len({tuple(b["colour"]) for b in side["balls"]}) == len(side["balls"])  # distinct colours
        times = [m["time"] for m in side["impacts"]]
        assert times == sorted(times) and all(0 <= t <= SECONDS for t in times)
        rates.append(len(times) / SECONDS * 1.6)
    assert 2.0 <= np.mean(rates) <= 5.0  # impacts per 1.6 s window


def test_dataset_is_deterministic(tmp_path: Path, dataset: list[Path]):
    again = synthetic.make_dataset(tmp_path / "again", 2, seconds=SECONDS, seed=3, workers=1)
    assert again[1].read_bytes() == dataset[1].read_bytes()
    other = synthetic.make_dataset(tmp_path / "other", 1, seconds=SECONDS, seed=4)
    assert other[0].read_bytes() != dataset[0].read_bytes()


def test_balls_stay_in_the_frame_and_touch_the_floor_at_impacts():
    for i in range(6):
        clip = synthetic.render_clip(np.random.default_rng([7, i]), seconds=4.0)
        t = np.linspace(0, 4.0, 2001)
        for b, ball in enumerate(clip.balls):
            x, y = synthetic.ball_position(ball, t)
            assert np.all(y - ball.radius >= -1e-9) and np.all(y + ball.radius <= 1 - synthetic.FLOOR_HEIGHT + 1e-9)
            assert np.all(x - ball.radius >= -1e-9) and np.all(x + ball.radius <= 1 + 1e-9)
            own = np.asarray([m.time for m in clip.impacts if m.ball == b])
            _, y_hit = synthetic.ball_position(ball, own)
            np.testing.assert_allclose(y_hit + ball.radius, 1 - synthetic.FLOOR_HEIGHT, atol=1e-9)
            assert np.all(np.diff(own) >= 0.3)  # kicks keep bounces apart


def test_sound_pitch_falls_with_size_and_loudness_rises_with_speed():
    rate = 44100
    pitches, radii = [], []
    for i in range(8):
        clip = synthetic.render_clip(np.random.default_rng([11, i]), seconds=3.0, num_balls=1, sample_rate=rate)
        ball = clip.balls[0]
        radii.append(ball.radius)
        impact = clip.impacts[0]
        start = round(impact.time * rate) + int(0.005 * rate)  # after the click
        seg = clip.audio[start: start + 4096] * np.hanning(4096)
        spectrum = np.abs(np.fft.rfft(seg))
        pitches.append(np.fft.rfftfreq(4096, 1 / rate)[spectrum.argmax()])
        assert pitches[-1] == pytest.approx(ball.pitch_hz, rel=0.05)
        # loudness: the tone's level just after each impact (past the random click) grows with the impact speed
        levels = [np.sqrt(np.mean(clip.audio[round((m.time + 0.005) * rate): round((m.time + 0.02) * rate)] ** 2))
                  for m in clip.impacts]
        speeds = [m.speed for m in clip.impacts]
        if len(set(np.round(speeds, 3))) > 1:
            assert np.corrcoef(speeds, levels)[0, 1] > 0.9
    order = np.argsort(radii)
    assert np.all(np.diff(np.asarray(pitches)[order]) < 0)  # bigger ball, lower pitch


# ----------------------------------------------------------------------------------------------------------
# The sync score
# ----------------------------------------------------------------------------------------------------------
def test_detectors_find_the_true_impacts(decoded):
    """Against the sidecar's ground truth: both detectors recover the impacts of decoded clips."""
    clips, truth = decoded
    v = [score_events(t, video_impacts(c.frames, 10), 0.1, 1.6) for c, t in zip(clips, truth)]
    a = [score_events(t, audio_onsets(c.audio, 16000), 0.1, 1.6) for c, t in zip(clips, truth)]
    assert mean_f1(v)[0] > 0.85
    assert mean_f1(a)[0] > 0.9


def test_height_peaks_of_the_data_are_floor_contacts_and_jitter_adds_peaks_higher_up(decoded):
    """Every impact of the data happens low in the frame (the ball meets the floor); benchmarks/sync_ceiling.py
    counts on it. A ball jittering in mid-air makes peaks high up, which no floor contact explains."""
    clips, _ = decoded
    for clip in clips:
        times, rows = height_peaks(clip.frames, 10)
        assert np.array_equal(times, video_impacts(clip.frames, 10))
        assert np.all((rows >= 0.6) & (rows < 1))
    # one ball at mid-height, 2 px up and down every other frame: a peak at each low frame, all high up
    frames = np.zeros((16, 32, 32, 3), np.uint8) + np.asarray(synthetic.BACKGROUND, np.uint8)
    for k in range(16):
        top = 12 + 2 * (k % 2)
        frames[k, top:top + 4, 14:18] = synthetic.PALETTE[0]
    times, rows = height_peaks(frames, 10)
    assert len(times) == 7 and np.all(rows < 0.5)


def test_a_clips_found_events_score_as_the_clip_does(decoded):
    """clip_events_score (events found once, scored with more than one partner) is sync_score with the
    detectors run beforehand: the same score for aligned and for crossed clips, a tolerance passed through."""
    clips, _ = decoded
    a, b = clips[0], clips[1]
    seen = [video_impacts(c.frames, 10) for c in (a, b)]
    heard = [audio_onsets(c.audio, 16000) for c in (a, b)]
    for i, j, tol in ((0, 0, None), (0, 1, None), (1, 0, 0.2)):
        frames, audio = (a, b)[i].frames, (a, b)[j].audio
        assert clip_events_score(seen[i], heard[j], len(frames), len(audio), 10, 16000, tol) == sync_score(
            frames, audio, 10, 16000, tol)
    assert clip_events_score(seen[0], heard[0], len(a.frames), len(a.audio), 10, 16000).f1 > 0.8


def test_sync_score_separates_aligned_shuffled_and_delayed(decoded):
    """Aligned clips score near 1: each impact is seen (to within a frame, refined between frames) and heard
    (a sharp onset); the errors left are impacts of two balls within one frame, which merge on one side.
    Shuffled audio matches only by chance (about 3 impacts per 1.6 s and a +-0.1 s window: F1 ~ 0.4), and a
    200 ms delay puts every sound two frames after its impact, outside the tolerance."""
    clips, _ = decoded
    frames, audio = [c.frames for c in clips], [c.audio for c in clips]
    aligned, skipped = mean_f1([sync_score(f, a, 10, 16000) for f, a in zip(frames, audio)])
    shuffled, _ = mean_f1(shuffled_baseline(frames, audio, 10, 16000, seed=0))
    delay = 3200  # 200 ms at 16 kHz
    delayed, _ = mean_f1([sync_score(f, np.concatenate([np.zeros(delay, np.float32), a[:-delay]]), 10, 16000)
                          for f, a in zip(frames, audio)])
    assert skipped == 0
    assert aligned > 0.8
    assert shuffled < 0.6 and shuffled < aligned - 0.3
    assert delayed < 0.5 and delayed < aligned - 0.4


def test_score_rules_for_empty_and_edge_cases():
    nan_score = score_events(np.zeros(0), np.zeros(0), 0.1, 1.6)
    assert math.isnan(nan_score.f1) and math.isnan(nan_score.precision) and math.isnan(nan_score.recall)
    only_video = score_events(np.asarray([0.5, 1.0]), np.zeros(0), 0.1, 1.6)
    assert only_video.f1 == 0 and only_video.recall == 0 and math.isnan(only_video.precision)
    perfect = score_events(np.asarray([0.5, 1.0]), np.asarray([0.55, 0.93]), 0.1, 1.6)
    assert perfect.f1 == 1 and perfect.matched == 2
    # an unmatched event right at the clip's edge is not counted: its partner may be outside the clip
    edge = score_events(np.asarray([0.5, 1.55]), np.asarray([0.52]), 0.1, 1.6)
    assert edge.f1 == 1 and edge.n_video == 1
    # two impacts within one frame are one event
    merged = score_events(np.asarray([0.50, 0.56]), np.asarray([0.53]), 0.1, 1.6)
    assert merged.f1 == 1
    assert mean_f1([nan_score, perfect, only_video]) == (0.5, 1)


def test_match_events_is_one_to_one_and_maximal():
    assert match_events(np.asarray([0.0, 0.1]), np.asarray([0.05]), 0.1) == [(0, 0)]
    # greedy on sorted times: 0.0-0.08 and 0.15-0.2 rather than 0.15-0.08 alone
    assert len(match_events(np.asarray([0.0, 0.15]), np.asarray([0.08, 0.2]), 0.1)) == 2
    assert match_events(np.asarray([0.0]), np.asarray([0.3]), 0.1) == []


def test_silence_and_still_frames_have_no_events():
    assert len(audio_onsets(np.zeros(25600, np.float32), 16000)) == 0
    noise = np.random.default_rng(0).normal(0, 0.003, 25600).astype(np.float32)
    assert len(audio_onsets(noise, 16000)) == 0
    clip = synthetic.render_clip(np.random.default_rng(0), seconds=1.6, size=32, fps=10)
    still = np.repeat(clip.frames[:1], 16, 0)
    assert len(video_impacts(still, 10)) == 0
    assert len(video_impacts(np.zeros((16, 32, 32, 3), np.uint8), 10)) == 0


def test_derangement_has_no_fixed_points():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10):
        perm = derangement(n, rng)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
