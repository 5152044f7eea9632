"""`avdit eval`: FVD / KVD / FAD and AV-Align of a folder of generated clips against real clips.

Protocols (``pipelines/eval_protocols.py``): ``avdit`` (the default, described below) and ``mm-diffusion``,
MM-Diffusion's evaluator with its quirks, whose reading and scoring live in ``pipelines/eval_mmdiffusion.py``;
:func:`evaluate` hands the latter to :func:`_evaluate_mm_diffusion`.

Protocol ``avdit``. Generated clips (every ``*.mp4`` in GEN_DIR) and reference clips are read at the same clip protocol
(``data.num_frames`` frames at ``data.fps``, ``data.frame_size`` square, ``data.clip_samples`` of mono audio at
``data.sample_rate``), the one the clips were made with: ``samples.json`` (written by ``avdit generate``)
records it, else the run folder's ``config.yaml``, else the given preset.

Reference. ``--ref CACHE_DIR`` (a folder with ``manifest.json``): the real clips listed in the latent cache,
cut again from its ``data_dir``; ``--ref DATA_DIR``: every file of the folder cut into clips (``load_clips``).
Without ``--ref``: the latent cache of the run that made the samples. N clips are drawn with
``numpy.random.default_rng(seed).choice(..., replace=False)``, so two runs score the same clips.

Cost. Features are cached per clip by :class:`FeatureCache`, keyed by the file's content hash, the clip start
(reference clips cut from longer files), the protocol and the extractor with its weights' sha256. A clip whose
features are all cached is not even decoded, so re-scoring a folder costs little more than hashing it.

Robustness. A generated file that cannot be read, has no audio or the wrong length is listed and skipped;
a missing extractor skips the metrics that need it (with the download command as the reason) and the others
still run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avdit_cli.config import Config, DataConfig, apply_overrides, load_preset
from avdit_cli.data.cache import MANIFEST, find_videos, read_manifest
from avdit_cli.data.clips import Clip, load_clips
from avdit_cli.data.media import READER_VERSION, MediaError, check_media_name, probe, read_audio, read_video
from avdit_cli.errors import ConfigError, DataError, WeightsError
from avdit_cli.fileio import atomic_write_json
from avdit_cli.metrics import (
    DISPLAY_SCALE,
    FeatureCache,
    I3DFeatures,
    VGGishFeatures,
    av_align_score,
    frechet_distance,
    kvd,
    reliability_warning,
    sha256_file,
)
from avdit_cli.metrics.vggish import FAD_PROTOCOL
from avdit_cli.metrics.vggish import SAMPLE_RATE as VGGISH_RATE
from avdit_cli.paths import default_cache_dir
from avdit_cli.pipelines import eval_mmdiffusion as mmd
from avdit_cli.pipelines.distributed import resolve_device
from avdit_cli.pipelines.eval_protocols import AVDIT, MM_DIFFUSION, EvalProtocol, get_protocol
from avdit_cli.pipelines.gallery import refresh_gallery
from avdit_cli.pipelines.info import package_versions

SAMPLES_JSON = "samples.json"
METRICS_JSON = "metrics.json"
EXTRA_FRAMES_TOLERANCE = 1  # a generated clip may hold this many frames too many (trimmed)
# ... and its audio may be off by up to one video frame's worth of samples (AAC padding; trimmed / zero-padded)
FEATURE_METRICS = {"fvd": "i3d", "kvd": "i3d", "fad": "vggish"}
DOWNLOAD_EVAL = "avdit download --only eval"
DOWNLOAD_EVAL_PAPER = "avdit download --only eval-paper"

Progress = Callable[["EvalStatus"], None]


# ----------------------------------------------------------------------------------------------------------
# Plain data
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipRef:
    """One clip to score: a whole generated file (start None) or the clip at `start` s of a longer file."""

    path: Path
    start: float | None = None
    label: str = ""

    @property
    def name(self) -> str:
        base = self.label or self.path.name
        return base if self.start is None else f"{base}@{self.start:g}s"


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str  # MediaError.reason, e.g. no-audio, wrong-length, unreadable
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason, "detail": self.detail}


@dataclass
class EvalStatus:
    stage: str  # "reference scan", "generated", "reference"
    done: int
    total: int


@dataclass
class Reference:
    """The pool of real clips the reference set is drawn from."""

    kind: str  # "cache" (clip list of a latent cache) or "data" (files of a folder cut into clips)
    given: Path  # the folder that was given (or found through samples.json)
    data_dir: Path
    stride: float | None  # the stride the clip starts were made with (needed to cut them again)
    clips: list[ClipRef]
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class EvalResult:
    report: dict[str, Any]  # what metrics.json holds
    path: Path | None  # where it was written

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.report["metrics"]


@dataclass
class _SetScore:
    """Per-clip features of one clip set (generated or reference)."""

    used: list[ClipRef]
    skipped: list[Skipped]
    features: dict[str, list[np.ndarray]]  # extractor name -> one row per used clip
    available: int  # clips / files the set was drawn from

    def matrix(self, name: str) -> np.ndarray:
        return np.stack(self.features[name]) if self.features[name] else np.zeros((0, 0))


# ----------------------------------------------------------------------------------------------------------
# Config and inputs
# ----------------------------------------------------------------------------------------------------------
def read_samples_json(gen_dir: Path) -> dict[str, Any] | None:
    """GEN_DIR/samples.json as written by `avdit generate` (keys used here: config, run_dir, cache_dir)."""
    path = gen_dir / SAMPLES_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read ({err}); regenerate the samples or pass --ref and --preset") from err
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object; regenerate the samples or pass --ref and --preset")
    return data


def _run_dir(samples: dict[str, Any], gen_dir: Path) -> Path | None:
    recorded = samples.get("run_dir") or samples.get("run")
    if not recorded:
        return None
    for candidate in (Path(recorded), gen_dir / recorded):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def resolve_config(gen_dir: Path, preset: str | None = None, overrides: Sequence[str] = ()) -> tuple[Config, str]:
    """The config the clips were made with, and where it came from.

    An explicit preset wins; else samples.json's ``config``, else the run's ``config.yaml``, else ``aist``.
    """
    if preset is not None:
        return load_preset(preset, list(overrides)), f"preset {preset}"
    samples = read_samples_json(gen_dir) or {}
    if isinstance(samples.get("config"), dict):
        return apply_overrides(Config.from_dict(samples["config"]), list(overrides)), f"{gen_dir / SAMPLES_JSON}"
    run = _run_dir(samples, gen_dir)
    if run is not None:
        return load_preset(run / "config.yaml", list(overrides)), str(run / "config.yaml")
    return load_preset("aist", list(overrides)), "preset aist (default; no samples.json config found)"


def _protocol(data: DataConfig) -> dict[str, Any]:
    """What every clip read here depends on; part of every cache key."""
    return {"num_frames": data.num_frames, "fps": data.fps, "frame_size": data.frame_size,
            "sample_rate": data.sample_rate, "clip_samples": data.clip_samples, "reader": READER_VERSION}


def generated_files(gen_dir: Path) -> list[Path]:
    if not gen_dir.is_dir():
        raise DataError(f"{gen_dir} is not a folder; give the folder `avdit generate -o` wrote the clips to")
    # write_mp4's temporary files start with a dot.
    files = sorted(p for p in gen_dir.glob("*.mp4") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"no .mp4 files in {gen_dir}; generate some with `avdit generate -o {gen_dir}`")
    return files


def read_generated_clip(path: Path, data: DataConfig) -> Clip:
    """One generated file as one clip at the protocol; :class:`MediaError` when it is unusable."""
    info = probe(path)
    if not info.has_video:
        raise MediaError(path, "not-a-video", "the file has no video stream")
    if not info.has_audio:
        raise MediaError(path, "no-audio", "the file has no audio stream; eval scores video and audio together")
    frames = read_video(path, data.fps, data.frame_size, info=info, check=False)  # (f, h, w, 3)
    audio = read_audio(path, data.sample_rate, info=info, check=False)  # (s,)
    f, n = data.num_frames, data.clip_samples
    if not f <= len(frames) <= f + EXTRA_FRAMES_TOLERANCE:
        raise MediaError(path, "wrong-length", f"{len(frames)} frames at {data.fps:g} fps, the protocol's clips "
                                               f"have {f} ({data.clip_seconds:g} s)")
    slack = round(data.sample_rate / data.fps)
    if abs(len(audio) - n) > slack:
        raise MediaError(path, "wrong-length", f"{len(audio) / data.sample_rate:.3f} s of audio, the protocol's "
                                               f"clips have {data.clip_seconds:g} s")
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    return Clip(start=0.0, frames=np.ascontiguousarray(frames[:f]), audio=audio.astype(np.float32))


# ----------------------------------------------------------------------------------------------------------
# The reference pool
# ----------------------------------------------------------------------------------------------------------
def _need_ref(message: str) -> DataError:
    return DataError(f"{message}; pass --ref DATA_DIR (real videos) or --ref CACHE_DIR (an `avdit preprocess` cache)")


def reference_folder(ref: Path | None, gen_dir: Path) -> Path:
    """The folder the real clips come from (cheap: reads no media): --ref, else the run's cache."""
    if ref is None:
        samples = read_samples_json(gen_dir)
        if samples is None:
            raise _need_ref(f"{gen_dir} has no {SAMPLES_JSON}, so its reference clips are unknown")
        # The run's cache: recorded, else where `preprocess` puts the cache of the run's (or samples') config.
        run = _run_dir(samples, gen_dir)
        if samples.get("reference"):  # named by whoever made the samples (the demo: its real clips), relative
            ref = (gen_dir / samples["reference"]).resolve()
            if not ref.is_dir():
                raise _need_ref(f"the reference {ref} that {SAMPLES_JSON} names is not there")
            return ref
        if samples.get("cache_dir"):
            cache_dir = Path(samples["cache_dir"])
        elif run is not None:
            cache_dir = default_cache_dir(load_preset(run / "config.yaml"))
        elif isinstance(samples.get("config"), dict):
            cache_dir = default_cache_dir(Config.from_dict(samples["config"]))
        else:
            raise _need_ref(f"{gen_dir / SAMPLES_JSON} names no run folder, cache or config")
        if not (cache_dir / MANIFEST).is_file():
            raise _need_ref(f"the run's latent cache {cache_dir} is not there")
        ref = cache_dir
    if not ref.is_dir():
        raise _need_ref(f"--ref {ref} is not a folder")
    return ref


