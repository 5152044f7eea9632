"""Fréchet distance and KVD against independent numpy computations, plus the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avdit_cli.errors import DataError
from avdit_cli.metrics import (
    FeatureCache,
    cached,
    feature_stats,
    frechet_distance,
    frechet_from_stats,
    kvd,
    reliability_warning,
)
from avdit_cli.metrics.frechet import frechet_distance_tfgan
from avdit_cli.metrics.kid import kvd_sklearn_float32


def _fd_eig(x: np.ndarray, y: np.ndarray) -> float:
    """Independent FD: Tr((S1 S2)^1/2) = Tr((A S2 A)^1/2) with A = S1^1/2, both roots by eigendecomposition."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x.T), np.cov(y.T)

    def psd_sqrt(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    a = psd_sqrt(s1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _mmd_naive(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k = (x.y/d + 1)^3 by explicit loops."""
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_frechet_matches_eigendecomposition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) + 0.3
    ours, ref = frechet_distance(x, y), _fd_eig(x, y)
    assert ref > 1.0
    assert ours == pytest.approx(ref, rel=1e-6)


def test_frechet_identical_sets_is_zero() -> None:
    x = np.random.default_rng(1).normal(size=(200, 8))
    assert abs(frechet_distance(x, x.copy())) < 1e-8


def test_frechet_mean_shift_only_is_squared_norm() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    mu1 = rng.normal(size=6)
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    fd = frechet_from_stats(mu1, sigma, mu1 + delta, sigma)
    assert fd == pytest.approx(float(delta @ delta), rel=1e-6)


def test_frechet_diagonal_covariances() -> None:
    s1, s2 = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 1.0, 2.25])
    mu1, mu2 = np.zeros(4), np.array([0.0, 1.0, 0.0, 0.0])
    # For diagonal covariances the trace term is sum (sqrt(s1) - sqrt(s2))^2.
    expected = 1.0 + float(((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum())
    assert frechet_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-6)


def test_frechet_from_samples_of_known_gaussians() -> None:
    """Large samples of N(0, I) and N(delta, 4 I): FD close to ||delta||^2 + d (2 - 1)^2."""
    rng = np.random.default_rng(3)
    d = 4
    delta = np.full(d, 0.5)
    x = rng.normal(size=(40_000, d))
    y = delta + 2.0 * rng.normal(size=(40_000, d))
    assert frechet_distance(x, y) == pytest.approx(float(delta @ delta) + d, rel=0.03)


def test_frechet_singular_covariance_is_finite() -> None:
    x = np.random.default_rng(4).normal(size=(10, 32))  # fewer samples than dims: singular covariances
    y = np.random.default_rng(5).normal(size=(12, 32))
    assert np.isfinite(frechet_distance(x, y))


def test_frechet_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(DataError):
        frechet_distance(np.zeros((4, 3)), np.zeros((5, 2)))
    mu, sigma = feature_stats(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(DataError):
        frechet_from_stats(mu, sigma, np.zeros(2), np.eye(2))


def test_kvd_matches_naive_loop() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(13, 5))
    y = rng.normal(loc=0.4, size=(9, 5))
    ref = _mmd_naive(x, y)
    assert abs(ref) > 1e-3
    assert kvd(x, y) == pytest.approx(ref, rel=1e-6)


def test_kvd_identical_and_shifted() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 8))
    same = kvd(x[:200], x[200:])  # two samples of one distribution: unbiased estimate near 0
    shifted = kvd(x[:200], x[200:] + 1.0)
    assert abs(same) < 0.05 * shifted
    assert shifted > 0


def test_kvd_subsets_are_seeded_and_close() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(120, 6)), rng.normal(loc=0.5, size=(100, 6))
    a = kvd(x, y, subset_size=50, num_subsets=20, seed=3)
    assert a == kvd(x, y, subset_size=50, num_subsets=20, seed=3)
    assert a == pytest.approx(kvd(x, y), rel=0.3)


def test_reliability_warning() -> None:
    assert reliability_warning(2048, 2048, 400) is None
    msg = reliability_warning(16, 300, 400, "FVD")
    assert msg is not None and "16" in msg and "400" in msg and "\n" not in msg


def test_feature_cache_hits_and_misses(tmp_path) -> None:
    media = tmp_path / "clip.mp4"
    media.write_bytes(b"pretend video bytes")
    cache = FeatureCache(tmp_path / "features")
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float64).reshape(2, 3) + len(calls)

    key = {"extractor": "i3d", "weights_sha256": "ab" * 32, "protocol": {"frames": 16, "resize": True}}
    first = cached(media, key, compute, cache)
    second = cached(media, key, compute, cache)
    assert (cache.hits, cache.misses) == (1, 1) and len(calls) == 1
    np.testing.assert_array_equal(first, second)

    # A renamed copy with the same content still hits: the key is the content, not the path.
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(media.read_bytes())
    cached(copy, key, compute, cache)
    assert cache.hits == 2

    # A different protocol misses.
    cached(media, {**key, "protocol": {"frames": 8, "resize": True}}, compute, cache)
    assert cache.misses == 2
    # Different content misses.
    media.write_bytes(b"other video bytes!")
    value = cached(media, key, compute, cache)
    assert cache.misses == 3 and len(calls) == 3
    assert value[0, 0] == 3.0

    # A fresh instance (new run) reads the entries back from disk; no temp files are left behind.
    again = FeatureCache(tmp_path / "features")
    np.testing.assert_array_equal(cached(copy, key, compute, again), first)
    assert again.hits == 1 and again.misses == 0
    assert not list((tmp_path / "features").rglob("*.tmp"))


# ----------------------------------------------------------------------------------------------------------
# Closed forms on Gaussians, for both numerics (avdit's float64 and MM-Diffusion's float32 ones)
# ----------------------------------------------------------------------------------------------------------
def _exact_moments(rng: np.random.Generator, n: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """n samples whose empirical mean is exactly `mean` and unbiased covariance exactly diag(std^2)."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    w, v = np.linalg.eigh(np.cov(z, rowvar=False))
    z = z @ v @ np.diag(w**-0.5) @ v.T  # whitened: unbiased covariance I
    return mean + z * std


@pytest.mark.parametrize("fd", [frechet_distance, frechet_distance_tfgan])
def test_frechet_equals_closed_form_of_diagonal_gaussians(fd) -> None:
    rng = np.random.default_rng(11)
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 2.0, 1.5, 1.0])
    x, y = _exact_moments(rng, 500, mu1, sd1), _exact_moments(rng, 700, mu2, sd2)
    # N(mu1, diag sd1^2) vs N(mu2, diag sd2^2): ||mu1 - mu2||^2 + sum (sd1 - sd2)^2
    closed = float(((mu1 - mu2) ** 2).sum() + ((sd1 - sd2) ** 2).sum())
    assert closed == pytest.approx(5.25 + 6.0)
    assert fd(x, y) == pytest.approx(closed, rel=1e-5 if fd is frechet_distance_tfgan else 1e-9)


def test_tfgan_frechet_is_float32_numerics_of_the_same_number() -> None:
    rng = np.random.default_rng(12)
    x = (rng.normal(size=(300, 64)) * 3).astype(np.float32)
    y = (rng.normal(size=(280, 64)) * 3 + 0.2).astype(np.float32)
    f64, f32 = frechet_distance(x, y), frechet_distance_tfgan(x, y)
    assert f32 == pytest.approx(f64, rel=1e-4)
    assert frechet_distance_tfgan(x, y, dtype=torch.float64) == pytest.approx(f64, rel=1e-9)


def _poly_mmd_closed_form(m1: float, v1: float, m2: float, v2: float, d: int) -> float:
    """Population MMD^2 for k(x, y) = (x.y / d + 1)^3 between N(m1 1, v1 I) and N(m2 1, v2 I) in d dims.

    With a = x_i y_i for independent coordinates, s = x.y / d = A / d and A a sum of d iid terms:
    E k = E s^3 + 3 E s^2 + 3 E s + 1 from the first three moments of a, which factor over x and y.
    """
    def expected_kernel(ma: float, va: float, mb: float, vb: float) -> float:
        e1 = ma * mb
        e2 = (ma**2 + va) * (mb**2 + vb)
        e3 = (ma**3 + 3 * ma * va) * (mb**3 + 3 * mb * vb)
        a1 = d * e1
        a2 = d * e2 + d * (d - 1) * e1**2
        a3 = d * e3 + 3 * d * (d - 1) * e2 * e1 + d * (d - 1) * (d - 2) * e1**3
        return a3 / d**3 + 3 * a2 / d**2 + 3 * a1 / d + 1

    return (expected_kernel(m1, v1, m1, v1) + expected_kernel(m2, v2, m2, v2)
            - 2 * expected_kernel(m1, v1, m2, v2))


@pytest.mark.parametrize("mmd", [kvd, kvd_sklearn_float32])
def test_kvd_estimates_the_closed_form_of_gaussians(mmd) -> None:
    d, n = 3, 6000
    rng = np.random.default_rng(13)
    x = 0.5 + 1.0 * rng.normal(size=(n, d))
    y = -0.5 + 1.5 * rng.normal(size=(n, d))
    closed = _poly_mmd_closed_form(0.5, 1.0, -0.5, 2.25, d)
    assert closed > 1.0
    assert mmd(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(closed, rel=0.05)


def test_kvd_float32_numerics_match_float64_and_refuse_bad_input() -> None:
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(40, 16)).astype(np.float32), (rng.normal(size=(30, 16)) + 0.3).astype(np.float32)
    assert kvd_sklearn_float32(x, y) == pytest.approx(kvd(x, y), rel=1e-4)
    with pytest.raises(DataError, match="at least 2"):
        kvd_sklearn_float32(x[:1], y)
    with pytest.raises(DataError, match="same dims"):
        kvd_sklearn_float32(x, y[:, :3])
