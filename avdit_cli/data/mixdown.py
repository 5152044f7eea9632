"""Mixing any number of audio channels down to mono, and telling a silent clip (pure numpy).

Mix-down. Every channel counts the same: the mono signal is the mean of the channels, whatever their layout
(5.1, 7.1, or a channel count ffmpeg has no layout name for). Before averaging, a channel whose waveform is
clearly the inverse of the loudest channel's (correlation over the whole track below
``POLARITY_CORRELATION``) has its polarity flipped. A plain mean would cancel such a pair: stereo with
``R = -L`` (one wire swapped, or a "wide" effect) would come out as digital silence although both channels
are loud. Flipping changes nothing audible (polarity is inaudible on its own, and the mel spectrogram ignores
it) and keeps unit gain: identical channels, or a channel and its inverse, average to the original level.
Channels that are merely different (wide stereo, ambience, surround) have a correlation near 0 or above and
are averaged as they are.

Silence. A clip is silent when no sample reaches ``SILENCE_PEAK`` (-60 dBFS): an all-zero track, a muted
recording, or audio that is only dither. Such audio tells a model nothing about the picture.
"""

from __future__ import annotations

import numpy as np

POLARITY_CORRELATION = -0.5  # below this, a channel is taken as the inverse of the loudest one
SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS: quieter than any sound worth learning from


def downmix(channels: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Mono mean of ``channels`` float32 (n, c) -> (float32 (n,), indices of the channels that were flipped).

    See the module doc for the polarity rule. A silent or single-channel input is returned as is.
    """
    x = np.asarray(channels, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"channels must be (samples, channels), got shape {x.shape}")
    n, c = x.shape
    if c == 1 or n == 0:
        return np.ascontiguousarray(x[:, 0] if c else np.zeros(n, np.float32)), ()
    gram = (x.T @ x).astype(np.float64)  # (c, c): energies on the diagonal, dot products elsewhere
    energy = np.diag(gram)
    ref = int(np.argmax(energy))
    signs = np.ones(c, dtype=np.float32)
    if energy[ref] > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = gram[:, ref] / np.sqrt(energy * energy[ref])
        signs[np.nan_to_num(corr, nan=0.0) < POLARITY_CORRELATION] = -1.0
    mono = x @ (signs / c)  # (n,)
    return np.ascontiguousarray(mono, dtype=np.float32), tuple(int(i) for i in np.flatnonzero(signs < 0))


def is_silent(audio: np.ndarray) -> bool:
    """Whether no sample of ``audio`` (any shape, float in [-1, 1]) reaches ``SILENCE_PEAK``."""
    a = np.asarray(audio)
    return a.size == 0 or float(np.max(np.abs(a))) < SILENCE_PEAK
