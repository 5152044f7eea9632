"""`avdit preprocess`: a folder of videos -> a sharded, resumable cache of video and audio latents.

Decoding (the bundled ffmpeg) runs in worker processes, one source file per task; encoding runs in this
process on the chosen device, in batches. Work is cut into shards of whole source files (see
`avdit_cli.data.cache`), so a rerun skips finished shards and an interrupted run resumes to exactly the
uninterrupted result. Under torchrun, rank r makes the shards r, r + world, ... and rank 0 merges the
manifest when all are done; an error on any rank stops every rank (no rank is left waiting at a barrier).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from einops import rearrange

from avdit_cli.codecs import Codecs, build_codecs, default_dtype
from avdit_cli.config import Config, DataConfig
from avdit_cli.data.cache import (
    SKIPPED,
    CacheHeader,
    check_or_write_header,
    class_names,
    extension,
    find_videos,
    flag_mask,
    merge_manifest,
    plan_shards,
    read_manifest,
    remove_stale_temp_files,
    shard_done,
    write_shard,
)
from avdit_cli.data.clips import Clip, load_clips
from avdit_cli.data.media import probe
from avdit_cli.errors import ConfigError, DataError
from avdit_cli.paths import default_cache_dir
from avdit_cli.pipelines.distributed import DistContext, dist_context, resolve_device

Progress = Callable[["PreprocessStatus"], None]
WORKER_KINDS = ("process", "thread")


@dataclass
class PreprocessStatus:
    """What a progress callback sees (this rank's share of the work)."""

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
    hours: float  # source time covered by the clips (overlapping clips count once)
    cache_bytes: int
    shards_reused: int
    seconds: float
    skipped_by_extension: dict[str, int] = field(default_factory=dict)  # ".txt" -> files skipped; "(none)"
    clips_by_flag: dict[str, int] = field(default_factory=dict)  # "audio-silent" -> clips with that flag


# ----------------------------------------------------------------------------------------------------------
# Worker side: decode one file (runs in a worker process; returns clips of plain numpy so they pickle cheaply)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DecodedFile:
    """What a decoding worker returns for one source file (plain data, so it crosses a process pool)."""

    clips: list[Clip]
    streams: dict[str, int | None] | None = None  # {"video": i, "audio": j}: the streams used, as ffmpeg numbers them
    problem: dict[str, str] | None = None  # {"reason", "message"} for a file that gives no clip


def decode_file(path: str, data_cfg: DataConfig, stride: float | None) -> DecodedFile:
    """The clips of one file and the streams they come from, or no clips and the problem.

    Problems are returned, not raised: a skipped file is data for the manifest, not a failure.
    """
    try:
        info = probe(Path(path))
        clips = load_clips(Path(path), data_cfg, stride, info=info)
    except DataError as err:
        # The message without the path: the record already names the source relative to the data folder.
        return DecodedFile([], problem={"reason": getattr(err, "reason", "unreadable"),
                                        "message": getattr(err, "detail", str(err))})
    return DecodedFile(clips, streams={"video": info.video_index, "audio": info.audio_index})


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: exit when the parent dies (e.g. SIGKILL), instead of waiting for work forever."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="avdit-parent-watch").start()


def decode_executor(workers: int, kind: str = "thread") -> Executor:
    """A pool of `workers` decoders for :func:`decode_file`; 0: run tasks in this process.

    Either way the decoding itself runs in ffmpeg processes, one per worker. kind "thread" (the default):
    threads drive them; they mostly wait on pipes and start at once. kind "process": spawned Python processes,
    each of which first imports torch (seconds, and ~1 GB); measured no faster (benchmarks/RESULTS.md).
    """
    if workers <= 0:
        return _Inline()
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avdit-decode")
    # 'spawn': a fork of this process would copy torch's thread pools (and CUDA state) into every worker.
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_watch_parent, initargs=(os.getpid(),))