def resolve_reference(ref: Path | None, gen_dir: Path, cfg: Config, cache: FeatureCache,
                      progress: Progress | None = None) -> Reference:
    """The real clips to draw from: --ref (cache or data folder), else the run's cache via samples.json."""
    folder = reference_folder(ref, gen_dir)
    if (folder / MANIFEST).is_file():
        return _reference_from_cache(folder, cfg, cache, progress)
    return _reference_from_folder(folder, folder, cfg, cache, progress)


def _reference_from_cache(cache_dir: Path, cfg: Config, cache: FeatureCache, progress: Progress | None) -> Reference:
    manifest = read_manifest(cache_dir)
    data_dir = Path(manifest.get("data_dir", ""))
    if not manifest.get("data_dir") or not data_dir.is_dir():
        raise _need_ref(f"the cache {cache_dir} was made from {data_dir}, which is not there any more")
    made_with = manifest.get("data", {})
    same_windows = made_with.get("num_frames") == cfg.data.num_frames and made_with.get("fps") == cfg.data.fps
    if not same_windows:
        # The cache's clip list is for another clip length: cut its source files again at this protocol.
        return _reference_from_folder(data_dir, cache_dir, cfg, cache, progress)
    clips = [ClipRef(data_dir / c["source"], float(c["start"]), c["source"]) for c in manifest.get("clips", [])]
    if not clips:
        raise _need_ref(f"the cache {cache_dir} lists no clips")
    return Reference("cache", cache_dir, data_dir, made_with.get("stride_seconds"), clips)


