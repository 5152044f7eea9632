"""Models: the frozen DiT backbone and its loaders (dit.py), the AV-DiT adapters (adapters.py, avdit.py)."""

from avdit_cli.models.avdit import AVDiT
from avdit_cli.models.dit import DIT_SIZES, DiT, DiTSize, LoadReport
from avdit_cli.models.params import ParamRow, parameter_counts

__all__ = ["AVDiT", "DIT_SIZES", "DiT", "DiTSize", "LoadReport", "ParamRow", "parameter_counts"]
