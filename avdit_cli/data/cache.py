"""The latent cache that `preprocess` writes and `finetune` reads.

Layout of a cache folder::

    manifest.json              merged view: config, codecs, every clip, every skipped file
    skipped.jsonl              one line per skipped file with its reason (also in the manifest)
    shards/shard_00000.safetensors   video (n, f, c, h, w), audio (n, c_a, T_a, M_a), label (n,), flags (n,)
    shards/shard_00000.json          the shard's clips and skipped files; written last, so it marks the shard done

A shard holds the clips of a fixed group of source files (files sorted by relative path, cut into groups of
``data.files_per_shard``). A shard's content therefore depends only on its own files: shards can be made in
any order, by several processes or ranks, and a rerun simply skips the shards whose JSON exists. That is
what makes an interrupted run resume to exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from avdit_cli.data.media import READER_VERSION
from avdit_cli.errors import DataError
from avdit_cli.fileio import atomic_save_tensors, atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
SHARDS = "shards"
CACHE_VERSION = 1
FLAG_AUDIO_PADDED = 1  # bit 0 of a clip's flags: part of its window has no audio from the file (zeros instead)
FLAG_AUDIO_SILENT = 2  # bit 1: its file's audio track never reaches -60 dBFS (an all-zero or muted track)
FLAG_NAMES = {FLAG_AUDIO_PADDED: "audio-padded", FLAG_AUDIO_SILENT: "audio-silent"}


# ----------------------------------------------------------------------------------------------------------
# Planning: which files go to which shard
# ----------------------------------------------------------------------------------------------------------
def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def find_videos(data_dir: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Every file under `data_dir` (recursive) that may be a video, sorted by relative path so every run plans
    the same shards.

    Whether a file is a video is decided by opening it (``media.probe``), not by its extension. Left out:
    hidden files and folders (names starting with "."; e.g. ``.DS_Store``, ``._clip.mp4`` from macOS, ``.git``)
    and everything under the folders in `exclude` (a cache written inside the data folder).
    """
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} is not a folder; give the folder that holds your video files")
    skip = [p.resolve() for p in exclude]
    files = [p for p in data_dir.rglob("*") if p.is_file() and not _hidden(p.relative_to(data_dir))]
    if skip:
        files = [p for p in files if not any(p.resolve().is_relative_to(s) for s in skip)]
    return sorted(files, key=lambda p: p.relative_to(data_dir).as_posix())


def extension(path: str | Path) -> str:
    """A file's extension as the summaries group it: lower case with the dot, "(none)" without one."""
    return Path(path).suffix.lower() or "(none)"


def class_names(data_dir: Path, files: Sequence[Path]) -> list[str]:
    """Landscape style: the parent folder of each file is its class (files directly in data_dir: none)."""
    names = {p.relative_to(data_dir).parts[0] for p in files if len(p.relative_to(data_dir).parts) > 1}
    return sorted(names)


def plan_shards(files: Sequence[Path], files_per_shard: int) -> list[list[Path]]:
    return [list(files[i : i + files_per_shard]) for i in range(0, len(files), files_per_shard)]


def shard_stem(index: int) -> str:
    return f"shard_{index:05d}"


# ----------------------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------------------
@dataclass
class CacheHeader:
    """What a cache was made with. A rerun with a different header is refused, never mixed."""

    config_hash: str
    data: dict[str, Any]
    codecs: dict[str, Any]
    data_dir: str
    classes: list[str] = field(default_factory=list)
    version: int = CACHE_VERSION
    reader: int = READER_VERSION  # how media files were read (media.READER_VERSION)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "config_hash": self.config_hash, "data": self.data,
                "codecs": self.codecs, "data_dir": self.data_dir, "classes": self.classes, "reader": self.reader}


def check_or_write_header(cache_dir: Path, header: CacheHeader) -> None:
    """Refuse a cache made with another config; write the header of a new cache."""
    path = cache_dir / "header.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("config_hash") != header.config_hash or old.get("codecs") != header.codecs:
            raise DataError(
                f"{cache_dir} holds a cache made with another data config or codecs "
                f"(hash {old.get('config_hash')} vs {header.config_hash}); use another -o folder or delete it"
            )
        if old.get("data_dir") != header.data_dir:
            # Relative paths alone cannot tell two folders apart (clip_0000.mp4 ...): never mix them.
            raise DataError(f"{cache_dir} holds a cache of another folder ({old.get('data_dir')}); "
                            "use another -o folder or delete it")
        if old.get("classes") != header.classes:
            raise DataError(f"{cache_dir} was made from a folder with other classes; use another -o folder")
        if old.get("reader", 1) != header.reader:
            # Clips read by another reader version differ (e.g. audio alignment): never mix them in one cache.
            raise DataError(f"{cache_dir} was made by an older avdit that read media differently "
                            f"(reader {old.get('reader', 1)}, now {header.reader}); use another -o folder or delete it")
        return
    atomic_write_json(path, header.to_dict())


def shard_record(cache_dir: Path, index: int) -> dict[str, Any] | None:
    """The JSON record of a finished shard, or None when the shard is not done."""
    path = cache_dir / SHARDS / f"{shard_stem(index)}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def shard_done(cache_dir: Path, index: int, files: Sequence[str] | None = None) -> bool:
    """Whether shard `index` is finished; with `files` (paths relative to the data folder), also whether it
    was made from exactly those files: a run with --limit, or a folder that gained files, plans other groups."""
    record = shard_record(cache_dir, index)
    if record is None:
        return False
    return files is None or record.get("files") == list(files)


