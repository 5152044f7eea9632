"""The ``mm-diffusion`` eval protocol: reading clips and scoring them the way MM-Diffusion's evaluator does.

What the evaluator does (researchmm/MM-Diffusion @7250222, ``eval_multimodal``), and how it is done here:

- **Clips.** torchvision ``VideoClips(clip_length_in_frames=16, frames_between_clips=1, frame_rate=10)`` over
  every video of a folder: every window of 16 frames at 10 fps, one frame apart. Resampling keeps source frame
  ``floor(k * fps / 10)`` (computed in float32), or every ``fps / 10``-th frame when that is a whole number
  (then ``ceil(n / step)`` frames remain, not ``floor(n * 10 / fps)``). :func:`list_windows` reads the frame
  timestamps once per file (cached by content).
- **Frames** (:func:`letterbox`, :func:`uint8_round_trip`): decoded at the stored size, letterboxed into
  64x64 with bicubic resampling and black bars, then the loader's ``/ 127.5 - 1`` and the evaluator's
  ``((x + 1) * 127.5).clamp(0, 255).to(uint8)``, which truncates. Then I3D's own preprocessing.
- **Audio** (:func:`window_audio`): moviepy 1.0.3 reading the clip's time span at 44.1 kHz, channel 0.
- **Draw.** The dataset order is a ``random.shuffle`` of all windows (unseeded; here a seeded numpy
  permutation), read in batches of 8 by an endless loader until N clips are in, then cut to N: a set with
  fewer than N clips is repeated, and the last batch may hold clips past N. The same happens here, so the
  AudioCLIP batches (whose BatchNorm uses batch statistics) hold the same clips as theirs would.

Costs: I3D logits are cached per clip; AudioCLIP embeddings per batch of 8 (keyed by the batch's clips),
both by :class:`FeatureCache` with the weights' sha256 and :data:`READER_VERSION` in the key.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from avdit_cli.data.media import MediaError, MediaInfo, ffmpeg_exe, probe
from avdit_cli.errors import DataError
from avdit_cli.metrics.audioclip import EVALUATOR_BATCH, AudioCLIPAudioFeatures
from avdit_cli.metrics.feature_cache import FeatureCache, sha256_file
from avdit_cli.metrics.i3d_400 import I3D400Features

CLIP_FRAMES = 16
FPS = 10.0
FRAME_SIZE = 64
AUDIO_RATE = 44100
AUDIO_SAMPLES = int(AUDIO_RATE * 1.6)  # 70560
VIDEO_SUFFIXES = (".mp4", ".avi", ".gif")  # what the loader lists (case-insensitive)
READER_VERSION = 1  # bump when the reading changes, so cached features are not reused

Progress = Callable[[str, int, int], None]  # stage, done, total


# ---------------------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class FileTimeline:
    """What the window listing needs of one file (cached): frame timestamps and rates."""

    pts: np.ndarray  # int64 presentation timestamps of the video frames, sorted, in the stream time base
    fps: float  # average frame rate, as torchvision's VideoClips takes it
    duration: float  # the container's duration (s): moviepy returns silence past it

    @property
    def resampled(self) -> np.ndarray:
        """Indices of the source frames kept at 10 fps (torchvision ``VideoClips._resample_video_idx``)."""
        n = len(self.pts)
        step = self.fps / FPS
        if float(step).is_integer():
            return np.arange(0, n, int(step))  # a slice with that step: ceil(n / step) frames
        kept = int(math.floor(n * FPS / self.fps))
        return np.floor(np.arange(kept, dtype=np.float32) * np.float32(step)).astype(np.int64)

    @property
    def windows(self) -> int:
        return max(0, len(self.resampled) - CLIP_FRAMES + 1)

    def frame_indices(self, window: int) -> np.ndarray:
        return self.resampled[window: window + CLIP_FRAMES]

    def time_span(self, window: int) -> tuple[float, float]:
        """(t0, t1) of the window's audio: first frame and just after the last, at the source rate, in float32
        as torch computes ``clip_pid / video_fps`` (frame ids are ``pts // (pts[1] - pts[0])``)."""
        idx = self.frame_indices(window)
        per_frame = int(self.pts[1] - self.pts[0]) if len(self.pts) > 1 else 1
        first, last = int(self.pts[idx[0]]) // per_frame, int(self.pts[idx[-1]]) // per_frame
        fps = np.float32(self.fps)
        return float(np.float32(first) / fps), float(np.float32(last + 1) / fps)


@dataclass(frozen=True)
class Window:
    """One clip of the protocol: window `index` of a file."""

    path: Path
    index: int
    label: str

    @property
    def name(self) -> str:
        return f"{self.label}#{self.index}"


def _packet_timestamps(info: MediaInfo) -> tuple[np.ndarray, float]:
    """Sorted video frame pts (stream time base) and the time base, from the demuxer (no decoding)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-copyts", "-i", "file:" + info.path,
           "-map", f"0:{info.video_index}", "-c", "copy", "-f", "framecrc", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    text = proc.stdout.decode(errors="replace")
    tb = re.search(r"^#tb \d+: (\d+)/(\d+)", text, re.M)
    rows = re.findall(r"^\d+,\s*-?\d+,\s*(-?\d+),\s*(\d+),", text, re.M)
    if proc.returncode != 0 or not tb or not rows:
        raise MediaError(info.path, "unreadable", "cannot list the video frames")
    pts = np.sort(np.array([int(p) for p, _ in rows], dtype=np.int64))
    return pts, int(tb.group(1)) / int(tb.group(2))


def read_timeline(path: Path) -> FileTimeline:
    """Frame timestamps and rates of one file; :class:`MediaError` when it has no video or no audio."""
    info = probe(path)
    if not info.has_video:
        raise MediaError(path, "not-a-video", "the file has no video stream")
    if not info.has_audio:
        raise MediaError(path, "no-audio", "the file has no audio stream; the protocol scores audio too")
    pts, tb = _packet_timestamps(info)
    # Average rate over the stream (what PyAV reports as average_rate for a constant-rate file).
    span = (pts[-1] - pts[0]) * tb
    fps = (len(pts) - 1) / span if len(pts) > 1 and span > 0 else (info.fps or FPS)
    if info.fps and abs(info.fps - round(info.fps)) < 1e-6 and abs(fps - round(info.fps)) < 1e-3:
        fps = float(round(info.fps))  # a whole rate stays whole, so the resampling step is exact
    return FileTimeline(pts=pts, fps=float(fps), duration=float(info.duration or span))


def list_windows(
    files: Sequence[Path], root: Path | None, cache: FeatureCache, progress: Progress | None = None,
    stage: str = "windows",
) -> tuple[list[Window], dict[Path, FileTimeline], list[MediaError]]:
    """Every window of every file, the files' timelines, and the files that give none (with the reason)."""
    windows: list[Window] = []
    timelines: dict[Path, FileTimeline] = {}
    skipped: list[MediaError] = []
    key = {"what": "mm-diffusion-timeline", "reader": READER_VERSION}
    for i, path in enumerate(files):
        label = path.relative_to(root).as_posix() if root is not None else path.name

        def compute(p: Path = path) -> np.ndarray:
            t = read_timeline(p)
            return np.concatenate([[t.fps, t.duration], t.pts.astype(np.float64)])

        try:
            row = cache.get_or_compute(path, key, compute)
        except MediaError as err:
            skipped.append(MediaError(label, err.reason, err.detail))
        except OSError as err:
            skipped.append(MediaError(label, "unreadable", f"cannot be read ({err.strerror})"))
        else:
            timeline = FileTimeline(pts=row[2:].astype(np.int64), fps=float(row[0]), duration=float(row[1]))
            if timeline.windows == 0:
                skipped.append(MediaError(label, "too-short", f"fewer than {CLIP_FRAMES} frames at {FPS:g} fps"))
            else:
                timelines[path] = timeline
                windows += [Window(path, w, label) for w in range(timeline.windows)]
        if progress is not None:
            progress(stage, i + 1, len(files))
    return windows, timelines, skipped


def video_files(folder: Path) -> list[Path]:
    """The videos the loader lists: .mp4, .avi and .gif anywhere under `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ reading
def letterbox(frames: np.ndarray | torch.Tensor, size: int = FRAME_SIZE) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> uint8 (n, size, size, 3) as the loader's ``process_video``.

    Scale by ``min(size / h, size / w)`` to ``int`` sizes with bicubic interpolation on float32, no antialias,
    ``align_corners=False``, then clamp, round and cast (torchvision's resize of a uint8 tensor before 0.17);
    pad with zeros, the smaller half of each margin first (``T.Pad``). A frame already of that size is kept.
    """
    x = torch.as_tensor(frames)
    _, h, w, _ = x.shape
    ratio = min(float(size) / h, float(size) / w)
    new_h, new_w = int(h * ratio), int(w * ratio)
    if (new_h, new_w) != (h, w):
        y = F.interpolate(rearrange(x, "n h w c -> n c h w").float(), size=(new_h, new_w), mode="bicubic",
                          align_corners=False, antialias=False)
        x = rearrange(y.clamp(0, 255).round().to(torch.uint8), "n c h w -> n h w c")
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(x, (0, 0, left, size - new_w - left, top, size - new_h - top))


def uint8_round_trip(frames: torch.Tensor) -> torch.Tensor:
    """The loader's ``x / 127.5 - 1`` then the evaluator's ``((x + 1) * 127.5).clamp(0, 255).to(uint8)`` in
    float32; the cast truncates, so values that come back a hair below an integer lose 1."""
    x = frames.float() / 127.5 - 1
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)