def _reference_from_folder(data_dir: Path, given: Path, cfg: Config, cache: FeatureCache,
                           progress: Progress | None) -> Reference:
    files = find_videos(data_dir)
    if not files:
        raise _need_ref(f"no video files under {data_dir}")
    stride = cfg.data.stride_seconds
    # Which clips a file gives depends on its content and the protocol only: cached like features.
    key_parts = {"what": "clip-starts", "protocol": _protocol(cfg.data), "stride": stride}
    clips: list[ClipRef] = []
    skipped: list[Skipped] = []
    for i, path in enumerate(files):
        label = path.relative_to(data_dir).as_posix()
        try:
            check_media_name(path)  # before hashing it for the cache key: a big archive would take long
            starts = cache.get_or_compute(
                path, key_parts, lambda p=path: np.array([c.start for c in load_clips(p, cfg.data, stride)]))
        except MediaError as err:
            skipped.append(Skipped(label, err.reason, err.detail))
        except OSError as err:  # hashing the file for the cache key failed
            skipped.append(Skipped(label, "unreadable", f"cannot be read ({err.strerror})"))
        else:
            clips += [ClipRef(path, float(s), label) for s in np.atleast_1d(starts)]
        if progress is not None:
            progress(EvalStatus("reference scan", i + 1, len(files)))
    if not clips:
        raise _need_ref(f"none of the {len(files)} files under {data_dir} gives a clip")
    return Reference("data", given, data_dir, stride, clips, skipped)


# ----------------------------------------------------------------------------------------------------------
# Extractors: a cache key and a batched compute each; weights are loaded only on the first cache miss
# ----------------------------------------------------------------------------------------------------------
class _Extractor:
    name: str
    key_parts: dict[str, Any]
    protocol: dict[str, Any]

    def compute(self, clips: Sequence[Clip]) -> np.ndarray:  # (b, d)
        raise NotImplementedError


class _I3D(_Extractor):
    name = "i3d"

    def __init__(self, path: Path, device: str, batch_size: int) -> None:
        if not path.is_file():
            raise WeightsError(f"I3D weights not found at {path}; run `{DOWNLOAD_EVAL}` or fix --i3d")
        self.path, self.device, self.batch_size = path, device, batch_size
        self._model: I3DFeatures | None = None
        sha = sha256_file(path)
        self.key_parts = {"extractor": I3DFeatures.name, "weights_sha256": sha, "rescale": True, "resize": True}
        self.protocol = {**self.key_parts, "model_resolution": 224, "input": "uint8 (b, 3, f, h, w)"}

    def compute(self, clips: Sequence[Clip]) -> np.ndarray:
        if self._model is None:
            self._model = I3DFeatures(self.path, device=self.device, batch_size=self.batch_size)
        return self._model(np.stack([c.frames for c in clips]))  # (b, f, h, w, 3) uint8 -> (b, 400)


