"""Checkpoint formats of the DiT backbone: reading and writing, apart from the architecture (``dit.py``).

Reads the diffusers layout of ``facebook/DiT-XL-2-256`` (``transformer/config.json`` + ``.safetensors`` or
``.bin``), older diffusers spellings of attention (``query/key/value/proj_attn``) and original DiT checkpoints
(a plain ``.pt`` state dict, or a training checkpoint's ``ema`` / ``model``), all through one explicit key map
(DESIGN section 2), with shape checks and a report of what was read, like nanoGPT's ``from_pretrained``; writes
the diffusers layout. ``.bin`` / ``.pt`` files are read with ``weights_only=True``: never arbitrary pickles.

``DiT.from_pretrained`` and ``DiT.save_pretrained`` are the entry points; this module is their implementation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.fileio import atomic_save_tensors, atomic_write_json, sha256_file
from avdit_cli.models.dit import DIT_SIZES, DiT

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
# avdit's own addition beside a class-conditional backbone's weights: a JSON list, the name of each class-table
# row (the null row excluded), so data labelled by name can be mapped to the rows it was trained on.
CLASS_NAMES = "class_names.json"
BIN_NAME = "diffusion_pytorch_model.bin"
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


@dataclass
class LoadReport:
    """What ``DiT.from_pretrained`` loaded. ``sha256()`` hashes the weights file on request (it may be 3 GB)."""

    source: Path
    weights_file: Path
    format: str  # diffusers-safetensors | diffusers-bin | original | original-ema | original-model
    num_tensors: int
    arch: dict[str, Any] = field(default_factory=dict)
    _sha256: str | None = field(default=None, repr=False)

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.weights_file)
        return self._sha256


@dataclass
class _Problems:
    missing: list[str] = field(default_factory=list)  # names in the file's own spelling
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    disagreeing: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # our key -> the file's key(s), for messages
    pos_shape: tuple[int, ...] | None = None  # an original checkpoint's pos_embed: tells the input size


def _locate(path: Path) -> tuple[Path, dict[str, Any] | None, str]:
    """-> (weights file, diffusers config or None, format guess)."""
    if not path.exists():
        raise WeightsError(f"{path} does not exist; give a DiT folder (diffusers layout) or a .pt/.safetensors file")
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise WeightsError(f"{folder} has no config.json; expected a diffusers DiT folder (repo or transformer/)")
        for name, fmt in ((SAFETENSORS_NAME, "diffusers-safetensors"), (BIN_NAME, "diffusers-bin")):
            if (folder / name).is_file():
                return folder / name, _read_config(config_file), fmt
        raise WeightsError(f"{folder} has no {SAFETENSORS_NAME} or {BIN_NAME}; re-download the backbone")
    sibling = path.parent / "config.json"
    config = _read_config(sibling) if sibling.is_file() and path.name in (SAFETENSORS_NAME, BIN_NAME) else None
    fmt = "safetensors" if path.suffix == ".safetensors" else "original"
    return path, config, fmt


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The weights file ``DiT.from_pretrained(path)`` would read (for hashing it without loading it)."""
    return _locate(Path(path).expanduser())[0]


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{config_file}: cannot read the JSON config ({err})") from err
    # facebook/DiT-XL-2-256 predates DiTTransformer2DModel: its config says Transformer2DModel (+ ada_norm_zero).
    norm_type = config.get("norm_type", "ada_norm_zero")
    if config.get("_class_name") not in DIFFUSERS_CLASSES or norm_type != "ada_norm_zero" \
            or config.get("num_embeds_ada_norm") is None:
        raise WeightsError(
            f"{config_file}: not a DiT transformer config (_class_name {config.get('_class_name')!r}, norm_type "
            f"{config.get('norm_type')!r}; expected DiTTransformer2DModel with ada_norm_zero and num_embeds_ada_norm)"
        )
    return config


