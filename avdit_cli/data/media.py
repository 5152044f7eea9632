"""Media I/O through the ffmpeg binary shipped by ``imageio-ffmpeg`` (no system ffmpeg or ffprobe needed).

Timeline. Every command runs with ``-copyts`` so timestamps are the ones stored in the file. ``probe`` decodes
the first video and audio frame to learn where each stream really starts (container start times can differ
from the first decoded frame: edit lists, codec delay). The clip timeline starts at the first *video* frame:
``read_video`` shifts it to 0 and samples frames by timestamp at the target fps (frame k shows time k / fps);
``read_audio`` shifts the audio by the same amount, then ``aresample`` pads (audio starting late) or trims
(audio starting early) so that sample n is time n / sample_rate on that same timeline.

Errors. Every unusable input is a :class:`MediaError` (a :class:`DataError`) with a machine-usable ``reason``:

- ``missing``: no such file; ``unreadable``: cannot be opened or ffmpeg failed for another reason;
- ``empty-file``: zero bytes; ``not-a-video``: not a media file, or no video stream (cover art does not count);
- ``no-audio``: no audio stream where audio is needed; ``too-short``: shorter than what was asked for;
- ``truncated``: the file was cut off. Decided by (a) the mp4 index ("moov atom") missing from a file that
  otherwise looks like an mp4, (b) the demuxer reporting a partial file, or (c) the decoded length falling
  short of the duration in the header: ``max(video, audio) < 0.9 * duration - 0.25 s``. The longer of the two
  streams is used in (c) so that a file whose audio legitimately outlasts its video is not called truncated;
  when ffmpeg only estimated the duration from the bitrate, (c) is skipped. The readers apply (c) alone only
  to a file with one kind of stream; ``clips.load_clips`` applies it to both streams together.
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

from avdit_cli.errors import DataError

TRUNCATION_RATIO = 0.9  # decoded / header duration below this (minus the slack) means "truncated"
TRUNCATION_SLACK_S = 0.25
_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "4.1": 5, "5.0": 5, "5.1": 6,
             "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8}


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
    duration: float | None  # container duration; None when unknown
    duration_estimated: bool  # ffmpeg guessed the duration from the bitrate
    start_time: float  # container start
    has_video: bool
    has_audio: bool
    video_index: int | None = None  # absolute stream index, for -map 0:N
    audio_index: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int | None = None  # as displayed: after rotation, before the sample aspect ratio
    height: int | None = None
    sar: float = 1.0  # sample (pixel) aspect ratio
    rotation: float = 0.0
    fps: float | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None
    video_start: float | None = None  # pts of the first decoded video frame
    audio_start: float | None = None  # pts of the first decoded audio frame

    @property
    def timeline_start(self) -> float:
        """Where the clip timeline starts: the first video frame (the first audio frame without video)."""
        for t in (self.video_start, self.audio_start):
            if t is not None:
                return t
        return self.start_time


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


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg failed without a message"


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
    return MediaError(path, "unreadable", f"ffmpeg cannot open it: {_last_line(stderr)}")


# ----------------------------------------------------------------------------------------------------------
# probe
# ----------------------------------------------------------------------------------------------------------
_DURATION = re.compile(r"Duration:\s*(?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)(?:,\s*start:\s*(-?\d+(?:\.\d+)?))?")
_STREAM = re.compile(r"^\s*Stream #0:(\d+)\S*:\s*(Video|Audio):\s*(.*)$")
_SIZE = re.compile(r"(?:^|[\s,(])(\d+)x(\d+)(?=[\s,\[]|$)")
_SAR = re.compile(r"\[SAR (\d+):(\d+)")
_FPS = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)")
_HZ = re.compile(r"(\d+) Hz,\s*([^,]+)")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def _channels(layout: str) -> int | None:
    layout = layout.strip()
    m = re.match(r"(\d+) channels", layout)
    if m:
        return int(m.group(1))
    return _CHANNELS.get(layout.split("(")[0])


def _parse_header(stderr: str) -> dict:
    out: dict = {"duration": None, "duration_estimated": "estimating duration from bitrate" in stderr.lower(),
                 "start_time": 0.0, "has_video": False, "has_audio": False}
    m = _DURATION.search(stderr)
    if m and m.group(1) is not None:
        out["duration"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    if m and m.group(4) is not None:
        out["start_time"] = float(m.group(4))
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        s = _STREAM.match(line)
        if not s:
            continue
        index, kind, rest = int(s.group(1)), s.group(2), s.group(3)
        codec = rest.split()[0].rstrip(",") if rest.split() else None
        if kind == "Video" and not out["has_video"] and "attached pic" not in rest:
            size = _SIZE.search(rest)
            if not size:
                continue
            w, h = int(size.group(1)), int(size.group(2))
            sar = _SAR.search(rest)
            rates = {unit: float(v) * (1000 if k else 1) for v, k, unit in _FPS.findall(rest)}
            # side data (rotation) is printed on the lines after the stream line, before the next stream
            tail = "\n".join(lines[i + 1: i + 8]).split("Stream #")[0]
            rot = _ROTATION.search(tail)
            rotation = float(rot.group(1)) if rot else 0.0
            if round(rotation / 90) % 2:  # ffmpeg auto-rotates: the frames we get are transposed
                w, h = h, w
            sar_value = 1.0
            if sar and int(sar.group(1)) and int(sar.group(2)):  # "SAR 0:1" means unknown: square
                sar_value = int(sar.group(1)) / int(sar.group(2))
            out.update(has_video=True, video_index=index, video_codec=codec, width=w, height=h, sar=sar_value,
                       rotation=rotation, fps=rates.get("fps") or rates.get("tbr"))
        elif kind == "Audio" and not out["has_audio"]:
            hz = _HZ.search(rest)
            out.update(has_audio=True, audio_index=index, audio_codec=codec,
                       audio_rate=int(hz.group(1)) if hz else None,
                       audio_channels=_channels(hz.group(2)) if hz else None)
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
    """Streams, sizes, rates and start times of a media file; :class:`MediaError` when it cannot be opened."""
    path = Path(path)
    _check_file(path)
    proc = _run(["-i", _input_arg(path)])  # exits 1 ("no output file"): the header on stderr is what we want
    stderr = proc.stderr.decode(errors="replace")
    if "Input #0" not in stderr:
        raise _open_error(path, stderr)
    header = _parse_header(stderr)
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
    """Raise ``truncated`` when the decoded length falls far short of the header's duration (see module doc)."""
    if info.duration is None or info.duration_estimated:
        return
    expected = info.duration - max(0.0, info.timeline_start - info.start_time)
    if decoded_seconds < TRUNCATION_RATIO * expected - TRUNCATION_SLACK_S:
        raise MediaError(info.path, "truncated",
                         f"only {decoded_seconds:.2f} s of {expected:.2f} s could be decoded: the file is incomplete")