class _VGGish(_Extractor):
    name = "vggish"

    def __init__(self, path: Path, device: str, batch_size: int, sample_rate: int) -> None:
        if not path.is_file():
            raise WeightsError(f"VGGish weights not found at {path}; run `{DOWNLOAD_EVAL}` or fix --vggish")
        self.path, self.device, self.batch_size, self.sample_rate = path, device, batch_size, sample_rate
        self._model: VGGishFeatures | None = None
        sha = sha256_file(path)
        self.key_parts = {"extractor": VGGishFeatures.name, "weights_sha256": sha, "postprocess": "raw",
                          "final_relu": False, "pooling": "mean"}
        self.protocol = {**self.key_parts, **FAD_PROTOCOL, "input_sample_rate": sample_rate}

    def compute(self, clips: Sequence[Clip]) -> np.ndarray:
        if self._model is None:
            self._model = VGGishFeatures(self.path, device=self.device, batch_size=max(self.batch_size, 16))
        wave = torch.from_numpy(np.stack([c.audio for c in clips]))  # (b, s)
        if self.sample_rate != VGGISH_RATE:
            import torchaudio.functional as AF

            wave = AF.resample(wave, self.sample_rate, VGGISH_RATE)
        return self._model(list(wave.numpy()), sample_rate=VGGISH_RATE)  # (b, 128) clip means


class _AVAlign(_Extractor):
    """Per clip [score, 1 if the clip has no event at all]; the mean of the scores is the metric."""

    name = "av-align"

    def __init__(self, fps: float, sample_rate: int) -> None:
        self.fps, self.sample_rate = fps, sample_rate
        self.key_parts = {"extractor": "av-align", "version": 1}
        self.protocol = {"extractor": "av-align (spectral-flux onsets vs frame-difference peaks, IoU)",
                         "tolerance": "1 frame", "no_weights": True}

    def compute(self, clips: Sequence[Clip]) -> np.ndarray:
        rows = []
        for c in clips:
            r = av_align_score([(c.frames, c.audio)], self.fps, self.sample_rate)
            rows.append([r.score, float(r.clips_without_events)])
        return np.asarray(rows, dtype=np.float64)  # (b, 2)


def _default_eval_path(key: str) -> Path:
    from avdit_cli import hub

    return hub.i3d_path() if key == "i3d" else hub.vggish_paths()[0]


def build_extractors(metrics: Sequence[str], data: DataConfig, device: str, batch_size: int,
                     i3d: Path | None = None, vggish: Path | None = None) -> tuple[list[_Extractor], dict[str, str]]:
    """The extractors the metrics need, and {metric: reason} for those that cannot run.

    A path given explicitly must work (a typo is an error); a default one that is not downloaded skips its
    metrics with the download command as the reason.
    """
    extractors: list[_Extractor] = []
    skipped: dict[str, str] = {}
    for key, given in (("i3d", i3d), ("vggish", vggish)):
        wanted = [m for m in metrics if FEATURE_METRICS.get(m) == key]
        if not wanted:
            continue
        try:
            path = given if given is not None else _default_eval_path(key)
        except WeightsError as err:
            reason = str(err)
            if DOWNLOAD_EVAL not in reason:
                reason += f"; run `{DOWNLOAD_EVAL}`"
            skipped.update({m: reason for m in wanted})
            continue
        if key == "i3d":
            extractors.append(_I3D(Path(path), device, batch_size))
        else:
            extractors.append(_VGGish(Path(path), device, batch_size, data.sample_rate))
    if "av-align" in metrics:
        extractors.append(_AVAlign(data.fps, data.sample_rate))
    return extractors, skipped


# ----------------------------------------------------------------------------------------------------------
# Reading clips in batches
# ----------------------------------------------------------------------------------------------------------
class _GeneratedLoader:
    def __init__(self, data: DataConfig) -> None:
        self.data = data

    def __call__(self, refs: Sequence[ClipRef]) -> list[Clip | MediaError]:
        out: list[Clip | MediaError] = []
        for ref in refs:
            try:
                out.append(read_generated_clip(ref.path, self.data))
            except MediaError as err:
                out.append(err)
        return out


class _ReferenceLoader:
    """Cuts clips out of the source files; the last file's clips are kept, since refs come sorted by file."""

    def __init__(self, data: DataConfig, stride: float | None) -> None:
        self.data, self.stride = data, stride
        self._last: tuple[Path, list[Clip] | MediaError] | None = None

    def _file(self, path: Path) -> list[Clip] | MediaError:
        if self._last is None or self._last[0] != path:
            try:
                self._last = (path, load_clips(path, self.data, self.stride))
            except MediaError as err:
                self._last = (path, err)
        return self._last[1]

    def __call__(self, refs: Sequence[ClipRef]) -> list[Clip | MediaError]:
        out: list[Clip | MediaError] = []
        for ref in refs:
            clips = self._file(ref.path)
            if isinstance(clips, MediaError):
                out.append(clips)
                continue
            start = ref.start or 0.0
            match = [c for c in clips if abs(c.start - start) < 0.5 / self.data.fps]
            out.append(match[0] if match else MediaError(
                ref.path, "clip-missing", f"no clip starts at {start:g} s at this protocol; rerun preprocess"))
        return out


