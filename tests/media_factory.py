"""Test clips made on the fly with the bundled ffmpeg (``-f lavfi`` sources), small and fast.

Import from tests: ``from media_factory import make_clip, make_flash_beep, ...`` (pytest puts ``tests/`` on the
path; the files are written wherever the caller says, normally under ``tmp_path``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg


def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg; raise with its stderr when it fails."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}[channels]


def make_clip(
    path: Path,
    seconds: float = 2.0,
    fps: float = 25,
    size: tuple[int, int] = (64, 64),
    sample_rate: int = 44100,
    channels: int = 2,
    video: str | None = "testsrc2",
    audio: str | None = "sine",
    video_offset: float = 0.0,
    audio_offset: float = 0.0,
    audio_seconds: float | None = None,
    faststart: bool = True,
    sar: str | None = None,
) -> Path:
    """A clip of `seconds` with a lavfi video source (testsrc2, color, ...) and audio (sine, anoisesrc, ...).

    video / audio None leaves that stream out. *_offset starts that stream later in the file (-itsoffset).
    `sar` (e.g. "2/1") tags non-square pixels. Odd sizes are encoded as yuv444p (libx264 accepts them).
    """
    w, h = size
    args: list[str] = []
    if video is not None:
        src = f"{video}=size={w}x{h}:rate={fps}:duration={seconds}"
        if video == "color":
            src = f"color=c=0x3060a0:size={w}x{h}:rate={fps}:duration={seconds}"
        args += ["-itsoffset", str(video_offset), "-f", "lavfi", "-i", src]
    if audio is not None:
        a_sec = seconds if audio_seconds is None else audio_seconds
        if audio == "sine":
            src = f"sine=frequency=440:sample_rate={sample_rate}:duration={a_sec}"
        elif audio == "anoisesrc":
            src = f"anoisesrc=color=pink:amplitude=0.3:sample_rate={sample_rate}:duration={a_sec}:seed=1"
        else:
            src = f"{audio}:sample_rate={sample_rate}:duration={a_sec}"
        args += ["-itsoffset", str(audio_offset), "-f", "lavfi", "-i", src]
    if video is not None:
        # sources round odd sizes down to even: scale to the exact size
        vf = f"scale={w}:{h},setsar={sar or 1}"
        pix = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
        args += ["-map", "0:v", "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix]
    if audio is not None:
        args += ["-map", f"{1 if video is not None else 0}:a", "-c:a", "aac", "-ac", str(channels),
                 "-ar", str(sample_rate)]
    if faststart:
        args += ["-movflags", "+faststart"]
    ffmpeg(*args, str(path))
    return path


def make_framed(path: Path, size: tuple[int, int], seconds: float = 1.0, fps: float = 10, sar: str | None = None,
                inner: tuple[int, int] | None = None) -> Path:
    """A red frame with a green centre square (the part a centre crop must keep), plus a sine track.

    `size` is the stored size; `inner` the stored size of the green centre (default: the short side squared).
    """
    w, h = size
    iw, ih = inner or (min(w, h), min(w, h))
    x, y = (w - iw) // 2, (h - ih) // 2
    vf = f"drawbox=x={x}:y={y}:w={iw}:h={ih}:color=0x00ff00:t=fill" + (f",setsar={sar}" if sar else "")
    pix = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    ffmpeg("-f", "lavfi", "-i", f"color=c=red:size={w}x{h}:rate={fps}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}",
           "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix, "-c:a", "aac", str(path))
    return path


def make_flash_beep(
    path: Path,
    flash_at: float,
    seconds: float = 3.0,
    fps: float = 25,
    size: tuple[int, int] = (64, 64),
    sample_rate: int = 44100,
    channels: int = 2,
    video_offset: float = 0.0,
    audio_offset: float = 0.0,
    length: float = 0.2,
) -> Path:
    """Black video that turns white for `length` s and a 1 kHz beep for the same `length` s, both at `flash_at`
    seconds of the file's timeline. With offsets, each stream starts later and its event is placed so the two
    still coincide at `flash_at` in the file."""
    w, h = size
    # drawbox sees the timestamps after -itsoffset (the file's clock); aevalsrc's t is the stream's own clock
    tv, ta = flash_at, flash_at - audio_offset
    vf = f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='between(t,{tv},{tv + length})'"
    beep = f"if(between(t,{ta},{ta + length}),0.8*sin(2*PI*1000*t),0)"
    exprs = "|".join([beep] * channels)
    pix = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    ffmpeg("-itsoffset", str(video_offset), "-f", "lavfi",
           "-i", f"color=c=black:size={w}x{h}:rate={fps}:duration={seconds - video_offset}",
           "-itsoffset", str(audio_offset), "-f", "lavfi",
           "-i", f"aevalsrc=exprs='{exprs}':channel_layout={_layout(channels)}:sample_rate={sample_rate}"
                 f":duration={seconds - audio_offset}",
           "-map", "0:v", "-map", "1:a", "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix,
           "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path))
    return path


def rotate(src: Path, dst: Path, degrees: float = 90) -> Path:
    """Remux with a display-rotation tag (as phones write portrait video): stored sideways, shown upright."""
    ffmpeg("-display_rotation", str(degrees), "-i", str(src), "-c", "copy", str(dst))
    return dst


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of `src`'s bytes: a cut-off download."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_text(path: Path) -> Path:
    path.write_text("this is not a video\n" * 20)
    return path


def make_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# ----------------------------------------------------------------------------------------------------------
# Flash + beep events, as in issue 14's recipes: black frames that are white, and a 1 kHz beep (amplitude 0.5)
# that sounds, during [0.4, 0.6) + k * 0.8 s of the file's timeline, so every 1.6 s clip holds two events.
# ----------------------------------------------------------------------------------------------------------
EVENT_FIRST, EVENT_PERIOD, EVENT_LENGTH, BEEP = 0.4, 0.8, 0.2, 0.5
H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def event_times(seconds: float, after: float = 0.0) -> list[float]:
    """Start times (s) of the events in a file of `seconds`, those at or after `after` only."""
    times = [EVENT_FIRST + k * EVENT_PERIOD for k in range(int(seconds / EVENT_PERIOD) + 1)]
    return [round(t, 6) for t in times if after - 1e-6 <= t and t + EVENT_LENGTH <= seconds + 1e-6]


def make_events(
    path: Path,
    seconds: float = 4.0,
    fps: float = 30,
    size: tuple[int, int] = (64, 48),
    sample_rate: int = 48000,
    audio_delay: float = 0.0,
    gains: tuple[float, ...] = (1.0,),
    video: tuple[str, ...] = H264,
    audio: tuple[str, ...] = ("-c:a", "aac"),
    out: tuple[str, ...] = (),
    audio_gap: tuple[float, float] | None = None,
) -> Path:
    """Flash + beep events (see above) written with the given codec / muxer arguments.

    audio_delay: the audio stream starts that many seconds after the video (as the issue's recipe: -itsoffset
    and the audio before it cut away, so the beeps stay under their flashes). gains: one per audio channel,
    each channel is the beep times its gain (2 channels: stereo, 6: 5.1, 9: no standard layout, ...).
    audio_gap: (start, length): the audio frames in that span are dropped and the later ones keep their
    timestamps, so the stream has a hole. out: extra output arguments (muxer options, -output_ts_offset).
    """
    w, h = size
    flash = f"drawbox=w=iw:h=ih:color=white:t=fill:enable='lt(mod(t+0.4001\\,0.8)\\,0.2)'"
    beep = f"if(lt(mod(t+0.4\\,0.8)\\,0.2)\\,{BEEP}*sin(2*PI*1000*t)\\,0)"
    src = f"aevalsrc={beep}:s={sample_rate}:d={seconds}:n=480"
    if audio_delay:  # cut inside the source, before -itsoffset moves the rest to where it belongs
        src += f",atrim=start={audio_delay},asetpts=PTS-STARTPTS"
    chain = "[1:a]anull"
    if audio_gap is not None:
        chain += f",aselect='not(between(t\\,{audio_gap[0]}\\,{audio_gap[0] + audio_gap[1]}))'"
    n = len(gains)
    if n == 1:
        chain += f",volume={gains[0]}[a]"
    else:
        split = "".join(f"[s{i}]" for i in range(n))
        scaled = "".join(f";[s{i}]volume={g}[g{i}]" for i, g in enumerate(gains))
        chain += f",asplit={n}{split}{scaled};" + "".join(f"[g{i}]" for i in range(n)) + f"amerge=inputs={n}[a]"
    ffmpeg("-f", "lavfi", "-i", f"color=black:s={w}x{h}:r={fps}:d={seconds},{flash}",
           *(["-itsoffset", str(audio_delay)] if audio_delay else []), "-f", "lavfi", "-i", src,
           "-filter_complex", chain, "-map", "0:v", "-map", "[a]", *video, *audio, *out, str(path))
    return path
