"""Mixing channels down to mono (polarity-aware average) and the silence test, on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from avdit_cli.data.mixdown import POLARITY_CORRELATION, SILENCE_PEAK, downmix, is_silent

rng = np.random.default_rng(0)
A, B = rng.standard_normal((2, 16000)).astype(np.float32) * 0.1  # two unrelated signals


def test_identical_channels_and_inverted_ones_keep_unit_gain():
    same, flips = downmix(np.stack([A, A, A], 1))
    assert np.allclose(same, A) and flips == ()
    anti, flips = downmix(np.stack([A, -A], 1))  # a plain mean would be exactly 0
    assert np.allclose(anti, A) and flips == (1,)
    louder_inverted, flips = downmix(np.stack([0.5 * A, -A], 1))  # the loudest channel is the reference
    assert np.allclose(louder_inverted, -0.75 * A) and flips == (0,)
    mostly, flips = downmix(np.stack([A, -0.8 * A + 0.3 * B], 1))  # correlation -0.94: flipped
    assert np.allclose(mostly, (A + 0.8 * A - 0.3 * B) / 2, atol=1e-6) and flips == (1,)


def test_channels_that_merely_differ_are_averaged_as_they_are():
    for right in (B, -0.3 * A + B, np.zeros_like(A)):  # unrelated, correlation -0.29, silent
        corr = np.dot(A, right) / (np.linalg.norm(A) * np.linalg.norm(right) + 1e-12)
        assert corr > POLARITY_CORRELATION
        mix, flips = downmix(np.stack([A, right], 1))
        assert np.allclose(mix, (A + right) / 2, atol=1e-6) and flips == ()


def test_edge_shapes():
    assert np.array_equal(downmix(A[:, None])[0], A)  # mono stays as it is
    assert downmix(np.zeros((100, 9), np.float32)) == (pytest.approx(np.zeros(100)), ())
    assert downmix(np.zeros((0, 2), np.float32))[0].shape == (0,)


def test_silence_is_below_minus_60_dbfs():
    assert SILENCE_PEAK == pytest.approx(0.001)
    assert is_silent(np.zeros(10)) and is_silent(np.full(10, SILENCE_PEAK / 2)) and is_silent(np.zeros(0))
    assert not is_silent(np.full(10, SILENCE_PEAK * 2)) and not is_silent(A)