def window_audio(track: np.ndarray, duration: float, t0: float, t1: float) -> np.ndarray:
    """The window's audio as moviepy's ``AudioFileClip(fps=44100).subclip(t0, t1).to_soundarray()``, channel 0,
    cut or zero-padded to 70560 samples: float32 (70560,).

    `track` is channel 0 of the whole file at 44.1 kHz (float, / 32768). moviepy reads sample
    ``round(44100 * (k / 44100 + t0))`` for k < ``int(44100 * (t1 - t0))``, and silence at or past `duration`.
    """
    n = int(AUDIO_RATE * (t1 - t0))
    times = (1.0 / AUDIO_RATE) * np.arange(n) + t0
    index = np.round(AUDIO_RATE * times).astype(np.int64)
    ok = (times >= 0) & (times < duration) & (index < len(track))
    out = np.zeros(AUDIO_SAMPLES, dtype=np.float32)
    values = np.zeros(n, dtype=np.float32)
    values[ok] = track[index[ok]]
    out[: min(n, AUDIO_SAMPLES)] = values[:AUDIO_SAMPLES]
    return out


def decode_audio_track(path: Path) -> np.ndarray:
    """Channel 0 of the whole audio track at 44.1 kHz, float32 in [-1, 1): ffmpeg's default resampler to 2
    channels of s16, as moviepy 1.0.3 runs it (no -copyts: sample 0 is the start of the audio)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", "file:" + str(path), "-vn",
           "-f", "s16le", "-acodec", "pcm_s16le", "-ar", str(AUDIO_RATE), "-ac", "2", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["ffmpeg failed"]
        raise MediaError(path, "unreadable", f"ffmpeg cannot decode the audio: {last[0]}")
    samples = np.frombuffer(proc.stdout, dtype="<i2")
    return (samples[0::2].astype(np.float32) / 32768.0)  # channel 0


def decode_frames(path: Path, info: MediaInfo, keep: set[int], size: int = FRAME_SIZE) -> dict[int, torch.Tensor]:
    """Frames number `keep` of the video stream, decoded at the stored size (no auto-rotation, pixels as
    stored, like PyAV) and letterboxed to `size` one by one as they stream out of ffmpeg."""
    w, h = info.width or 0, info.height or 0
    if round(info.rotation / 90) % 2:  # probe reports the displayed size; frames come out unrotated
        w, h = h, w
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1", "-noautorotate",
           "-i", "file:" + info.path, "-map", f"0:{info.video_index}", "-an", "-sn", "-dn",
           "-vf", "scale=flags=bilinear,format=rgb24", "-fps_mode", "passthrough", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = w * h * 3
    if frame_bytes == 0:
        raise MediaError(info.path, "unreadable", "the video's frame size is unknown")
    out: dict[int, torch.Tensor] = {}
    last = max(keep)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None  # noqa: S101 (Popen with PIPE)
        for i in range(last + 1):
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            if i in keep:
                frame = np.frombuffer(buf, dtype=np.uint8).reshape(1, h, w, 3).copy()
                out[i] = letterbox(frame, size)[0]
        proc.kill()  # the frames after the last one needed are not wanted
    missing = keep - out.keys()
    if missing:
        raise MediaError(info.path, "unreadable", f"frame {min(missing)} could not be decoded")
    return out


@dataclass
class DecodedClip:
    frames: torch.Tensor  # uint8 (16, 64, 64, 3), after the round trip: what the I3D preprocessing gets
    audio: np.ndarray  # float32 (70560,) in [-1, 1]


def read_windows(path: Path, timeline: FileTimeline, windows: Sequence[int]) -> dict[int, DecodedClip]:
    """Several windows of one file, decoding it once."""
    info = probe(path)
    wanted = {int(i) for w in windows for i in timeline.frame_indices(w)}
    frames = decode_frames(path, info, wanted)
    track = decode_audio_track(path)
    out = {}
    for w in windows:
        video = torch.stack([frames[int(i)] for i in timeline.frame_indices(w)])  # (16, 64, 64, 3)
        t0, t1 = timeline.time_span(w)
        out[w] = DecodedClip(uint8_round_trip(video), window_audio(track, timeline.duration, t0, t1))
    return out


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class PaperExtractors:
    """The protocol's two extractors, loaded on the first cache miss; None where its weights are missing."""

    i3d_path: Path | None
    audioclip_path: Path | None
    device: str
    batch_size: int = EVALUATOR_BATCH
    i3d_sha256: str | None = None
    audioclip_sha256: str | None = None
    _i3d: I3D400Features | None = None
    _audioclip: AudioCLIPAudioFeatures | None = None

    def __post_init__(self) -> None:
        self.i3d_sha256 = sha256_file(self.i3d_path) if self.i3d_path else None
        self.audioclip_sha256 = sha256_file(self.audioclip_path) if self.audioclip_path else None

    def i3d(self) -> I3D400Features:
        if self._i3d is None:
            assert self.i3d_path is not None  # noqa: S101 (only called when the metric runs)
            self._i3d = I3D400Features(self.i3d_path, self.device, batch_size=self.batch_size)
        return self._i3d

    def audioclip(self) -> AudioCLIPAudioFeatures:
        if self._audioclip is None:
            assert self.audioclip_path is not None  # noqa: S101
            self._audioclip = AudioCLIPAudioFeatures(self.audioclip_path, self.device, batch_statistics=True)
        return self._audioclip

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per extractor: what its numbers depend on (model details only once it was loaded)."""
        out: dict[str, dict[str, Any]] = {}
        if self.i3d_path is not None:
            out["i3d-400"] = self._i3d.protocol if self._i3d else {"extractor": I3D400Features.name,
                                                                   "weights_sha256": self.i3d_sha256}
        if self.audioclip_path is not None:
            out["audioclip"] = self._audioclip.protocol if self._audioclip else {
                "extractor": AudioCLIPAudioFeatures.name, "weights_sha256": self.audioclip_sha256}
        return out


@dataclass
class ScoredSet:
    """Features of one set in the evaluator's order: rows may repeat when the set was short."""

    used: list[Window]  # one per row
    features: dict[str, np.ndarray] = field(default_factory=dict)  # "i3d-400" (n, 400), "audioclip" (n, 1024)
    skipped: list[MediaError] = field(default_factory=list)
    available: int = 0  # windows in the pool
    unique: int = 0  # distinct clips among the rows

    @property
    def repeated(self) -> bool:
        return self.unique < len(self.used)


