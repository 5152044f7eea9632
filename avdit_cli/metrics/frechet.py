"""Fréchet distance between two feature sets (FVD on I3D features, FAD on VGGish embeddings).

    FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)

All maths in float64. The matrix square root is scipy.linalg.sqrtm with the handling that pytorch-fid /
StyleGAN-V use: if the product is singular enough that sqrtm is not finite, both covariances get an eps*I
offset; a small imaginary part from rounding is dropped, a large one is an error.

``frechet_distance_tfgan`` is the other way the same number is computed, by the evaluator of MM-Diffusion
(after VideoGPT / TATS, after TF-GAN's ``trace_sqrt_product``): float32 torch tensors, unbiased covariances,
``Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2)`` with both roots taken by SVD (singular values below 1e-10 kept
unrooted), no regularisation. The two agree in exact arithmetic; in float32 they differ in the last digits,
which is why the ``mm-diffusion`` protocol uses this one.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

from avdit_cli.errors import DataError

# Largest imaginary part (on the diagonal of (S1 S2)^1/2) that is still treated as rounding noise.
IMAG_TOLERANCE = 1e-3


def _as_features(feats: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (samples, dims), got shape {x.shape}.")
    if x.shape[0] < 2:
        raise DataError(f"{name} has {x.shape[0]} sample(s); at least 2 are needed for a covariance.")
    if not np.isfinite(x).all():
        raise DataError(f"{name} contains NaN or inf features; check the clips it was computed from.")
    return x


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features (n, d), in float64."""
    x = _as_features(feats, "features")  # (n, d)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # sqrtm warns on (near-)singular input; finiteness is checked by the caller instead.
        warnings.simplefilter("ignore")
        return np.asarray(scipy.linalg.sqrtm(a))


def frechet_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise DataError(
            f"feature statistics do not match: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / "
            f"{s2.shape}; were both sets made with the same extractor?"
        )
    diff = mu1 - mu2  # (d,)

    covmean = _sqrtm(s1 @ s2)  # (d, d)
    if not np.isfinite(covmean).all():
        # Singular product (typically fewer samples than dims): regularise both covariances.
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=IMAG_TOLERANCE):
            worst = float(np.max(np.abs(covmean.imag)))
            raise DataError(f"the covariance square root has an imaginary part of {worst:.3g}; use more samples.")
        covmean = covmean.real

    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians fitted to feats1 (n, d) and feats2 (m, d)."""
    x1, x2 = _as_features(feats1, "feats1"), _as_features(feats2, "feats2")
    if x1.shape[1] != x2.shape[1]:
        raise DataError(f"feature dims differ ({x1.shape[1]} vs {x2.shape[1]}); use the same extractor for both.")
    mu1, s1 = feature_stats(x1)
    mu2, s2 = feature_stats(x2)
    return frechet_from_stats(mu1, s1, mu2, s2, eps=eps)


# TF-GAN's threshold below which a singular value is left as is instead of square-rooted.
TFGAN_SQRT_EPS = 1e-10


def _svd_sqrt(mat: torch.Tensor, eps: float = TFGAN_SQRT_EPS) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by SVD, U diag(sqrt(s)) V^T (TF-GAN's
    ``_symmetric_matrix_square_root``); tiny singular values are kept as they are."""
    u, s, vh = torch.linalg.svd(mat)
    root = torch.where(s < eps, s, torch.sqrt(s))
    return u @ torch.diag(root) @ vh


def _cov_unbiased(x: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (d, d) with 1 / (n - 1), computed as the evaluator does: centred rows, one matmul."""
    centred = x - x.mean(dim=0, keepdim=True)
    return (1.0 / (x.shape[0] - 1)) * (centred.T @ centred)


def frechet_distance_tfgan(feats1: np.ndarray | torch.Tensor, feats2: np.ndarray | torch.Tensor,
                           dtype: torch.dtype = torch.float32) -> float:
    """Fréchet distance with MM-Diffusion's numerics: `dtype` (float32) torch maths, SVD square roots.

    feats1 (n, d) are the generated set's features, feats2 (m, d) the reference's (the order the evaluator
    uses: the product ``S1^1/2 S2 S1^1/2`` is not symmetric in rounding). Source: ``evaluations/fvd/fvd.py``
    of researchmm/MM-Diffusion, itself from TF-GAN's ``classifier_metrics.trace_sqrt_product``.
    """
    x1, x2 = _as_features(np.asarray(feats1), "feats1"), _as_features(np.asarray(feats2), "feats2")
    if x1.shape[1] != x2.shape[1]:
        raise DataError(f"feature dims differ ({x1.shape[1]} vs {x2.shape[1]}); use the same extractor for both.")
    a, b = torch.as_tensor(x1, dtype=dtype), torch.as_tensor(x2, dtype=dtype)
    mu1, mu2 = a.mean(dim=0), b.mean(dim=0)
    s1, s2 = _cov_unbiased(a), _cov_unbiased(b)
    root1 = _svd_sqrt(s1)
    trace_sqrt = torch.trace(_svd_sqrt(root1 @ (s2 @ root1)))
    fd = torch.trace(s1 + s2) - 2.0 * trace_sqrt + torch.sum((mu1 - mu2) ** 2)
    return float(fd.item())


def reliability_warning(n1: int, n2: int, dim: int, metric: str = "FVD") -> str | None:
    """A one-line warning when the sample counts make the estimate unreliable, else None.

    With fewer samples than feature dimensions the covariance is rank-deficient: the Fréchet distance is then
    dominated by the regularisation and strongly biased upwards, and KVD is very noisy. Published numbers use
    2048 clips; values from fewer clips are not comparable to them.
    """
    n = min(n1, n2)
    if n < dim:
        return (
            f"{metric}: {n} samples for {dim}-d features (fewer samples than dimensions): the covariance is "
            f"rank-deficient and the value is biased; it is not comparable to published numbers."
        )
    return None
