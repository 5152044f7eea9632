"""``index.html``: a gallery of a folder `avdit generate` wrote, to look at and listen to the clips.

One card per clip (an HTML5 player with sound; seed, sampler, steps, run and checkpoint; the clip's mel
picture ``sample_NNNNN.mel.png``), then the contact sheet, then, once `avdit eval` has scored the folder, its
metrics table with each number's protocol. `generate` writes the page and `eval` rewrites it.

The page is one self-contained file: inline CSS, no script, no font or stylesheet from the network, and
every file it shows is named relative to the folder, so the folder can be zipped, shared and opened from
disk anywhere. Everything taken from samples.json / metrics.json is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from avdit_cli.errors import DataError
from avdit_cli.fileio import atomic_write, atomic_write_bytes

INDEX = "index.html"
SAMPLES_JSON = "samples.json"
METRICS_JSON = "metrics.json"
CONTACT_SHEET = "contact_sheet.png"
MEL_SUFFIX = ".mel.png"
MEL_HEIGHT = 96  # pixels of a card's mel picture (64 mel bins, stretched; time keeps one pixel per frame)

# A dark-to-bright colour ramp (close to matplotlib's "magma") for the mel pictures: loud is bright.
_RAMP = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
                 dtype=np.float64)


def mel_picture_name(clip_file: str) -> str:
    """``sample_00003.mp4`` -> ``sample_00003.mel.png``."""
    return Path(clip_file).stem + MEL_SUFFIX


def write_mel_picture(path: Path, mel: np.ndarray) -> Path:
    """Save a (mel bins, frames) uint8 picture (low frequencies at the bottom) in colour, ``MEL_HEIGHT`` tall."""
    from PIL import Image

    stops = np.linspace(0, 255, len(_RAMP))
    rgb = np.stack([np.interp(mel.astype(np.float64), stops, _RAMP[:, k]) for k in range(3)], axis=-1)
    img = Image.fromarray(rgb.round().astype(np.uint8)).resize((mel.shape[1], MEL_HEIGHT), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} cannot be read ({err}); regenerate the folder") from err
    return data if isinstance(data, dict) else None


def write_gallery(folder: Path) -> Path:
    """(Re)write ``folder/index.html`` from samples.json, the clips' mel pictures, the contact sheet and, when
    present, metrics.json. Returns its path."""
    folder = Path(folder)
    samples = _read(folder / SAMPLES_JSON)
    if samples is None:
        raise DataError(f"{folder} has no {SAMPLES_JSON}; the gallery is made for folders `avdit generate` wrote")
    metrics = _read(folder / METRICS_JSON)
    page = render(folder, samples, metrics)
    atomic_write_bytes(folder / INDEX, page.encode("utf-8"))
    return folder / INDEX


def refresh_gallery(folder: Path) -> Path | None:
    """Rewrite the gallery of a folder `avdit generate` made (after `avdit eval` wrote its metrics); a folder
    without samples.json (clips from elsewhere) gets none."""
    return write_gallery(folder) if (Path(folder) / SAMPLES_JSON).is_file() else None


# ----------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _run_name(run: str | None) -> str:
    """A run folder's name, or an hf:// reference as it is (the full local path stays in samples.json)."""
    if not run:
        return "?"
    return run if "://" in run else Path(run).name


def _sampler_text(r: dict[str, Any]) -> str:
    text = f"{r.get('sampler', '?')}, {r.get('steps', '?')} steps"
    if r.get("sampler") == "ddim" and r.get("eta"):
        text += f", eta {r['eta']:g}"
    if r.get("class") is not None:
        text += f", class {r['class']}, guidance {r.get('cfg_scale')}"
    return text


def _card(folder: Path, r: dict[str, Any]) -> str:
    clip = str(r["file"])
    mel = mel_picture_name(clip)
    checkpoint = Path(str(r.get("checkpoint", "?"))).name
    sha = str(r.get("checkpoint_sha256") or "")[:12]
    rows = [  # (label, text, tooltip: the full value where the text shortens it)
        ("seed", r.get("seed", "?"), ""),
        ("sampler", _sampler_text(r), ""),
        ("run", _run_name(r.get("run")), r.get("run") or ""),
        ("checkpoint", f"{checkpoint}, step {r.get('step', '?')}, {r.get('weights', '?')} weights", ""),
        ("sha256", sha + "..." if sha else "?", r.get("checkpoint_sha256") or ""),
    ]
    meta = "".join(f"<dt>{_e(k)}</dt><dd" + (f' title="{_e(t)}"' if t else "") + f">{_e(v)}</dd>" for k, v, t in rows)
    mel_html = (f'<img class="mel" src="{_e(mel)}" alt="mel spectrogram of {_e(clip)}" loading="lazy">'
                if (folder / mel).is_file() else '<p class="missing">no mel picture</p>')
    return (f'<figure class="card" id="{_e(Path(clip).stem)}">'
            # "#t=0" has the browser show the first frame before play (with preload=metadata some show black)
            f'<video controls preload="metadata" src="{_e(clip)}#t=0"></video>'
            f'<figcaption><a href="{_e(clip)}">{_e(clip)}</a></figcaption>'
            f"{mel_html}<dl>{meta}</dl></figure>")