def remove_stale_temp_files(cache_dir: Path) -> int:
    """Delete the temp files a killed run left behind (atomic writes never leave a partial real file)."""
    n = 0
    for folder in (cache_dir, cache_dir / SHARDS):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def write_shard(cache_dir: Path, index: int, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Tensors first, then the JSON record: the JSON's existence means the whole shard is there."""
    base = cache_dir / SHARDS / shard_stem(index)
    # A shard being redone (another file plan) must not look done while its tensors are being replaced.
    base.with_suffix(".json").unlink(missing_ok=True)
    if tensors:
        atomic_save_tensors(base.with_suffix(".safetensors"), tensors, metadata={"avdit_cache": str(CACHE_VERSION)})
    atomic_write_json(base.with_suffix(".json"), record)


def merge_manifest(cache_dir: Path, num_shards: int) -> dict[str, Any]:
    """Merge the header and every shard record into manifest.json and skipped.jsonl (in shard order)."""
    header = json.loads((cache_dir / "header.json").read_text())
    clips: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    for index in range(num_shards):
        path = cache_dir / SHARDS / f"{shard_stem(index)}.json"
        if not path.exists():
            raise DataError(f"shard {index} of {cache_dir} is missing; rerun `avdit preprocess` to finish the cache")
        record = json.loads(path.read_text())
        n = len(record["clips"])
        shards.append({"file": f"{SHARDS}/{shard_stem(index)}.safetensors" if n else None, "clips": n})
        for row, clip in enumerate(record["clips"]):
            clips.append({**clip, "shard": index, "row": row})
        skipped.extend(record["skipped"])
    manifest = {**header, "num_clips": len(clips), "shards": shards, "clips": clips, "skipped": skipped}
    atomic_write_json(cache_dir / MANIFEST, manifest)
    atomic_write_bytes(cache_dir / SKIPPED, "".join(json.dumps(s) + "\n" for s in skipped).encode())
    return manifest


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / MANIFEST
    if not path.exists():
        raise DataError(f"no latent cache at {cache_dir}; make one with `avdit preprocess DATA_DIR`")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------------------
# Reading: a Dataset for training
# ----------------------------------------------------------------------------------------------------------
class LatentCache(Dataset):
    """Clips of a cache folder, read lazily from the safetensors shards (memory-mapped by safetensors).

    Items are dicts: ``video`` (f, c, h, w), ``audio`` (c_a, T_a, M_a), ``label`` () int64 (-1: none),
    ``audio_ok`` () bool (False when the audio was padded or is silent), ``index`` () int64.
    ``hflip``: each item is flipped left-right with probability 1/2, decided by (seed, epoch, index) so
    the same run sees the same flips; it is applied here, never frozen into the cache. The flip acts on
    the latents (w axis): for convolutional VAEs this approximates encoding the flipped frames.
    """

    def __init__(self, cache_dir: str | Path, hflip: bool = False, seed: int = 0,
                 expect: dict[str, Any] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        if expect is not None and self.manifest["config_hash"] != expect["config_hash"]:
            raise DataError(
                f"the cache at {self.cache_dir} was made with another data config; rerun `avdit preprocess` "
                "with this preset or point --cache at the right folder"
            )
        self.clips = self.manifest["clips"]
        if not self.clips:
            raise DataError(f"the cache at {self.cache_dir} holds no clips; see its skipped.jsonl")
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0
        self._handles: dict[int, Any] = {}
        self.label_map: list[int] | None = None  # cache label -> model class id (relabel)

    def relabel(self, table: Sequence[str]) -> list[int]:
        """Give labels as indices into `table` (a model's class names) instead of the cache's own class list, so
        a cache that lacks some classes still means the same classes as the model. Returns the map; raises
        DataError when the cache has a class `table` lacks."""
        names = list(self.manifest.get("classes") or [])
        missing = [n for n in names if n not in table]
        if missing:
            raise DataError(f"the cache at {self.cache_dir} has classes the model has no row for ({', '.join(missing[:3])});"
                            " train on a cache of the model's classes, or pretrain a backbone with them")
        row = {n: k for k, n in enumerate(table)}
        self.label_map = [row[n] for n in names]
        return self.label_map

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            path = self.cache_dir / self.manifest["shards"][index]["file"]
            handle = safe_open(str(path), framework="pt")
            self._handles[index] = handle
        return handle

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip = self.clips[i]
        shard = self._shard(clip["shard"])
        row = clip["row"]
        video = shard.get_slice("video")[row : row + 1][0]
        audio = shard.get_slice("audio")[row : row + 1][0]
        if self.hflip:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF)
            if torch.rand((), generator=g) < 0.5:
                video = video.flip(-1)
        return {
            "video": video.float(),
            "audio": audio.float(),
            "label": torch.tensor(self.label_of(clip), dtype=torch.int64),
            "audio_ok": torch.tensor(audio_ok(clip)),
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def label_of(self, clip: dict[str, Any]) -> int:
        """A manifest clip's label as the model reads it (after :meth:`relabel`); -1: none."""
        label = int(clip.get("label", -1))
        if label < 0 or self.label_map is None:
            return label
        return self.label_map[label]


def flag_mask(flags: Sequence[str]) -> int:
    """A clip's flag names as the bit mask stored in its shard's `flags` tensor."""
    bits = {name: bit for bit, name in FLAG_NAMES.items()}
    mask = 0
    for name in flags:
        mask |= bits.get(name, 0)
    return mask


def audio_ok(clip: dict[str, Any]) -> bool:
    """Whether a clip record's audio counts in the loss; read from the manifest, no tensor.

    Not when it was padded (partly made-up silence) or is silent (a muted track says nothing about the picture).
    """
    flags = clip.get("flags", [])
    return FLAG_NAMES[FLAG_AUDIO_PADDED] not in flags and FLAG_NAMES[FLAG_AUDIO_SILENT] not in flags
