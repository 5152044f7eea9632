"""Adapters on the Hugging Face Hub: the files `avdit push` writes, and `hf://NAME[@REV]` runs read back.

A pushed repo holds the trained tensors, never the frozen backbone:

    adapters.safetensors   the adapters (EMA weights by default); the header records the format, the weights
                           (ema or raw), the step, and the backbone they were trained on: repo id and sha256
                           of its weights file
    config.yaml            the checkpoint's resolved config, so generate needs no model flags
    README.md ...          the model card, metrics, contact sheet (push.py)

``open_hub_run("hf://NAME[@REV]")`` downloads adapters.safetensors, then config.yaml at the same commit, into
the Hugging Face cache (``hf_hub_download``: HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE
honoured), checks each download against the Hub's hash, finds on this machine the backbone the header names
and checks its sha256, and returns a :class:`Checkpoint` that `generate` uses like a local one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from avdit_cli import __version__
from avdit_cli import hub
from avdit_cli.config import Config, load_preset
from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.fileio import sha256_file
from avdit_cli.pipelines.runs import Checkpoint

HF_SCHEME = "hf://"
ADAPTERS = "adapters.safetensors"
CONFIG = "config.yaml"
FORMAT = "avdit-adapters"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class HubRef:
    """``hf://NAME[@REVISION]``: a Hub model repo and, optionally, a branch, tag or commit."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return HF_SCHEME + self.repo_id + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def parse_hub_ref(text: str) -> HubRef:
    """``hf://org/name`` or ``hf://org/name@branch`` -> :class:`HubRef`; a malformed one is a ConfigError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    body = text[len(HF_SCHEME):] if text.startswith(HF_SCHEME) else text
    repo_id, at, revision = body.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"{text}: {repo_id!r} is not a Hub repo id; write hf://ORG/NAME or "
                          "hf://ORG/NAME@REVISION") from None
    if at and not revision:
        raise ConfigError(f"{text}: nothing after '@'; write hf://{repo_id}@BRANCH (or a tag or commit)")
    return HubRef(repo_id, revision or None)


# ----------------------------------------------------------------------------------------------------------
# The adapters file
# ----------------------------------------------------------------------------------------------------------
def adapter_metadata(ckpt: Checkpoint, weights: str) -> dict[str, str]:
    """The safetensors header of a pushed adapters file (strings only, as safetensors requires)."""
    backbone = ckpt.state.get("backbone") or {}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "weights": weights, "step": str(ckpt.step),
        "mode": str(ckpt.state.get("mode", "finetune")),
        "backbone_repo": str(backbone.get("repo") or ""), "backbone_sha256": str(backbone.get("sha256") or ""),
        "backbone_format": str(backbone.get("format") or ""),
        # A hint only (a path on the machine that pushed): the sha256 is what identifies the backbone.
        "backbone_path": str(backbone.get("path") or ""),
        "avdit_version": __version__,
    }


def read_adapters(path: Path, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header of an adapters file; a file that avdit did not write is refused."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as err:
        raise WeightsError(f"{label}: {ADAPTERS} cannot be read ({err}); push the run again") from err
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{label}: {ADAPTERS} was not written by `avdit push` (format "
                           f"{meta.get('format')!r}); push the run with `avdit push RUN --repo NAME`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{label}: {ADAPTERS} has format version {meta.get('format_version')!r}, this avdit "
                           f"reads {FORMAT_VERSION}; upgrade avdit")
    if not re.fullmatch(r"[0-9a-f]{64}", meta.get("backbone_sha256", "")):
        raise WeightsError(f"{label}: {ADAPTERS} names no backbone sha256, so the backbone cannot be checked; "
                           "push the run again")
    return tensors, meta


# ----------------------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------------------
def _download(ref: HubRef, filename: str, revision: str) -> Path:
    """One file of the repo into the HF cache, checked against the Hub's hash (a bad copy is removed)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        path = Path(hf_hub_download(ref.repo_id, filename, revision=revision, cache_dir=hub.hub_cache_dir(),
                                    endpoint=hub.hub_endpoint(), local_files_only=hub.is_offline()))
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set and it is not in the cache" if hub.is_offline() else \
            f"cannot reach {hub.hub_endpoint()}"
        raise WeightsError(f"{ref}: {filename} is not available ({where}); check the network "
                           "(or HF_ENDPOINT) and run again") from None
    except EntryNotFoundError:
        raise WeightsError(f"{ref} has no {filename}: it was not made by `avdit push`") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{ref}: the repo has no revision {revision}") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{ref}: no such repo on {hub.hub_endpoint()} (private? set HF_TOKEN)") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{ref}: downloading {filename} failed ({first}); run again") from err
    problem = hub.check_file(path, hub.RemoteFile(filename))
    if problem is not None:
        hub.remove_cached(path)
        raise WeightsError(f"{ref}: the downloaded {filename} is corrupt ({problem}); it was removed, run again")
    return path


