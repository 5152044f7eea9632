"""`avdit push RUN --repo NAME`: a fine-tuned run's adapters on the Hugging Face Hub, with a model card.

One commit (through ``huggingface_hub``'s ``create_repo`` / ``create_branch`` / ``create_commit``, so HF_TOKEN,
HF_ENDPOINT and the Hub's LFS or Xet upload all apply) holds:

    README.md              the model card: Hub metadata (base_model, library_name, tags, the backbone's licence),
                           the backbone by repo and sha256, how the run was trained, its numbers with their
                           protocol, the contact sheet
    adapters.safetensors   the trained tensors (EMA by default) and what they were trained on (hub_run.py)
    config.yaml            the checkpoint's resolved config
    metrics.jsonl          the training log, where the run has one
    eval/metrics.json      `avdit eval`'s report, with --samples DIR after `avdit eval DIR`
    eval/samples.json      how those samples were made (with --samples)
    contact_sheet.png      frames over the mel of those samples (with --samples)

Never the frozen backbone: the card names its repo and sha256. Everything that can be wrong locally (the run,
a pretrain run, samples from another checkpoint, a malformed repo id) is refused before the network is used.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from avdit_cli import hub
from avdit_cli.config import TrainMode, to_yaml
from avdit_cli.errors import ConfigError, DataError, TrainingError, WeightsError
from avdit_cli.fileio import sha256_file
from avdit_cli.pipelines.hub_run import ADAPTERS, CONFIG, HF_SCHEME, adapter_metadata
from avdit_cli.pipelines.model_card import CardInputs, model_card
from avdit_cli.pipelines.runs import METRICS, Checkpoint, load_checkpoint, read_metrics

Log = Callable[[str], None]


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit: str  # the commit made (or the unchanged head when nothing differed)
    url: str
    files: list[str] = field(default_factory=list)
    weights: str = "ema"
    reference: str = ""  # what `generate --run` takes: hf://NAME[@REVISION]


def _read_samples(folder: Path, ckpt: Checkpoint, weights: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """samples.json (and metrics.json, if eval ran) of a generate folder made from this very checkpoint."""
    path = folder / "samples.json"
    if not path.is_file():
        raise DataError(f"--samples {folder}: no samples.json; give the folder `avdit generate -o` wrote")
    try:
        samples = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"--samples {folder}: samples.json cannot be read ({err})") from err
    mine = sha256_file(ckpt.tensors_file)
    if samples.get("checkpoint_sha256") != mine or samples.get("weights") != weights:
        raise DataError(f"--samples {folder} was generated from another checkpoint or weights "
                        f"({str(samples.get('checkpoint'))}, {samples.get('weights')}); generate from "
                        f"{ckpt.path} with {weights} weights, or drop --samples")
    metrics = None
    if (folder / "metrics.json").is_file():
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"--samples {folder}: metrics.json cannot be read ({err}); run `avdit eval "
                            f"{folder}` again") from err
    return samples, metrics


def _cache_summary(state: dict[str, Any]) -> dict[str, Any] | None:
    """What the run was trained on, from its latent cache's manifest (names only, no local paths)."""
    cache = Path(str(state.get("cache_dir") or ""))
    manifest = cache / "manifest.json"
    if not state.get("cache_dir") or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    clips = data.get("clips") or []
    return {"data_dir": Path(str(data.get("data_dir", "?"))).name, "clips": len(clips),
            "files": len({c.get("source") for c in clips})}