class _Inline(Executor):
    """Runs tasks in this process (workers=0): simpler to debug, and what most tests use for speed."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as err:  # handed to the caller through the future, as a real pool would
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
        frames = torch.from_numpy(np.stack([c.frames for c in chunk]))  # (b, f, h, w, c) uint8
        b = frames.shape[0]
        pixels = rearrange(frames, "b f h w c -> (b f) c h w").float().div(127.5).sub(1.0)  # [-1, 1]
        z = codecs.video.encode(pixels.to(codecs.device))  # ((b f), c', h', w')
        video_out.append(rearrange(z.float().cpu(), "(b f) c h w -> b f c h w", b=b))
        wave = torch.from_numpy(np.stack([c.audio for c in chunk])).float()  # (b, samples)
        mel = codecs.mel(wave.to(codecs.device))  # (b, 1, T, M)
        audio_out.append(codecs.audio.encode(mel).float().cpu())  # (b, c_a, T_a, M_a)
    return torch.cat(video_out), torch.cat(audio_out)


def _check_shapes(video: torch.Tensor, audio: torch.Tensor, data: DataConfig) -> None:
    """The cache must hold what finetune will build its model for; codecs that disagree are a config error."""
    got = (tuple(video.shape[1:]), tuple(audio.shape[1:]))
    want = (data.video_latent_shape, data.audio_latent_shape)
    if got != want:
        raise ConfigError(f"the codecs give latents video {got[0]} / audio {got[1]} per clip but the data config "
                          f"expects {want[0]} / {want[1]}; check data.video_codec, data.audio_codec and their repos")


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
    worker_kind: str = "thread",
) -> PreprocessSummary:
    """Cut every video under `data_dir` into clips and cache their latents in `cache_dir` (resumable).

    `workers`: parallel decoders, each running its own ffmpeg process (0: one file at a time);
    `worker_kind="process"` drives them from spawned Python processes instead of threads.
    `limit`: only the first N files (sorted by relative path). `strict`: raise at the first bad file instead
    of skipping it. `codecs`: use these instead of the ones the config names (tests, or codecs already
    loaded). Raises DataError when no clip could be made at all, or when `cache_dir` holds a cache made with
    another config or from another folder.
    """
    started = time.perf_counter()
    if worker_kind not in WORKER_KINDS:
        raise ConfigError(f"worker kind: got {worker_kind!r}, expected one of {', '.join(WORKER_KINDS)}")
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(cfg)
    all_files = find_videos(data_dir, exclude=[cache_dir])  # a cache inside the data folder is not data
    # Classes come from the whole folder, so a --limit run and a full run agree on the labels.
    classes = class_names(data_dir, all_files) if cfg.data.class_folders else []
    files = all_files[:limit] if limit is not None else all_files
    if not files:
        raise DataError(f"no files under {data_dir} (hidden files are not read); give the folder of your videos")

    ctx = dist_context()
    dev = resolve_device(device, ctx)
    if codecs is None:
        codecs = build_codecs(cfg, dev, default_dtype(dev))
    header = CacheHeader(config_hash=cfg.cache_hash(), data=cfg.to_dict()["data"], codecs=codecs.describe(),
                         data_dir=str(data_dir.resolve()), classes=classes)

    def prepare() -> None:
        if ctx.is_main:
            check_or_write_header(cache_dir, header)
            remove_stale_temp_files(cache_dir)

    _on_all_ranks(ctx, prepare)

    shards = plan_shards(files, cfg.data.files_per_shard)
    rel = [[p.relative_to(data_dir).as_posix() for p in group] for group in shards]
    mine = [i for i in range(len(shards)) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if not shard_done(cache_dir, i, rel[i])]
    status = PreprocessStatus(files_total=sum(len(shards[i]) for i in todo), shards_total=len(todo))
    labels = {name: i for i, name in enumerate(classes)}

    def work() -> None:
        _make_shards(cfg, cache_dir, shards, rel, todo, labels, codecs, decode_executor(workers, worker_kind),
                     batch_size, strict, status, progress)

    _on_all_ranks(ctx, work)
    manifest = merge_manifest(cache_dir, len(shards)) if ctx.is_main else None
    ctx.barrier()
    if manifest is None:
        manifest = read_manifest(cache_dir)
    if manifest["num_clips"] == 0:
        raise DataError(f"no clip could be made from the {len(files)} file(s) under {data_dir}; "
                        f"see {cache_dir / SKIPPED} for the reasons")
    reasons: dict[str, int] = {}
    extensions: dict[str, int] = {}
    for s in manifest["skipped"]:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        extensions[extension(s["source"])] = extensions.get(extension(s["source"]), 0) + 1
    flags: dict[str, int] = {}
    for clip in manifest["clips"]:
        for name in clip.get("flags", []):
            flags[name] = flags.get(name, 0) + 1
    return PreprocessSummary(
        cache_dir=cache_dir,
        files_seen=len(files),
        clips=manifest["num_clips"],
        skipped_by_reason=reasons,
        hours=covered_seconds(manifest["clips"], cfg.data.clip_seconds) / 3600.0,
        cache_bytes=sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file()),
        shards_reused=len(mine) - len(todo),
        seconds=time.perf_counter() - started,
        skipped_by_extension=dict(sorted(extensions.items())),
        clips_by_flag=dict(sorted(flags.items())),
    )


def _on_all_ranks(ctx: DistContext, step: Callable[[], None]) -> None:
    """Run `step` on every rank, then synchronise; if it failed on any rank, raise on every rank."""
    error: Exception | None = None
    try:
        step()
    except Exception as err:  # re-raised below, once the other ranks know
        error = err
    if ctx.all_reduce_max(1.0 if error is not None else 0.0) > 0:  # also the barrier
        if error is not None:
            raise error
        raise DataError(f"preprocess stopped on another rank (rank {ctx.rank} of {ctx.world_size} stops too); "
                        "see that rank's error above")


def _make_shards(cfg: Config, cache_dir: Path, shards: list[list[Path]], rel: list[list[str]], todo: list[int],
                 labels: dict[str, int], codecs: Codecs, executor: Executor, batch_size: int, strict: bool,
                 status: PreprocessStatus, progress: Progress | None) -> None:
    stride = cfg.data.stride_seconds

    def submit(index: int) -> list[Future]:
        return [executor.submit(decode_file, str(p), cfg.data, stride) for p in shards[index]]

    try:
        # One shard of look-ahead: the workers decode shard k+1 while this process encodes shard k.
        pending = submit(todo[0]) if todo else []
        for n, index in enumerate(todo):
            futures = pending
            if n + 1 < len(todo):
                pending = submit(todo[n + 1])
            clips: list[Clip] = []
            rows: list[dict[str, Any]] = []
            skipped: list[dict[str, Any]] = []
            for source, fut in zip(rel[index], futures):
                decoded: DecodedFile = fut.result()
                problem = decoded.problem
                if problem is not None:
                    if strict:
                        raise DataError(f"{source}: {problem['message']} ({problem['reason']}); "
                                        "--strict stops at the first bad file")
                    skipped.append({"source": source, **problem})
                    status.skipped += 1
                parts = Path(source).parts
                label = labels.get(parts[0], -1) if len(parts) > 1 else -1
                for clip in decoded.clips:
                    clips.append(clip)
                    rows.append({"source": source, "start": round(float(clip.start), 6), "flags": list(clip.flags),
                                 "label": label, "streams": decoded.streams})
                status.files_done += 1
                if progress:
                    progress(status)
            tensors: dict[str, torch.Tensor] = {}
            if clips:
                video, audio = encode_clips(clips, codecs, batch_size)
                _check_shapes(video, audio, cfg.data)
                tensors = {
                    "video": video,  # (n, f, c, h, w)
                    "audio": audio,  # (n, c_a, T_a, M_a)
                    "label": torch.tensor([r["label"] for r in rows], dtype=torch.int64),  # (n,), -1: none
                    "flags": torch.tensor([flag_mask(r["flags"]) for r in rows], dtype=torch.int64),  # (n,)
                }
            write_shard(cache_dir, index, tensors, {"files": rel[index], "clips": rows, "skipped": skipped})
            status.clips += len(clips)
            status.shards_done += 1
            if progress:
                progress(status)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def covered_seconds(clips: Sequence[dict[str, Any]], clip_seconds: float) -> float:
    """Source time covered by the clips, per file the union of [start, start + clip_seconds)."""
    by_source: dict[str, list[float]] = {}
    for c in clips:
        by_source.setdefault(c["source"], []).append(float(c["start"]))
    total = 0.0
    for starts in by_source.values():
        starts.sort()
        for a, b in zip(starts, starts[1:] + [float("inf")]):
            total += min(clip_seconds, b - a)
    return total


