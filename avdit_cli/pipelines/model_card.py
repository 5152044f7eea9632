"""The model card (README.md) `avdit push` writes: Hub metadata, the backbone by repo and sha256 (never its
weights), how the run was trained, its numbers with their protocol, the contact sheet, and the licence.

The licence is the backbone's, as the adapters are a derivative of it: DiT-XL/2 is CC BY-NC 4.0, so a card
for adapters on it says non-commercial. The codecs' licences are listed too, as generating needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from avdit_cli import hub
from avdit_cli.config import AudioCodec, Config, VideoCodec, Vocoder

TAGS = ["avdit", "av-dit", "audio-video-generation", "video-generation", "audio-generation", "diffusion", "dit",
        "adapter"]
LICENCE_WORDS = {
    "cc-by-nc-4.0": "CC BY-NC 4.0: **non-commercial use only**",
    "cc-by-nc-sa-4.0": "CC BY-NC-SA 4.0: **non-commercial use only**, share alike",
    "mit": "MIT",
    "apache-2.0": "Apache-2.0",
}


@dataclass
class CardInputs:
    repo_id: str
    reference: str  # hf://NAME[@BRANCH]
    config: Config
    state: dict[str, Any]  # the checkpoint's state.json
    adapters: dict[str, str]  # the adapters file's header (hub_run.adapter_metadata)
    num_tensors: int
    num_params: int
    training_log: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] | None = None  # {"data_dir", "clips", "files"} from the latent cache
    samples: dict[str, Any] | None = None  # samples.json of --samples
    metrics: dict[str, Any] | None = None  # metrics.json of --samples (after `avdit eval`)
    contact_sheet: str | None = None  # its name in the repo
    files: list[str] = field(default_factory=list)


def backbone_licence(repo: str | None, sha256: str) -> str:
    """The Hub licence id of the backbone: from avdit's weights table, "mit" for the tiny backbone avdit ships
    (made by avdit, as its code), else "other" (unknown)."""
    for entry in hub.WEIGHTS:
        if entry.group is hub.WeightsGroup.BACKBONE and entry.repo_id == repo:
            return entry.licence
    from avdit_cli.pipelines.hub_run import backbone_sha256, shipped_tiny_backbone

    if backbone_sha256(shipped_tiny_backbone()) == sha256:
        return "mit"
    return "other"


def licence_words(licence: str) -> str:
    if licence == "other":
        return ("unknown to avdit (a backbone made or fetched outside its weights table): check the backbone's "
                "terms before you use or share these adapters")
    return LICENCE_WORDS.get(licence, licence + (" (non-commercial)" if "-nc" in licence else ""))


def _metadata(repo: str | None, licence: str) -> str:
    meta: dict[str, Any] = {}
    if repo:
        meta["base_model"] = repo
        meta["base_model_relation"] = "adapter"
    meta["library_name"] = "avdit"
    meta["license"] = licence
    if licence == "other":
        meta["license_name"] = "backbone-licence-unknown"
    meta["tags"] = TAGS + (["non-commercial"] if "-nc" in licence else [])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _codec_rows(cfg: Config) -> list[tuple[str, str, str]]:
    """(what, repo, licence) of the pretrained codecs this config generates with."""
    rows = []
    d = cfg.data
    if d.video_codec is VideoCodec.SD_VAE:
        rows.append(("video VAE", d.video_vae_repo, hub.lookup("video-vae", d.video_vae_repo).licence))
    if d.audio_codec is AudioCodec.AUDIOLDM_VAE:
        rows.append(("audio VAE", d.audio_vae_repo, hub.lookup("audio-vae", d.audio_vae_repo).licence))
    if d.vocoder is Vocoder.HIFIGAN:
        rows.append(("vocoder", d.audio_vae_repo, hub.lookup("vocoder", d.audio_vae_repo).licence))
    return rows


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _training(c: CardInputs) -> str:
    cfg, t, m, d = c.config, c.config.train, c.config.model, c.config.data
    world = int(c.state.get("world_size", 1) or 1)
    joint = (f"yes, after block(s) {', '.join(map(str, m.joint_after))}, LoRA rank {m.joint_lora_rank}"
             if m.joint else "no (the ablation)")
    rows = [
        ("preset", cfg.name),
        ("steps", f"{int(c.state.get('step', 0)):,} (of {t.steps:,} planned)"),
        ("batch", f"{t.batch_size} clips x {t.grad_accum} accumulation x {world} process(es)"),
        ("optimiser", f"AdamW, lr {t.lr:g}, weight decay {t.weight_decay:g}, {t.lr_schedule.value} schedule, "
                      f"{t.warmup_steps} warmup steps, gradient clip {t.grad_clip:g}"),
        ("EMA", f"decay {t.ema_decay:g}{' with diffusers warmup (0, then min(decay, (1+n)/(10+n)))' if t.ema_warmup else ''}; "
                f"this repo holds the **{c.adapters.get('weights', 'ema')}** weights"),
        ("precision, seed", f"{t.precision.value}, {t.seed}"),
        ("clips", f"{d.num_frames} frames at {d.fps:g} fps, {d.frame_size}x{d.frame_size}, "
                  f"{d.clip_samples / d.sample_rate:g} s of {d.sample_rate} Hz mono audio"),
        ("codecs", f"video {d.video_codec.value}, audio {d.audio_codec.value}, vocoder {d.vocoder.value}"),
        ("adapters", f"temporal attention in every block; audio LoRA rank {m.lora_rank} on "
                     f"{', '.join(m.lora_targets)}; joint block: {joint}"),
        ("trained tensors", f"{c.num_tensors} tensors, {c.num_params:,} parameters"),
    ]
    if c.data:
        rows.append(("data", f"{c.data['clips']:,} clips from {c.data['files']:,} files of `{c.data['data_dir']}`"))
    losses = [r for r in c.training_log if isinstance(r.get("loss"), (int, float))]
    if losses:
        rows.append(("last logged loss", f"{losses[-1]['loss']:.4f} at step {losses[-1].get('step', '?')} "
                                         "(the full log: `metrics.jsonl`)"))
    return _table([(f"**{k}**", v) for k, v in rows], ("", ""))


def _evaluation(c: CardInputs) -> str:
    if c.metrics is None:
        how = ("push again with `--samples DIR` after `avdit generate -o DIR` and `avdit eval DIR`"
               if c.samples is None else "run `avdit eval` on the samples folder and push again")
        return f"Not evaluated yet: {how}."
    p = c.metrics.get("protocol", {})
    rows = []
    for name, r in (c.metrics.get("metrics") or {}).items():
        if r.get("status") != "ok":
            rows.append((name, "skipped", "", "", str(r.get("reason", "")).split(";")[0]))
            continue
        proto = r.get("protocol", {})
        scale = r.get("display_scale", 1)
        label = name if scale == 1 else f"{name} (x{scale:g})"
        extractor = str(proto.get("feature", ""))
        if proto.get("weights_sha256"):
            extractor += f" (weights sha256 {str(proto['weights_sha256'])[:12]}...)"
        ref = f"{r['reference'] * scale:.4g}" if isinstance(r.get("reference"), (int, float)) else ""
        rows.append((label, f"{r['display_value']:.4g}", ref, f"{proto.get('n_gen')} / {proto.get('n_ref')}",
                     f"{extractor}; {proto.get('resolution')} px, {proto.get('num_frames')} frames at "
                     f"{proto.get('fps')} fps, {proto.get('sample_rate')} Hz; reference seed {proto.get('seed')}"))
    s = c.samples or {}
    made = (f"{s.get('num', '?')} clips sampled with {s.get('sampler', '?')}, {s.get('steps', '?')} steps, seeds from "
            f"{s.get('seed', '?')}")
    return (f"{made}; scored by `avdit eval` ({p.get('num_samples', '?')} clips per set). Numbers made with "
            "another protocol (another feature extractor, resolution, sample count or reference set, such as "
            "MM-Diffusion's evaluator) are not comparable to these; `eval/metrics.json` holds each number's full "
            "protocol.\n\n" + _table(rows, ("metric", "value", "real clips", "gen / ref", "protocol")))


def model_card(c: CardInputs) -> str:
    """README.md for a pushed run."""
    a = c.adapters
    repo = a.get("backbone_repo") or None
    sha = a.get("backbone_sha256", "")
    licence = backbone_licence(repo, sha)
    name = c.repo_id.split("/")[-1]
    backbone_rows = [("repo", f"[`{repo}`](https://huggingface.co/{repo})" if repo else
                      "a local backbone (not on the Hub)"), ("weights sha256", f"`{sha}`"),
                     ("format", a.get("backbone_format") or "?"), ("licence", licence_words(licence))]
    get_backbone = (f"avdit download --only backbone --set model.backbone_repo={repo}   # the frozen backbone, once\n"
                    if repo else "")
    codecs = _codec_rows(c.config)
    codec_text = ("\n\nGenerating also uses these pretrained codecs, under their own licences:\n\n"
                  + _table([(w, f"`{r}`", lic) for w, r, lic in codecs], ("codec", "repo", "licence"))
                  if codecs else "\n\nThe codecs of this config are weight-free.")
    sheet = (f"\n\n![contact sheet: frames over the mel spectrogram of generated clips]({c.contact_sheet})"
             if c.contact_sheet else "")
    files = _table([(f"`{f}`", _FILES.get(f, "")) for f in c.files], ("file", "what"))
    return f"""{_metadata(repo, licence)}
