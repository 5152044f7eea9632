"""`avdit push` and `avdit generate --run hf://...` with the real huggingface_hub client against the local Hub
server (tests/hub_server.py: create repo, branch, preupload, LFS batch + upload + verify, NDJSON commit,
resolve). Nothing of HfApi is mocked.

The must-show: push a run, generate from hf://NAME, and get the same bytes as generating from the local run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from avdit_cli.cli.app import app
from avdit_cli.config import Config, load_preset
from avdit_cli.errors import ConfigError, DataError, TrainingError, WeightsError
from avdit_cli.metrics import FeatureCache
from avdit_cli.pipelines.evaluate import evaluate
from avdit_cli.pipelines.generate import GenerateOptions, generate
from avdit_cli.pipelines.hub_run import ADAPTERS, open_hub_run, parse_hub_ref
from avdit_cli.pipelines.model_card import CardInputs, model_card
from avdit_cli.pipelines.push import push
from avdit_cli.pipelines.runs import append_metrics, load_checkpoint
from hub_server import FakeHub  # tests/ is on sys.path
from test_generate import STEPS, make_run

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
REPO = "avdit-tests/tiny-adapters"
GEN = ["-n", "3", "--steps", str(STEPS), "--seed", "3", "-b", "2", "--save-latents"]


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "avdit"))
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "0")
    # The local server speaks the LFS upload protocol, not Xet's storage service: keep the client on LFS
    # (it picks Xet by itself when hf_xet is installed). A client setting, read at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    return tmp_path


@pytest.fixture()
def fake(env: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub(env / "served") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def run_and_samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config, Path]:
    """A tiny run with a training log, and 3 clips generated from it locally, scored by eval (AV-Align)."""
    root = tmp_path_factory.mktemp("run")
    run, cfg = make_run(root)
    for step, loss in ((3, 0.9), (7, 0.5)):
        append_metrics(run, {"step": step, "loss": loss})
    local = root / "local"
    generate(GenerateOptions(out_dir=local, num=3, checkpoint=run, steps=STEPS, seed=3, batch_size=2,
                             save_latents=True))
    evaluate(local, cfg.replace(**{"eval.metrics": ["av-align"], "eval.num_samples": 3}),
             feature_cache=FeatureCache(root / "features"))
    return run, cfg, local


def writes(fake: FakeHub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in fake.requests if m in ("POST", "PUT") and "validate-yaml" not in p]


# ----------------------------------------------------------------------------------------------------------
# The must-show
# ----------------------------------------------------------------------------------------------------------
def test_push_then_generate_from_the_hub_is_bit_identical(fake: FakeHub, env: Path, run_and_samples) -> None:
    run, cfg, local = run_and_samples
    pushed = runner.invoke(app, ["push", str(run), "--repo", REPO, "--samples", str(local)])
    assert pushed.exit_code == 0, pushed.output
    assert f"generate --run hf://{REPO} " in pushed.stdout

    # The real upload protocol ran: preupload, LFS batch, the LFS PUT and verify, then the commit.
    paths = [p for _, p in writes(fake)]
    for needle in ("/api/repos/create", f"/api/models/{REPO}/preupload/main", f"/{REPO}.git/info/lfs/objects/batch",
                   "/_lfs/", f"/api/models/{REPO}/commit/main"):
        assert any(needle in p for p in paths), needle
    files = fake.files_at(REPO)
    assert set(files) == {".gitattributes", "README.md", ADAPTERS, "config.yaml", "metrics.jsonl",
                          "eval/metrics.json", "eval/samples.json", "contact_sheet.png"}
    ckpt = load_checkpoint(run)
    backbone = ckpt.state["backbone"]
    assert not any("diffusion_pytorch_model" in f for f in files)  # never the backbone ...
    assert backbone["sha256"] in files["README.md"].decode()  # ... the card names it by sha256
    assert load_preset_from_bytes(files["config.yaml"]) == ckpt.config

    # Generate from the Hub: downloaded into the HF cache, backbone checked, same bytes as from the local run.
    out = env / "from-hub"
    made = runner.invoke(app, ["generate", "--run", f"hf://{REPO}", "-o", str(out), *GEN])
    assert made.exit_code == 0, made.output
    assert made.stdout.splitlines()[0].startswith("3 clips in")  # not a terminal: no progress bar, no blank line
    assert (env / "hf" / "hub" / f"models--{REPO.replace('/', '--')}").is_dir()
    clips = sorted(p.name for p in local.glob("sample_*.mp4"))
    assert clips == sorted(p.name for p in out.glob("sample_*.mp4")) and len(clips) == 3
    for name in clips:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    for key in ("video", "audio"):
        with safe_open(str(local / "latents.safetensors"), "pt") as a, \
                safe_open(str(out / "latents.safetensors"), "pt") as b:
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    record = json.loads((out / "samples.json").read_text())
    assert record["run"].startswith(f"hf://{REPO}@") and len(record["run"].split("@")[1]) == 40
    assert record["weights"] == "ema" and record["step"] == ckpt.step

    # eval on the hub-made folder finds its protocol through samples.json (the run is not a local folder)
    report = evaluate(out, cfg.replace(**{"eval.metrics": ["av-align"], "eval.num_samples": 3}),
                      feature_cache=FeatureCache(env / "features")).report
    assert report["metrics"]["av-align"]["status"] == "ok"
    assert "hf://" in (out / "index.html").read_text()


def load_preset_from_bytes(data: bytes) -> Config:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(data)
        return load_preset(path)


def test_adapters_file_holds_the_ema_weights_and_what_they_need(fake: FakeHub, run_and_samples) -> None:
    run, _, _ = run_and_samples
    push(run, REPO)
    ckpt = load_checkpoint(run)
    ref = open_hub_run(f"hf://{REPO}")
    assert set(ref.ema) == set(ckpt.ema) and all(torch.equal(ref.ema[k], ckpt.ema[k]) for k in ckpt.ema)
    with safe_open(str(ref.tensors_file), "pt") as f:
        meta = f.metadata()
    assert meta["weights"] == "ema" and meta["step"] == str(ckpt.step) and meta["format"] == "avdit-adapters"
    assert meta["backbone_sha256"] == ckpt.state["backbone"]["sha256"]
    assert not any(k.startswith(("optim.", "model.", "ema.")) for k in ref.ema)  # adapter names only
    with pytest.raises(ConfigError, match="ema weights only; pass --ema"):
        open_hub_run(f"hf://{REPO}", ema=False)


def test_model_card_metadata_and_numbers(fake: FakeHub, run_and_samples) -> None:
    run, _, local = run_and_samples
    push(run, REPO, samples=local)
    card = fake.files_at(REPO)["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    # This test backbone is a random local DiT: no base_model, licence unknown (and said so).
    assert front["library_name"] == "avdit" and "avdit" in front["tags"] and "base_model" not in front
    assert front["license"] == "other" and front["license_name"]
    metrics = json.loads((local / "metrics.json").read_text())["metrics"]["av-align"]
    assert f"{metrics['display_value']:.4g}" in card and "reference seed" in card  # a number with its protocol
    assert "![contact sheet" in card and "(contact_sheet.png)" in card
    assert "**last logged loss** | 0.5000 at step 7" in card
    assert f"avdit generate --run hf://{REPO} " in card


def test_card_for_the_paper_backbone_says_non_commercial() -> None:
    cfg = load_preset("aist")
    meta = {"backbone_repo": "facebook/DiT-XL-2-256", "backbone_sha256": "ab" * 32, "weights": "ema", "step": "5",
            "backbone_format": "diffusers-bin"}
    card = model_card(CardInputs(repo_id="me/aist", reference="hf://me/aist", config=cfg, state={"step": 5},
                                 adapters=meta, num_tensors=3, num_params=10, files=["README.md"]))
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "facebook/DiT-XL-2-256" and front["base_model_relation"] == "adapter"
    assert front["license"] == "cc-by-nc-4.0" and "non-commercial" in front["tags"]
    assert "non-commercial use only" in card and "ab" * 32 in card
    assert "cvssp/audioldm-s-full-v2" in card and "cc-by-nc-sa-4.0" in card  # the codecs' licences
    assert "avdit download --only backbone --set model.backbone_repo=facebook/DiT-XL-2-256" in card
    assert "Not evaluated yet" in card


# ----------------------------------------------------------------------------------------------------------
# Branches, private repos, tokens
# ----------------------------------------------------------------------------------------------------------
def test_private_branch_needs_the_token(fake: FakeHub, env: Path, run_and_samples,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run, _, local = run_and_samples
    result = push(run, "me/secret", private=True, revision="exp-1")
    assert result.reference == "hf://me/secret@exp-1" and result.revision == "exp-1"
    assert fake.repos["me/secret"].private
    assert set(fake.files_at("me/secret")) == {".gitattributes"}  # main untouched
    assert ADAPTERS in fake.files_at("me/secret", "exp-1")
    out = env / "branch"
    generate(GenerateOptions(out_dir=out, num=2, checkpoint="hf://me/secret@exp-1", steps=STEPS, seed=3,
                             batch_size=2))  # the same first batch as the local samples: the same bytes
    assert (out / "sample_00001.mp4").read_bytes() == (local / "sample_00001.mp4").read_bytes()

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(env / "other-hf"))  # nothing cached: the download must ask the Hub
    with pytest.raises(WeightsError, match="private\\? set HF_TOKEN") as err:
        open_hub_run("hf://me/secret@exp-1")
    assert "\n" not in str(err.value)
    denied = runner.invoke(app, ["push", str(run), "--repo", "me/another"])
    assert denied.exit_code == 1 and "set HF_TOKEN" in denied.output and "Traceback" not in denied.output
    assert len([line for line in denied.stderr.splitlines() if line.startswith("error:")]) == 1


def test_offline_generates_from_the_cache(fake: FakeHub, env: Path, run_and_samples,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run, _, _ = run_and_samples
    push(run, REPO)
    open_hub_run(f"hf://{REPO}")
    fake.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = open_hub_run(f"hf://{REPO}")
    assert again.source.startswith(f"hf://{REPO}@") and fake.file_requests() == []
    with pytest.raises(WeightsError, match="push needs the network"):
        push(run, REPO)


# ----------------------------------------------------------------------------------------------------------
# Refusals: before any write, in one line
# ----------------------------------------------------------------------------------------------------------
def test_refusals_before_touching_the_hub(fake: FakeHub, tmp_path: Path, run_and_samples) -> None:
    run, _, local = run_and_samples
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        push(run, "no/such/repo")
    pre, _ = make_run(tmp_path / "pre", mode="pretrain")
    with pytest.raises(TrainingError, match="pretrain run"):
        push(pre, REPO)
    other = tmp_path / "other-samples"
    shutil.copytree(local, other)
    samples = json.loads((other / "samples.json").read_text())
    samples["checkpoint_sha256"] = "0" * 64
    (other / "samples.json").write_text(json.dumps(samples))
    with pytest.raises(DataError, match="generated from another checkpoint"):
        push(run, REPO, samples=other)
    with pytest.raises(DataError, match="another checkpoint or weights"):
        push(run, REPO, samples=local, ema=False)  # those samples used the EMA weights
    assert writes(fake) == []
    with pytest.raises(ConfigError, match="hf://ORG/NAME"):
        parse_hub_ref("hf://a/b/c")
    with pytest.raises(ConfigError, match="nothing after '@'"):
        parse_hub_ref("hf://a/b@")
    assert str(parse_hub_ref("hf://a/b@dev")) == "hf://a/b@dev"


def test_a_missing_or_different_backbone_is_named(fake: FakeHub, tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "mine", seed=1)
    push(run, "me/moved")
    backbone = Path(load_checkpoint(run).state["backbone"]["path"])
    shutil.move(backbone, tmp_path / "elsewhere")
    with pytest.raises(WeightsError, match="local backbone .* not on this machine; copy it to that path"):
        open_hub_run("hf://me/moved")
    make_run(tmp_path / "mine", seed=2)  # another backbone where the first one was
    with pytest.raises(WeightsError, match="none found here is it"):
        open_hub_run("hf://me/moved")
    shutil.rmtree(backbone)
    shutil.move(tmp_path / "elsewhere", backbone)
    assert open_hub_run("hf://me/moved").state["backbone"]["path"] == str(backbone)
