"""AV-Align: do audio onsets and visual motion peaks happen at the same time? No weights needed.

Per clip (frames uint8 (f, h, w, 3) at ``fps``, mono audio float32 at ``sample_rate``):

- audio events: onset-strength envelope = spectral flux of a log-compressed mel magnitude spectrogram
  (log(1 + 10 M / max M); positive frame-to-frame increase averaged over 64 mel bands; 32 ms window,
  10 ms hop), normalised to [0, 1], peaks picked as librosa's
  onset_detect does (local max over the last 30 ms, above the local mean over +-100 ms plus 0.07). Onsets
  closer than one video frame are merged, since matching cannot resolve them anyway.
- video events: motion energy = mean absolute difference of consecutive grey frames, normalised to [0, 1];
  a frame is a peak if it is the first maximum of its +-1 frame neighbourhood and exceeds the local mean over
  +-0.5 s plus 0.1. The event time of frame t is t / fps (the first frame that shows the change).
- score: events matched one-to-one within one frame (1 / fps); intersection over union
  |matched| / (|A| + |V| - |matched|). A clip with no event in either track scores 0 (nothing shows that the
  tracks are aligned, and a static, silent output must not score 1); such clips are counted in the result.

The clip score is averaged over clips. This follows AV-Align (Yariv et al. 2024) with frame differences in
place of optical flow, so values are comparable only to values computed by this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from avdit_cli.errors import DataError
from avdit_cli.metrics.events import match_events
from avdit_cli.metrics.vggish import htk_mel_matrix

ONSET_N_FFT = 512
ONSET_HOP = 160
ONSET_MELS = 64
COMPRESSION = 10.0
AUDIO_DELTA = 0.07
VIDEO_DELTA = 0.1


@dataclass(frozen=True)
class AVAlignResult:
    score: float  # mean of the clip scores
    per_clip: tuple[float, ...]
    clips_without_events: int  # clips with no audio and no video event (scored 0)


def _pick_peaks(
    x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float, wait: int
) -> np.ndarray:
    """Indices n with x[n] = max(x[n-pre_max : n+post_max]), x[n] >= mean(x[n-pre_avg : n+post_avg]) + delta,
    and more than ``wait`` samples after the previous peak (librosa.util.peak_pick semantics)."""
    peaks: list[int] = []
    n_total = len(x)
    for n in range(n_total):
        lo_max, hi_max = max(0, n - pre_max), min(n_total, n + post_max)
        if x[n] < x[lo_max:hi_max].max():
            continue
        lo_avg, hi_avg = max(0, n - pre_avg), min(n_total, n + post_avg)
        if x[n] < x[lo_avg:hi_avg].mean() + delta:
            continue
        if peaks and n <= peaks[-1] + wait:
            continue
        peaks.append(n)
    return np.asarray(peaks, dtype=np.int64)


def _normalise(envelope: np.ndarray) -> np.ndarray:
    env = envelope - envelope.min()
    top = env.max()
    return env / top if top > 0 else env


def onset_envelope(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Spectral flux of the compressed mel magnitude, one value per 10 ms hop (frame i centred at i * hop)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)  # (s,)
    hop = ONSET_HOP * sample_rate // 16000  # 10 ms at any rate
    n_fft = ONSET_N_FFT * sample_rate // 16000
    x = np.pad(x, (n_fft // 2, n_fft // 2))  # centred frames, as librosa / torch.stft(center=True)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # (t, n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1))  # (t, k)
    mel = magnitude @ htk_mel_matrix(ONSET_MELS, n_fft // 2 + 1, sample_rate, 0.0, sample_rate / 2)  # (t, m)
    top = mel.max()
    if top <= 0:
        return np.zeros(mel.shape[0])
    # log(1 + 10 M / max M): relative to the clip's loudest bin, so the score does not depend on the volume;
    # nearly linear for quiet bins, so background noise does not produce onsets the way a dB scale does.
    compressed = np.log1p(COMPRESSION * mel / top)
    flux = np.maximum(0.0, np.diff(compressed, axis=0)).mean(axis=1)  # (t - 1,)
    return np.concatenate([[0.0], flux])


def audio_events(audio: np.ndarray, sample_rate: int, fps: float) -> np.ndarray:
    """Onset times in seconds."""
    env = onset_envelope(audio, sample_rate)
    if env.size == 0 or env.max() <= 0:
        return np.zeros(0)
    rate = 100.0  # envelope frames per second (10 ms hop)
    frames_per_video_frame = max(1, int(round(rate / fps)))
    peaks = _pick_peaks(
        _normalise(env),
        pre_max=3,
        post_max=1,
        pre_avg=10,
        post_avg=11,
        delta=AUDIO_DELTA,
        wait=frames_per_video_frame - 1,
    )
    return peaks / rate


def motion_envelope(frames: np.ndarray) -> np.ndarray:
    """Mean absolute grey-level change into each frame, (f,), with 0 for the first frame."""
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"AV-Align expects frames shaped (f, h, w, 3), got {x.shape}.")
    grey = x.astype(np.float64).mean(axis=-1) / 255.0  # (f, h, w)
    diff = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # (f - 1,)
    return np.concatenate([[0.0], diff])


def video_events(frames: np.ndarray, fps: float) -> np.ndarray:
    """Motion peak times in seconds."""
    env = motion_envelope(frames)
    if env.max() <= 0:
        return np.zeros(0)
    half = max(1, int(round(fps / 2)))
    peaks = _pick_peaks(
        _normalise(env), pre_max=1, post_max=2, pre_avg=half, post_avg=half + 1, delta=VIDEO_DELTA, wait=1
    )
    return peaks / fps


def _clip_score(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int) -> tuple[float, bool]:
    """(IoU, whether the clip had any event at all)."""
    a, v = audio_events(audio, sample_rate, fps), video_events(frames, fps)
    if a.size == 0 and v.size == 0:
        return 0.0, False
    matched = len(match_events(np.sort(a), np.sort(v), 1.0 / fps))
    return matched / (a.size + v.size - matched), True


def av_align_clip(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int) -> float:
    """IoU of audio onsets and motion peaks for one clip, in [0, 1]."""
    return _clip_score(frames, fps, audio, sample_rate)[0]


def av_align_score(clips: Iterable[tuple[np.ndarray, np.ndarray]], fps: float, sample_rate: int) -> AVAlignResult:
    """Mean AV-Align over (frames (f, h, w, 3) uint8, audio (s,) float32) clips."""
    results = [_clip_score(frames, fps, audio, sample_rate) for frames, audio in clips]
    if not results:
        raise DataError("AV-Align got no clips; check the input folder.")
    scores = tuple(score for score, _ in results)
    empty = sum(1 for _, has_events in results if not has_events)
    return AVAlignResult(score=float(np.mean(scores)), per_clip=scores, clips_without_events=empty)
