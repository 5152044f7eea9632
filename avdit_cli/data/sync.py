"""An audio-visual sync score for the synthetic bouncing-ball data, computed from a decoded clip alone.

Seen impacts: each ball is found by its palette colour (a pixel is read as a blend of the dark background and
one palette colour, which is what anti-aliasing and codec blur produce; see :func:`ball_heights`); a ball's
height is the mean row of its pixels, and for a rigid ball that peaks exactly when its lowest point does: at a
floor impact. A peak must stand ``min_rise`` of the frame above its lower neighbour; its time is refined
between frames by crossing the falling line (frames k-2, k-1) with the rising line (k+1, k+2).

Heard impacts: onsets of the RMS envelope (20 ms windows every 10 ms): peaks of its rise (a half-wave
rectified flux) above ``rel_threshold`` of the clip's largest rise and above an absolute floor, so that a silent
clip has none.

Matching: events on either side closer than ``tolerance`` (default one frame) are first merged, since one
frame cannot separate them; then one-to-one matching within ``tolerance`` (two-pointer greedy over sorted
times, which is maximal in one dimension). Unmatched events within ``tolerance`` of the clip's start or end are
dropped, because their partner may lie just outside the clip.

Scores: precision = matched / audio onsets, recall = matched / visual impacts,
F1 = 2 matched / (visual + audio). Empty cases: no events on either side gives NaN for all three (nothing to
judge; :func:`mean_f1` leaves such clips out and says how many); events on one side only give F1 = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avdit_cli.data.synthetic import BACKGROUND, PALETTE
from avdit_cli.metrics.events import match_events


@dataclass(frozen=True)
class SyncScore:
    precision: float
    recall: float
    f1: float
    n_video: int
    n_audio: int
    matched: int
    video_times: tuple[float, ...] = ()
    audio_times: tuple[float, ...] = ()


# ----------------------------------------------------------------------------------------------------------
# Events from frames
# ----------------------------------------------------------------------------------------------------------
def ball_heights(frames: np.ndarray, min_pixels: float = 2.0, min_presence: float = 0.5) -> np.ndarray:
    """Height (mean pixel row, growing downwards) of each palette colour present in the clip: (f, k), NaN where
    that ball is not seen.

    A pixel p is read as a blend ``bg + a (colour - bg)`` of the background and one palette colour (that is what
    anti-aliasing and codec blur make): per colour, a is the projection of p - bg on colour - bg and the residual
    is what the blend cannot explain. The pixel goes to the colour with the smallest residual if a >= 0.5 and
    the residual is small; the row mean is weighted by a. A colour counts as a ball when it covers
    ``min_pixels`` in at least ``min_presence`` of the frames. frames: uint8 (f, h, w, 3).
    """
    f, h, w, _ = frames.shape
    bg = np.asarray(BACKGROUND, dtype=np.float32)
    d = np.asarray(PALETTE, dtype=np.float32) - bg  # k c
    p = frames.reshape(f, h * w, 3).astype(np.float32) - bg  # f (h w) c
    a = np.einsum("fnc,kc->fnk", p, d) / (d**2).sum(1)  # f (h w) k
    resid = (p**2).sum(-1, keepdims=True) - a**2 * (d**2).sum(1)  # f (h w) k: |p|² - |a d|²
    resid = np.where(a >= 0.5, resid, np.inf)
    best = resid.argmin(-1)  # f (h w)
    ok = np.isfinite(resid.min(-1)) & (resid.min(-1) < (0.35 * np.sqrt((d**2).sum(1)).min()) ** 2)
    rows = np.repeat(np.arange(h, dtype=np.float32), w)  # (h w)
    tracks = []
    for c in range(len(PALETTE)):
        weight = np.where(ok & (best == c), np.clip(a[..., c], 0.0, 1.0), 0.0)  # f (h w)
        mass = weight.sum(1)  # f
        if np.mean(mass >= min_pixels) < min_presence:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            y = (weight * rows).sum(1) / mass
        tracks.append(np.where(mass >= min_pixels, y, np.nan))
    return np.stack(tracks, 1) if tracks else np.zeros((f, 0), dtype=np.float32)


def _refine(y: np.ndarray, k: int) -> float:
    """Sub-frame impact time (in frames) near the peak k: the falling and rising lines' crossing."""
    if k < 2 or k + 2 >= len(y) or not np.all(np.isfinite(y[k - 2: k + 3])):
        return float(k)
    down = y[k - 1] - y[k - 2]  # slope before the impact (rows / frame, > 0 while falling)
    up = y[k + 2] - y[k + 1]  # slope after (< 0 while rising)
    if down <= 0 or up >= 0:
        return float(k)
    # y[k-1] + down (t - (k-1)) = y[k+1] + up (t - (k+1))
    t = (y[k + 1] - y[k - 1] + down * (k - 1) - up * (k + 1)) / (down - up)
    return float(np.clip(t, k - 1, k + 1))