def _metrics_section(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return ('<section><h2>Metrics</h2><p class="note">Not scored yet: <code>avdit eval</code> on this folder '
                "adds the table here.</p></section>")
    p = metrics.get("protocol", {})
    ref = metrics.get("reference") or {}
    kind = "latent cache" if ref.get("kind") == "cache" else "video folder"
    caption = (f"{p.get('num_frames')} frames at {p.get('fps')} fps, {p.get('frame_size')} px, "
               f"{p.get('sample_rate')} Hz audio; real clips drawn with seed {p.get('seed')} from "
               + (f"{Path(str(ref.get('path', ''))).name}/ ({kind})" if ref else "nowhere (none given)"))
    head = "<tr><th>metric</th><th>value</th><th>real clips</th><th>gen / ref</th><th>protocol</th></tr>"
    rows = []
    for name, m in (metrics.get("metrics") or {}).items():
        if m.get("status") != "ok":
            rows.append(f'<tr class="skipped"><td>{_e(name)}</td><td colspan="4">skipped: '
                        f"{_e(m.get('reason', ''))}</td></tr>")
            continue
        scale = m.get("display_scale", 1)
        label = name if scale == 1 else f"{name} (x{scale:g})"
        proto = m.get("protocol", {})
        extractor = str(proto.get("feature", ""))
        if proto.get("weights_sha256"):
            extractor += f" {str(proto['weights_sha256'])[:8]}"
        reference = f"{m['reference'] * scale:.4g}" if isinstance(m.get("reference"), (int, float)) else ""
        warning = f'<div class="warn">{_e(m["warning"])}</div>' if m.get("warning") else ""
        rows.append(f"<tr><td>{_e(label)}</td><td class=\"num\">{m['display_value']:.4g}{warning}</td>"
                    f"<td class=\"num\">{_e(reference)}</td>"
                    f"<td class=\"num\">{_e(proto.get('n_gen', '?'))} / {_e(proto.get('n_ref', '?'))}</td>"
                    f"<td>{_e(extractor)}, {_e(proto.get('resolution', '?'))} px, seed {_e(proto.get('seed', '?'))}"
                    "</td></tr>")
    return (f"<section><h2>Metrics</h2><table><caption>{_e(caption)}</caption>{head}{''.join(rows)}</table>"
            '<p class="note">From <a href="metrics.json">metrics.json</a>, where every number carries its full '
            "protocol; numbers made with another protocol are not comparable.</p></section>")


def render(folder: Path, samples: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """The page for a folder (the files it names are checked for existence only where a card may omit one)."""
    records = samples.get("samples") or []
    n = len(records)
    run = _run_name(samples.get("run"))
    title = f"avdit: {n} clip{'s' * (n != 1)} from {run}"
    first = records[0] if records else samples
    seed = samples.get("seed")
    seeds = f"seeds {seed} to {seed + n - 1}" if isinstance(seed, int) and n > 1 else f"seed {seed}"
    subtitle = (f"{_sampler_text(first)}; {seeds}; checkpoint step {samples.get('step', '?')} "
                f"({samples.get('weights', '?')} weights); avdit {(samples.get('versions') or {}).get('avdit', '?')}")
    conditioned = ""
    if samples.get("audio_from") or samples.get("video_from"):
        given = "sound" if samples.get("audio_from") else "frames"
        source = Path(str(samples.get("audio_from") or samples.get("video_from"))).name
        conditioned = f"<p class=\"note\">Every clip has the {given} of {_e(source)}.</p>"
    sheet = (f'<section><h2>Contact sheet</h2><img class="sheet" src="{CONTACT_SHEET}" '
             f'alt="contact sheet: frames over the mel spectrogram of the first clips"></section>'
             if (folder / CONTACT_SHEET).is_file() else "")
    cards = "".join(_card(folder, r) for r in records)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p>{conditioned}</header>
<main>
<section class="cards">{cards}</section>
{sheet}
{_metrics_section(metrics)}
</main>
<footer>Written by <code>avdit generate</code> (and refreshed by <code>avdit eval</code>); every file it shows is in
this folder, and <a href="{SAMPLES_JSON}">samples.json</a> records how each clip was made.</footer>
</body>
</html>
"""


# System fonts only: nothing is fetched when the page is opened.
_CSS = """
:root { color-scheme: light dark; --bg: #f6f6f3; --card: #fff; --ink: #1d1d1f; --dim: #6b6b70; --line: #deded8;
        --accent: #c2410c; }
@media (prefers-color-scheme: dark) { :root { --bg: #151517; --card: #202024; --ink: #ececef; --dim: #9a9aa2;
        --line: #34343a; --accent: #fb923c; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 28px 40px; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header h1 { font-size: 20px; margin: 0 0 4px; }
header p, .note, footer { color: var(--dim); margin: 0 0 6px; }
h2 { font-size: 16px; margin: 28px 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 16px; margin-top: 18px; }
.card { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px;
        display: flex; flex-direction: column; gap: 8px; }
.card video { width: 100%; aspect-ratio: 1; background: #000; border-radius: 6px; image-rendering: pixelated; }
.card figcaption a { color: var(--accent); font-weight: 600; text-decoration: none; }
.card .mel { width: 100%; height: 56px; border-radius: 4px; image-rendering: pixelated; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 0; font-size: 12px; }
.card dt { color: var(--dim); }
.card dd { margin: 0; overflow-wrap: anywhere; }
.missing { color: var(--dim); font-size: 12px; margin: 0; }
.sheet { width: 560px; max-width: 100%; image-rendering: pixelated; border: 1px solid var(--line);
         border-radius: 6px; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
caption { text-align: left; color: var(--dim); padding: 0 0 6px; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
tr.skipped td { color: var(--dim); }
.warn { color: var(--accent); font-size: 12px; max-width: 32em; text-align: left; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
footer { margin-top: 32px; font-size: 12px; }
footer a, .note a { color: var(--accent); }
"""