def _batches(epoch: Sequence[int], need: int, batch: int = EVALUATOR_BATCH) -> list[list[int]]:
    """The evaluator's batches: `batch` clips at a time through the epoch, epoch after epoch, until at least
    `need` clips are in (the last batch of an epoch may be short)."""
    out: list[list[int]] = []
    count = 0
    while count < need:
        for b in range(0, len(epoch), batch):
            out.append(list(epoch[b: b + batch]))
            count += len(out[-1])
            if count >= need:
                break
    return out


def score_set(pool: Sequence[Window], timelines: dict[Path, FileTimeline], need: int, seed: int,
              extractors: PaperExtractors, cache: FeatureCache, stage: str,
              progress: Progress | None = None) -> ScoredSet:
    """Features of `need` clips drawn from `pool` as the evaluator would have them (see the module doc)."""
    result = ScoredSet(used=[], available=len(pool))
    if not pool:
        return result
    order = np.random.default_rng(seed).permutation(len(pool))
    target = math.ceil(need / EVALUATOR_BATCH) * EVALUATOR_BATCH  # the last batch may reach past `need`
    i3d_rows: dict[int, np.ndarray] = {}
    audio: dict[int, np.ndarray] = {}  # waveforms decoded along the way (for the AudioCLIP batches)
    good: list[int] = []
    taken = 0
    i3d_key = {"extractor": I3D400Features.name, "weights_sha256": extractors.i3d_sha256,
               "protocol": "mm-diffusion", "reader": READER_VERSION}
    while len(good) < target and taken < len(pool):
        chunk = order[taken: taken + target - len(good)].tolist()
        taken += len(chunk)
        ok = _score_chunk(chunk, pool, timelines, extractors, cache, i3d_key, i3d_rows, audio, result)
        good += [i for i in chunk if i in ok]
        if progress is not None:
            progress(stage, min(len(good), need), min(need, len(pool)))
    if not good:
        return result
    exhausted = taken >= len(pool)
    batches = _batches(good if exhausted else good[:target], need)
    sequence = [i for b in batches for i in b][:need]
    result.used = [pool[i] for i in sequence]
    result.unique = len(set(sequence))
    if extractors.i3d_path is not None:
        result.features["i3d-400"] = np.stack([i3d_rows[i] for i in sequence])
    if extractors.audioclip_path is not None:
        rows = _audioclip_batches(batches, pool, timelines, extractors, cache, audio)
        result.features["audioclip"] = np.concatenate(rows)[:need]
    return result