def height_peaks(frames: np.ndarray, fps: float, min_rise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Every peak of a ball's height, in time order: (times in s, (n,); the ball centre's row at the peak as a
    fraction of the frame height from the top, (n,)). frames: uint8 (f, h, w, 3)."""
    heights = ball_heights(frames)  # f k
    rise = min_rise * frames.shape[1]
    peaks: list[tuple[float, float]] = []
    for y in heights.T:
        for k in range(1, len(y) - 1):
            prev, cur, nxt = y[k - 1], y[k], y[k + 1]
            if not np.isfinite([prev, cur, nxt]).all():
                continue
            # a peak: not below either neighbour (by more than noise) and clearly above the lower one
            if cur >= prev and cur > nxt and cur - min(prev, nxt) >= rise:
                peaks.append((_refine(y, k) / fps, float(cur) / frames.shape[1]))
    peaks.sort()
    return (np.asarray([t for t, _ in peaks], dtype=np.float64),
            np.asarray([r for _, r in peaks], dtype=np.float64))


def video_impacts(frames: np.ndarray, fps: float, min_rise: float = 0.01) -> np.ndarray:
    """Times (s) at which a ball's height peaks: its floor impacts. frames: uint8 (f, h, w, 3)."""
    return height_peaks(frames, fps, min_rise)[0]


