"""`avdit info`: versions, device, locations and the resolved config, as plain data."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from avdit_cli import __version__
from avdit_cli.config import Config
from avdit_cli.paths import avdit_home, default_cache_dir, hf_cache_dir, runs_root

PACKAGES = ("torch", "torchaudio", "timm", "diffusers", "huggingface-hub", "safetensors", "einops", "typer",
            "rich", "imageio-ffmpeg", "numpy", "scipy", "pyyaml")


def package_versions() -> dict[str, str]:
    out = {"avdit": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "mps": False, "devices": []}
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16"] = torch.cuda.is_bf16_supported()
        info["default"] = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info.update(mps=True, bf16=True, default="mps")
    else:
        info.update(bf16=False, default="cpu")  # bf16 autocast exists on CPU but is slow: we run fp32 there
    info["cpu_threads"] = torch.get_num_threads()
    return info


def locations(cfg: Config) -> dict[str, str]:
    return {
        "avdit_home": str(avdit_home()),
        "cache": str(default_cache_dir(cfg)),
        "runs": str(runs_root().resolve()),
        "hf_cache": str(hf_cache_dir()),
    }


def gather(cfg: Config) -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "device": device_info(),
        "locations": locations(cfg),
        "config": cfg.to_dict(),
    }
