"""Gaussian diffusion for several modalities (DESIGN section 3): schedule, losses, respacing, samplers.

Never imports the model code: training and sampling take a ``model_fn(x: dict, t: dict) -> dict``.
"""

from avdit_cli.diffusion.gaussian import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    split_output,
)
from avdit_cli.diffusion.losses import masked_mean, sample_timesteps, training_losses, vb_terms_bpd
from avdit_cli.diffusion.respace import respace, space_timesteps
from avdit_cli.diffusion.samplers import classifier_free_guidance, sample, sample_in_stages
from avdit_cli.diffusion.schedule import (
    Diffusion,
    ModelFn,
    PMeanVariance,
    VarianceType,
    cosine_betas,
    get_betas,
    linear_betas,
)

__all__ = [
    "Diffusion",
    "ModelFn",
    "PMeanVariance",
    "VarianceType",
    "classifier_free_guidance",
    "sample_in_stages",
    "cosine_betas",
    "discretized_gaussian_log_likelihood",
    "get_betas",
    "linear_betas",
    "masked_mean",
    "mean_flat",
    "normal_kl",
    "respace",
    "sample",
    "sample_timesteps",
    "space_timesteps",
    "split_output",
    "training_losses",
    "vb_terms_bpd",
]