def _key_parts(ref: ClipRef, ext: _Extractor, protocol: dict[str, Any]) -> dict[str, Any]:
    clip = "whole-file" if ref.start is None else {"start": round(ref.start, 6)}
    return {**ext.key_parts, "protocol": protocol, "clip": clip}


def _score_clips(pool: Sequence[ClipRef], need: int, seed: int, load: Callable[[Sequence[ClipRef]], list],
                 extractors: Sequence[_Extractor], data: DataConfig, cache: FeatureCache, batch_size: int,
                 stage: str, progress: Progress | None = None) -> _SetScore:
    """Features of `need` good clips drawn from `pool` with Generator(seed).

    The draw is a seeded choice without replacement over the whole pool; its first `need` clips are scored
    (in pool order, so files are decoded once), and clips that turn out unusable are replaced by the next ones
    of the same draw. Clips whose features are all cached are not decoded.
    """
    order = np.random.default_rng(seed).choice(len(pool), size=len(pool), replace=False)
    protocol = _protocol(data)
    result = _SetScore([], [], {e.name: [] for e in extractors}, available=len(pool))
    taken = 0
    while len(result.used) < need and taken < len(pool):
        chunk = sorted(order[taken: taken + need - len(result.used)].tolist())
        taken += len(chunk)
        for b in range(0, len(chunk), batch_size):
            batch = [pool[i] for i in chunk[b: b + batch_size]]
            _score_batch(batch, load, extractors, protocol, cache, result)
            if progress is not None:
                progress(EvalStatus(stage, len(result.used), min(need, len(pool))))
    return result


def _is_cached(cache: FeatureCache, path: Path, key_parts: dict[str, Any]) -> bool:
    try:
        return cache.entry_path(cache.key(path, key_parts)).is_file()
    except OSError:  # missing or unreadable: decoding it will say why, as a MediaError
        return False


def _score_batch(batch: Sequence[ClipRef], load: Callable[[Sequence[ClipRef]], list],
                 extractors: Sequence[_Extractor], protocol: dict[str, Any], cache: FeatureCache,
                 result: _SetScore) -> None:
    parts = {(i, e.name): _key_parts(ref, e, protocol) for i, ref in enumerate(batch) for e in extractors}
    present = {k: _is_cached(cache, batch[k[0]].path, p) for k, p in parts.items()}
    to_decode = [i for i in range(len(batch)) if not all(present[i, e.name] for e in extractors)]
    decoded: dict[int, Clip] = {}
    for i, got in zip(to_decode, load([batch[i] for i in to_decode]), strict=True):
        if isinstance(got, MediaError):
            result.skipped.append(Skipped(batch[i].name, got.reason, got.detail))
        else:
            decoded[i] = got
    good = [i for i in range(len(batch)) if i in decoded or i not in to_decode]

    for ext in extractors:
        missing = [i for i in good if not present[i, ext.name]]  # all of them were decoded
        rows = dict(zip(missing, ext.compute([decoded[i] for i in missing]), strict=True)) if missing else {}

        def compute(i: int, ext: _Extractor = ext, rows: dict = rows) -> np.ndarray:
            if i in rows:
                return rows[i]
            # The entry vanished (or was unreadable) since the check above: decode this clip alone.
            got = load([batch[i]])[0]
            if isinstance(got, MediaError):
                raise got
            return ext.compute([got])[0]

        for i in good:
            result.features[ext.name].append(
                cache.get_or_compute(batch[i].path, parts[i, ext.name], lambda i=i, c=compute: c(i)))
    result.used += [batch[i] for i in good]


# ----------------------------------------------------------------------------------------------------------
# Metrics from features
# ----------------------------------------------------------------------------------------------------------
def _number_protocol(name: str, ext: _Extractor, gen: _SetScore, ref: _SetScore | None, cfg: Config,
                     ref_seed: int) -> dict[str, Any]:
    d = cfg.data
    return {"feature": ext.name, **ext.protocol, "n_gen": len(gen.used), "n_ref": len(ref.used) if ref else 0,
            "resolution": d.frame_size, "num_frames": d.num_frames, "fps": d.fps, "sample_rate": d.sample_rate,
            "clip_samples": d.clip_samples, "seed": ref_seed, "display_scale": DISPLAY_SCALE[name]}


