"""Named weights -> where they live on the Hugging Face Hub (or a release URL), pinned, and how to check them.

One table (:data:`WEIGHTS`) says, for each piece of pretrained weights avdit uses: the repo id, subfolder,
the few files needed (never a whole repo), the pinned revision, the expected size where known and the
licence. ``avdit download`` fetches through ``huggingface_hub.hf_hub_download`` into the Hugging Face cache
(``HF_HOME`` / ``HF_HUB_CACHE``), honouring ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``; everything
else (codecs, backbone loaders) finds weights here *in the local cache only* and never downloads implicitly.

Integrity: the Hub's ETag of an LFS file is its sha256 and ``huggingface_hub`` names the cache blob by the
ETag, so ``sha256(blob) == blob name``; small (non-LFS) files are named by their git blob sha1. A file that
fails its check is removed (blob and snapshot link) so that a rerun fetches it again.

Environment variables are read when a function runs, not at import (``huggingface_hub.constants`` reads
them once at import), so a test or a wrapper script that sets them later is honoured.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.fileio import sha256_file
from avdit_cli.paths import avdit_home

if TYPE_CHECKING:
    from avdit_cli.config import Config


class WeightsGroup(str, Enum):
    """What ``avdit download --only`` selects."""

    BACKBONE = "backbone"
    VIDEO_VAE = "video-vae"
    AUDIO_VAE = "audio-vae"
    VOCODER = "vocoder"
    EVAL = "eval"
    EVAL_PAPER = "eval-paper"  # the mm-diffusion protocol's extractors (the papers' FVD / KVD / FAD)


@dataclass(frozen=True)
class RemoteFile:
    """One file of an entry: a path inside the entry's subfolder (or a file name under ``url_base``)."""

    name: str
    size: int | None = None  # bytes, where known
    sha256: str | None = None  # the full sha256 or a prefix of it (>= 8 hex digits), where known
    git_sha1: str | None = None  # the git blob id of a file published in a git repository, where known
    # Other names tried in order when ``name`` is not on the Hub (e.g. ``.bin`` after ``.safetensors``).
    alternatives: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.alternatives)


@dataclass(frozen=True)
class WeightsEntry:
    """Named weights: a Hub repo (subfolder, files, pinned revision) or a release URL."""

    key: str  # "backbone", "video-vae", ..., "i3d", "vggish"
    group: WeightsGroup
    title: str
    repo_id: str  # Hub repo id; for URL downloads the project it comes from
    files: tuple[RemoteFile, ...]
    revision: str = "main"
    pinned: bool = False  # True when `revision` is a verified commit (or a release tag with hashed files)
    subfolder: str = ""
    licence: str = "unknown"
    url_base: str | None = None  # set: files are plain URL downloads into avdit_home()/weights/

    @property
    def is_hub(self) -> bool:
        return self.url_base is None

    def repo_path(self, name: str) -> str:
        """Path of a file inside the repo (subfolder included), as the Hub spells it."""
        return f"{self.subfolder}/{name}" if self.subfolder else name

    @property
    def display_repo(self) -> str:
        return self.repo_id if self.is_hub else f"{self.url_base}"

    @property
    def expected_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


# ----------------------------------------------------------------------------------------------------------
# The table. Commits were looked up in public code that pins or caches these repos; where none could be
# verified the entry tracks `main` and says so (pinned=False). Sizes: None when not known for certain.
# ----------------------------------------------------------------------------------------------------------
_DIFFUSERS_CONFIG = RemoteFile("config.json")

