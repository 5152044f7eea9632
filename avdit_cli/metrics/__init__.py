"""Evaluation metrics: Fréchet distance (FVD, FAD), KVD, AV-Align, their feature extractors and cache.

Raw values are what the functions return and what metrics.json stores; ``DISPLAY_SCALE`` is the factor the
table multiplies by (KVD is conventionally printed x1000, as KID is). Store the scale beside each number.
"""

from avdit_cli.metrics.av_align import AVAlignResult, av_align_clip, av_align_score
from avdit_cli.metrics.feature_cache import FeatureCache, cached, sha256_file
from avdit_cli.metrics.frechet import feature_stats, frechet_distance, frechet_from_stats, reliability_warning
from avdit_cli.metrics.i3d import I3DFeatures
from avdit_cli.metrics.kid import KVD_DISPLAY_SCALE, kvd
from avdit_cli.metrics.vggish import VGGishFeatures

DISPLAY_SCALE: dict[str, float] = {"fvd": 1.0, "kvd": KVD_DISPLAY_SCALE, "fad": 1.0, "av-align": 1.0}

__all__ = [
    "DISPLAY_SCALE",
    "AVAlignResult",
    "FeatureCache",
    "I3DFeatures",
    "KVD_DISPLAY_SCALE",
    "VGGishFeatures",
    "av_align_score",
    "av_align_clip",
    "cached",
    "feature_stats",
    "frechet_distance",
    "frechet_from_stats",
    "kvd",
    "reliability_warning",
    "sha256_file",
]