def _distance_metric(name: str, ext: _Extractor, gen: _SetScore, ref: _SetScore, cfg: Config) -> dict[str, Any]:
    x, y = gen.matrix(ext.name), ref.matrix(ext.name)  # (n, d), (m, d)
    protocol = _number_protocol(name, ext, gen, ref, cfg, cfg.eval.seed)
    try:
        value = kvd(x, y) if name == "kvd" else frechet_distance(x, y)
    except DataError as err:
        return {"status": "skipped", "reason": str(err), "protocol": protocol}
    dim = x.shape[1]
    return {"status": "ok", "value": value, "display_scale": DISPLAY_SCALE[name],
            "display_value": value * DISPLAY_SCALE[name],
            "warning": reliability_warning(len(x), len(y), dim, name.upper()), "protocol": protocol}


def _av_align_metric(ext: _Extractor, gen: _SetScore, ref: _SetScore | None, cfg: Config) -> dict[str, Any]:
    def summary(s: _SetScore) -> tuple[float, int]:
        rows = s.matrix(ext.name)  # (n, 2): score, no-event flag
        return float(rows[:, 0].mean()), int(rows[:, 1].sum())

    gen_score, gen_empty = summary(gen)
    out: dict[str, Any] = {"status": "ok", "value": gen_score, "display_scale": DISPLAY_SCALE["av-align"],
                           "display_value": gen_score, "warning": None,
                           "clips_without_events": {"gen": gen_empty},
                           "protocol": _number_protocol("av-align", ext, gen, ref, cfg, cfg.eval.seed)}
    if ref is not None and ref.used:
        out["reference"], out["clips_without_events"]["ref"] = summary(ref)
    if gen_empty:
        out["warning"] = f"{gen_empty} generated clip(s) have no audio or motion event and score 0"
    return out


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
def evaluate(
    gen_dir: Path,
    cfg: Config,
    ref: Path | None = None,
    *,
    protocol: str | EvalProtocol = AVDIT,
    device: str | None = None,
    i3d: Path | None = None,
    vggish: Path | None = None,
    audioclip: Path | None = None,
    feature_cache: FeatureCache | None = None,
    config_source: str = "",
    write: bool = True,
    progress: Progress | None = None,
) -> EvalResult:
    """Score the clips in `gen_dir` with ``cfg.eval`` (num_samples, seed, metrics, batch_size); write
    GEN_DIR/metrics.json unless `write` is False.

    ``protocol`` ``avdit`` reads clips at the clip protocol ``cfg.data``; ``mm-diffusion`` reads them its own
    way (``cfg.data`` unused) and takes ``i3d`` as ``i3d_pretrained_400.pt`` and ``audioclip`` for FAD.
    """
    proto = get_protocol(protocol)
    if proto is MM_DIFFUSION:
        if vggish is not None:
            raise ConfigError("--vggish belongs to the avdit protocol; mm-diffusion's FAD uses --audioclip")
        return _evaluate_mm_diffusion(gen_dir, cfg, ref, device=device, i3d=i3d, audioclip=audioclip,
                                      feature_cache=feature_cache, config_source=config_source, write=write,
                                      progress=progress)
    if audioclip is not None:
        raise ConfigError("--audioclip belongs to the mm-diffusion protocol; add --protocol mm-diffusion")
    started = time.perf_counter()
    gen_dir = Path(gen_dir)
    ev = cfg.eval
    metrics = list(dict.fromkeys(ev.metrics))
    if not metrics:
        raise ConfigError("eval.metrics: nothing to compute; choose from fvd, kvd, fad, av-align")
    files = generated_files(gen_dir)
    cache = feature_cache if feature_cache is not None else FeatureCache()
    dev = str(resolve_device(device))
    extractors, skipped_metrics = build_extractors(metrics, cfg.data, dev, ev.batch_size, i3d, vggish)
    runnable = [m for m in metrics if m not in skipped_metrics]
    if not runnable:
        raise WeightsError(next(iter(skipped_metrics.values())))

    needs_ref = any(m in FEATURE_METRICS for m in runnable)
    ref_folder: Path | None = None
    try:
        ref_folder = reference_folder(ref, gen_dir)  # fail early, before any decoding, when it is unknown
    except DataError:
        if needs_ref or ref is not None:
            raise  # AV-Align alone can go without its reference comparison, unless one was asked for

    gen_pool = [ClipRef(p, None, p.name) for p in files]
    gen = _score_clips(gen_pool, ev.num_samples, ev.seed, _GeneratedLoader(cfg.data), extractors, cfg.data, cache,
                       ev.batch_size, "generated", progress)
    if not gen.used:
        first = gen.skipped[0]
        raise DataError(f"none of the {len(files)} .mp4 files in {gen_dir} can be scored "
                        f"({skipped_summary(s.to_dict() for s in gen.skipped)}); e.g. {first.file}: {first.detail}")
    reference = resolve_reference(ref_folder, gen_dir, cfg, cache, progress) if ref_folder is not None else None
    ref_score: _SetScore | None = None
    if reference is not None:
        ref_score = _score_clips(reference.clips, ev.num_samples, ev.seed,
                                 _ReferenceLoader(cfg.data, reference.stride), extractors, cfg.data, cache,
                                 ev.batch_size, "reference", progress)
        if not ref_score.used and needs_ref:
            raise DataError(f"no reference clip from {reference.data_dir} could be read; pass another --ref")

    by_name = {e.name: e for e in extractors}
    results: dict[str, dict[str, Any]] = {}
    for m in metrics:
        if m in skipped_metrics:
            results[m] = {"status": "skipped", "reason": skipped_metrics[m]}
        elif m == "av-align":
            results[m] = _av_align_metric(by_name["av-align"], gen, ref_score, cfg)
        elif ref_score is not None:  # always set here: needs_ref made the reference mandatory above
            results[m] = _distance_metric(m, by_name[FEATURE_METRICS[m]], gen, ref_score, cfg)

    report = {
        "gen_dir": str(gen_dir.resolve()),
        "config_source": config_source,
        "protocol": {"name": AVDIT.name, **_protocol(cfg.data), "num_samples": ev.num_samples, "seed": ev.seed,
                     "display_scale": {m: DISPLAY_SCALE[m] for m in metrics}},
        "metrics": results,
        "generated": {"files": len(files), "used": len(gen.used), "skipped": [s.to_dict() for s in gen.skipped]},
        "reference": _reference_report(reference, ref_score),
        "feature_cache": {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses},
        "device": dev,
        "seconds": round(time.perf_counter() - started, 3),
        "versions": package_versions(),
        "config": cfg.to_dict(),
    }
    return _write_report(gen_dir, report, write)


