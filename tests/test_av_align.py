"""AV-Align on synthetic clips: flashes and beeps made in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from avdit_cli.errors import DataError
from avdit_cli.metrics import av_align_clip, av_align_score
from avdit_cli.metrics.av_align import audio_events, video_events
from avdit_cli.metrics.events import match_events

FPS, SR, N_FRAMES = 10, 16000, 30  # 3 s clips
FLASHES = (3, 10, 17, 25)  # irregular, so a 0.5 s shift lands >= 2 frames from every flash


def flash_frames(flashes: tuple[int, ...] = FLASHES) -> np.ndarray:
    frames = np.full((N_FRAMES, 24, 32, 3), 20, dtype=np.uint8)  # (f, h, w, 3)
    for k in flashes:
        frames[k] = 230
    return frames


def beep_audio(times: list[float], noise: float = 1e-3, seed: int = 0) -> np.ndarray:
    """80 ms 1 kHz beeps with 5 ms raised-cosine ramps over faint white noise; beeps past the end are dropped."""
    rng = np.random.default_rng(seed)
    audio = noise * rng.standard_normal(N_FRAMES * SR // FPS)
    length, ramp_len = int(0.08 * SR), int(0.005 * SR)
    envelope = np.ones(length)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_len) / ramp_len)
    envelope[:ramp_len], envelope[-ramp_len:] = ramp, ramp[::-1]
    beep = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(length) / SR) * envelope
    for t in times:
        start = int(round(t * SR))
        if start + length <= audio.size:
            audio[start : start + length] += beep
    return audio.astype(np.float32)


def test_events_found_at_the_right_times() -> None:
    np.testing.assert_allclose(video_events(flash_frames(), FPS), np.array(FLASHES) / FPS)
    onsets = audio_events(beep_audio([k / FPS for k in FLASHES]), SR, FPS)
    assert onsets.shape == (len(FLASHES),)
    np.testing.assert_allclose(onsets, np.array(FLASHES) / FPS, atol=0.02)


def test_coincident_flashes_and_beeps_score_one_shifted_much_lower() -> None:
    frames = flash_frames()
    aligned = av_align_clip(frames, FPS, beep_audio([k / FPS for k in FLASHES]), SR)
    shifted = av_align_clip(frames, FPS, beep_audio([k / FPS + 0.5 for k in FLASHES]), SR)
    assert aligned > 0.95
    assert shifted < 0.3
    # Louder or quieter audio does not change the score.
    assert av_align_clip(frames, FPS, 0.1 * beep_audio([k / FPS for k in FLASHES]), SR) == pytest.approx(aligned)


def test_partial_overlap_is_intersection_over_union() -> None:
    # 4 flashes, beeps at 2 of them plus 1 elsewhere: matched 2, union 4 + 3 - 2 = 5.
    audio = beep_audio([FLASHES[0] / FPS, FLASHES[2] / FPS, 1.4])
    assert av_align_clip(flash_frames(), FPS, audio, SR) == pytest.approx(2 / 5)


def test_score_over_clips_and_the_no_event_case() -> None:
    static = np.full((N_FRAMES, 24, 32, 3), 50, dtype=np.uint8)
    silence = np.zeros(N_FRAMES * SR // FPS, dtype=np.float32)
    clips = [
        (flash_frames(), beep_audio([k / FPS for k in FLASHES])),
        (flash_frames(), beep_audio([k / FPS + 0.5 for k in FLASHES])),
        (static, silence),
    ]
    result = av_align_score(clips, fps=FPS, sample_rate=SR)
    assert result.clips_without_events == 1
    assert result.per_clip[2] == 0.0  # no events at all: scored 0, never 1
    assert result.score == pytest.approx(np.mean(result.per_clip))
    with pytest.raises(DataError):
        av_align_score([], fps=FPS, sample_rate=SR)


def test_matching_is_one_to_one_within_one_frame() -> None:
    assert len(match_events(np.array([1.0, 1.02]), np.array([1.05]), 0.1)) == 1
    assert len(match_events(np.array([1.0, 2.0]), np.array([1.1, 2.2]), 0.1)) == 1  # exactly one frame apart
    assert len(match_events(np.array([]), np.array([1.0]), 0.1)) == 0
