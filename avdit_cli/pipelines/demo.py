"""`avdit demo`: the whole pipeline on built-in synthetic data, on a CPU, in minutes.

1. make a bouncing-ball dataset (30 fps, 44.1 kHz mp4 files, so preprocess does real resampling);
2. preprocess it with the `tiny` preset;
3. take the tiny image backbone the package ships (made by this project's pretrain mode, see
   `avdit_cli/assets/tiny-dit/provenance.json`), or make one now with `--pretrain-steps N`;
4. fine-tune AV-DiT's adapters on the frozen backbone (`--no-joint`: without the joint block);
5. generate clips with sound;
6. score them: the synthetic data's sync F1 and AV-Align, and the frame and audio statistics that say whether
   the clips look and sound like the data (balls per frame, noise frames, smooth moves and how far balls travel,
   onsets per clip), of real clips, of real clips with their audio shuffled across clips (the chance level), of
   the generated clips and of the generated clips with their audio shuffled (their own chance level: sync F1
   depends on how many events each side has, so a model whose sound ignores its frames scores this, not the
   real chance);
   plus `avdit eval`'s metrics where possible.

With ``pretrained`` (``avdit demo --pretrained``), steps 2-4 are replaced by the AV-DiT models the package
ships (``assets/demo-avdit``, ``assets/demo-avdit-no-joint`` for ``--no-joint``), made by avdit's own commands
(their ``provenance.json`` says how): no training, just generation and the scores.

Every step calls the same pipeline function as its CLI command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from avdit_cli.config import Config, SampleOrder, apply_overrides, load_preset
from avdit_cli.data.clips import Clip, load_clips
from avdit_cli.data.media import MediaError
from avdit_cli.data.frame_stats import frame_stats
from avdit_cli.data.sync import SyncScore, audio_onsets, clip_events_score, derangement, mean_f1, video_impacts
from avdit_cli.data.synthetic import colour_classes, make_dataset
from avdit_cli.errors import ConfigError, DataError
from avdit_cli.fileio import plain
from avdit_cli.metrics import av_align_score
from avdit_cli.pipelines.evaluate import evaluate
from avdit_cli.pipelines.finetune import finetune
from avdit_cli.pipelines.generate import GenerateOptions, generate, open_checkpoint
from avdit_cli.pipelines.preprocess import preprocess

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    out_dir: Path = Path("avdit-demo")
    clips: int = 24  # source files of `seconds` each; each gives seconds // 1.6 training clips
    seconds: float = 6.4
    steps: int = 600  # adapter fine-tuning steps
    pretrain_steps: int = 0  # 0: the shipped tiny backbone; N > 0: pretrain one for N steps first
    generate: int = 8
    sample_steps: int | None = None  # None: the shipped model's own with --pretrained, else 25
    joint: bool = True
    seed: int = 0
    overrides: tuple[str, ...] = ()
    data_only: bool = False  # make the synthetic dataset (step 1) and stop: data for `avdit preprocess`
    pretrained: bool = False  # generate from the shipped AV-DiT models instead of training (steps 2-4)


@dataclass
class GroupScore:
    name: str
    clips: int
    sync_f1: float
    sync_skipped: int  # clips with no event on either side (no sync judgement possible)
    av_align: float
    # Do the frames look like the data? (data.frame_stats) And the audio? (onsets, as the sync score finds them)
    balls_per_frame: float = math.nan
    one_or_two_balls: float = math.nan  # share of frames
    noise_frames: float = math.nan  # share of frames
    smooth_moves: float = math.nan  # share of balls with a same-coloured ball near them in the next frame
    onsets_per_clip: float = math.nan
    median_step: float = math.nan  # frame heights a ball travels per frame (median over the smooth moves)
    # share of balls with a ball of any colour near them in the next frame (demo.json only): smooth_moves'
    # ceiling if every ball kept its colour
    near_moves: float = math.nan
    # floor impacts the sync score sees in the frames (height peaks, data.sync.video_impacts), per clip: beside
    # onsets_per_clip it says whether a low sync F1 comes from the frames' events or from the sound's
    impacts_per_clip: float = math.nan


@dataclass
class DemoResult:
    out_dir: Path
    scores: list[GroupScore]
    samples_dir: Path
    contact_sheet: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    final_loss: float = math.nan
    eval_metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json's "metrics" (`avdit eval`)
    threads: int = field(default_factory=torch.get_num_threads)  # torch's intra-op threads the demo ran on
    model: str | None = None  # the AV-DiT checkpoint the clips came from (shipped with --pretrained, else trained)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; NaN (e.g. no training loss with --pretrained) becomes null."""
        return plain(asdict(self))


