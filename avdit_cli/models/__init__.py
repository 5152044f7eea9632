"""Models: the frozen DiT backbone (dit.py) and its checkpoint formats (dit_loading.py), the AV-DiT adapters
(adapters.py, avdit.py)."""

from avdit_cli.models.avdit import AVDiT, VideoStreamCache
from avdit_cli.models.dit import DIT_SIZES, DiT, DiTSize
from avdit_cli.models.dit_loading import LoadReport
from avdit_cli.models.params import ParamRow, parameter_counts

__all__ = ["AVDiT", "DIT_SIZES", "DiT", "DiTSize", "LoadReport", "ParamRow", "VideoStreamCache", "parameter_counts"]
