"""`avdit preprocess`: a folder of videos -> a sharded, resumable cache of video and audio latents.

Decoding (ffmpeg) runs in worker processes, one source file per task; encoding runs in this process on the
chosen device, in batches. Work is cut into shards of whole source files (see `avdit_cli.data.cache`), so a
rerun skips finished shards and an interrupted run resumes to exactly the uninterrupted result. Under
torchrun, rank r makes the shards r, r + world, ... and rank 0 merges the manifest when all are done.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from einops import rearrange

from avdit_cli.codecs import Codecs, build_codecs
from avdit_cli.config import Config
from avdit_cli.data.cache import (
    FLAG_NAMES,
    CacheHeader,
    check_or_write_header,
    class_names,
    find_videos,
    merge_manifest,
    plan_shards,
    read_manifest,
    shard_done,
    write_shard,
)
from avdit_cli.data.clips import Clip, load_clips
from avdit_cli.errors import DataError
from avdit_cli.pipelines.distributed import dist_context
from avdit_cli.paths import default_cache_dir

Progress = Callable[["PreprocessStatus"], None]


@dataclass
class PreprocessStatus:
    files_total: int
    files_done: int = 0
    clips: int = 0
    skipped: int = 0
    shards_total: int = 0
    shards_done: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def clips_per_s(self) -> float:
        return self.clips / max(1e-9, time.perf_counter() - self.started)


@dataclass
class PreprocessSummary:
    cache_dir: Path
    files_seen: int
    clips: int
    skipped_by_reason: dict[str, int]
    hours: float
    cache_bytes: int
    shards_reused: int
    seconds: float


# ----------------------------------------------------------------------------------------------------------
# Worker side: decode one file (runs in a worker process; returns plain numpy so it pickles cheaply)
# ----------------------------------------------------------------------------------------------------------
def _decode_file(path: str, data_cfg: Any, stride: float | None) -> tuple[list[Clip], dict[str, str] | None]:
    try:
        return load_clips(Path(path), data_cfg, stride), None
    except DataError as err:
        return [], {"reason": getattr(err, "reason", "unreadable"), "message": str(err)}


def _executor(workers: int) -> Executor | None:
    if workers <= 0:
        return None
    # 'spawn' keeps workers free of the parent's torch threads and CUDA state.
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))


class _Inline(Executor):
    """Runs tasks in this process (workers=0): simpler to debug, and what the tests use for speed."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:  # handed to the caller through the future, as a real pool would
            fut.set_exception(err)
        return fut


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_clips(clips: Sequence[Clip], codecs: Codecs, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips -> video latents (n, f, c, h, w) and audio latents (n, c_a, T_a, M_a), float32 on the CPU."""
    video_out, audio_out = [], []
    for i in range(0, len(clips), batch_size):
        chunk = clips[i : i + batch_size]
        frames = torch.from_numpy(np.stack([c.frames for c in chunk]))  # (b, f, H, W, 3) uint8
        b = frames.shape[0]
        pixels = rearrange(frames, "b f h w c -> (b f) c h w").float().div(127.5).sub(1.0)
        z = codecs.video.encode(pixels.to(codecs.device))
        video_out.append(rearrange(z.float().cpu(), "(b f) c h w -> b f c h w", b=b))
        wave = torch.from_numpy(np.stack([c.audio for c in chunk])).float()  # (b, samples)
        mel = codecs.mel(wave.to(codecs.device))  # (b, 1, T, M)
        audio_out.append(codecs.audio.encode(mel).float().cpu())
    return torch.cat(video_out), torch.cat(audio_out)


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
def preprocess(
    cfg: Config,
    data_dir: Path,
    cache_dir: Path | None = None,
    workers: int = 2,
    batch_size: int = 16,
    device: str | None = None,
    limit: int | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    codecs: Codecs | None = None,
) -> PreprocessSummary:
    started = time.perf_counter()
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(cfg)
    stride = cfg.data.stride_seconds
    files = find_videos(data_dir)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise DataError(f"no video files ({', '.join(('.mp4', '.mov', '.mkv', '.avi', '.webm'))}) under {data_dir}")
    classes = class_names(data_dir, files) if cfg.data.class_folders else []
    class_ids = {name: i for i, name in enumerate(classes)}

    ctx = dist_context()
    dev = torch.device(device or ctx.default_device())
    if codecs is None:
        codecs = build_codecs(cfg, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    header = CacheHeader(
        config_hash=cfg.hash("data"),
        data=cfg.to_dict()["data"],
        codecs=codecs.describe(),
        data_dir=str(data_dir.resolve()),
        classes=classes,
    )
    if ctx.is_main:
        check_or_write_header(cache_dir, header)
    ctx.barrier()

    shards = plan_shards(files, cfg.data.files_per_shard)
    mine = [i for i in range(len(shards)) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if not shard_done(cache_dir, i)]
    status = PreprocessStatus(files_total=sum(len(shards[i]) for i in todo), shards_total=len(todo))
    executor = _executor(workers) or _Inline()
    try:
        # One shard of look-ahead: the workers decode shard k+1 while this process encodes shard k.
        pending = [executor.submit(_decode_file, str(p), cfg.data, stride) for p in shards[todo[0]]] if todo else []
        for n, index in enumerate(todo):
            futures = pending
            if n + 1 < len(todo):
                pending = [executor.submit(_decode_file, str(p), cfg.data, stride) for p in shards[todo[n + 1]]]
            clips: list[Clip] = []
            rows: list[dict[str, Any]] = []
            skipped: list[dict[str, Any]] = []
            for path, fut in zip(shards[index], futures):
                rel = path.relative_to(data_dir).as_posix()
                file_clips, problem = fut.result()
                if problem is not None:
                    if strict:
                        raise DataError(f"{rel}: {problem['message']} (--strict stops at the first bad file)")
                    skipped.append({"source": rel, **problem})
                    status.skipped += 1
                label = class_ids.get(Path(rel).parts[0], -1) if classes and len(Path(rel).parts) > 1 else -1
                for clip in file_clips:
                    clips.append(clip)
                    rows.append({"source": rel, "start": round(float(clip.start), 6), "flags": list(clip.flags),
                                 "label": label})
                status.files_done += 1
                if progress:
                    progress(status)
            tensors: dict[str, torch.Tensor] = {}
            if clips:
                video, audio = encode_clips(clips, codecs, batch_size)
                tensors = {
                    "video": video,
                    "audio": audio,
                    "label": torch.tensor([r["label"] for r in rows], dtype=torch.int64),
                    "flags": torch.tensor([_flag_mask(r["flags"]) for r in rows], dtype=torch.int64),
                }
            write_shard(cache_dir, index, tensors, {"files": [p.relative_to(data_dir).as_posix()
                                                              for p in shards[index]],
                                                    "clips": rows, "skipped": skipped})
            status.clips += len(clips)
            status.shards_done += 1
            if progress:
                progress(status)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    ctx.barrier()
    manifest = merge_manifest(cache_dir, len(shards)) if ctx.is_main else None
    ctx.barrier()
    if manifest is None:
        manifest = read_manifest(cache_dir)
    if manifest["num_clips"] == 0:
        raise DataError(f"no clip could be made from {len(files)} file(s) under {data_dir}; "
                        f"see {cache_dir / 'skipped.jsonl'} for the reasons")
    reasons: dict[str, int] = {}
    for s in manifest["skipped"]:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    size = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    return PreprocessSummary(
        cache_dir=cache_dir,
        files_seen=len(files),
        clips=manifest["num_clips"],
        skipped_by_reason=reasons,
        hours=manifest["num_clips"] * cfg.data.clip_seconds / 3600.0,
        cache_bytes=size,
        shards_reused=len(mine) - len(todo),
        seconds=time.perf_counter() - started,
    )


def _flag_mask(flags: Sequence[str]) -> int:
    names = {v: k for k, v in FLAG_NAMES.items()}
    mask = 0
    for f in flags:
        mask |= names.get(f, 0)
    return mask