def demo_config(opts: DemoOptions) -> Config:
    """The tiny preset with the demo's settings and ``opts.overrides``; with ``pretrained``, the shipped model's
    own config instead, so that sampling settings are checked against the model that will use them (e.g.
    video-first sampling needs the independent timesteps it was trained with)."""
    if opts.pretrained and not opts.data_only:
        shipped = open_checkpoint(shipped_run(opts.joint)).config
        steps = [] if opts.sample_steps is None else [f"sample.steps={opts.sample_steps}"]
        cfg = apply_overrides(shipped, [*steps, f"sample.seed={opts.seed}", *opts.overrides])
    else:
        cfg = _training_demo_config(opts)
    if cfg.sample.cross_modal_guidance != 1 and cfg.sample.order is SampleOrder.JOINT:  # before any training
        raise ConfigError("sample.cross_modal_guidance guides the sound towards given frames, and the demo samples "
                          "both tracks jointly; add --set sample.order=video-first")
    return cfg


def _training_demo_config(opts: DemoOptions) -> Config:
    base = [
        f"model.joint={'true' if opts.joint else 'false'}",
        # ALiBi's fixed time-bias slopes: the CPU's fused attention kernel runs the joint block, ~1.7x faster
        # training steps, which keeps the default demo well inside 10 minutes on 2 cores.
        "model.joint_time_bias_learned=false",
        f"train.steps={opts.steps}",
        f"train.seed={opts.seed}",
        f"train.checkpoint_every={max(1, opts.steps)}",
        f"sample.steps={25 if opts.sample_steps is None else opts.sample_steps}",
        f"sample.seed={opts.seed}",
        # The files sit in folders named by their balls' colours (synthetic.colour_class), and the models are
        # conditioned on that class as DiT-XL/2 is on ImageNet's: the frame model knows which balls to draw.
        "data.class_folders=true",
        "model.class_conditional=true",
        f"model.num_classes={len(colour_classes())}",
    ]
    return load_preset("tiny", base + list(opts.overrides))


def read_clips(paths: list[Path], cfg: Config) -> list[Clip]:
    """The first clip of each file at the protocol (10 fps, 16 kHz), through the same reader as preprocess."""
    clips = []
    for p in paths:
        try:
            clips.append(load_clips(p, cfg.data)[0])
        except MediaError:
            continue
    return clips


def score_group(name: str, frames: list[np.ndarray], audio: list[np.ndarray], cfg: Config,
                shuffle_seed: int | None = None) -> GroupScore:
    """Sync F1 and AV-Align of clips; with `shuffle_seed`, clip i's frames go with clip partner[i]'s audio
    (a seeded derangement): the chance level."""
    fps, sr = cfg.data.fps, cfg.data.sample_rate
    partner = list(range(len(audio)))  # clip i's frames go with clip partner[i]'s audio
    if shuffle_seed is not None:
        partner = [int(j) for j in derangement(len(frames), np.random.default_rng(shuffle_seed))]
    pairs = [(frames[i], audio[j]) for i, j in enumerate(partner)]
    # each clip's events are found once: the sync score and the per-clip counts read the same ones
    seen = [video_impacts(f, fps) for f in frames]
    heard = [audio_onsets(a, sr) for a in audio]
    syncs: list[SyncScore] = [clip_events_score(seen[i], heard[j], len(frames[i]), len(audio[j]), fps, sr)
                              for i, j in enumerate(partner)]
    f1, skipped = mean_f1(syncs)
    align = av_align_score(pairs, fps, sr)
    stats = frame_stats(frames)
    onsets = float(np.mean([len(h) for h in heard]))
    impacts = float(np.mean([len(v) for v in seen]))
    return GroupScore(name, len(frames), f1, skipped, align.score, stats.balls_per_frame, stats.one_or_two_balls,
                      stats.noise_frames, stats.smooth_moves, onsets, stats.median_step, stats.near_moves,
                      impacts_per_clip=impacts)


DEMO_PARTS = ("data", "cache", "runs", "samples", "demo.json")
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_BACKBONE = ASSETS / "tiny-dit"
SHIPPED_RUNS = {True: ASSETS / "demo-avdit", False: ASSETS / "demo-avdit-no-joint"}  # by joint block on/off


def shipped_run(joint: bool = True) -> Path:
    """The packaged AV-DiT demo model (an exported checkpoint over the shipped backbone), with or without the
    joint block. Raises DataError when the package lacks it."""
    path = SHIPPED_RUNS[joint]
    if not (path / "state.json").is_file():
        raise DataError(f"this installation has no shipped demo model at {path}; reinstall avdit, or run "
                        "`avdit demo` without --pretrained to train one")
    return path


