"""Built-in demo data: balls bouncing on a floor, each floor impact heard as a short percussive sound.

Why this data: the sound is caused by what is seen, at a known time, so a model that keeps audio and video in
sync can be checked without labels (:mod:`avdit_cli.data.sync`). Every clip is an ordinary mp4 (30 fps video,
44.1 kHz audio by default) written by :func:`avdit_cli.data.media.write_mp4`, so preprocessing does real
decoding and resampling, exactly as for a user's folder.

The world is measured in frame heights (square frames, y pointing down). Gravity is constant; each impact
returns ``RESTITUTION`` of the speed, and when the next bounce would be shorter than ``min period`` the ball is
kicked back up to a fresh random period, so impacts never bunch up (two to five per 1.6 s clip). An impact's
pitch falls with the ball's size and its loudness rises with the impact speed. Walls are silent.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from avdit_cli.data.media import write_mp4

# Colours are part of the data's contract: sync.py finds the balls by them.
BACKGROUND = (18, 18, 28)
FLOOR = (58, 58, 70)
PALETTE = ((235, 64, 52), (60, 205, 90), (70, 130, 250), (245, 205, 40), (210, 80, 225), (40, 215, 225))
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")  # one per PALETTE entry
FLOOR_HEIGHT = 0.08  # fraction of the frame below the floor line
GRAVITY = 6.0  # frame heights / s²
RESTITUTION = 0.85
RADIUS_RANGE = (0.06, 0.12)  # frame heights
PITCH_CONSTANT = 40.0  # pitch (Hz) = PITCH_CONSTANT / radius: 333-667 Hz
DECAY_S = 0.05  # time constant of the tone's decay
# Bounce periods (s), drawn at each kick: (low, high, kick below); two balls bounce slower so a clip's total
# impact rate stays near 3 per 1.6 s.
PERIODS = {1: (0.5, 0.8, 0.4), 2: (0.75, 1.0, 0.6)}
NOISE_STD = 0.003


@dataclass(frozen=True)
class Ball:
    colour: tuple[int, int, int]
    radius: float  # frame heights
    pitch_hz: float
    x0: float  # centre at t = 0, frame widths
    vx: float  # frame widths / s
    bounce_starts: tuple[float, ...]  # times the ball leaves the floor (the first may be < 0)
    bounce_speeds: tuple[float, ...]  # upward speed at each start


@dataclass(frozen=True)
class Impact:
    time: float
    ball: int
    speed: float  # frame heights / s


@dataclass(frozen=True)
class SyntheticClip:
    frames: np.ndarray  # uint8 (f, h, w, 3)
    audio: np.ndarray  # float32 (n,)
    fps: float
    sample_rate: int
    balls: tuple[Ball, ...]
    impacts: tuple[Impact, ...]  # sorted by time


# ----------------------------------------------------------------------------------------------------------
# Physics
# ----------------------------------------------------------------------------------------------------------
def _make_ball(rng: np.random.Generator, colour: tuple[int, int, int], radius: float, n_balls: int,
               seconds: float) -> tuple[Ball, list[Impact]]:
    lo, hi, kick_below = PERIODS[n_balls]
    # the highest bounce must keep the ball inside the frame: height = g P² / 8 <= floor - diameter
    hi = min(hi, float(np.sqrt(8 * (1 - FLOOR_HEIGHT - 2 * radius - 0.02) / GRAVITY)))
    lo = min(lo, 0.8 * hi)
    period = rng.uniform(lo, hi)
    t = -rng.uniform(0.05, period)  # start mid-flight: the last take-off was before t = 0
    v = GRAVITY * period / 2
    starts, speeds, impacts = [t], [v], []
    while True:
        t = t + 2 * v / GRAVITY  # next impact; the ball falls back at the speed it left with
        if t > seconds:
            break
        impacts.append((t, v))
        v = RESTITUTION * v
        if 2 * v / GRAVITY < kick_below:
            v = GRAVITY * rng.uniform(lo, hi) / 2
        starts.append(t)
        speeds.append(v)
    x_margin = radius + 0.02
    ball = Ball(colour=colour, radius=radius, pitch_hz=PITCH_CONSTANT / radius,
                x0=rng.uniform(x_margin, 1 - x_margin), vx=rng.choice([-1, 1]) * rng.uniform(0.1, 0.35),
                bounce_starts=tuple(starts), bounce_speeds=tuple(speeds))
    return ball, [Impact(time=ti, ball=-1, speed=vi) for ti, vi in impacts]


def ball_position(ball: Ball, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) in frame units at times t (n,): parabolic flight between impacts, mirrored at walls."""
    starts = np.asarray(ball.bounce_starts)
    idx = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(starts) - 1)
    dt = t - starts[idx]
    height = np.maximum(np.asarray(ball.bounce_speeds)[idx] * dt - GRAVITY / 2 * dt**2, 0.0)  # bottom above floor
    y = (1 - FLOOR_HEIGHT) - ball.radius - height
    span = 1 - 2 * ball.radius
    u = np.mod(ball.x0 - ball.radius + ball.vx * t, 2 * span)  # triangle wave: elastic, silent walls
    x = ball.radius + np.where(u < span, u, 2 * span - u)
    return x, y


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------
def render_frames(balls: tuple[Ball, ...], num_frames: int, fps: float, size: int) -> np.ndarray:
    """uint8 (f, size, size, 3): anti-aliased discs (coverage of each pixel) over the background and floor."""
    t = np.arange(num_frames) / fps
    img = np.empty((num_frames, size, size, 3), dtype=np.float32)  # f h w c
    img[:] = np.asarray(BACKGROUND, dtype=np.float32)
    floor_row = (1 - FLOOR_HEIGHT) * size
    rows = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    floor_cover = np.clip(rows + 0.5 - floor_row, 0.0, 1.0)[None, :, None, None]  # 1 h 1 1
    img = img * (1 - floor_cover) + np.asarray(FLOOR, dtype=np.float32) * floor_cover
    for ball in balls:
        x, y = ball_position(ball, t)
        dx = rows[None, None, :] - (x * size)[:, None, None]  # f 1 w
        dy = rows[None, :, None] - (y * size)[:, None, None]  # f h 1
        cover = np.clip(ball.radius * size + 0.5 - np.sqrt(dx**2 + dy**2), 0.0, 1.0)[..., None]  # f h w 1
        img = img * (1 - cover) + np.asarray(ball.colour, dtype=np.float32) * cover
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_audio(balls: tuple[Ball, ...], impacts: list[Impact], seconds: float, sample_rate: int,
                 rng: np.random.Generator) -> np.ndarray:
    """float32 (n,): per impact a decaying tone (pitch from size) plus a short click, louder when faster."""
    n = round(seconds * sample_rate)
    audio = rng.normal(0.0, NOISE_STD, n)
    v_max = GRAVITY * max(hi for _, hi, _ in PERIODS.values()) / 2  # the fastest possible impact
    length = int(6 * DECAY_S * sample_rate)
    tt = np.arange(length) / sample_rate
    for imp in impacts:
        ball = balls[imp.ball]
        amp = 0.25 + 0.65 * min(1.0, imp.speed / v_max)
        tone = np.sin(2 * np.pi * ball.pitch_hz * tt) + 0.3 * np.sin(2 * np.pi * 2.7 * ball.pitch_hz * tt)
        click = np.where(tt < 0.002, rng.normal(0.0, 1.0, length), 0.0)
        sound = amp * (0.7 * tone * np.exp(-tt / DECAY_S) + 0.5 * click)
        i0 = round(imp.time * sample_rate)
        if i0 >= n:
            continue
        seg = sound[: n - i0]
        audio[i0: i0 + len(seg)] += seg
    peak = float(np.max(np.abs(audio)))
    return (audio / max(1.0, peak / 0.9)).astype(np.float32)


