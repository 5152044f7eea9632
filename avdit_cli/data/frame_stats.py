"""Do generated frames look like the demo's data? Balls per frame, noise frames and smooth moves.

A deliberately simple detector for the synthetic bouncing-ball data (:mod:`avdit_cli.data.synthetic`), which
knows nothing of the model, so that it can judge generated clips the way a person glancing at them would:

- **foreground**: pixels whose colour is far from both the background and the floor colour (L1 distance over
  RGB above ``FOREGROUND_L1``; codec noise on real clips stays below 15, a ball's core is above 200);
- **blobs**: 8-connected components of the foreground;
- **balls**: blobs whose area is that of one ball or of two overlapping ones (from the data's radius range,
  scaled to the frame size), each with a colour: the palette colour nearest to its brightest pixels;
- **noise frame**: a frame whose foreground is not explained by balls: more than ``NOISE_SPECKLE`` of its pixels
  are foreground outside any ball, or it holds more than ``MAX_BALLS`` balls;
- **smooth move**: a ball of frame k for which frame k+1 holds a ball of the same palette colour within
  ``MAX_STEP`` frame heights. The data's fastest ball moves 0.30 frame heights between frames at 10 fps (the
  vertical speed at impact, ``GRAVITY x longest period / 2``, over one frame), so a real clip scores about 1;
  a ball drawn anew at random each frame scores about 0.1 (same colour: 1 in 6, and near: ~0.4);
- **near moves**: the same without the colour: a ball of frame k with *any* ball of frame k+1 within
  ``MAX_STEP``. The gap between near and smooth moves is the balls that stay in reach but change colour;
- **median step**: the median distance, in frame heights, from a ball to the nearest same-coloured ball of the
  next frame, over the smooth moves: how far balls travel. The data's is about 0.09; balls that stand still
  (which a share of smooth moves alone would reward) score near 0.

Every threshold is in frame heights or fractions, so the statistics do not depend on the frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from avdit_cli.data.synthetic import BACKGROUND, FLOOR, PALETTE, RADIUS_RANGE

FOREGROUND_L1 = 90.0  # RGB L1 distance from background and floor above which a pixel is foreground
MIN_BALL_AREA = 0.003  # fraction of the frame: a speck smaller than this is no ball (3 px at 32x32)
MAX_BALL_AREA = 2.5 * math.pi * RADIUS_RANGE[1] ** 2  # two of the largest balls overlapping, with some slack
NOISE_SPECKLE = 0.02  # fraction of the frame's pixels: foreground outside balls above this is a noise frame
MAX_BALLS = 4
MAX_STEP = 0.35  # frame heights between consecutive frames


@dataclass(frozen=True)
class FrameStats:
    """Frame statistics of a group of clips (means over all frames / all moves of the group)."""

    clips: int
    frames: int
    balls_per_frame: float  # mean number of balls in a frame
    one_or_two_balls: float  # share of frames with 1 or 2 balls
    noise_frames: float  # share of frames that are noise
    smooth_moves: float  # share of balls (frames 0..f-2) with a same-coloured ball near them in the next frame
    moves: int  # how many balls the smooth share is over
    median_step: float  # frame heights a ball travels to the next frame, median over the smooth moves (NaN: none)
    near_moves: float = float("nan")  # share of balls with a ball of any colour near them in the next frame


@dataclass(frozen=True)
class Ball:
    y: float  # centre row, frame heights from the top
    x: float  # centre column, frame heights from the left
    area: float  # fraction of the frame
    colour: int  # index into PALETTE


def _foreground(frame: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels far from both the background and the floor colour. frame: uint8 (h, w, 3)."""
    p = frame.astype(np.float32)
    d_bg = np.abs(p - np.asarray(BACKGROUND, np.float32)).sum(-1)
    d_floor = np.abs(p - np.asarray(FLOOR, np.float32)).sum(-1)
    return np.minimum(d_bg, d_floor) > FOREGROUND_L1


def _palette_index(pixels: np.ndarray) -> int:
    """The palette colour nearest (L2) to the mean of the brightest half of a blob's pixels (n, 3):
    the blob's edge is blended with the background, its core is the ball's colour."""
    bright = pixels[np.argsort(pixels.sum(-1))[len(pixels) // 2:]].mean(0)
    return int(np.argmin(((np.asarray(PALETTE, np.float32) - bright) ** 2).sum(-1)))


def frame_balls(frame: np.ndarray) -> tuple[list[Ball], bool]:
    """The balls of one frame and whether the frame is noise. frame: uint8 (h, w, 3)."""
    h, w, _ = frame.shape
    fg = _foreground(frame)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    balls: list[Ball] = []
    unexplained = 0
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        area = len(ys) / (h * w)
        if MIN_BALL_AREA <= area <= MAX_BALL_AREA:
            balls.append(Ball(y=float(ys.mean()) / h, x=float(xs.mean()) / h, area=area,
                              colour=_palette_index(frame[ys, xs].astype(np.float32))))
        else:
            unexplained += len(ys)
    noise = unexplained / (h * w) > NOISE_SPECKLE or len(balls) > MAX_BALLS
    return balls, noise


def _steps(a: list[Ball], b: list[Ball], same_colour: bool = True) -> list[float]:
    """For each ball of frame a with a same-coloured (or, with ``same_colour=False``, any) ball of frame b within
    MAX_STEP (a smooth / near move), the distance to the nearest such ball, in frame heights."""
    steps = []
    for p in a:
        near = [d for q in b if (q.colour == p.colour or not same_colour)
                and (d := math.hypot(q.y - p.y, q.x - p.x)) <= MAX_STEP]
        if near:
            steps.append(min(near))
    return steps


def frame_stats(clips: list[np.ndarray]) -> FrameStats:
    """Frame statistics of clips, each uint8 (f, h, w, 3). Raises ValueError for no clip."""
    if not clips:
        raise ValueError("frame_stats needs at least one clip")
    counts: list[int] = []
    noise = 0
    steps: list[float] = []
    moves = near = 0
    for clip in clips:
        per_frame = []
        for frame in clip:
            balls, is_noise = frame_balls(frame)
            per_frame.append(balls)
            counts.append(len(balls))
            noise += is_noise
        for a, b in zip(per_frame[:-1], per_frame[1:]):
            steps += _steps(a, b)
            near += len(_steps(a, b, same_colour=False))
            moves += len(a)
    c = np.asarray(counts)
    return FrameStats(clips=len(clips), frames=len(c), balls_per_frame=float(c.mean()),
                      one_or_two_balls=float(np.mean((c >= 1) & (c <= 2))), noise_frames=noise / len(c),
                      smooth_moves=len(steps) / moves if moves else float("nan"), moves=moves,
                      median_step=float(np.median(steps)) if steps else float("nan"),
                      near_moves=near / moves if moves else float("nan"))