def _write_report(gen_dir: Path, report: dict[str, Any], write: bool) -> EvalResult:
    """GEN_DIR/metrics.json (unless `write` is False), for every protocol."""
    path = None
    if write:
        path = gen_dir / METRICS_JSON
        atomic_write_json(path, report)
        refresh_gallery(gen_dir)  # index.html of a generate folder shows the new numbers
    return EvalResult(report, path)


def _reference_report(reference: Reference | None, score: _SetScore | None) -> dict[str, Any] | None:
    if reference is None:
        return None
    skipped = [s.to_dict() for s in reference.skipped] + [s.to_dict() for s in (score.skipped if score else [])]
    return {"kind": reference.kind, "path": str(reference.given.resolve()),
            "data_dir": str(reference.data_dir.resolve()), "clips_available": len(reference.clips),
            "used": len(score.used) if score else 0, "skipped": skipped}


# ----------------------------------------------------------------------------------------------------------
# The mm-diffusion protocol (reading and scoring in eval_mmdiffusion.py)
# ----------------------------------------------------------------------------------------------------------
_PAPER_FEATURES = {"fvd": "i3d-400", "kvd": "i3d-400", "fad": "audioclip"}


def _paper_weights(given: Path | None, key: str, option: str) -> tuple[Path | None, str | None]:
    """(path, None) or (None, why the metrics that need it are skipped). A given path must exist."""
    from avdit_cli import hub

    if given is not None:
        if not Path(given).is_file():
            raise WeightsError(f"{option} {given} is not a file; fix the path or drop it to use the downloaded one")
        return Path(given), None
    try:
        return (hub.i3d_400_path() if key == "i3d-400" else hub.audioclip_path()), None
    except WeightsError as err:
        reason = str(err)
        return None, reason if DOWNLOAD_EVAL_PAPER in reason else f"{reason}; run `{DOWNLOAD_EVAL_PAPER}`"


def _paper_reference_folder(ref: Path | None, gen_dir: Path) -> tuple[str, Path, Path]:
    """(kind, given folder, training folder): --ref, else the run's cache; a cache stands for its data_dir."""
    folder = reference_folder(ref, gen_dir)
    if not (folder / MANIFEST).is_file():
        return "data", folder, folder
    recorded = read_manifest(folder).get("data_dir")
    if not recorded or not Path(recorded).is_dir():
        raise _need_ref(f"the cache {folder} was made from {recorded}, which is not there any more")
    data_dir = Path(recorded)
    return "cache", folder, data_dir


