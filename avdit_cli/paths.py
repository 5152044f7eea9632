"""Where avdit keeps things. Every location can be moved with an environment variable.

- ``AVDIT_HOME`` (default ``~/.cache/avdit``): latent caches (``cache/<preset>-<data hash>``), eval feature
  caches and the eval extractors' weights.
- ``AVDIT_RUNS`` (default ``./runs``): fine-tuning runs.
- Hugging Face weights live in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), shared with other tools.
"""

from __future__ import annotations

import os
from pathlib import Path

from avdit_cli.config import Config


def avdit_home() -> Path:
    return Path(os.environ.get("AVDIT_HOME", Path.home() / ".cache" / "avdit")).expanduser()


def runs_root() -> Path:
    return Path(os.environ.get("AVDIT_RUNS", "runs")).expanduser()


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def default_cache_dir(cfg: Config) -> Path:
    """Where `preprocess` writes and `finetune` reads the latent cache of a config, when no folder is given.

    Keyed on the preset name and the cache-relevant data settings, so two configs never share a cache.
    """
    return avdit_home() / "cache" / f"{cfg.name}-{cfg.cache_hash()}"