def _read_tensors(file: Path, fmt: str, device: torch.device) -> tuple[dict[str, Tensor], str]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device=str(device)), fmt
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{file}: not a readable safetensors file ({err})") from err
    try:
        # DiT's training checkpoints also hold `args` (an argparse.Namespace): plain data, safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(file, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise WeightsError(
            f"{file}: cannot be read as a plain tensor checkpoint (weights_only=True): {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{file}: expected a state dict, found {type(obj).__name__}")
    if fmt == "original":
        for entry in ("ema", "model"):  # a training checkpoint: prefer the EMA weights DiT samples with
            if isinstance(obj.get(entry), Mapping):
                obj, fmt = obj[entry], f"original-{entry}"
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
        raise WeightsError(
            f"{file}: entries that are not tensors: {', '.join(map(str, bad[:6]))}; not a DiT state dict"
        )
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from a DDP wrapper
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, fmt


_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _map_original(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], _Problems]:
    state = dict(tensors)
    pos = state.pop("pos_embed", None)  # fixed sin-cos, recomputed (its shape still tells the input size)
    return state, _Problems(pos_shape=None if pos is None else tuple(pos.shape))


def _diffusers_map(depth: int) -> dict[str, list[str]]:
    """our key -> the diffusers keys it is made of (qkv: the concatenation of q, k, v)."""
    m: dict[str, list[str]] = {}
    emb = "transformer_blocks.0.norm1.emb"
    for wb in ("weight", "bias"):
        m[f"x_embedder.proj.{wb}"] = [f"pos_embed.proj.{wb}"]
        m[f"t_embedder.mlp.0.{wb}"] = [f"{emb}.timestep_embedder.linear_1.{wb}"]
        m[f"t_embedder.mlp.2.{wb}"] = [f"{emb}.timestep_embedder.linear_2.{wb}"]
        m[f"final_layer.adaLN_modulation.1.{wb}"] = [f"proj_out_1.{wb}"]
        m[f"final_layer.linear.{wb}"] = [f"proj_out_2.{wb}"]
        for i in range(depth):
            src = f"transformer_blocks.{i}"
            m[f"blocks.{i}.adaLN_modulation.1.{wb}"] = [f"{src}.norm1.linear.{wb}"]
            m[f"blocks.{i}.attn.qkv.{wb}"] = [f"{src}.attn1.to_{x}.{wb}" for x in "qkv"]
            m[f"blocks.{i}.attn.proj.{wb}"] = [f"{src}.attn1.to_out.0.{wb}"]
            m[f"blocks.{i}.mlp.fc1.{wb}"] = [f"{src}.ff.net.0.proj.{wb}"]
            m[f"blocks.{i}.mlp.fc2.{wb}"] = [f"{src}.ff.net.2.{wb}"]
    m["y_embedder.embedding_table.weight"] = [f"{emb}.class_embedder.embedding_table.weight"]
    return m