# {name}

AV-DiT adapters for joint audio-video generation, trained with **avdit** on a frozen image DiT: temporal
attention for video, LoRA for audio, and a joint block that keeps the two tracks in sync. This repo holds
only the trained tensors ({c.num_params:,} parameters, step {a.get('step', '?')}); the frozen backbone is not
included.

## Use

```bash
{get_backbone}avdit generate --run {c.reference} -n 16 -o out/   # clips with sound, samples.json, index.html
```

`avdit generate` downloads these files into the Hugging Face cache, checks that the backbone on your machine
is the one the adapters were trained on (by the sha256 below) and samples.

## Backbone (not included)

{_table([(f"**{k}**", v) for k, v in backbone_rows], ("", ""))}

## Training

{_training(c)}

Full configuration: `config.yaml`.

## Evaluation

{_evaluation(c)}{sheet}

## Licence

Inherited from the backbone: {licence_words(licence)}.{codec_text}

## Files

{files}
"""


_FILES = {
    "README.md": "this card",
    "adapters.safetensors": "the trained tensors; the header records the weights, step and backbone sha256",
    "config.yaml": "the resolved config the run was trained with",
    "metrics.jsonl": "the training log, one JSON object per logged step",
    "eval/metrics.json": "`avdit eval`'s report: every number with its protocol",
    "eval/samples.json": "how the evaluated samples were made (sampler, steps, seeds)",
    "contact_sheet.png": "frames over the mel spectrogram of the first generated clips",
}