def _evaluate_mm_diffusion(gen_dir: Path, cfg: Config, ref: Path | None, *, device: str | None,
                           i3d: Path | None, audioclip: Path | None, feature_cache: FeatureCache | None,
                           config_source: str, write: bool, progress: Progress | None) -> EvalResult:
    """:func:`evaluate` under the mm-diffusion protocol: ``cfg.eval`` gives num_samples, seed and metrics."""
    started = time.perf_counter()
    proto, ev, gen_dir = MM_DIFFUSION, cfg.eval, Path(gen_dir)
    metrics = [m for m in dict.fromkeys(ev.metrics) if m in proto.metrics]
    if not metrics:
        raise ConfigError(f"eval.metrics: none of {list(ev.metrics)} is part of the mm-diffusion protocol; "
                          f"choose from {', '.join(proto.metrics)} (av-align: --protocol avdit)")
    files = generated_files(gen_dir)
    cache = feature_cache if feature_cache is not None else FeatureCache()
    dev = str(resolve_device(device))
    i3d_path, i3d_why = _paper_weights(i3d, "i3d-400", "--i3d") if {"fvd", "kvd"} & set(metrics) else (None, None)
    clip_path, clip_why = _paper_weights(audioclip, "audioclip", "--audioclip") if "fad" in metrics else (None, None)
    skipped_metrics = {m: why for m in metrics
                       if (why := (clip_why if m == "fad" else i3d_why)) is not None}
    if len(skipped_metrics) == len(metrics):
        raise WeightsError(next(iter(skipped_metrics.values())))
    kind, given, data_dir = _paper_reference_folder(ref, gen_dir)  # before any decoding: fail early

    def stage_progress(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(EvalStatus(stage, done, total))

    extractors = mmd.PaperExtractors(i3d_path, clip_path, dev)
    n, seed = ev.num_samples, ev.seed
    gen_pool, gen_lines, gen_skipped = mmd.list_windows(files, gen_dir, cache, stage_progress, "generated scan")
    mmd.need_pool(gen_pool, gen_dir, "generated clips")
    gen = mmd.score_set(gen_pool, gen_lines, n, seed, extractors, cache, "generated", stage_progress)
    if not gen.used:
        first = (gen_skipped + gen.skipped)[0]
        raise DataError(f"none of the {len(files)} .mp4 files in {gen_dir} can be scored; e.g. {first}")
    ref_files = mmd.video_files(data_dir)
    if not ref_files:
        raise _need_ref(f"no .mp4, .avi or .gif files under {data_dir}")
    ref_pool, ref_lines, ref_skipped = mmd.list_windows(ref_files, data_dir, cache, stage_progress, "reference scan")
    mmd.need_pool(ref_pool, data_dir, "reference clips")
    refs = mmd.score_set(ref_pool, ref_lines, n, seed, extractors, cache, "reference", stage_progress)
    if not refs.used:
        raise DataError(f"no reference clip from {data_dir} could be read; pass another --ref")

    described = extractors.describe()
    results: dict[str, dict[str, Any]] = {}
    for m in metrics:
        if m in skipped_metrics:
            results[m] = {"status": "skipped", "reason": skipped_metrics[m]}
            continue
        feature = _PAPER_FEATURES[m]
        x, y = gen.features[feature], refs.features[feature]
        spec = proto.video if m in proto.video.metrics else proto.audio
        number_protocol = {"name": proto.name, "feature": feature, **described[feature], "model": spec.model,
                           "weights_source": spec.source, "reading": spec.reading, "numerics": proto.numerics,
                           "n_gen": len(gen.used), "n_ref": len(refs.used), "unique_gen": gen.unique,
                           "unique_ref": refs.unique, "seed": seed, "display_scale": proto.display_scale[m]}
        try:
            value = proto.distance(m, x, y)
        except DataError as err:
            results[m] = {"status": "skipped", "reason": str(err), "protocol": number_protocol}
            continue
        warnings = [w for w in (reliability_warning(gen.unique, refs.unique, x.shape[1], m.upper()),
                                _repeat_warning(gen, "generated", n), _repeat_warning(refs, "reference", n)) if w]
        results[m] = {"status": "ok", "value": value, "display_scale": proto.display_scale[m],
                      "display_value": value * proto.display_scale[m],
                      "warning": " ".join(warnings) or None, "protocol": number_protocol}

    def set_report(s: mmd.ScoredSet, scan_skipped: list[MediaError]) -> dict[str, Any]:
        return {"clips_available": s.available, "used": len(s.used), "unique": s.unique, "repeated": s.repeated,
                "skipped": [Skipped(e.path, e.reason, e.detail).to_dict() for e in scan_skipped + s.skipped]}

    report = {
        "gen_dir": str(gen_dir.resolve()),
        "config_source": config_source,
        "protocol": {**proto.to_dict(), "num_samples": n, "seed": seed,
                     "display_scale": {m: proto.display_scale[m] for m in metrics}},
        "metrics": results,
        "generated": {"files": len(files), **set_report(gen, gen_skipped)},
        "reference": {"kind": kind, "path": str(given.resolve()), "data_dir": str(data_dir.resolve()),
                      **set_report(refs, ref_skipped)},
        "feature_cache": {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses},
        "device": dev,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "seconds": round(time.perf_counter() - started, 3),
        "versions": package_versions(),
        "config": cfg.to_dict(),
    }
    return _write_report(gen_dir, report, write)


def _repeat_warning(s: mmd.ScoredSet, what: str, n: int) -> str | None:
    if not s.repeated:
        return None
    return (f"The {s.unique} {what} clips were repeated to make {n}, as MM-Diffusion's endless loader does; "
            f"the number is not comparable to published ones made with {n} distinct clips.")


def skipped_summary(items: Iterable[dict[str, str]]) -> str:
    """``"no-audio: 2, wrong-length: 1"`` for a list of skipped files."""
    counts: dict[str, int] = {}
    for s in items:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