def _decode(info: MediaInfo, args: list[str], what: str) -> bytes:
    # One decoder thread: preprocess runs one ffmpeg per worker at once, and these clips are small.
    proc = _run(["-loglevel", "error", "-threads", "1", "-copyts", "-i", _input_arg(Path(info.path)), *args])
    stderr = proc.stderr.decode(errors="replace")
    if "partial file" in stderr.lower():
        raise MediaError(info.path, "truncated", f"the {what} data stops before the end the header promises")
    if proc.returncode != 0:
        raise MediaError(info.path, "unreadable", f"ffmpeg failed to decode the {what}: {_last_line(stderr)}")
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


def read_audio(path: str | Path, sample_rate: int, info: MediaInfo | None = None, check: bool = True) -> np.ndarray:
    """Mono float32 audio resampled to ``sample_rate``; sample 0 is the first video frame's time.

    Channels are averaged (``rematrix_maxval=1`` keeps the downmix at unit gain); resampled with soxr.
    """
    info = info or probe(path)
    if not info.has_audio:
        raise MediaError(info.path, "no-audio", "the file has no audio stream")
    t0 = info.timeline_start
    # atrim drops audio before the first video frame; aresample's first_pts pads silence when the audio starts
    # after it (its own trimming misbehaves with negative timestamps), and async=1 fills gaps mid-stream.
    af = (f"asetpts=PTS-{t0!r}/TB,atrim=start=0,"
          f"aresample=osr={int(sample_rate)}:ochl=mono:osf=flt:resampler=soxr:rematrix_maxval=1"
          f":async=1:first_pts=0")
    raw = _decode(info, ["-map", f"0:{info.audio_index}", "-vn", "-sn", "-dn", "-af", af,
                         "-f", "f32le", "-ac", "1", "-ar", str(int(sample_rate)), "pipe:1"], "audio")
    audio = np.frombuffer(raw, dtype="<f4", count=len(raw) // 4).astype(np.float32)  # n
    if check and not info.has_video:
        check_complete(info, len(audio) / sample_rate)
    return audio


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
        args = ["-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
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
            detail = _last_line(proc.stderr.decode(errors="replace"))
            raise MediaError(path, "unwritable", f"ffmpeg failed to write: {detail}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if audio_file is not None:
            audio_file.unlink(missing_ok=True)
    return path
