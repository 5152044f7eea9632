"""The demo's frame statistics: real bouncing-ball clips read as one or two balls, no noise, smooth motion; noise
and balls that jump about read as such."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avdit_cli.config import load_preset
from avdit_cli.data import synthetic
from avdit_cli.data.clips import load_clips
from avdit_cli.data.frame_stats import frame_balls, frame_stats


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Clips through the real media path (mp4 -> 32x32 at 10 fps, the tiny preset), as the demo scores them."""
    files = synthetic.make_dataset(tmp_path_factory.mktemp("frames"), 6, seconds=3.2, seed=11)
    data = load_preset("tiny").data
    return [c.frames for path in files for c in load_clips(path, data)]


def test_real_clips_hold_one_or_two_balls_without_noise(real_clips: list[np.ndarray]) -> None:
    stats = frame_stats(real_clips)
    assert stats.frames == 16 * len(real_clips)
    assert 1.0 <= stats.balls_per_frame <= 2.0
    assert stats.one_or_two_balls >= 0.95
    assert stats.noise_frames == 0.0
    assert stats.smooth_moves >= 0.9
    assert 0.04 <= stats.median_step <= 0.2  # the data's balls travel ~0.09 frame heights per frame


def test_balls_that_stand_still_are_smooth_but_do_not_travel(real_clips: list[np.ndarray]) -> None:
    still = [np.repeat(clip[:1], 16, axis=0) for clip in real_clips]  # each clip's first frame, held
    stats = frame_stats(still)
    assert stats.smooth_moves == 1.0 and stats.median_step == 0.0


def test_the_count_matches_the_rendered_balls() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2):
        counts = np.asarray([len(frame_balls(f)[0]) for _ in range(4)
                             for f in synthetic.render_clip(rng, seconds=1.6, size=32, fps=10, num_balls=n).frames])
        assert counts.max() == n
        # two balls that overlap read as one blob
        assert np.mean(counts == n) >= (1.0 if n == 1 else 0.7), counts


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_pure_noise_is_noise(kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "uniform":
        clips = [rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    else:
        clips = [np.clip(rng.normal(127.5, 127.5, (16, 32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
    stats = frame_stats(clips)
    assert stats.noise_frames == 1.0
    assert stats.one_or_two_balls == 0.0


def test_a_blank_background_has_no_ball_and_is_no_noise() -> None:
    frame = np.broadcast_to(np.asarray(synthetic.BACKGROUND, np.uint8), (32, 32, 3)).copy()
    balls, noise = frame_balls(frame)
    assert balls == [] and not noise


def test_balls_redrawn_at_random_each_frame_are_not_smooth(real_clips: list[np.ndarray]) -> None:
    # the same frames in a random order: every frame still looks right, the motion does not
    rng = np.random.default_rng(1)
    frames = np.concatenate(real_clips)
    shuffled = [frames[rng.permutation(len(frames))[:16]] for _ in range(len(real_clips))]
    smooth, shuffled_stats = frame_stats(real_clips).smooth_moves, frame_stats(shuffled)
    assert shuffled_stats.noise_frames == 0.0
    assert shuffled_stats.smooth_moves < smooth - 0.4


def test_frame_stats_needs_a_clip() -> None:
    with pytest.raises(ValueError):
        frame_stats([])


def test_backbone_fidelity_benchmark_runs_on_the_shipped_backbone(real_clips: list[np.ndarray],
                                                                  tmp_path: Path) -> None:
    """benchmarks/backbone_fidelity.py on the shipped tiny backbone: frames noised only a little come back with
    their balls; 'kept' finds a ball only where one of its colour is."""
    import importlib.util
    import json

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("backbone_fidelity", root / "benchmarks" / "backbone_fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    clip = list(real_clips[0])
    assert bench.kept_balls(clip, clip) == 1.0
    blank = [np.broadcast_to(np.asarray(synthetic.BACKGROUND, np.uint8), f.shape) for f in clip]
    assert bench.kept_balls(clip, blank) == 0.0
    swapped = [f[..., [1, 0, 2]] for f in clip]  # red <-> green: the same places, other colours
    assert bench.kept_balls(clip, swapped, same_colour=False) == 1.0 > bench.kept_balls(clip, swapped)
    synthetic.make_dataset(tmp_path / "real", 2, seconds=1.6, seed=11)  # two clips: frames stay paired
    out = tmp_path / "fid.json"
    assert bench.main([str(root / "avdit_cli" / "assets" / "tiny-dit"), "--real", str(tmp_path / "real"),
                       "-n", "2", "--t0", "5", "999", "--steps", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["files"] == 2 and [(r["t0"], r["clips"]) for r in rows] == [(5, 2), (999, 2)]
    assert rows[0]["kept"] > 0.9 and rows[0]["x0_mse"] < rows[1]["x0_mse"]  # nearly clean in, the same out
    assert all(r["kept_any_colour"] >= r["kept"] for r in rows)
    with pytest.raises(SystemExit):
        bench.main([str(root / "avdit_cli" / "assets" / "tiny-dit"), "--real", str(tmp_path / "real"), "--steps", "0"])


def test_near_moves_count_balls_in_reach_whatever_their_colour(real_clips: list[np.ndarray]) -> None:
    """Swapping red and green on every other frame keeps each ball where it is but changes the colour of most:
    smooth moves fall, near moves (any colour) stay those of the data."""
    real = frame_stats(real_clips)
    assert real.near_moves >= real.smooth_moves >= 0.9
    swapped = [clip.copy() for clip in real_clips]
    for clip in swapped:
        clip[1::2] = clip[1::2][..., [1, 0, 2]]
    stats = frame_stats(swapped)
    assert stats.near_moves >= 0.9 and stats.smooth_moves < 0.6