def _score_chunk(chunk: list[int], pool: Sequence[Window], timelines: dict[Path, FileTimeline],
                 extractors: PaperExtractors, cache: FeatureCache, i3d_key: dict[str, Any],
                 i3d_rows: dict[int, np.ndarray], audio: dict[int, np.ndarray], result: ScoredSet) -> set[int]:
    """Decode what is needed of a chunk of the draw (file by file) and compute the I3D logits; the pool
    indices that gave a usable clip."""
    ok: set[int] = set()
    by_file: dict[Path, list[int]] = {}
    for i in sorted(chunk):
        by_file.setdefault(pool[i].path, []).append(i)
    pending: list[tuple[int, torch.Tensor]] = []  # (pool index, frames) waiting for a batch of I3D

    def flush() -> None:
        if not pending:
            return
        logits = extractors.i3d()(torch.stack([f for _, f in pending]))
        for (i, _), row in zip(pending, logits, strict=True):
            i3d_rows[i] = cache.get_or_compute(pool[i].path, {**i3d_key, "window": pool[i].index}, lambda r=row: r)
        pending.clear()

    for path, indices in by_file.items():
        need_decode = []
        for i in indices:
            row = _cached(cache, path, {**i3d_key, "window": pool[i].index}) if extractors.i3d_path else None
            if row is None:
                need_decode.append(i)
            else:  # cached logits: a usable clip, nothing to decode
                i3d_rows[i] = row
                ok.add(i)
        if not need_decode:
            continue
        try:
            clips = read_windows(path, timelines[path], [pool[i].index for i in need_decode])
        except MediaError as err:
            result.skipped += [MediaError(pool[i].name, err.reason, err.detail) for i in need_decode]
            continue
        for i in need_decode:
            clip = clips[pool[i].index]
            audio[i] = clip.audio
            ok.add(i)
            if extractors.i3d_path is not None:
                pending.append((i, clip.frames))
                if len(pending) >= extractors.batch_size:
                    flush()
    flush()
    return ok