WEIGHTS: tuple[WeightsEntry, ...] = (
    WeightsEntry(
        key="backbone", group=WeightsGroup.BACKBONE, title="DiT-XL/2 256 backbone",
        repo_id="facebook/DiT-XL-2-256", subfolder="transformer",
        # main has only the .bin (~3 GB, plain tensors); the safetensors copy lives on refs/pr/1 (third party).
        files=(_DIFFUSERS_CONFIG, RemoteFile("diffusion_pytorch_model.bin")),
        revision="eab87f77abd5aef071a632f08807fbaab0b704d0", pinned=True, licence="cc-by-nc-4.0",
    ),
    WeightsEntry(
        key="video-vae", group=WeightsGroup.VIDEO_VAE, title="SD VAE ft-EMA (video frames)",
        repo_id="stabilityai/sd-vae-ft-ema",
        files=(_DIFFUSERS_CONFIG, RemoteFile("diffusion_pytorch_model.safetensors", size=334_643_276)),
        revision="f04b2c4b98319346dad8c65879f680b1997b204a", pinned=True, licence="mit",
    ),
    WeightsEntry(
        key="video-vae", group=WeightsGroup.VIDEO_VAE, title="SD VAE ft-MSE (video frames)",
        repo_id="stabilityai/sd-vae-ft-mse",
        files=(_DIFFUSERS_CONFIG, RemoteFile("diffusion_pytorch_model.safetensors", size=334_643_276)),
        revision="31f26fdeee1355a5c34592e401dd41e45d25a493", pinned=True, licence="mit",
    ),
    WeightsEntry(
        key="audio-vae", group=WeightsGroup.AUDIO_VAE, title="AudioLDM VAE (mel spectrograms)",
        repo_id="cvssp/audioldm-s-full-v2", subfolder="vae",
        files=(_DIFFUSERS_CONFIG, RemoteFile("diffusion_pytorch_model.safetensors")),
        revision="main", pinned=False, licence="cc-by-nc-sa-4.0",
    ),
    WeightsEntry(
        key="vocoder", group=WeightsGroup.VOCODER, title="AudioLDM HiFi-GAN vocoder",
        repo_id="cvssp/audioldm-s-full-v2", subfolder="vocoder",
        files=(_DIFFUSERS_CONFIG, RemoteFile("model.safetensors", alternatives=("pytorch_model.bin",))),
        revision="main", pinned=False, licence="cc-by-nc-sa-4.0",
    ),
    WeightsEntry(
        key="i3d", group=WeightsGroup.EVAL, title="I3D (StyleGAN-V TorchScript) for FVD/KVD",
        repo_id="flateon/FVD-I3D-torchscript",
        files=(RemoteFile("i3d_torchscript.pt",
                          sha256="bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"),),
        revision="1c2d61711c52571ad617a1063e6fa691b212e184", pinned=True, licence="unspecified (see repo card)",
    ),
    WeightsEntry(
        key="vggish", group=WeightsGroup.EVAL, title="VGGish (torchvggish) for FAD",
        repo_id="harritaylor/torchvggish",
        url_base="https://github.com/harritaylor/torchvggish/releases/download/v0.1",
        # The 8 hex digits in each name are the start of the file's sha256 (torch.hub convention).
        files=(RemoteFile("vggish-10086976.pth", sha256="10086976"),
               RemoteFile("vggish_pca_params-970ea276.pth", sha256="970ea276")),
        revision="v0.1", pinned=True, licence="apache-2.0",
    ),
)

# The mm-diffusion protocol's extractors (`avdit eval --protocol mm-diffusion`); see pipelines/eval_protocols.py.
_TATS_COMMIT = "03bbce1daa3da7e9bff8221e9ec433df9484817f"
PAPER_WEIGHTS: tuple[WeightsEntry, ...] = (
    WeightsEntry(
        key="i3d-400", group=WeightsGroup.EVAL_PAPER, title="I3D Kinetics-400 logits (VideoGPT/TATS) for paper FVD/KVD",
        repo_id="songweige/TATS", url_base=f"https://github.com/songweige/TATS/raw/{_TATS_COMMIT}/tats/fvd",
        # Committed to git (not LFS) once, in TATS's first commit: its git blob id pins the content. The same
        # conversion MM-Diffusion and VideoGPT download from Google Drive (id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT).
        files=(RemoteFile("i3d_pretrained_400.pt", git_sha1="a867b87ac3a9097d200598b1d48a1b890d8ec744"),),
        revision=_TATS_COMMIT, pinned=True, licence="apache-2.0 (DeepMind's tf-hub I3D; converted by VideoGPT)",
    ),
    WeightsEntry(
        key="audioclip", group=WeightsGroup.EVAL_PAPER, title="AudioCLIP (full training) for paper FAD",
        repo_id="AndreyGuzhov/AudioCLIP",
        url_base="https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1",
        # A release asset (about 537 MB): no published hash could be found, so it is not pinned.
        files=(RemoteFile("AudioCLIP-Full-Training.pt"),),
        revision="v0.1", pinned=False, licence="mit",
    ),
)
WEIGHTS = WEIGHTS + PAPER_WEIGHTS