def render_clip(rng: np.random.Generator, seconds: float = 4.0, size: int = 64, fps: float = 30,
                sample_rate: int = 44100, num_balls: int | None = None) -> SyntheticClip:
    """One random clip (1 or 2 balls unless `num_balls` is given), rendered in memory."""
    n_balls = int(num_balls if num_balls is not None else rng.integers(1, 3))
    colours = rng.choice(len(PALETTE), size=n_balls, replace=False)
    # distinct sizes, so two balls also sound different
    radii = np.sort(rng.uniform(*RADIUS_RANGE, size=n_balls))
    if n_balls == 2 and radii[1] - radii[0] < 0.025:
        radii = np.array([RADIUS_RANGE[0] + rng.uniform(0, 0.01), RADIUS_RANGE[1] - rng.uniform(0, 0.01)])
    balls, impacts = [], []
    for i in range(n_balls):
        ball, own = _make_ball(rng, PALETTE[int(colours[i])], float(radii[i]), n_balls, seconds)
        balls.append(ball)
        impacts += [Impact(time=m.time, ball=i, speed=m.speed) for m in own]
    impacts.sort(key=lambda m: m.time)
    num_frames = round(seconds * fps)
    frames = render_frames(tuple(balls), num_frames, fps, size)
    audio = render_audio(tuple(balls), impacts, num_frames / fps, sample_rate, rng)
    return SyntheticClip(frames=frames, audio=audio, fps=fps, sample_rate=sample_rate, balls=tuple(balls),
                         impacts=tuple(impacts))