# ----------------------------------------------------------------------------------------------------------
# Events from audio
# ----------------------------------------------------------------------------------------------------------
def audio_onsets(audio: np.ndarray, sample_rate: int, rel_threshold: float = 0.15, abs_threshold: float = 0.01,
                 min_gap: float = 0.06) -> np.ndarray:
    """Onset times (s): peaks of the rise of the 20 ms RMS envelope (hop 10 ms). audio: float32 (n,)."""
    hop, win = max(1, sample_rate // 100), max(2, sample_rate // 50)
    x = np.asarray(audio, dtype=np.float64)
    if len(x) < win:
        return np.zeros(0)
    padded = np.pad(x, (win // 2, win // 2))
    n_frames = 1 + (len(padded) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]  # t win
    rms = np.sqrt((padded[idx] ** 2).mean(1))  # t; frame t is centred on sample t * hop
    flux = np.maximum(np.diff(rms, prepend=rms[0]), 0.0)  # a sound already playing at the start is no onset
    if flux.size == 0 or flux.max() <= 0:
        return np.zeros(0)
    threshold = max(rel_threshold * flux.max(), abs_threshold)
    peaks = [t for t in range(len(flux)) if flux[t] >= threshold
             and flux[t] >= flux[max(t - 1, 0)] and flux[t] > flux[min(t + 1, len(flux) - 1)]]
    kept: list[int] = []
    for t in peaks:  # keep the stronger of onsets closer than min_gap
        if kept and (t - kept[-1]) * hop / sample_rate < min_gap:
            if flux[t] > flux[kept[-1]]:
                kept[-1] = t
            continue
        kept.append(t)
    # the rise is steepest when the window is half over the attack: its centre (t * hop) is the onset
    return np.asarray(kept, dtype=np.float64) * hop / sample_rate


# ----------------------------------------------------------------------------------------------------------
# Matching and scores
# ----------------------------------------------------------------------------------------------------------
def merge_events(times: np.ndarray, gap: float) -> np.ndarray:
    """Merge sorted event times closer than `gap` into their mean."""
    groups: list[list[float]] = []
    for t in np.sort(np.asarray(times, dtype=np.float64)):
        if groups and t - groups[-1][-1] < gap:
            groups[-1].append(float(t))
        else:
            groups.append([float(t)])
    return np.asarray([np.mean(g) for g in groups], dtype=np.float64)


def score_events(video_times: np.ndarray, audio_times: np.ndarray, tolerance: float, duration: float) -> SyncScore:
    """Precision / recall / F1 of audio onsets against visual impacts (see the module doc for the rules)."""
    v = merge_events(video_times, tolerance)
    a = merge_events(audio_times, tolerance)
    pairs = match_events(v, a, tolerance)
    mv, ma = {i for i, _ in pairs}, {j for _, j in pairs}

    def keep(times: np.ndarray, matched: set[int]) -> np.ndarray:
        near_edge = (times < tolerance) | (times > duration - tolerance)
        return np.asarray([t for i, t in enumerate(times) if i in matched or not near_edge[i]])

    v, a = keep(v, mv), keep(a, ma)
    n_v, n_a, m = len(v), len(a), len(pairs)
    nan = float("nan")
    return SyncScore(precision=m / n_a if n_a else nan, recall=m / n_v if n_v else nan,
                     f1=2 * m / (n_v + n_a) if n_v + n_a else nan, n_video=n_v, n_audio=n_a, matched=m,
                     video_times=tuple(float(t) for t in v), audio_times=tuple(float(t) for t in a))


def clip_events_score(video_times: np.ndarray, audio_times: np.ndarray, num_frames: int, num_samples: int,
                      fps: float, sample_rate: int, tolerance: float | None = None) -> SyncScore:
    """The sync score of one clip from events already found (:func:`video_impacts`, :func:`audio_onsets`), for
    callers that score the same clip's events more than once: its frame count and sample count give the
    clip's duration, as :func:`sync_score` does. tolerance: seconds, default one frame (1 / fps)."""
    tol = 1.0 / fps if tolerance is None else tolerance
    duration = max(num_frames / fps, num_samples / sample_rate)
    return score_events(video_times, audio_times, tol, duration)


def sync_score(frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int,
               tolerance: float | None = None) -> SyncScore:
    """The sync score of one decoded clip: frames uint8 (f, h, w, 3) at fps, audio float32 (n,) at sample_rate.

    tolerance: seconds, default one frame (1 / fps).
    """
    return clip_events_score(video_impacts(frames, fps), audio_onsets(audio, sample_rate), len(frames), len(audio),
                             fps, sample_rate, tolerance)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2): clip i gets the audio of clip perm[i] != i."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:  # rejection sampling: about e tries on average
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def shuffled_baseline(frames: list[np.ndarray], audio: list[np.ndarray], fps: float, sample_rate: int,
                      seed: int = 0, tolerance: float | None = None) -> list[SyncScore]:
    """Chance level: clip i's frames scored against clip j's audio, j a seeded derangement of i."""
    perm = derangement(len(frames), np.random.default_rng(seed))
    return [sync_score(frames[i], audio[int(j)], fps, sample_rate, tolerance) for i, j in enumerate(perm)]


def mean_f1(scores: list[SyncScore]) -> tuple[float, int]:
    """(mean F1 over clips where it is defined, number of clips left out because no event was found)."""
    values = [s.f1 for s in scores if not math.isnan(s.f1)]
    return (float(np.mean(values)) if values else float("nan")), len(scores) - len(values)
