"""Kernel (video) distance: unbiased MMD^2 with the cubic polynomial kernel (KID / KVD).

    k(x, y) = (x . y / d + 1)^3
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m)

The default is this full unbiased estimate on all samples (deterministic). With ``subset_size`` it is averaged
over random equal-size subsets drawn with a seeded generator, the way StyleGAN / torch-fidelity compute KID.

``kvd_sklearn_float32`` is the same estimate with the numerics of MM-Diffusion's evaluator (``polynomial_mmd``
over ``sklearn.metrics.pairwise.polynomial_kernel`` with its defaults degree 3, gamma 1/d, coef0 1): the
kernel matrices and their sums stay in float32 when the features are float32, as sklearn keeps them.

Scale: the functions return the raw MMD^2. Papers usually print KID / KVD multiplied by 1000
(``KVD_DISPLAY_SCALE``); metrics.json stores the raw value with its display scale beside it.
"""

from __future__ import annotations

import numpy as np

from avdit_cli.errors import DataError

KVD_DISPLAY_SCALE = 1000.0
KVD_DEGREE = 3


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = KVD_DEGREE) -> np.ndarray:
    """(x @ y.T / d + 1)^degree for x (n, d), y (m, d) -> (n, m), float64."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** degree


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    n, m = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x, degree)  # (n, n)
    k_yy = polynomial_kernel(y, y, degree)  # (m, m)
    k_xy = polynomial_kernel(x, y, degree)  # (n, m)
    # Unbiased: the diagonal terms k(x_i, x_i) are left out of the within-set sums.
    xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kvd(
    feats1: np.ndarray,
    feats2: np.ndarray,
    subset_size: int | None = None,
    num_subsets: int = 100,
    seed: int = 0,
    degree: int = KVD_DEGREE,
) -> float:
    """Raw (unscaled) unbiased polynomial-kernel MMD^2 between feats1 (n, d) and feats2 (m, d).

    ``subset_size=None`` uses every sample once; otherwise the mean over ``num_subsets`` subsets of
    ``min(subset_size, n, m)`` samples of each set, drawn without replacement from ``np.random.default_rng(seed)``.
    """
    x = np.asarray(feats1, dtype=np.float64)
    y = np.asarray(feats2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"KVD needs two (samples, dims) arrays of the same dims, got {x.shape} and {y.shape}.")
    if min(x.shape[0], y.shape[0]) < 2:
        raise DataError(f"KVD needs at least 2 samples in each set, got {x.shape[0]} and {y.shape[0]}.")
    if subset_size is None:
        return _mmd2_unbiased(x, y, degree)

    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise DataError(f"KVD subset size must be at least 2, got {subset_size}.")
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(
            x[rng.choice(x.shape[0], size, replace=False)], y[rng.choice(y.shape[0], size, replace=False)], degree
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values))


def kvd_sklearn_float32(feats1: np.ndarray, feats2: np.ndarray, degree: int = KVD_DEGREE) -> float:
    """Unbiased polynomial-kernel MMD^2 of feats1 (n, d) vs feats2 (m, d), kernels and sums in float32.

    What ``polynomial_mmd`` in researchmm/MM-Diffusion's ``mm_diffusion/evaluator.py`` computes on the float32
    I3D logits: K = X Y^T, K *= 1/d, K += 1, K **= 3 (sklearn's in-place order), then
    ``(K_XX.sum() - diag(K_XX).sum()) / (n (n - 1)) + ... - 2 K_XY.sum() / (n m)``. The last combination of
    the three terms is done in float64 (their numpy 1.x may promote it too; the difference is below 1e-7).
    """
    x = np.asarray(feats1, dtype=np.float32)
    y = np.asarray(feats2, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"KVD needs two (samples, dims) arrays of the same dims, got {x.shape} and {y.shape}.")
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < 2:
        raise DataError(f"KVD needs at least 2 samples in each set, got {n} and {m}.")

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = a @ b.T  # float32
        k *= np.float32(1.0 / a.shape[1])
        k += np.float32(1.0)
        k **= degree
        return k

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    # The off-diagonal sums are float32 differences of float32 sums, as in the evaluator.
    xx = float(k_xx.sum() - np.diagonal(k_xx).sum()) / (n * (n - 1))
    yy = float(k_yy.sum() - np.diagonal(k_yy).sum()) / (m * (m - 1))
    return xx + yy - 2.0 * float(k_xy.sum()) / (n * m)