# Default file layouts for a repo that is not in the table (a config may name another repo).
_DEFAULT_LAYOUT: dict[WeightsGroup, tuple[str, tuple[RemoteFile, ...]]] = {
    WeightsGroup.BACKBONE: ("transformer", (_DIFFUSERS_CONFIG, RemoteFile(
        "diffusion_pytorch_model.safetensors", alternatives=("diffusion_pytorch_model.bin",)))),
    WeightsGroup.VIDEO_VAE: ("", (_DIFFUSERS_CONFIG, RemoteFile(
        "diffusion_pytorch_model.safetensors", alternatives=("diffusion_pytorch_model.bin",)))),
    WeightsGroup.AUDIO_VAE: ("vae", (_DIFFUSERS_CONFIG, RemoteFile(
        "diffusion_pytorch_model.safetensors", alternatives=("diffusion_pytorch_model.bin",)))),
    WeightsGroup.VOCODER: ("vocoder", (_DIFFUSERS_CONFIG, RemoteFile(
        "model.safetensors", alternatives=("pytorch_model.bin",)))),
}

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def lookup(group: WeightsGroup | str, repo_id: str) -> WeightsEntry:
    """The table's entry for a group and repo; a repo not in the table gets an unpinned default layout."""
    group = WeightsGroup(group)
    for entry in WEIGHTS:
        if entry.group is group and entry.repo_id == repo_id:
            return entry
    if group in (WeightsGroup.EVAL, WeightsGroup.EVAL_PAPER) or group not in _DEFAULT_LAYOUT:
        raise ConfigError(f"no eval weights known for repo {repo_id!r}")
    subfolder, files = _DEFAULT_LAYOUT[group]
    return WeightsEntry(key=group.value, group=group, title=f"{group.value} ({repo_id})", repo_id=repo_id,
                        subfolder=subfolder, files=files)


def eval_entries(group: WeightsGroup = WeightsGroup.EVAL) -> list[WeightsEntry]:
    """The eval extractors of one group: ``eval`` (the avdit protocol) or ``eval-paper`` (mm-diffusion)."""
    return [e for e in WEIGHTS if e.group is group]


def required_groups(cfg: Config) -> list[WeightsGroup]:
    """The weights a config needs to preprocess, fine-tune and generate (eval extractors not included)."""
    from avdit_cli.config import AudioCodec, VideoCodec, Vocoder

    groups = []
    if cfg.model.backbone_repo and cfg.model.backbone_path is None:
        groups.append(WeightsGroup.BACKBONE)
    if cfg.data.video_codec is VideoCodec.SD_VAE:
        groups.append(WeightsGroup.VIDEO_VAE)
    if cfg.data.audio_codec is AudioCodec.AUDIOLDM_VAE:
        groups.append(WeightsGroup.AUDIO_VAE)
    if cfg.data.vocoder is Vocoder.HIFIGAN:
        groups.append(WeightsGroup.VOCODER)
    return groups


def entries_for(cfg: Config, groups: Iterable[WeightsGroup | str]) -> list[WeightsEntry]:
    """The table entries for the given groups, with the repos the config names."""
    out: list[WeightsEntry] = []
    for group in (WeightsGroup(g) for g in groups):
        if group in (WeightsGroup.EVAL, WeightsGroup.EVAL_PAPER):
            out.extend(eval_entries(group))
            continue
        repo = _repo_for(cfg, group)
        out.append(lookup(group, repo))
    return out


def _repo_for(cfg: Config, group: WeightsGroup) -> str:
    if group is WeightsGroup.BACKBONE:
        if not cfg.model.backbone_repo:
            raise ConfigError(f"preset {cfg.name} has no backbone repo (model.backbone_repo is empty): "
                              "its backbone is made locally, nothing to download")
        return cfg.model.backbone_repo
    if group is WeightsGroup.VIDEO_VAE:
        return cfg.data.video_vae_repo
    # The AudioLDM repo holds both the audio VAE (vae/) and its vocoder (vocoder/).
    return cfg.data.audio_vae_repo