def _cached(cache: FeatureCache, path: Path, key_parts: dict[str, Any]) -> np.ndarray | None:
    """The cached row, or None (not there, unreadable, or the media file cannot be hashed)."""
    try:
        entry = cache.entry_path(cache.key(path, key_parts))
        if not entry.is_file():
            return None
        row = np.load(entry, allow_pickle=False)
    except (OSError, ValueError):
        return None
    cache.hits += 1
    return row


def _audioclip_batches(batches: list[list[int]], pool: Sequence[Window], timelines: dict[Path, FileTimeline],
                       extractors: PaperExtractors, cache: FeatureCache,
                       audio: dict[int, np.ndarray]) -> list[np.ndarray]:
    """AudioCLIP embeddings batch by batch (a batch's BatchNorm statistics are its own), cached per batch."""
    key = {"extractor": AudioCLIPAudioFeatures.name, "weights_sha256": extractors.audioclip_sha256,
           "protocol": "mm-diffusion", "reader": READER_VERSION}
    done: dict[tuple[int, ...], np.ndarray] = {}
    out = []
    for batch in batches:
        ident = tuple(batch)
        if ident not in done:
            members = [[cache.content_hash(pool[i].path), pool[i].index] for i in batch]

            def compute(b: list[int] = batch) -> np.ndarray:
                waves = [audio[i] if i in audio else _reread_audio(pool[i], timelines) for i in b]
                return extractors.audioclip()(np.stack(waves))

            done[ident] = cache.get_or_compute(pool[batch[0]].path, {**key, "batch": members}, compute)
        out.append(done[ident])
    return out


def _reread_audio(window: Window, timelines: dict[Path, FileTimeline]) -> np.ndarray:
    """The audio of a clip whose I3D logits were cached but whose batch was not (e.g. another sample count)."""
    timeline = timelines[window.path]
    t0, t1 = timeline.time_span(window.index)
    return window_audio(decode_audio_track(window.path), timeline.duration, t0, t1)


def need_pool(windows: Sequence[Window], folder: Path, what: str) -> None:
    if not windows:
        raise DataError(f"no clip of {CLIP_FRAMES} frames at {FPS:g} fps with audio in {folder} ({what})")