def _snapshot_commit(path: Path) -> str:
    """The commit a file in the HF cache belongs to (``.../snapshots/<commit>/<file>``)."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1]


# ----------------------------------------------------------------------------------------------------------
# The backbone on this machine
# ----------------------------------------------------------------------------------------------------------
def shipped_tiny_backbone() -> Path:
    """The tiny image backbone avdit ships for the demo (``avdit_cli/assets/tiny-dit``)."""
    from avdit_cli.pipelines.demo import SHIPPED_BACKBONE  # here, not at the top: demo imports generate

    return SHIPPED_BACKBONE


def backbone_sha256(folder: Path) -> str | None:
    """sha256 of the weights file a DiT folder (or file) holds; None when it holds none."""
    from avdit_cli.models.dit_loading import weights_file

    try:
        return sha256_file(weights_file(folder))
    except (WeightsError, OSError):
        return None


def locate_backbone(meta: dict[str, str], cfg: Config, label: str) -> Path:
    """The backbone on this machine whose weights have the sha256 the adapters were trained on.

    Tried in order: the path recorded when pushing (same machine), the config's ``model.backbone_path``,
    the tiny backbone avdit ships, and the backbone repo in the HF cache (``avdit download``)."""
    want = meta["backbone_sha256"]
    repo = meta.get("backbone_repo") or cfg.model.backbone_repo
    candidates = [Path(p) for p in (meta.get("backbone_path"), cfg.model.backbone_path) if p]
    shipped = shipped_tiny_backbone()  # always there: a fallback, not worth naming when it does not match
    candidates.append(shipped)
    downloaded = None
    if repo:
        try:
            found = hub.find_local(hub.lookup(hub.WeightsGroup.BACKBONE, repo))
        except ConfigError:  # not a repo avdit knows how to lay out
            found = None
        downloaded = found.folder if found is not None else None
    tried = []
    for path in dict.fromkeys([*candidates, *([downloaded] if downloaded else [])]):
        if path.exists():
            if backbone_sha256(path) == want:
                return path
            if path != shipped:
                tried.append(str(path))
    if repo and downloaded is None:
        raise WeightsError(f"{label} was trained on the backbone {repo} (sha256 {want[:12]}...), which is not "
                           f"downloaded; run `avdit download --only backbone --set model.backbone_repo={repo}`")
    if tried:
        raise WeightsError(f"{label} was trained on a backbone with sha256 {want[:12]}...; none found here is it "
                           f"({', '.join(tried)}); download or copy that backbone")
    raise WeightsError(f"{label} was trained on a local backbone (sha256 {want[:12]}..., at "
                       f"{meta.get('backbone_path') or '?'} where it was pushed from) that is not on this machine; "
                       "copy it to that path")


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
def open_hub_run(reference: str | HubRef, ema: bool = True) -> Checkpoint:
    """Adapters pushed by `avdit push`, downloaded and checked, as a checkpoint to generate from.

    ``ema`` says which weights the caller wants; a repo holds one kind (push's ``--ema/--no-ema``)."""
    ref = reference if isinstance(reference, HubRef) else parse_hub_ref(reference)
    adapters = _download(ref, ADAPTERS, ref.revision or "main")
    commit = _snapshot_commit(adapters)
    label = f"{HF_SCHEME}{ref.repo_id}@{commit}"
    config_file = _download(ref, CONFIG, commit)  # the same commit as the adapters, whatever moved since
    tensors, meta = read_adapters(adapters, str(ref))
    weights = meta.get("weights", "ema")
    if (weights == "ema") != ema:
        flag = "--ema" if weights == "ema" else "--no-ema"
        raise ConfigError(f"{ref} holds the run's {weights} weights only; pass {flag} (or push the other ones)")
    cfg = load_preset(config_file)
    backbone = {"repo": meta.get("backbone_repo") or None, "sha256": meta["backbone_sha256"],
                "path": str(locate_backbone(meta, cfg, str(ref)))}
    state = {"config": cfg.to_dict(), "mode": meta.get("mode", "finetune"), "step": int(meta.get("step", 0)),
             "backbone": backbone, "weights": weights, "source": label}
    return Checkpoint(path=adapters.parent, state=state, model=tensors, ema=tensors, optim={}, source=label,
                      weights_file=adapters)