# ----------------------------------------------------------------------------------------------------------
# Environment, read at call time
# ----------------------------------------------------------------------------------------------------------
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` (e.g. a mirror), else huggingface_hub's endpoint."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def url_weights_dir() -> Path:
    """Where plain-URL weights (VGGish) go."""
    return avdit_home() / "weights"


def download_hint(entry: WeightsEntry, preset: str | None = None) -> str:
    preset_part = f" --preset {preset}" if preset else ""
    only = entry.group.value
    return f"avdit download{preset_part} --only {only}"


# ----------------------------------------------------------------------------------------------------------
# Local lookup (never touches the network)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalWeights:
    """Files of an entry found on disk: ``folder`` holds them (the snapshot subfolder for Hub entries)."""

    entry: WeightsEntry
    folder: Path
    paths: dict[str, Path]  # RemoteFile.name -> the file on disk (it may be an alternative's name)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.paths.values())

    @property
    def commit(self) -> str | None:
        """The snapshot's commit for Hub files."""
        if not self.entry.is_hub:
            return None
        for p in self.paths.values():
            parts = p.parts
            if "snapshots" in parts:
                return parts[parts.index("snapshots") + 1]
        return None


def local_file(entry: WeightsEntry, remote: RemoteFile) -> Path | None:
    """The file (or the first alternative present) in the local cache, or None."""
    if not entry.is_hub:
        for name in remote.names:
            path = url_weights_dir() / name
            if path.is_file():
                return path
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in remote.names:
        found = try_to_load_from_cache(entry.repo_id, entry.repo_path(name), cache_dir=hub_cache_dir(),
                                       revision=entry.revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def find_local(entry: WeightsEntry) -> LocalWeights | None:
    """All files of an entry from the local cache, or None when any is missing."""
    paths: dict[str, Path] = {}
    for remote in entry.files:
        path = local_file(entry, remote)
        if path is None:
            return None
        paths[remote.name] = path
    folder = next(iter(paths.values())).parent
    return LocalWeights(entry, folder, paths)


def require_local(entry: WeightsEntry, preset: str | None = None) -> LocalWeights:
    """Like :func:`find_local`, but a missing file is a one-line :class:`WeightsError` naming the command."""
    found = find_local(entry)
    if found is None:
        missing = [r.name for r in entry.files if local_file(entry, r) is None]
        raise WeightsError(
            f"{entry.title} ({entry.display_repo}, {entry.repo_path(missing[0])}) is not downloaded; "
            f"run `{download_hint(entry, preset)}`"
        )
    return found


def backbone_path(cfg: Config) -> Path:
    """The downloaded backbone's folder (``.../snapshots/<commit>/transformer``: config.json + weights)."""
    if cfg.model.backbone_path:
        return Path(cfg.model.backbone_path)
    return require_local(lookup(WeightsGroup.BACKBONE, _repo_for(cfg, WeightsGroup.BACKBONE)), cfg.name).folder


def _eval_file(key: str, index: int = 0) -> Path:
    entry = next(e for e in WEIGHTS if e.key == key)
    return require_local(entry).paths[entry.files[index].name]


def i3d_path() -> Path:
    """The downloaded ``i3d_torchscript.pt`` (FVD / KVD)."""
    return _eval_file("i3d")


def vggish_paths() -> tuple[Path, Path]:
    """The downloaded VGGish weights and PCA parameters (FAD)."""
    return _eval_file("vggish", 0), _eval_file("vggish", 1)


def i3d_400_path() -> Path:
    """The downloaded ``i3d_pretrained_400.pt`` (mm-diffusion FVD / KVD)."""
    return _eval_file("i3d-400")


def audioclip_path() -> Path:
    """The downloaded ``AudioCLIP-Full-Training.pt`` (mm-diffusion FAD)."""
    return _eval_file("audioclip")


# ----------------------------------------------------------------------------------------------------------
# Integrity
# ----------------------------------------------------------------------------------------------------------
def git_blob_sha1(path: Path, chunk: int = 1 << 22) -> str:
    """The git object id of a file (how the Hub names a non-LFS file's ETag)."""
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, remote: RemoteFile, *, full: bool = True) -> str | None:
    """Why a downloaded file is bad, or None when it passes.

    Always checks the expected size (where known). With ``full``: the content against the cache blob's name
    (sha256 for LFS files, git sha1 for small files) and against the table's sha256 (or prefix) and git blob
    id where known.
    """
    real = path.resolve()
    size = real.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    if not full:
        return None
    blob_name = real.name if real.parent.name == "blobs" else ""
    digest: str | None = None
    if _SHA256.fullmatch(blob_name):
        digest = sha256_file(real)
        if digest != blob_name:
            return f"sha256 {digest[:12]}... does not match the Hub's {blob_name[:12]}..."
    elif _SHA1.fullmatch(blob_name):
        got = git_blob_sha1(real)
        if got != blob_name:
            return f"git sha1 {got[:12]}... does not match the Hub's {blob_name[:12]}..."
    if remote.sha256:
        digest = digest or sha256_file(real)
        if not digest.startswith(remote.sha256.lower()):
            return f"sha256 {digest[:12]}... does not match the expected {remote.sha256[:12]}..."
    if remote.git_sha1:
        got = git_blob_sha1(real)
        if got != remote.git_sha1.lower():
            return f"git blob id {got[:12]}... does not match the published {remote.git_sha1[:12]}..."
    return None


def remove_cached(path: Path) -> None:
    """Remove a cached file: the snapshot link and the blob it points to, so a rerun fetches it again."""
    real = path.resolve()
    for p in {path, real}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def verify_or_remove(entry: WeightsEntry, remote: RemoteFile, path: Path, *, preset: str | None = None) -> None:
    """Check a file; a bad one is removed and reported as a :class:`WeightsError`."""
    problem = check_file(path, remote)
    if problem is not None:
        remove_cached(path)
        raise WeightsError(
            f"{entry.title}: {entry.repo_path(path.name)} is corrupt or incomplete ({problem}); it was removed, "
            f"run `{download_hint(entry, preset)}` again"
        )


# ----------------------------------------------------------------------------------------------------------
# Fetching one file
# ----------------------------------------------------------------------------------------------------------
def fetch_file(entry: WeightsEntry, remote: RemoteFile, *, preset: str | None = None) -> tuple[Path, bool]:
    """Make one file present and verified; returns (path, downloaded). A verified cached copy is used as is.

    Offline (``HF_HUB_OFFLINE=1``) only the cache is consulted.
    """
    cached = local_file(entry, remote)
    if cached is not None:
        if check_file(cached, remote) is None:
            return cached, False
        remove_cached(cached)  # bad copy on disk: fetch it again
    if is_offline():
        raise WeightsError(
            f"{entry.title}: {entry.repo_path(remote.name)} is not in the cache and HF_HUB_OFFLINE is set; "
            f"unset it and run `{download_hint(entry, preset)}`"
        )
    path = _download_url(entry, remote) if not entry.is_hub else _download_hub(entry, remote, preset)
    verify_or_remove(entry, remote, path, preset=preset)
    return path, True


def _download_hub(entry: WeightsEntry, remote: RemoteFile, preset: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    names = remote.names
    for i, name in enumerate(names):
        try:
            return Path(hf_hub_download(
                entry.repo_id, entry.repo_path(name), revision=entry.revision, cache_dir=hub_cache_dir(),
                endpoint=hub_endpoint(),
            ))
        except LocalEntryNotFoundError:  # the Hub could not be reached and the file is not cached
            raise WeightsError(f"{entry.title}: cannot reach {hub_endpoint()} to fetch {entry.repo_path(name)}; "
                               f"check the network (or HF_ENDPOINT) and run `{download_hint(entry, preset)}` "
                               "again") from None
        except EntryNotFoundError:
            if i + 1 < len(names):
                continue  # e.g. no .safetensors on the Hub: take the .bin
            raise WeightsError(f"{entry.title}: {entry.repo_path(name)} is not in {entry.repo_id} at "
                               f"revision {entry.revision}") from None
        except GatedRepoError:
            raise WeightsError(f"{entry.repo_id} is gated: accept its licence on the Hub and set HF_TOKEN") from None
        except RevisionNotFoundError:
            raise WeightsError(f"{entry.repo_id} has no revision {entry.revision}") from None
        except RepositoryNotFoundError:
            raise WeightsError(f"{entry.repo_id} not found on {hub_endpoint()} (private? set HF_TOKEN)") from None
        except (HfHubHTTPError, OSError, ValueError) as err:
            # Network down, consistency (truncated transfer), disk full, ...: one line, then a retry helps.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(f"{entry.title}: downloading {entry.repo_path(name)} failed ({first}); "
                               f"run `{download_hint(entry, preset)}` again") from err
    raise AssertionError("unreachable")  # names is never empty


def _download_url(entry: WeightsEntry, remote: RemoteFile) -> Path:
    """A plain URL download with the sha256 prefix checked, as torch.hub does."""
    from torch.hub import download_url_to_file

    dest = url_weights_dir() / remote.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = f"{entry.url_base}/{remote.name}"
    try:
        download_url_to_file(url, str(dest), hash_prefix=remote.sha256, progress=False)
    except (OSError, RuntimeError) as err:  # RuntimeError: hash prefix mismatch (the temp file is removed)
        dest.unlink(missing_ok=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{entry.title}: downloading {url} failed ({first}); run "
                           f"`{download_hint(entry)}` again") from err
    return dest