def colour_class(colours: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]) -> str:
    """A clip's class: the names of its balls' colours in palette order, joined by ``+`` (``"red+blue"``).

    What an image label says about the demo's frames (which colours are in view), as a Landscape folder name
    says what a scene shows. 6 one-ball and 15 two-ball classes: :func:`colour_classes`.
    """
    return "+".join(COLOUR_NAMES[i] for i in sorted(PALETTE.index(tuple(c)) for c in colours))


def colour_classes() -> list[str]:
    """All 21 classes of :func:`colour_class`, sorted by name as `avdit preprocess` numbers a folder's classes."""
    n = len(PALETTE)
    single = [colour_class([PALETTE[i]]) for i in range(n)]
    pairs = [colour_class([PALETTE[i], PALETTE[j]]) for i in range(n) for j in range(i + 1, n)]
    return sorted(single + pairs)


def _write_one(out: Path, i: int, seed: int, seconds: float, size: int, fps: float, sample_rate: int,
               class_folders: bool) -> Path:
    rng = np.random.default_rng([seed, i])
    clip = render_clip(rng, seconds=seconds, size=size, fps=fps, sample_rate=sample_rate)
    folder = out / colour_class([b.colour for b in clip.balls]) if class_folders else out
    folder.mkdir(parents=True, exist_ok=True)
    path = write_mp4(folder / f"clip_{i:04d}.mp4", clip.frames, clip.audio, fps=fps, sample_rate=sample_rate)
    sidecar = {
        "seed": seed, "index": i, "seconds": len(clip.frames) / fps, "fps": fps, "sample_rate": sample_rate,
        "size": size,
        "balls": [{"colour": list(b.colour), "radius": b.radius, "pitch_hz": b.pitch_hz} for b in clip.balls],
        "impacts": [asdict(m) for m in clip.impacts],
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return path


def make_dataset(out_dir: str | Path, num_clips: int, seconds: float = 4.0, seed: int = 0, size: int = 64,
                 fps: float = 30, sample_rate: int = 44100, workers: int | None = None,
                 class_folders: bool = False) -> list[Path]:
    """Write `num_clips` mp4 files (``clip_0000.mp4`` ...), each with a JSON sidecar of its true impacts.

    Clip i depends only on (seed, i), so the result does not depend on `workers` (threads; each runs ffmpeg)
    and a dataset can be extended or partly regenerated. size must be even (H.264 yuv420p).
    `class_folders`: put each file in a folder named by its :func:`colour_class` (``red+blue/clip_0007.mp4``),
    the layout `avdit preprocess` reads classes from; the files themselves are the same.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        jobs = [pool.submit(_write_one, out, i, seed, seconds, size, fps, sample_rate, class_folders)
                for i in range(num_clips)]
        return [job.result() for job in jobs]


def read_impacts(mp4_path: str | Path) -> list[float]:
    """The true impact times (s) from a clip's sidecar."""
    data = json.loads(Path(mp4_path).with_suffix(".json").read_text())
    return [m["time"] for m in data["impacts"]]
