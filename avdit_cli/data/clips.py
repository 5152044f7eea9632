"""Cutting decoded media into fixed clips (DESIGN section 4): ``num_frames`` frames at ``fps`` and the
``clip_samples`` audio samples that start at the clip's first frame.

Windows start every ``stride`` seconds (default: one clip length, so clips do not overlap), rounded to the
nearest frame; a window's audio starts at ``start_frame / fps``. Every clip has exactly ``num_frames`` frames
and exactly ``clip_samples`` samples. Flags (the names stored in the cache manifest):

- ``audio-padded``: part of the window has no audio from the file: the audio ends inside it (zero-padded), or
  starts more than one frame (1 / fps) after it begins (the silence the reader put in front,
  ``AudioTrack.lead``). Within one frame the sound still shares its frame with the picture, and audio that
  starts a few tens of milliseconds late is common (encoder delay, ASF preroll): not worth a clip's audio;
- ``audio-silent``: the file's audio track is silent as a whole: no sample reaches -60 dBFS
  (:func:`avdit_cli.data.mixdown.is_silent`), e.g. an all-zero or muted track. Every clip of such a file has
  the flag. A quiet window inside a track that has sound elsewhere is not flagged: that silence is real.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avdit_cli.config import DataConfig
from avdit_cli.data.media import MediaError, MediaInfo, check_complete, probe, read_audio_track, read_video
from avdit_cli.data.mixdown import is_silent
from avdit_cli.errors import ConfigError

AUDIO_PADDED = "audio-padded"
AUDIO_SILENT = "audio-silent"


@dataclass(frozen=True)
class Clip:
    start: float  # seconds from the file's first video frame
    frames: np.ndarray  # uint8 (f, h, w, 3)
    audio: np.ndarray  # float32 (n,), n = data_cfg.clip_samples
    flags: tuple[str, ...] = ()


def _stride_frames(data_cfg: DataConfig, stride_seconds: float | None) -> float:
    stride = stride_seconds if stride_seconds is not None else data_cfg.stride_seconds
    if stride is None:
        return float(data_cfg.num_frames)
    if stride <= 0:
        raise ConfigError(f"stride: got {stride!r} seconds, expected a number > 0 (or none for non-overlapping clips)")
    return stride * data_cfg.fps


def cut_clips(frames: np.ndarray, audio: np.ndarray, data_cfg: DataConfig, stride_seconds: float | None = None,
              source: str = "input", audio_lead: int = 0) -> list[Clip]:
    """Cut (f, h, w, 3) frames at ``data_cfg.fps`` and mono audio at ``data_cfg.sample_rate`` into clips.

    ``stride_seconds`` overrides ``data_cfg.stride_seconds`` (None: non-overlapping). ``audio_lead``: how many
    samples at the start of ``audio`` are silence put in front of a late audio stream (flagged like padding
    where a window holds more than one frame of it).
    Raises ``too-short`` when not even one clip fits in the frames. ``source`` only names the input in that error.
    """
    f_clip, n_clip = data_cfg.num_frames, data_cfg.clip_samples
    if len(frames) < f_clip:
        raise MediaError(source, "too-short",
                         f"{len(frames) / data_cfg.fps:.2f} s of video, a clip needs {data_cfg.clip_seconds:.2f} s")
    step = _stride_frames(data_cfg, stride_seconds)
    silent_track = is_silent(audio[audio_lead:])
    frame_samples = data_cfg.sample_rate / data_cfg.fps
    clips: list[Clip] = []
    k = 0
    while (f0 := round(k * step)) + f_clip <= len(frames):
        # audio starts at the clip's first frame time, rounded to the nearest sample
        a0 = round(f0 / data_cfg.fps * data_cfg.sample_rate)
        piece = np.asarray(audio[a0: a0 + n_clip], dtype=np.float32)
        flags: tuple[str, ...] = ()
        if len(piece) < n_clip or audio_lead - a0 > frame_samples:
            piece = np.pad(piece, (0, n_clip - len(piece)))
            flags += (AUDIO_PADDED,)
        if silent_track:
            flags += (AUDIO_SILENT,)
        clips.append(Clip(start=f0 / data_cfg.fps, frames=np.ascontiguousarray(frames[f0: f0 + f_clip]),
                          audio=np.ascontiguousarray(piece), flags=flags))
        k += 1
    return clips


def load_clips(path: str | Path, data_cfg: DataConfig, stride_seconds: float | None = None,
               info: MediaInfo | None = None) -> list[Clip]:
    """probe + read + cut: the clips of one media file (what preprocess's workers call).

    ``info``: the file's :func:`probe` result when the caller has it already (it says which streams are used).
    Raises :class:`MediaError` (a ``DataError``) with a ``reason`` for any file that gives no clip.
    """
    info = info or probe(path)
    if not info.has_video:
        raise MediaError(path, "not-a-video", "the file has no video stream")
    if not info.has_audio:
        raise MediaError(path, "no-audio", "the file has no audio stream")
    # Cheap early exit before decoding: the container duration bounds the video's length.
    if info.duration is not None and not info.duration_estimated and \
            info.duration + 0.5 / data_cfg.fps < data_cfg.clip_seconds:
        raise MediaError(path, "too-short", f"{info.duration:.2f} s long, a clip needs {data_cfg.clip_seconds:.2f} s")
    frames = read_video(path, data_cfg.fps, data_cfg.frame_size, info=info, check=False)
    track = read_audio_track(path, data_cfg.sample_rate, info=info, check=False)
    # Truncation: the longer stream decides, since either may legitimately end before the other.
    check_complete(info, max(len(frames) / data_cfg.fps, len(track.samples) / data_cfg.sample_rate))
    return cut_clips(frames, track.samples, data_cfg, stride_seconds, source=str(path), audio_lead=track.lead)