def shipped_or_path(run: str | Path) -> Path:
    """``shipped`` / ``shipped-no-joint``: the packaged demo model with / without the joint block (see
    :func:`shipped_run`); anything else is a run, checkpoint or exported-model folder."""
    return shipped_run(str(run) != "shipped-no-joint") if str(run) in ("shipped", "shipped-no-joint") else Path(run)


FALLBACK_PRETRAIN_STEPS = 400


def shipped_backbone(cfg: Config) -> Path | None:
    """The packaged tiny backbone when it fits `cfg` (same DiT sizes and latents), else None."""
    path = SHIPPED_BACKBONE / "config.json"
    if not path.is_file():
        return None
    c = json.loads(path.read_text())
    m, (_, ch, h, _) = cfg.model, cfg.data.video_latent_shape
    fits = (c["num_layers"], c["num_attention_heads"] * c["attention_head_dim"], c["num_attention_heads"],
            c["patch_size"], c["in_channels"], c["sample_size"], c["num_embeds_ada_norm"],
            c["out_channels"] == 2 * c["in_channels"]) == (
        m.depth, m.hidden_size, m.num_heads, m.patch_size, ch, h, m.num_classes, m.learn_sigma)
    return SHIPPED_BACKBONE if fits else None


def prepare_demo_dir(out: Path) -> None:
    """A new folder, or one an earlier demo made (its parts are replaced); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for the demo (-o)")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_PARTS)
        if foreign:
            raise DataError(f"{out} is not empty and not an earlier demo's folder (it holds {foreign[0]}); "
                            "choose another -o")
        for name in DEMO_PARTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def demo_threads() -> int:
    """Torch's intra-op threads for the demo: ``OMP_NUM_THREADS`` when set, else 1.

    The demo's models are tiny: a second OpenMP thread gains little on an idle machine, and on a shared one
    (2 cores, one busy) two threads spin against each other and run several times slower than one. One thread
    keeps the demo's time on a busy machine close to its time on an idle one (README, "What the demo shows").
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def demo(opts: DemoOptions, log: Log | None = None) -> DemoResult:
    """Run the demo (see the module doc) on :func:`demo_threads` threads; the caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(demo_threads())
    try:
        return _demo(opts, log)
    finally:
        torch.set_num_threads(before)


def _demo(opts: DemoOptions, log: Log | None = None) -> DemoResult:
    say = log or (lambda msg: None)
    out = opts.out_dir
    prepare_demo_dir(out)
    cfg = demo_config(opts)
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - t, 2)
        return result

    n_steps = 4 if opts.pretrained else 6
    data_dir = out / "data"
    say(f"1/{n_steps} making {opts.clips} synthetic clips of {opts.seconds:g} s in {data_dir}")
    files = timed("dataset", lambda: make_dataset(data_dir, opts.clips, seconds=opts.seconds, seed=opts.seed,
                                                  class_folders=True))
    if opts.data_only:
        say(f"    {len(files)} files written; stopping there (--data-only)")
        result = DemoResult(out, [], out / "samples", None, times)
        _write_demo_json(out, opts, result)
        return result

    final_loss = math.nan
    if opts.pretrained:
        run = shipped_run(opts.joint)
        say(f"2/{n_steps} the AV-DiT demo model shipped with avdit ({run}; joint block "
            f"{'on' if opts.joint else 'off'}), no training")
    else:
        run, final_loss = _train(opts, cfg, data_dir, out, say, timed)

    samples = out / "samples"
    gen_step = 3 if opts.pretrained else 5
    say(f"{gen_step}/{n_steps} generate {opts.generate} clips")
    # The demo's sampler settings (the tiny preset, or with --pretrained the shipped model's config, + --set):
    # DDIM 25 unless changed.
    # samples.json names the real clips, so a later `avdit eval DEMO/samples` needs no --ref.
    # `cfg` is the model's own config with --set applied (demo_config), so its sampling section is the one to
    # pass, whole: a shipped model's order, frame-noise correlation, guidance and stagger hold unless --set
    # changed them, and no setting can be left behind (eta, batch_size and clip_denoised once were, when the
    # settings went over one by one).
    gen_opts = GenerateOptions(out_dir=samples, num=opts.generate, checkpoint=run, overwrite=True, seed=opts.seed,
                               reference=data_dir, sample=cfg.sample)
    gen = timed("generate", lambda: generate(gen_opts, progress=_progress(say)))

    say(f"{n_steps}/{n_steps} score: sync, frames and audio of real, shuffled real and generated clips")
    real = timed("read_real", lambda: read_clips(files, cfg))
    generated = timed("read_generated", lambda: read_clips(gen.files, cfg))
    if len(real) < 2 or not generated:
        raise DataError("the demo could not read back its own clips; rerun with --debug and report it")
    rf, ra = [c.frames for c in real], [c.audio for c in real]
    gf, ga = [c.frames for c in generated], [c.audio for c in generated]
    scores = [
        score_group("real", rf, ra, cfg),
        score_group("real, audio shuffled", rf, ra, cfg, shuffle_seed=opts.seed),
        score_group("generated", gf, ga, cfg),
    ]
    if len(generated) >= 2:  # a derangement needs two clips
        scores.append(score_group("generated, audio shuffled", gf, ga, cfg, shuffle_seed=opts.seed))
    # `avdit eval` on the generated clips against the demo's real ones: AV-Align always; FVD/KVD/FAD only where
    # `avdit download --only eval` fetched the extractors (the demo downloads nothing).
    report = timed("eval", lambda: evaluate(samples, cfg, ref=data_dir)).report
    result = DemoResult(out, scores, samples, gen.contact_sheet, times, final_loss, report.get("metrics", {}),
                        model=str(run))
    _write_demo_json(out, opts, result)
    return result


def _train(opts: DemoOptions, cfg: Config, data_dir: Path, out: Path, say: Log,
           timed: Callable[[str, Callable[[], Any]], Any]) -> tuple[Path, float]:
    """Steps 2-4 of the training demo: preprocess, the backbone (shipped or pretrained now), fine-tuning.
    Returns the fine-tuned run folder and its last logged loss."""
    cache_dir = out / "cache"
    say("2/6 preprocess (decode at 10 fps / 16 kHz, encode with the tiny preset's pixel codecs)")
    summary = timed("preprocess", lambda: preprocess(cfg, data_dir, cache_dir, workers=0, batch_size=16))
    say(f"    {summary.clips} clips cached")

    runs = out / "runs"
    backbone = shipped_backbone(cfg) if opts.pretrain_steps == 0 else None
    if backbone is not None:
        say(f"3/6 the tiny image backbone shipped with avdit ({backbone})")
    else:
        steps = opts.pretrain_steps or FALLBACK_PRETRAIN_STEPS  # no shipped one fits this config
        say(f"3/6 pretrain the tiny image backbone ({steps} steps, frames only)")
        pre_cfg = cfg.replace(**{"train.mode": "pretrain", "train.steps": steps,
                                 "train.checkpoint_every": steps})
        pre = timed("pretrain", lambda: finetune(pre_cfg, cache_dir=cache_dir, run_dir=runs / "pretrain",
                                                 on_step=_step_progress(say, "pretrain")))
        backbone = pre.run_dir / "backbone"

    say(f"4/6 fine-tune the adapters ({opts.steps} steps, joint block {'on' if opts.joint else 'off'})")
    ft_cfg = cfg.replace(**{"model.backbone_path": str(backbone.resolve())})
    ft = timed("finetune", lambda: finetune(ft_cfg, cache_dir=cache_dir, run_dir=runs / "finetune",
                                            on_step=_step_progress(say, "fine-tune")))
    return ft.run_dir, (ft.history[-1].loss if ft.history else math.nan)


PROGRESS_EVERY_S = 20.0  # a long step says how far it is at least this often (a piped log is never silent)


def _step_progress(say: Log, what: str) -> Callable[[Any], None]:
    """A finetune ``on_step`` callback that reports at most every PROGRESS_EVERY_S seconds."""
    last = [time.perf_counter()]

    def on_step(info: Any) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S or info.step == info.total:
            last[0] = now
            say(f"    {what}: step {info.step}/{info.total}, loss {info.loss:.4f}, {info.clips_per_s:.1f} clips/s")

    return on_step


def _progress(say: Log) -> Callable[[float, int, float], None]:
    """A generate progress callback that reports at most every PROGRESS_EVERY_S seconds."""
    last = [time.perf_counter()]

    def on_progress(done: float, total: int, rate: float) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            say(f"    generate: {done:.1f}/{total} clips")

    return on_progress


def _write_demo_json(out: Path, opts: DemoOptions, result: DemoResult) -> None:
    (out / "demo.json").write_text(json.dumps({"options": plain(asdict(opts)), **result.to_dict()}, indent=2,
                                              allow_nan=False) + "\n")
