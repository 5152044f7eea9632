"""Class-conditional models end to end on the demo's data (CPU): the synthetic files sit in folders named by
their balls' colours; pretrain mode grows an unconditional backbone's class table (``train.init_from``) and
trains it on labelled frames, writing the class names beside the weights; finetune maps a cache's labels to
the backbone's class rows by name; generate draws each clip's class from the training clips' frequencies.

Sizes as in test_finetune: 4-frame clips, a 2-block DiT, batch 4.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from avdit_cli.config import Config, load_preset
from avdit_cli.data.cache import LatentCache, read_manifest
from avdit_cli.data.synthetic import COLOUR_NAMES, PALETTE, colour_class, colour_classes, make_dataset
from avdit_cli.errors import ConfigError, DataError, WeightsError
from avdit_cli.models import DiT
from avdit_cli.models.dit_loading import CLASS_NAMES, read_class_names
from avdit_cli.pipelines import finetune as ft
from avdit_cli.pipelines.finetune import finetune
from avdit_cli.pipelines.generate import GenerateOptions, generate
from avdit_cli.pipelines.preprocess import preprocess
from avdit_cli.pipelines.runs import load_checkpoint

SMALL = ["data.num_frames=4", "model.depth=2", "train.batch_size=4", "train.log_every=1",
         "train.num_workers=0", "train.checkpoint_every=1000", "data.class_folders=true"]
K = len(colour_classes())  # 21
LABELLED = ["model.class_conditional=true", f"model.num_classes={K}"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass
class Env:
    root: Path
    data: Path
    cache: Path
    plain: Path  # an unconditional backbone (pretrain mode, no labels)
    labelled: Path  # grown from it and trained on labelled frames

    def cfg(self, *extra: str) -> Config:
        return load_preset("tiny", [*SMALL, *extra])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Env:
    root = tmp_path_factory.mktemp("classes")
    make_dataset(root / "data", 6, seconds=2.0, seed=5, class_folders=True)  # 6 files x 5 clips of 0.4 s
    cfg = load_preset("tiny", SMALL)
    preprocess(cfg, root / "data", root / "cache", workers=0)
    plain = finetune(load_preset("tiny", [*SMALL, "train.mode=pretrain", "train.steps=2", "train.ema_decay=0"]),
                     cache_dir=root / "cache", run_dir=root / "runs" / "plain", tensorboard=False)
    # class_dropout 0: only the rows of classes in the data see a gradient
    grown = finetune(load_preset("tiny", [*SMALL, *LABELLED, "train.mode=pretrain", "train.steps=3", "train.ema_decay=0",
                                          "train.class_dropout=0", f"train.init_from={plain.run_dir / 'backbone'}"]),
                     cache_dir=root / "cache", run_dir=root / "runs" / "grown", tensorboard=False)
    return Env(root, root / "data", root / "cache", plain.run_dir / "backbone", grown.run_dir / "backbone")


def test_class_folders_hold_the_same_files_named_by_their_colours(env: Env, tmp_path: Path) -> None:
    flat = make_dataset(tmp_path / "flat", 6, seconds=2.0, seed=5)
    for path in flat:
        balls = json.loads(path.with_suffix(".json").read_text())["balls"]
        twin = env.data / colour_class([tuple(b["colour"]) for b in balls]) / path.name
        assert twin.read_bytes() == path.read_bytes()
    assert len(colour_classes()) == 6 + 15 and len(set(colour_classes())) == 21
    assert colour_class([PALETTE[2], PALETTE[0]]) == f"{COLOUR_NAMES[0]}+{COLOUR_NAMES[2]}"  # palette order
    found = read_manifest(env.cache)["classes"]
    assert found and set(found) <= set(colour_classes())


def test_init_from_grows_the_class_table_and_starts_as_the_source(env: Env) -> None:
    src = DiT.from_pretrained(env.plain)
    cfg = env.cfg(*LABELLED, "train.mode=pretrain", f"train.init_from={env.plain}")
    model, ref = ft._build(cfg, torch.device("cpu"), True, torch.Generator().manual_seed(0))
    assert ref["init_from"]["path"] == str(env.plain.resolve())
    table = model.y_embedder.embedding_table.weight
    assert table.shape[0] == K + 1
    torch.testing.assert_close(table, src.y_embedder.embedding_table.weight[-1:].expand(K + 1, -1))  # all null
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, torch.tensor([0, 7, K])), src(x, t, None))
    with pytest.raises(WeightsError, match="classes"):  # a source with more classes than asked for
        ft._build(load_preset("tiny", [*SMALL, "train.mode=pretrain", "model.num_classes=3",
                                       "model.class_conditional=true", f"train.init_from={env.labelled}"]),
                  torch.device("cpu"), True, torch.Generator())
    with pytest.raises(WeightsError, match="hidden_size"):
        ft._build(env.cfg("train.mode=pretrain", "model.hidden_size=32", f"train.init_from={env.plain}"),
                  torch.device("cpu"), True, torch.Generator())


def test_labelled_pretraining_trains_the_rows_of_the_data_classes_and_names_them(env: Env) -> None:
    names = read_class_names(env.labelled)
    assert names == read_manifest(env.cache)["classes"]  # no source names: the cache's
    start = DiT.from_pretrained(env.plain).y_embedder.embedding_table.weight[-1]
    table = DiT.from_pretrained(env.labelled).y_embedder.embedding_table.weight
    moved = [bool((table[i] - start).abs().max() > 0) for i in range(K + 1)]
    assert moved == [i < len(names) for i in range(K + 1)]  # the null row (dropout 0) and unused rows stay
    state = load_checkpoint(env.labelled.parent).state
    assert state["classes"]["names"] == names and sum(state["classes"]["counts"]) == len(LatentCache(env.cache))


def test_finetune_maps_the_cache_labels_to_the_backbone_rows_by_name(env: Env, tmp_path: Path) -> None:
    # the backbone's rows in another order, with every class of the palette: the cache's labels must follow
    backbone = tmp_path / "backbone"
    DiT.from_pretrained(env.labelled).save_pretrained(backbone)
    table = list(reversed(colour_classes()))
    (backbone / CLASS_NAMES).write_text(json.dumps(table))
    run = finetune(env.cfg(*LABELLED, f"model.backbone_path={backbone}", "train.steps=1"), cache_dir=env.cache,
                   run_dir=tmp_path / "run").run_dir
    info = load_checkpoint(run).state["classes"]
    assert info["names"] == table
    cache = read_manifest(env.cache)
    want = [0] * K
    for clip in cache["clips"]:
        want[table.index(cache["classes"][clip["label"]])] += 1
    assert info["counts"] == want
    (backbone / CLASS_NAMES).write_text(json.dumps(table[:3]))  # the cache has classes the backbone lacks
    with pytest.raises(DataError, match="no row for"):
        finetune(env.cfg(*LABELLED, f"model.backbone_path={backbone}", "train.steps=1"), cache_dir=env.cache,
                 run_dir=tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_generate_draws_each_clip_class_from_the_training_frequencies(env: Env, tmp_path: Path) -> None:
    run = finetune(env.cfg(*LABELLED, f"model.backbone_path={env.labelled}", "train.steps=1"), cache_dir=env.cache,
                   run_dir=tmp_path / "run").run_dir
    info = load_checkpoint(run).state["classes"]

    def gen(out: str, **kw) -> list[dict]:
        res = generate(GenerateOptions(out_dir=tmp_path / out, checkpoint=run, num=6, steps=2, batch_size=4, **kw))
        return json.loads(res.samples_json.read_text())["samples"]

    drawn = gen("a")
    classes = [r["class"] for r in drawn]
    assert all(info["counts"][c] > 0 for c in classes)  # only classes the run saw
    assert [r["class_name"] for r in drawn] == [info["names"][c] for c in classes]
    assert drawn[0]["class_draw"] == "the training clips' class frequencies"
    assert [r["class"] for r in gen("b")] == classes  # seeded
    again = gen("c", seed=3)  # clip i of seed 3 is clip i + 3 of seed 0
    assert [r["class"] for r in again[:3]] == classes[3:]
    fixed = gen("d", class_id=2, cfg_scale=2.0)
    assert {r["class"] for r in fixed} == {2} and fixed[0]["class_draw"] == "fixed (--class)"


def test_class_settings_are_checked(env: Env) -> None:
    with pytest.raises(ConfigError, match="train.init_from"):
        env.cfg(f"train.init_from={env.plain}")  # finetune mode starts from model.backbone_path
    with pytest.raises(ConfigError, match="model.num_classes"):
        env.cfg("model.class_conditional=true", "model.num_classes=0")
    flat = env.root / "flat"
    make_dataset(flat / "data", 1, seconds=2.0, seed=5)
    preprocess(load_preset("tiny", SMALL[:-1]), flat / "data", flat / "cache", workers=0)
    with pytest.raises(ConfigError, match="class_folders"):  # a cache without classes
        finetune(load_preset("tiny", [*SMALL[:-1], *LABELLED, f"model.backbone_path={env.labelled}", "train.steps=1"]),
                 cache_dir=flat / "cache", run_dir=flat / "run")
    with pytest.raises(ConfigError, match="model.num_classes"):  # more classes than rows
        finetune(env.cfg("model.class_conditional=true", "model.num_classes=1", "train.mode=pretrain",
                         "train.steps=1"), cache_dir=env.cache, run_dir=flat / "run")
    assert not (flat / "run").exists()


def test_init_from_a_named_table_appends_the_new_classes_and_a_resume_keeps_the_rows(env: Env, tmp_path: Path) -> None:
    source = tmp_path / "source"
    DiT.from_pretrained(env.labelled).save_pretrained(source)
    cache_names = read_manifest(env.cache)["classes"]
    known = [n for n in colour_classes() if n not in cache_names][:2] + cache_names[:1]
    (source / CLASS_NAMES).write_text(json.dumps(known))
    cfg = env.cfg(*LABELLED, "train.mode=pretrain", "train.steps=1", f"train.init_from={source}")
    run = finetune(cfg, cache_dir=env.cache, run_dir=tmp_path / "grown").run_dir
    names = load_checkpoint(run).state["classes"]["names"]
    assert names == known + [n for n in cache_names if n not in known]  # old rows keep their place
    assert read_class_names(run / "backbone") == names
    shutil.rmtree(source)  # a resume starts from its checkpoint, not from the source
    again = finetune(cfg.replace(**{"train.steps": 2}), cache_dir=env.cache, resume=run).run_dir
    assert load_checkpoint(again).state["classes"]["names"] == names
    unnamed = tmp_path / "unnamed"  # class rows without names: which row is which is unknown
    DiT.from_pretrained(env.labelled).save_pretrained(unnamed)
    with pytest.raises(WeightsError, match="class_names.json"):
        finetune(env.cfg(*LABELLED, "train.mode=pretrain", "train.steps=1", f"train.init_from={unnamed}"),
                 cache_dir=env.cache, run_dir=tmp_path / "bad")


def test_generate_records_the_guidance_each_clip_had_and_checks_class_ids(env: Env, tmp_path: Path) -> None:
    run = finetune(env.cfg(*LABELLED, f"model.backbone_path={env.labelled}", "train.steps=1"), cache_dir=env.cache,
                   run_dir=tmp_path / "run").run_dir
    res = generate(GenerateOptions(out_dir=tmp_path / "g", checkpoint=run, num=2, steps=2, cfg_scale=2.0, seed=-5))
    records = json.loads(res.samples_json.read_text())["samples"]
    assert [r["cfg_scale"] for r in records] == [2.0, 2.0] and all(r["class_name"] for r in records)
    names = load_checkpoint(run).state["classes"]["names"]
    kept = tmp_path / "h" / "sample_00000.mp4"
    kept.parent.mkdir()
    kept.write_bytes(b"kept")
    with pytest.raises(ConfigError, match="trained classes"):
        generate(GenerateOptions(out_dir=tmp_path / "h", checkpoint=run, num=1, steps=2, class_id=len(names),
                                 overwrite=True))
    assert kept.read_bytes() == b"kept"  # refused before the folder was touched