def _block_count(keys: Any) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(r"(?:transformer_)?blocks\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _map_diffusers(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], _Problems]:
    src: dict[str, Tensor] = {}
    old = re.compile(r"\.attn1\.(query|key|value|proj_attn)\.")
    for k, v in tensors.items():  # old diffusers spelling of attention: query/key/value/proj_attn
        src[old.sub(lambda m: f".attn1.{_OLD_ATTENTION_NAMES[m.group(1)]}.", k)] = v
    src.pop("pos_embed.pos_embed", None)  # fixed, recomputed
    depth = _block_count(src)
    problems = _Problems()
    # diffusers keeps a copy of the timestep and class embedders in every block: use block 0's, check the rest.
    for i in range(1, depth):
        prefix = f"transformer_blocks.{i}.norm1.emb."
        for key in [k for k in src if k.startswith(prefix)]:
            ref = src.get("transformer_blocks.0.norm1.emb." + key[len(prefix):])
            copy = src.pop(key)
            if ref is not None and (ref.shape != copy.shape or not torch.equal(ref, copy)):
                problems.disagreeing.append(key)
    state: dict[str, Tensor] = {}
    for ours, theirs in _diffusers_map(depth).items():
        problems.sources[ours] = " + ".join(theirs)  # messages name the file's keys
        absent = [k for k in theirs if k not in src]
        if absent:
            problems.missing += absent
            for k in theirs:
                src.pop(k, None)
            continue
        parts = [src.pop(k) for k in theirs]
        if len({p.shape for p in parts}) != 1:
            problems.mismatched.append(", ".join(f"{k}: {tuple(p.shape)}" for k, p in zip(theirs, parts)))
            continue
        state[ours] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    problems.unexpected += sorted(src)
    return state, problems


def _to_diffusers(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for ours, theirs in _diffusers_map(depth).items():
        if len(theirs) == 1:
            out[theirs[0]] = state[ours]
        else:
            for name, part in zip(theirs, state[ours].chunk(len(theirs), dim=0)):
                out[name] = part
    for i in range(1, depth):  # diffusers expects the embedders in every block
        for key in [k for k in out if k.startswith("transformer_blocks.0.norm1.emb.")]:
            out[key.replace("transformer_blocks.0.", f"transformer_blocks.{i}.", 1)] = out[key]
    return out


def _arch_from_config(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Any]:
    try:
        heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
        in_channels = int(config["in_channels"])
        out_channels = int(config.get("out_channels") or in_channels)
        arch = {
            "input_size": int(config["sample_size"]),
            "patch_size": int(config["patch_size"]),
            "in_channels": in_channels,
            "hidden_size": heads * head_dim,
            "depth": int(config["num_layers"]),
            "num_heads": heads,
            "num_classes": int(config["num_embeds_ada_norm"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"the DiT config.json lacks or mangles a field ({err}); re-download the backbone") from err
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise WeightsError(
            f"the DiT config uses activation {config['activation_fn']!r}; only gelu-approximate is supported"
        )
    arch["learn_sigma"] = _learn_sigma(in_channels, out_channels)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    arch["mlp_ratio"] = fc1.shape[0] / arch["hidden_size"] if fc1 is not None else 4.0
    return arch


def _learn_sigma(in_channels: int, out_channels: int) -> bool:
    if out_channels not in (in_channels, 2 * in_channels):
        raise WeightsError(
            f"DiT with {in_channels} input and {out_channels} output channels: expected out = in or 2 x in"
        )
    return out_channels == 2 * in_channels


def _arch_from_shapes(
    state: Mapping[str, Tensor], num_heads: int | None, input_size: int | None, pos_shape: tuple[int, ...] | None
) -> dict[str, Any]:
    needed = ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight",
              "blocks.0.mlp.fc1.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise WeightsError(f"not a DiT state dict: missing {', '.join(absent)}")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    depth = _block_count(state)
    heads = num_heads or _heads_for(depth, hidden)
    if heads is None:
        raise WeightsError(f"DiT with depth {depth} and hidden size {hidden} is not a paper size: pass num_heads")
    if input_size is None and pos_shape is not None and len(pos_shape) == 3:
        input_size = math.isqrt(pos_shape[1]) * int(patch)
    if input_size is None:
        raise WeightsError("the checkpoint has no pos_embed to tell the input size: pass input_size")
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    return {
        "input_size": input_size, "patch_size": int(patch), "in_channels": int(in_channels),
        "hidden_size": int(hidden), "depth": depth, "num_heads": int(heads),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1,
        "learn_sigma": _learn_sigma(int(in_channels), int(out_channels)),
    }


def _check_state(model: DiT, state: Mapping[str, Tensor], problems: _Problems, file: Path) -> None:
    """Refuse a partial, padded or mis-shaped backbone, naming every offending key."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = problems.missing + sorted(k for k in expected if k not in state and k not in problems.sources)
    unexpected = problems.unexpected + sorted(k for k in state if k not in expected)
    mismatched = problems.mismatched + [
        f"{problems.sources.get(k, k)}: {tuple(v.shape)} vs expected {tuple(expected[k])}"
        for k, v in state.items() if k in expected and v.shape != expected[k]
    ]
    pos_expected = (1, model.grid_size**2, model.hidden_size)
    if problems.pos_shape is not None and problems.pos_shape != pos_expected:
        mismatched.append(f"pos_embed: {problems.pos_shape} vs expected {pos_expected}")
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if keys:
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            parts.append(f"{label}: {', '.join(keys[:8])}{more}")
    if parts:
        raise WeightsError(f"{file} does not fit a DiT {model.arch()}: " + "; ".join(parts))


def _heads_for(depth: int, hidden_size: int) -> int | None:
    """The head count of a paper size, which tensor shapes alone cannot tell."""
    for size in DIT_SIZES.values():
        if (size.depth, size.hidden_size) == (depth, hidden_size):
            return size.num_heads
    return None


# ----------------------------------------------------------------------------------------------------------
# Reading: the entry point
# ----------------------------------------------------------------------------------------------------------
def load_pretrained(
    cls: type[DiT],
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    map_location: torch.device | str | None = None,
    num_heads: int | None = None,
    input_size: int | None = None,
) -> tuple[DiT, LoadReport]:
    """What ``DiT.from_pretrained`` does: locate, read, map keys, check, build; returns the model and its report."""
    if device is not None and map_location is not None and torch.device(device) != torch.device(map_location):
        raise ValueError(f"device={device} and map_location={map_location} disagree; give one of them")
    target = torch.device(device if device is not None else (map_location or "cpu"))
    source = Path(path).expanduser()
    weights_file, config, fmt = _locate(source)
    tensors, fmt = _read_tensors(weights_file, fmt, target)
    if any(k.startswith("transformer_blocks.") for k in tensors):
        state, problems = _map_diffusers(tensors)
        fmt = fmt if fmt.startswith("diffusers") else f"diffusers-keys ({fmt})"
    else:
        state, problems = _map_original(tensors)
    if config:
        arch = _arch_from_config(config, state)
    else:
        arch = _arch_from_shapes(state, num_heads, input_size, problems.pos_shape)
    if config and input_size is not None:
        arch["input_size"] = input_size
    if problems.disagreeing:
        raise WeightsError(
            f"{weights_file}: the per-block copies of the timestep/class embedders disagree with block 0 "
            f"({', '.join(problems.disagreeing[:6])}); the file is corrupt or not a DiT"
        )
    with torch.device("meta"):  # no memory for the random init: real tensors are assigned below
        model = cls(**arch)
    _check_state(model, state, problems, weights_file)
    model.load_state_dict(state, strict=True, assign=True)
    model._reset_pos_embed()
    model.to(device=target, dtype=dtype)
    model.eval()
    report = LoadReport(source=source, weights_file=weights_file, format=fmt, num_tensors=len(state),
                        arch=model.arch())
    return model, report


# ----------------------------------------------------------------------------------------------------------
# Writing: the diffusers layout
# ----------------------------------------------------------------------------------------------------------
def diffusers_config(model: DiT) -> dict[str, Any]:
    """``config.json`` of the diffusers ``DiTTransformer2DModel`` with these sizes and our numerics."""
    try:
        diffusers_version = version("diffusers")
    except PackageNotFoundError:
        diffusers_version = "0.28.0"
    return {
        "_class_name": "DiTTransformer2DModel",
        "_diffusers_version": diffusers_version,
        "num_attention_heads": model.num_heads,
        "attention_head_dim": model.hidden_size // model.num_heads,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "num_layers": model.depth,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": model.input_size,
        "patch_size": model.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": model.num_classes,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }


def diffusers_state_dict(model: DiT) -> dict[str, Tensor]:
    """Our weights under diffusers' names (embedders repeated per block, qkv split), contiguous copies."""
    return {k: v.detach().contiguous().clone() for k, v in _to_diffusers(model.state_dict(), model.depth).items()}


def save_pretrained(model: DiT, folder: str | os.PathLike[str]) -> Path:
    """Write the diffusers layout (config.json + diffusion_pytorch_model.safetensors) atomically."""
    if int(model.mlp_ratio * model.hidden_size) != 4 * model.hidden_size:
        raise ConfigError(f"diffusers' DiT has mlp_ratio 4; this model has {model.mlp_ratio}")
    out = Path(folder)
    # Weights first, config last: a folder with a config.json is complete.
    atomic_save_tensors(out / SAFETENSORS_NAME, diffusers_state_dict(model), metadata={"format": "pt"})
    atomic_write_json(out / "config.json", diffusers_config(model))
    return out


def read_class_names(path: str | os.PathLike[str]) -> list[str] | None:
    """The class names saved beside a backbone (:data:`CLASS_NAMES` in its folder, or in the folder of a weights
    file, or in a repo root's ``transformer/``), or None when it has none. Raises WeightsError on a bad file."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    for candidate in (folder / CLASS_NAMES, folder / "transformer" / CLASS_NAMES):
        if candidate.is_file():
            try:
                names = json.loads(candidate.read_text())
            except (OSError, ValueError) as err:
                raise WeightsError(f"{candidate} is not readable JSON ({err}); restore it from the backbone's source")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise WeightsError(f"{candidate} must hold a JSON list of class names; restore it from the "
                                   "backbone's source")
            return names
    return None
