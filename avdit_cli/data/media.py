"""Media I/O through the ffmpeg binary shipped by ``imageio-ffmpeg`` (no system ffmpeg or ffprobe needed).

Inputs. Any file ffmpeg can open is tried, whatever its extension (``.mp4 .mov .mkv .webm .avi .m4v .3gp
.ts .m2ts .mpg .vob .flv .wmv .ogv ...``), except files whose extension says they hold no video with sound
(``NOT_MEDIA_EXTENSIONS``: text, subtitles, playlists, images, archives, arrays), which are refused unopened.

Streams. Of several video or audio streams, the one marked *default* is used, else the first (what ffmpeg's
players pick); cover art ("attached pic") is never the video. ``MediaInfo.video_index`` / ``audio_index``
say which (ffmpeg's absolute stream numbers, as in ``-map 0:N``).

Timeline. Every command runs with ``-copyts`` so timestamps are the ones stored in the file. ``probe`` decodes
the first video and audio frame to learn where each stream really starts (container start times can differ
from the first decoded frame: edit lists, codec delay). The clip timeline starts at the first *video* frame:
``read_video`` shifts it to 0 and samples frames by timestamp at the target fps (frame k shows time k / fps).
``read_audio_track`` decodes the audio from its own first sample (gaps inside the stream are filled with
silence at the source rate), resamples it with soxr, and only then places it on the clip timeline: silence
in front when the audio starts after the first frame (``AudioTrack.lead`` samples), samples dropped when it
starts before. Doing the placement after resampling, by sample count, keeps it exact for any delay: letting
``aresample`` pad the start (``first_pts``) while soxr resamples lost or shifted the audio of late streams.
Channels are mixed to mono in numpy (:mod:`avdit_cli.data.mixdown`), so any channel count works.

Errors. Every unusable input is a :class:`MediaError` (a :class:`DataError`) with a machine-usable ``reason``:

- ``missing``: no such file; ``unreadable``: cannot be opened or ffmpeg failed for another reason (the message
  carries ffmpeg's first error line);
- ``empty-file``: zero bytes; ``not-a-video``: not a media file, or no video stream (cover art does not count);
- ``no-audio``: no audio stream where audio is needed; ``too-short``: shorter than what was asked for;
- ``truncated``: the file was cut off. Decided by (a) the mp4 index ("moov atom") missing from a file that
  otherwise looks like an mp4, (b) the demuxer reporting a partial file, or (c) the decoded length falling
  short of the duration in the header: ``max(video, audio) < 0.9 * expected - 0.25 s``. The longer of the two
  streams is used in (c) so that a file whose audio legitimately outlasts its video is not called truncated;
  when ffmpeg only estimated the duration from the bitrate, (c) is skipped. Containers disagree on what
  their duration means when the timestamps do not start at 0: mp4, ogg, flv and MPEG report the length,
  Matroska/WebM and ASF report the end time. ``expected`` is the shorter of the two readings that is
  possible, so a complete file is never called truncated. The readers apply (c) alone only to a file with
  one kind of stream; ``clips.load_clips`` applies it to both streams together.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from avdit_cli.data.mixdown import downmix
from avdit_cli.errors import DataError

READER_VERSION = 2  # bump when what the readers return for a file changes (eval's feature cache, latent cache)
TRUNCATION_RATIO = 0.9  # decoded / header duration below this (minus the slack) means "truncated"
TRUNCATION_SLACK_S = 0.25
MAX_MESSAGE = 200  # characters of ffmpeg's error line kept in a message
_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "4.1": 5, "5.0": 5, "5.1": 6,
             "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8}
# Extensions of files that never hold a video with sound: refused without starting ffmpeg. Playlists and
# manifests are here because ffmpeg would follow them to other files, which are taken on their own.
NOT_MEDIA_EXTENSIONS = frozenset({
    ".txt", ".md", ".rst", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".html", ".htm",
    ".log", ".ini", ".toml", ".srt", ".vtt", ".ass", ".ssa", ".sub", ".idx",
    ".m3u", ".m3u8", ".pls", ".xspf", ".cue", ".ffconcat", ".sdp", ".mpd",
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".svg", ".ico",
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst",
    ".npy", ".npz", ".pt", ".pth", ".ckpt", ".safetensors", ".pkl", ".pickle", ".h5", ".hdf5", ".parquet",
    ".arrow", ".db", ".pdf", ".py", ".sh", ".ipynb",
})


class MediaError(DataError):
    """A media file cannot be used; ``reason`` is a short machine-usable tag (see the module doc)."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {detail} ({reason})")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # so it crosses a process pool intact
        return (MediaError, (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class MediaInfo:
    """What ``ffmpeg -i`` and the first decoded frames say about a file. Times in seconds."""

    path: str
    duration: float | None  # container duration (a length or an end time, see the module doc); None: unknown
    duration_estimated: bool  # ffmpeg guessed the duration from the bitrate
    start_time: float  # container start
    has_video: bool
    has_audio: bool
    video_index: int | None = None  # absolute stream index of the stream used, for -map 0:N
    audio_index: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int | None = None  # as displayed: after rotation, before the sample aspect ratio
    height: int | None = None
    sar: float = 1.0  # sample (pixel) aspect ratio
    rotation: float = 0.0
    fps: float | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None  # None when ffmpeg names a layout this module does not know
    audio_layout: str | None = None  # as ffmpeg prints it: "stereo", "5.1(side)", "9 channels", ...
    video_start: float | None = None  # pts of the first decoded video frame
    audio_start: float | None = None  # pts of the first decoded audio frame
    video_streams: int = 0  # how many video streams (cover art excluded) and audio streams the file has
    audio_streams: int = 0

    @property
    def timeline_start(self) -> float:
        """Where the clip timeline starts: the first video frame (the first audio frame without video)."""
        for t in (self.video_start, self.audio_start):
            if t is not None:
                return t
        return self.start_time


@dataclass(frozen=True)
class AudioTrack:
    """A file's audio as mono samples on the clip timeline (sample 0 = the first video frame's time)."""

    samples: np.ndarray  # float32 (n,), in [-1, 1] for integer sources
    sample_rate: int  # Hz
    lead: int  # samples at the start that are silence put in front: the stream starts after the first frame
    channels: int  # channels of the source stream
    flipped: tuple[int, ...] = ()  # source channels whose polarity was flipped before averaging (mixdown)


# ----------------------------------------------------------------------------------------------------------
# Running ffmpeg
# ----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The bundled ffmpeg binary."""
    try:
        import imageio_ffmpeg
    except ImportError as err:  # a broken install, not user input
        raise DataError("imageio-ffmpeg is not installed; run `pip install imageio-ffmpeg`") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def _input_arg(path: Path) -> str:
    # "file:" stops ffmpeg reading a name with a colon as a protocol (e.g. "http:x.mp4" or "a:b.mp4").
    return "file:" + str(path)


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # -nostdin unless we feed stdin: ffmpeg would otherwise read keystrokes from the terminal
    cmd = [ffmpeg_exe(), "-hide_banner", *(["-nostdin"] if stdin is None else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, check=False)


# ffmpeg's log with "-loglevel level+...": "[ctx @ 0x55..] [ctx2 @ 0x55..] [error] message", or "[info] text".
_LOG_CONTEXT = re.compile(r"^(?:\[[^\[\]]* @ (?:0x)?[0-9a-fA-F]+\] )*")
_LOG_LEVEL = re.compile(r"^\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ")


def _log(stderr: str) -> list[tuple[str, str]]:
    """(level, text) per line of a ``level``-tagged ffmpeg log; the context tags are dropped."""
    entries: list[tuple[str, str]] = []
    level = "info"
    for line in stderr.splitlines():
        text = line[_LOG_CONTEXT.match(line).end():]  # type: ignore[union-attr]  # the pattern always matches
        tag = _LOG_LEVEL.match(text)
        if tag:  # an untagged line continues the message above it
            level, text = tag.group(1), text[tag.end():]
        entries.append((level, text))
    return entries


def first_error(stderr: str) -> str:
    """ffmpeg's first error line (the cause; later lines are its consequences), as one trimmed line."""
    entries = [(level, " ".join(text.split())) for level, text in _log(stderr)]
    entries = [(level, text) for level, text in entries if text]
    errors = [text for level, text in entries if level in ("panic", "fatal", "error")]
    line = errors[0] if errors else entries[-1][1] if entries else "ffmpeg failed without a message"
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MediaError(path, "missing", "no such file") from None
    except OSError as err:
        raise MediaError(path, "unreadable", f"cannot be read ({err.strerror})") from None
    if not path.is_file():
        raise MediaError(path, "unreadable", "not a regular file")
    if size == 0:
        raise MediaError(path, "empty-file", "the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "unreadable", "no permission to read the file")
    check_media_name(path)


def check_media_name(path: str | Path) -> None:
    """Raise ``not-a-video`` for a file whose extension is in ``NOT_MEDIA_EXTENSIONS`` (reads nothing)."""
    ext = Path(path).suffix.lower()
    if ext in NOT_MEDIA_EXTENSIONS:
        raise MediaError(path, "not-a-video", f"{ext} files hold no video with sound (not opened)")


def _open_error(path: Path, stderr: str) -> MediaError:
    """Classify why ffmpeg could not open an input."""
    low = stderr.lower()
    if "moov atom not found" in low and "misdetection possible" not in low:
        # an mp4/mov header was found, but not its index: the writer never finished (cut-off download or copy)
        return MediaError(path, "truncated", "the mp4 index (moov atom) is missing: the file is incomplete")
    if "invalid data found" in low or "misdetection possible" in low or "could not find codec" in low:
        return MediaError(path, "not-a-video", "not a media file ffmpeg can read")
    if "permission denied" in low:
        return MediaError(path, "unreadable", "no permission to read the file")
    return MediaError(path, "unreadable", f"ffmpeg cannot open it: {first_error(stderr)}")


# ----------------------------------------------------------------------------------------------------------
# probe
# ----------------------------------------------------------------------------------------------------------
_DURATION = re.compile(r"Duration:\s*(?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)(?:,\s*start:\s*(-?\d+(?:\.\d+)?))?")
_STREAM = re.compile(r"^\s*Stream #0:(\d+)\S*:\s*(Video|Audio):\s*(.*)$")
_SIZE = re.compile(r"(?:^|[\s,(])(\d+)x(\d+)(?=[\s,\[]|$)")
_SAR = re.compile(r"\[SAR (\d+):(\d+)")
_FPS = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)")
_HZ = re.compile(r"(\d+) Hz,\s*((?:[^,(]|\([^)]*\))+)")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def _channels(layout: str) -> int | None:
    """Channel count of a layout as ffmpeg prints it: "stereo", "5.1(side)", "9 channels", "FL+FR+LFE"."""
    layout = layout.strip()
    m = re.match(r"(\d+) channels", layout)
    if m:
        return int(m.group(1))
    if "+" in layout and "(" not in layout:  # a custom layout spelled out channel by channel
        return layout.count("+") + 1
    return _CHANNELS.get(layout.split("(")[0])


def _video_fields(index: int, rest: str, side_data: str) -> dict | None:
    """MediaInfo fields of one video stream line, or None for a stream that is no picture track."""
    if "attached pic" in rest:  # cover art
        return None
    size = _SIZE.search(rest)
    if not size:
        return None
    w, h = int(size.group(1)), int(size.group(2))
    sar = _SAR.search(rest)
    rates = {unit: float(v) * (1000 if k else 1) for v, k, unit in _FPS.findall(rest)}
    rot = _ROTATION.search(side_data)
    rotation = float(rot.group(1)) if rot else 0.0
    if round(rotation / 90) % 2:  # ffmpeg auto-rotates: the frames we get are transposed
        w, h = h, w
    sar_value = 1.0
    if sar and int(sar.group(1)) and int(sar.group(2)):  # "SAR 0:1" means unknown: square
        sar_value = int(sar.group(1)) / int(sar.group(2))
    return dict(video_index=index, video_codec=rest.split()[0].rstrip(",") if rest.split() else None, width=w,
                height=h, sar=sar_value, rotation=rotation, fps=rates.get("fps") or rates.get("tbr"))


def _audio_fields(index: int, rest: str) -> dict:
    hz = _HZ.search(rest)
    layout = hz.group(2).strip() if hz else None
    return dict(audio_index=index, audio_codec=rest.split()[0].rstrip(",") if rest.split() else None,
                audio_rate=int(hz.group(1)) if hz else None, audio_layout=layout,
                audio_channels=_channels(layout) if layout else None)


def _pick(streams: list[tuple[bool, dict]]) -> dict | None:
    """The stream a player uses: the first marked default, else the first."""
    for is_default, fields in streams:
        if is_default:
            return fields
    return streams[0][1] if streams else None


def _parse_header(lines: list[str]) -> dict:
    text = "\n".join(lines)
    out: dict = {"duration": None, "duration_estimated": "estimating duration from bitrate" in text.lower(),
                 "start_time": 0.0, "has_video": False, "has_audio": False}
    m = _DURATION.search(text)
    if m and m.group(1) is not None:
        out["duration"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    if m and m.group(4) is not None:
        out["start_time"] = float(m.group(4))
    videos: list[tuple[bool, dict]] = []
    audios: list[tuple[bool, dict]] = []
    for i, line in enumerate(lines):
        s = _STREAM.match(line)
        if not s:
            continue
        index, kind, rest = int(s.group(1)), s.group(2), s.group(3)
        is_default = "(default)" in rest
        if kind == "Video":
            # side data (rotation) is printed on the lines after the stream line, before the next stream
            tail = "\n".join(lines[i + 1: i + 8]).split("Stream #")[0]
            fields = _video_fields(index, rest, tail)
            if fields is not None:
                videos.append((is_default, fields))
        else:
            audios.append((is_default, _audio_fields(index, rest)))
    video, audio = _pick(videos), _pick(audios)
    if video is not None:
        out.update(has_video=True, **video)
    if audio is not None:
        out.update(has_audio=True, **audio)
    out.update(video_streams=len(videos), audio_streams=len(audios))
    return out


def _first_pts(path: Path, index: int, kind: str) -> float | None:
    """Timestamp (s) of the first decoded frame of stream `index`, from ffmpeg's ``framecrc`` listing.

    framecrc goes to stdout, unlike ``showinfo`` whose log lines can be lost when filter threads log at once;
    one process per stream keeps the listing unmixed. ``-enc_time_base demux`` keeps the stored time base.
    """
    codec = ["-c:v", "rawvideo", "-frames:v", "1", "-fps_mode", "passthrough", "-enc_time_base:v", "demux"]
    if kind == "audio":
        codec = ["-c:a", "pcm_s16le", "-frames:a", "1"]
    proc = _run(["-loglevel", "error", "-threads", "1", "-copyts", "-i", _input_arg(path), "-map", f"0:{index}", *codec,
                 "-f", "framecrc", "pipe:1"])
    text = proc.stdout.decode(errors="replace")
    tb = re.search(r"^#tb \d+: (\d+)/(\d+)", text, re.M)
    row = re.search(r"^\d+,\s*-?\d+,\s*(-?\d+),", text, re.M)
    if not (tb and row) or int(tb.group(2)) == 0:
        return None
    return int(row.group(1)) * int(tb.group(1)) / int(tb.group(2))


def probe(path: str | Path) -> MediaInfo:
    """Streams, sizes, rates and start times of a media file; :class:`MediaError` when it cannot be opened.

    Picks the video and audio stream to use (default disposition, else the first; see the module doc).
    """
    path = Path(path)
    _check_file(path)
    # exits 1 ("no output file"): the header on stderr is what we want; "level" tags each line with its level
    proc = _run(["-loglevel", "level+info", "-i", _input_arg(path)])
    stderr = proc.stderr.decode(errors="replace")
    lines = [text for _, text in _log(stderr)]
    if not any(line.startswith("Input #0") for line in lines):
        raise _open_error(path, stderr)
    header = _parse_header(lines)
    if not (header["has_video"] or header["has_audio"]):
        raise MediaError(path, "not-a-video", "no video or audio stream in the file")
    if header["has_video"]:
        header["video_start"] = _first_pts(path, header["video_index"], "video")
    if header["has_audio"]:
        header["audio_start"] = _first_pts(path, header["audio_index"], "audio")
    return MediaInfo(path=str(path), **header)


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------
def check_complete(info: MediaInfo, decoded_seconds: float) -> None:
    """Raise ``truncated`` when the decoded length (seconds from the timeline start) falls far short of what the
    header promises (see the module doc for how the header's duration is read)."""
    if info.duration is None or info.duration_estimated:
        return
    t0 = info.timeline_start
    ends = [info.start_time + info.duration]  # the duration read as a length (mp4, ogg, flv, MPEG)
    if info.duration > t0:
        ends.append(info.duration)  # ... or as the end time (Matroska, ASF), where that is possible
    expected = min(ends) - t0
    if decoded_seconds < TRUNCATION_RATIO * expected - TRUNCATION_SLACK_S:
        raise MediaError(info.path, "truncated",
                         f"only {decoded_seconds:.2f} s of {expected:.2f} s could be decoded: the file is incomplete")


def _decode(info: MediaInfo, args: list[str], what: str) -> bytes:
    # One decoder thread: preprocess runs one ffmpeg per worker at once, and these clips are small.
    proc = _run(["-loglevel", "level+error", "-threads", "1", "-copyts", "-i", _input_arg(Path(info.path)), *args])
    stderr = proc.stderr.decode(errors="replace")
    if "partial file" in stderr.lower():
        raise MediaError(info.path, "truncated", f"the {what} data stops before the end the header promises")
    if proc.returncode != 0:
        raise MediaError(info.path, "unreadable", f"ffmpeg failed to decode the {what}: {first_error(stderr)}")
    return proc.stdout


def _need_video(info: MediaInfo) -> None:
    if not info.has_video:
        raise MediaError(info.path, "not-a-video", "the file has no video stream")


def read_video(path: str | Path, fps: float, size: int, info: MediaInfo | None = None,
               check: bool = True) -> np.ndarray:
    """Frames sampled by timestamp at ``fps``, short side resized to ``size`` then centre-cropped.

    Frame k is the source frame shown at time k / fps after the first frame (ffmpeg's ``fps`` filter).
    Non-square pixels are made square first and rotated phone videos come out upright.
    Returns uint8 (f, size, size, 3) RGB. ``check``: raise ``truncated`` when the demuxer reports a partial
    file, or, for a file without audio, when the decoded length is short (with audio, ``load_clips`` checks the
    longer of the two streams, since either may legitimately end before the other).
    """
    info = info or probe(path)
    _need_video(info)
    # Short side -> size, other side rounded up so the crop always fits; sar makes the pixels square.
    dw = "iw*sar"
    w = f"'if(lt({dw},ih),{size},ceil({size}*{dw}/ih))'"
    h = f"'if(lt({dw},ih),ceil({size}*ih/({dw})),{size})'"
    vf = (f"setpts=PTS-STARTPTS,fps=fps={fps!r}:round=up,scale=w={w}:h={h}:flags=bicubic,setsar=1,"
          f"format=rgb24,crop={size}:{size}")
    raw = _decode(info, ["-map", f"0:{info.video_index}", "-an", "-sn", "-dn", "-vf", vf,
                         "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], "video")
    frame_bytes = size * size * 3
    n = len(raw) // frame_bytes
    if n == 0:
        raise MediaError(info.path, "unreadable", "no video frame could be decoded")
    frames = np.frombuffer(raw, dtype=np.uint8, count=n * frame_bytes).reshape(n, size, size, 3)  # f h w c
    if check and not info.has_audio:  # with audio, only both lengths together tell (see load_clips)
        check_complete(info, n / fps)
    return frames.copy()  # writable, owns its memory


def _wav_channels(raw: bytes, path: str) -> np.ndarray:
    """float32 (n, c) samples of the WAV (pcm_f32le) ffmpeg wrote to a pipe.

    WAV because its header carries the channel count ffmpeg actually decoded (RIFF spec: "fmt " chunk, bytes
    2-3), which a layout name may not tell; over a pipe ffmpeg cannot go back to fill in the sizes, so the
    data chunk runs to the end.
    """
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise MediaError(path, "unreadable", "ffmpeg returned no audio")
    pos, channels = 12, 0
    while pos + 8 <= len(raw):
        chunk, size = raw[pos: pos + 4], int.from_bytes(raw[pos + 4: pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt " and size >= 4:
            channels = int.from_bytes(raw[body + 2: body + 4], "little")
        elif chunk == b"data":
            if channels < 1:
                break
            data = raw[body:] if size == 0xFFFFFFFF else raw[body: body + size]
            n = len(data) // (4 * channels)
            return np.frombuffer(data, dtype="<f4", count=n * channels).reshape(n, channels)
        pos = body + size + (size & 1)  # chunks are padded to an even length
    raise MediaError(path, "unreadable", "ffmpeg returned audio without a channel count or data")


def read_audio_track(path: str | Path, sample_rate: int, info: MediaInfo | None = None,
                     check: bool = True) -> AudioTrack:
    """The audio stream (see the module doc for which one) as mono float32 at ``sample_rate`` Hz, aligned so that
    sample 0 is the first video frame's time.

    Any channel count is mixed to mono by averaging (:func:`avdit_cli.data.mixdown.downmix`: unit gain, and a
    channel in opposite polarity is flipped rather than cancelled). ``check``: as in :func:`read_video`, for a
    file without video. Raises ``no-audio`` without an audio stream, ``unreadable`` with ffmpeg's first error.
    """
    info = info or probe(path)
    if not info.has_audio:
        raise MediaError(info.path, "no-audio", "the file has no audio stream")
    sr = int(sample_rate)
    # From the stream's own first sample: async=1 fills gaps (> 0.1 s) with silence at the source rate, then
    # soxr changes the rate and nothing else. The placement on the timeline happens below, in samples.
    af = f"asetpts=PTS-STARTPTS,aresample=async=1,aresample={sr}:resampler=soxr"
    raw = _decode(info, ["-map", f"0:{info.audio_index}", "-vn", "-sn", "-dn", "-af", af, "-c:a", "pcm_f32le",
                         "-f", "wav", "pipe:1"], "audio")
    channels = _wav_channels(raw, info.path)  # (n, c)
    mono, flipped = downmix(channels)  # (n,)
    start = info.audio_start if info.audio_start is not None else info.start_time
    offset = round((start - info.timeline_start) * sr)  # > 0: the audio starts after the first frame
    if offset > 0:
        mono = np.concatenate([np.zeros(offset, dtype=np.float32), mono])
    elif offset < 0:
        mono = mono[-offset:]  # audio from before the first frame has no picture
    if check and not info.has_video:
        check_complete(info, len(mono) / sr)
    return AudioTrack(samples=np.ascontiguousarray(mono, dtype=np.float32), sample_rate=sr, lead=max(0, offset),
                      channels=channels.shape[1], flipped=flipped)


def read_audio(path: str | Path, sample_rate: int, info: MediaInfo | None = None, check: bool = True) -> np.ndarray:
    """Mono float32 (n,) audio at ``sample_rate``; sample 0 is the first video frame's time.

    :func:`read_audio_track` without the bookkeeping (silence put in front shows as zeros).
    """
    return read_audio_track(path, sample_rate, info=info, check=check).samples


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------
def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray | None, fps: float,
              sample_rate: int = 16000, crf: int = 18) -> Path:
    """Write H.264 (yuv420p) + AAC mono mp4, exactly ``f / fps`` seconds long, atomically.

    frames: uint8 (f, h, w, 3) RGB with even h and w. audio: float32 (n,) in [-1, 1] or None for no audio
    track; it is zero-padded or cut to ``round(f / fps * sample_rate)`` samples so both tracks end together.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise MediaError(path, "bad-frames", f"frames must be (f, h, w, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise MediaError(path, "bad-frames", f"frames must be uint8, got {frames.dtype}")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise MediaError(path, "bad-frames", f"frame size {w}x{h} must be even for yuv420p")
    path.parent.mkdir(parents=True, exist_ok=True)
    # ffmpeg creates the temp file itself, so it gets the usual permissions (mkstemp's would be 0600)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.mp4")
    audio_file: Path | None = None
    try:
        args = ["-loglevel", "level+error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                "-framerate", repr(float(fps)), "-i", "pipe:0"]
        if audio is not None:
            n = round(f / fps * sample_rate)
            mono = np.zeros(n, dtype="<f4")
            src = np.asarray(audio, dtype=np.float32).reshape(-1)[:n]
            mono[: len(src)] = np.clip(np.nan_to_num(src, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
            fd, audio_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".f32", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(mono.tobytes())
            audio_file = Path(audio_name)
            args += ["-f", "f32le", "-ar", str(int(sample_rate)), "-ac", "1", "-i", _input_arg(audio_file)]
        args += ["-map", "0:v:0", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
                 "-threads", "1", "-flags:v", "+bitexact", "-frames:v", str(f)]
        if audio_file is not None:
            args += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "96k", "-flags:a", "+bitexact"]
        args += ["-map_metadata", "-1", "-fflags", "+bitexact", "-movflags", "+faststart", "-f", "mp4",
                 _input_arg(tmp)]
        proc = _run(args, stdin=np.ascontiguousarray(frames).tobytes())
        if proc.returncode != 0:
            detail = first_error(proc.stderr.decode(errors="replace"))
            raise MediaError(path, "unwritable", f"ffmpeg failed to write: {detail}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if audio_file is not None:
            audio_file.unlink(missing_ok=True)
    return path