def push(
    run: Path | None,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    ema: bool = True,
    samples: Path | None = None,
    log: Log | None = None,
) -> PushResult:
    """Upload a run's adapters, config, metrics and model card to ``repo_id`` (created if needed) in one commit
    on ``revision`` (a branch, created from main if needed; default main)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    say = log or (lambda _msg: None)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"--repo {repo_id!r} is not a Hub repo id; write ORG/NAME (e.g. me/avdit-aist)") from None
    if hub.is_offline():
        raise WeightsError("push needs the network and HF_HUB_OFFLINE is set; unset it and run again")
    ckpt = load_checkpoint(run)
    if ckpt.state.get("mode") == TrainMode.PRETRAIN.value:
        raise TrainingError(f"{ckpt.path} is a pretrain run: it made an image backbone, not adapters; push a "
                            "fine-tuned run")
    weights = "ema" if ema else "raw"
    tensors = ckpt.ema if ema else ckpt.model
    if not tensors:
        raise TrainingError(f"{ckpt.path} holds no {weights} weights; push with {'--no-ema' if ema else '--ema'}")
    samples_json, metrics = _read_samples(samples, ckpt, weights) if samples is not None else (None, None)
    branch = revision or "main"
    reference = HF_SCHEME + repo_id + (f"@{branch}" if branch != "main" else "")

    with tempfile.TemporaryDirectory(prefix="avdit-push-") as tmp:
        staged = _stage(Path(tmp), ckpt, tensors, weights, samples, samples_json, metrics, repo_id, reference)
        say(f"pushing {', '.join(staged)} to {repo_id}@{branch} ({hub.hub_endpoint()})")
        commit = _upload(repo_id, branch, private, staged,
                         message=f"avdit push: {ckpt.run_dir.name} step {ckpt.step} ({weights} weights)")
    endpoint = hub.hub_endpoint()
    url = f"{endpoint}/{repo_id}" + (f"/tree/{branch}" if branch != "main" else "")
    return PushResult(repo_id, branch, commit, url, sorted(staged), weights, reference)


def _stage(folder: Path, ckpt: Checkpoint, tensors: dict[str, Any], weights: str, samples: Path | None,
           samples_json: dict[str, Any] | None, metrics: dict[str, Any] | None, repo_id: str,
           reference: str) -> dict[str, Path]:
    """Write every file of the commit into `folder`; returns {path in repo: file}."""
    from safetensors.torch import save_file

    files: dict[str, Path] = {}
    meta = adapter_metadata(ckpt, weights)
    save_file({k: v.detach().cpu().contiguous() for k, v in sorted(tensors.items())}, str(folder / ADAPTERS),
              metadata=meta)
    files[ADAPTERS] = folder / ADAPTERS
    (folder / CONFIG).write_text(to_yaml(ckpt.config))
    files[CONFIG] = folder / CONFIG
    log_rows = read_metrics(ckpt.run_dir)
    if log_rows:
        (folder / METRICS).write_text("".join(json.dumps(r) + "\n" for r in log_rows))
        files[METRICS] = folder / METRICS
    sheet = None
    if samples is not None and samples_json is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "samples.json").write_text(json.dumps(samples_json, indent=2) + "\n")
        files["eval/samples.json"] = folder / "eval" / "samples.json"
        if metrics is not None:
            (folder / "eval" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            files["eval/metrics.json"] = folder / "eval" / "metrics.json"
        if (samples / "contact_sheet.png").is_file():
            sheet = "contact_sheet.png"
            files[sheet] = samples / sheet
    card = model_card(CardInputs(
        repo_id=repo_id, reference=reference, config=ckpt.config, state=ckpt.state, adapters=meta,
        num_tensors=len(tensors), num_params=sum(int(t.numel()) for t in tensors.values()),
        training_log=log_rows, data=_cache_summary(ckpt.state), samples=samples_json, metrics=metrics,
        contact_sheet=sheet, files=sorted([*files, "README.md"])))
    (folder / "README.md").write_text(card)
    files["README.md"] = folder / "README.md"
    return files


def _upload(repo_id: str, branch: str, private: bool, files: dict[str, Path], message: str) -> str:
    """create_repo (exist_ok), create_branch (when not main), one create_commit; one-line errors."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=hub.hub_endpoint())
    where = f"{repo_id} on {hub.hub_endpoint()}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(repo_id, [CommitOperationAdd(p, str(f)) for p, f in sorted(files.items())],
                                 commit_message=message, revision=branch)
    except RepositoryNotFoundError:
        raise WeightsError(f"cannot push to {where}: not found or no access; set HF_TOKEN to a token with write "
                           "access") from None
    except RevisionNotFoundError:
        raise WeightsError(f"cannot push to {where}: no branch {branch}") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise WeightsError(f"the Hub refused the push to {where} ({status}); set HF_TOKEN to a token with "
                               "write access") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"pushing to {where} failed ({first}); run again") from err
    except ValueError as err:  # e.g. the Hub refused the card's metadata
        first = " ".join(str(err).split())
        raise WeightsError(f"pushing to {where} failed: {first}") from err
    except Exception as err:  # noqa: BLE001 (re-raised unless it is a connection failure, see below)
        if not _is_transport_error(err):
            raise
        raise WeightsError(f"cannot reach {hub.hub_endpoint()} to push ({type(err).__name__}: {err}); check the "
                           "network (or HF_ENDPOINT) and run again") from err
    return str(info.oid)


def _is_transport_error(err: BaseException) -> bool:
    """A failure to talk to the server at all. huggingface_hub's HTTP client is requests (whose errors are
    OSErrors) in older releases and an httpx variant (TransportError) in newer ones."""
    return isinstance(err, OSError) or any(c.__name__ == "TransportError" for c in type(err).__mro__)
