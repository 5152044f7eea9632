"""`avdit download` with the real huggingface_hub client against a local fake Hub (tests/hub_server.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import save
from typer.testing import CliRunner

from avdit_cli import hub
from avdit_cli.cli.download import download as download_cmd
from avdit_cli.config import load_preset
from avdit_cli.errors import ConfigError, WeightsError
from avdit_cli.hub import WeightsGroup
from avdit_cli.pipelines import download as dl
from hub_server import FakeHub, stand_in_table  # tests/ is on sys.path (pytest rootdir-less test modules)

VAE_WEIGHTS = "stabilityai/sd-vae-ft-ema/diffusion_pytorch_model.safetensors"


# ----------------------------------------------------------------------------------------------------------
# The real table
# ----------------------------------------------------------------------------------------------------------
def test_table_is_pinned_or_says_so() -> None:
    for e in hub.WEIGHTS:
        assert e.files, e.key  # a few named files, never a whole repo
        if e.is_hub and e.pinned:
            assert re.fullmatch(r"[0-9a-f]{40}", e.revision), e
        if e.is_hub and not e.pinned:
            assert e.revision == "main", e
        if not e.is_hub:  # a plain URL is pinned by a hash of its content, or says it is not
            assert e.pinned == any(f.sha256 or f.git_sha1 for f in e.files), e
        for f in e.files:
            assert f.size is None or f.size > 0
    backbone = hub.lookup("backbone", "facebook/DiT-XL-2-256")
    assert [f.name for f in backbone.files] == ["config.json", "diffusion_pytorch_model.bin"]
    assert backbone.subfolder == "transformer"
    vggish = {f.name: f.sha256 for e in hub.eval_entries() if not e.is_hub for f in e.files}
    for name, prefix in vggish.items():  # the 8 hex digits in the name are the sha256 prefix
        assert prefix is not None and name.rsplit("-", 1)[1].startswith(prefix)


def test_groups_per_preset() -> None:
    assert dl.default_groups(load_preset("tiny")) == []
    aist = [g.value for g in dl.default_groups(load_preset("aist"))]
    assert aist == ["backbone", "video-vae", "audio-vae", "vocoder", "eval"]
    assert {e.key for e in dl.select(load_preset("tiny"), ["eval"])} == {"i3d", "vggish"}
    assert {e.key for e in dl.select(load_preset("aist"), ["eval-paper"])} == {"i3d-400", "audioclip"}
    with pytest.raises(ConfigError, match="backbone"):
        dl.select(load_preset("tiny"), ["backbone"])
    assert dl.parse_only("video-vae, eval") == [WeightsGroup.VIDEO_VAE, WeightsGroup.EVAL]
    with pytest.raises(ConfigError, match="unknown weights 'vae'"):
        dl.parse_only("vae")


# ----------------------------------------------------------------------------------------------------------
# A fake Hub with tiny stand-ins in the real layouts
# ----------------------------------------------------------------------------------------------------------
def _safetensors(seed: int) -> bytes:
    return save({"w": torch.randn(8, 8, generator=torch.Generator().manual_seed(seed))})


def _torch_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))}, buf)
    return buf.getvalue()


def _build_repos(fake: FakeHub) -> tuple[hub.WeightsEntry, ...]:
    """Serve stand-ins for every table entry; return the table rewritten to fetch them."""
    def cfg(where: str) -> bytes:  # distinct contents: identical files would share one cache blob
        return json.dumps({"_class_name": "AutoencoderKL", "stand_in_for": where}).encode()

    fake.add_file("facebook/DiT-XL-2-256", "transformer/config.json", cfg("dit"))
    fake.add_file("facebook/DiT-XL-2-256", "transformer/diffusion_pytorch_model.bin", _torch_bytes(0))
    fake.add_file("facebook/DiT-XL-2-256", "vae/diffusion_pytorch_model.bin", _torch_bytes(9))  # never fetched
    fake.add_file("stabilityai/sd-vae-ft-ema", "config.json", cfg("sd-vae"))
    fake.add_file("stabilityai/sd-vae-ft-ema", "diffusion_pytorch_model.safetensors", _safetensors(1))
    for sub in ("vae", "vocoder"):
        fake.add_file("cvssp/audioldm-s-full-v2", f"{sub}/config.json", cfg(sub))
    fake.add_file("cvssp/audioldm-s-full-v2", "vae/diffusion_pytorch_model.safetensors", _safetensors(2))
    fake.add_file("cvssp/audioldm-s-full-v2", "vocoder/model.safetensors", _safetensors(3))
    fake.add_file("flateon/FVD-I3D-torchscript", "i3d_torchscript.pt", _torch_bytes(4))
    for name, seed in (("vggish-10086976.pth", 5), ("vggish_pca_params-970ea276.pth", 6),
                       ("i3d_pretrained_400.pt", 7), ("AudioCLIP-Full-Training.pt", 8)):
        fake.add_url_file(name, _torch_bytes(seed))
    return stand_in_table(fake)


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "avdit"))
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "0")
    return tmp_path


@pytest.fixture()
def fake(env: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub(env / "served") as server:
        monkeypatch.setattr(hub, "WEIGHTS", _build_repos(server))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _blobs(env: Path) -> list[Path]:
    return [p for p in (env / "hf" / "hub").glob("models--*/blobs/*") if p.is_file()]


# ----------------------------------------------------------------------------------------------------------
# Download, cache, integrity
# ----------------------------------------------------------------------------------------------------------
def test_download_lands_in_cache_and_second_run_downloads_nothing(fake: FakeHub, env: Path) -> None:
    cfg = load_preset("aist")
    messages: list[str] = []
    rows = dl.download(cfg, progress=messages.append)
    assert [r.key for r in rows] == ["backbone", "video-vae", "audio-vae", "vocoder", "i3d", "vggish"]
    assert all(r.status == "downloaded" for r in rows)
    assert messages
    # Only the named files were fetched: 2 per Hub entry with config, 1 for I3D, 2 VGGish URLs.
    assert fake.gets() == 2 + 2 + 2 + 2 + 1 + 2
    assert fake.gets("DiT-XL-2-256/") == 2 and fake.gets("/vae/diffusion_pytorch_model.bin") == 0
    hf_cache = env / "hf" / "hub"
    vae_row = rows[1]
    assert vae_row.location is not None and Path(vae_row.location).is_relative_to(hf_cache)
    assert vae_row.commit == fake.commit("stabilityai/sd-vae-ft-ema")
    assert rows[2].revision == "main (not pinned)" and rows[2].location.endswith("vae")
    assert Path(rows[5].location) == env / "avdit" / "weights"
    assert all(r.size and r.size > 0 for r in rows)
    # What the loaders ask for.
    assert hub.backbone_path(cfg) == Path(rows[0].location) and hub.backbone_path(cfg).name == "transformer"
    assert (hub.backbone_path(cfg) / "diffusion_pytorch_model.bin").is_file()
    assert hub.i3d_path().name == "i3d_torchscript.pt"
    assert [p.name for p in hub.vggish_paths()] == ["vggish-10086976.pth", "vggish_pca_params-970ea276.pth"]

    fake.reset()
    again = dl.download(cfg)
    assert fake.file_requests() == []  # verified from the cache: nothing fetched, not even a HEAD
    assert [r.status for r in again] == ["cached"] * 6
    assert [r.location for r in again] == [r.location for r in rows]


def test_hf_token_is_sent(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken")
    dl.download(load_preset("aist"), ["video-vae"])
    hub_requests = [a for (_, p), a in zip(fake.requests, fake.authorization) if "/resolve/" in p]
    assert hub_requests and all(a == "Bearer hf_testtoken" for a in hub_requests)


def test_corrupt_transfer_is_detected_removed_and_refetched(fake: FakeHub, env: Path) -> None:
    cfg = load_preset("aist")
    good = (fake.root / VAE_WEIGHTS).read_bytes()
    fake.corrupt[VAE_WEIGHTS] = bytes(len(good))  # right size, wrong content: only the hash can tell
    with pytest.raises(WeightsError, match="corrupt") as err:
        dl.download(cfg, ["video-vae"])
    assert "\n" not in str(err.value) and "avdit download --preset aist --only video-vae" in str(err.value)
    entry = hub.lookup("video-vae", "stabilityai/sd-vae-ft-ema")
    assert hub.find_local(entry) is None
    assert not any(p.stat().st_size == len(good) for p in _blobs(env))  # the bad blob is gone
    del fake.corrupt[VAE_WEIGHTS]
    before = fake.gets(VAE_WEIGHTS)
    [row] = dl.download(cfg, ["video-vae"])
    assert row.status == "downloaded" and fake.gets(VAE_WEIGHTS) == before + 1
    assert (Path(row.location) / "diffusion_pytorch_model.safetensors").read_bytes() == good


def test_truncated_transfer_is_not_used(fake: FakeHub, env: Path) -> None:
    fake.truncate[VAE_WEIGHTS] = 10
    with pytest.raises(WeightsError, match="run `avdit download --preset aist --only video-vae` again"):
        dl.download(load_preset("aist"), ["video-vae"])
    entry = hub.lookup("video-vae", "stabilityai/sd-vae-ft-ema")
    assert hub.local_file(entry, entry.files[1]) is None
    assert all(p.stat().st_size != 10 for p in _blobs(env))


def test_damaged_cache_file_is_fetched_again(fake: FakeHub, env: Path) -> None:
    cfg = load_preset("aist")
    [row] = dl.download(cfg, ["video-vae"])
    weights = Path(row.location) / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    good = blob.read_bytes()
    blob.write_bytes(good[:-5])  # a truncated file on disk
    assert dl.check(cfg, ["video-vae"])[0].ok  # --check does not hash (size unknown here)
    before = fake.gets(VAE_WEIGHTS)
    [row] = dl.download(cfg, ["video-vae"])
    assert fake.gets(VAE_WEIGHTS) == before + 1 and row.status == "downloaded"
    assert weights.read_bytes() == good


def test_size_from_table_is_checked(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tuple(dataclasses.replace(e, files=(e.files[0], dataclasses.replace(e.files[1], size=123)))
                  if e.key == "video-vae" else e for e in hub.WEIGHTS)
    monkeypatch.setattr(hub, "WEIGHTS", table)
    with pytest.raises(WeightsError, match="expected 123"):
        dl.download(load_preset("aist"), ["video-vae"])


def test_url_download_checks_hash_prefix(fake: FakeHub, env: Path) -> None:
    name = next(f.name for e in hub.WEIGHTS if not e.is_hub for f in e.files)
    fake.corrupt[name] = b"not the weights"
    with pytest.raises(WeightsError, match="vggish"):
        dl.download(load_preset("tiny"), ["eval"])
    assert not (env / "avdit" / "weights" / name).exists()


def test_eval_paper_weights_download_and_are_checked(fake: FakeHub, env: Path) -> None:
    rows = dl.download(load_preset("tiny"), ["eval-paper"])
    assert [(r.key, r.status) for r in rows] == [("i3d-400", "downloaded"), ("audioclip", "downloaded")]
    assert rows[1].revision == "v0.1 (not pinned)" and "not pinned" not in rows[0].revision
    assert hub.i3d_400_path().name == "i3d_pretrained_400.pt"
    assert hub.audioclip_path().name == "AudioCLIP-Full-Training.pt"
    # The I3D file is pinned by its git blob id: a wrong file is refused and removed.
    hub.i3d_400_path().unlink()
    fake.corrupt["i3d_pretrained_400.pt"] = b"not the weights"
    with pytest.raises(WeightsError, match="git blob id"):
        dl.download(load_preset("tiny"), ["eval-paper"])
    assert not (env / "avdit" / "weights" / "i3d_pretrained_400.pt").exists()
    with pytest.raises(WeightsError, match="--only eval-paper"):
        hub.i3d_400_path()


def test_safetensors_missing_falls_back_to_bin(fake: FakeHub) -> None:
    repo = "someone/vae-bin-only"
    fake.add_file(repo, "config.json", b"{}")
    fake.add_file(repo, "diffusion_pytorch_model.bin", _torch_bytes(7))
    cfg = load_preset("aist", [f"data.video_vae_repo={repo}"])
    [row] = dl.download(cfg, ["video-vae"])
    assert row.revision == "main (not pinned)"
    entry = hub.lookup("video-vae", repo)
    local = hub.require_local(entry)
    assert local.paths["diffusion_pytorch_model.safetensors"].name == "diffusion_pytorch_model.bin"


def test_offline_works_from_the_cache(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_preset("aist")
    dl.download(cfg, ["video-vae", "vocoder"])
    fake.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = dl.download(cfg, ["video-vae", "vocoder"])
    assert [r.status for r in rows] == ["cached", "cached"] and fake.file_requests() == []
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        dl.download(cfg, ["audio-vae"])
    assert fake.file_requests() == []


# ----------------------------------------------------------------------------------------------------------
# --check and the CLI
# ----------------------------------------------------------------------------------------------------------
def test_check_reports_missing_without_network(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    rows = dl.check(load_preset("aist"))
    assert len(rows) == 6 and all(r.status == "missing" for r in rows)
    assert rows[0].missing == ("transformer/config.json", "transformer/diffusion_pytorch_model.bin")
    assert rows[1].size == 334_643_276 or rows[1].size is None  # the expected size where known


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(download_cmd)

    @app.command()
    def other() -> None:  # a second command keeps Typer from collapsing the app into one command
        pass

    return app


def test_cli_download_and_check(fake: FakeHub) -> None:
    runner = CliRunner()
    result = runner.invoke(_app(), ["download", "--preset", "aist", "--check"])
    assert result.exit_code == 1
    assert "missing" in result.output
    assert "avdit download --preset aist --only backbone,video-vae,audio-vae,vocoder,eval" in result.output
    assert fake.file_requests() == []

    result = runner.invoke(_app(), ["download", "--preset", "aist", "--only", "video-vae,vocoder"])
    assert result.exit_code == 0, result.output
    assert "stabilityai/sd-vae-ft-ema" in result.output and "downloaded" in result.output

    result = runner.invoke(_app(), ["download", "--preset", "aist", "--only", "video-vae", "--check"])
    assert result.exit_code == 0 and "present" in result.output

    result = runner.invoke(_app(), ["download", "--preset", "tiny"])
    assert result.exit_code == 0 and "needs no downloaded weights" in result.output

    result = runner.invoke(_app(), ["download", "--only", "nope"])
    assert result.exit_code == 1 and "unknown weights 'nope'" in result.output


def test_missing_weights_error_names_the_command(env: Path) -> None:
    entry = hub.lookup("video-vae", "stabilityai/sd-vae-ft-ema")
    with pytest.raises(WeightsError) as err:
        hub.require_local(entry, "aist")
    msg = str(err.value)
    assert "\n" not in msg and "run `avdit download --preset aist --only video-vae`" in msg


def test_unreachable_hub_is_one_line(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: object, **kwargs: object) -> str:  # what the client raises after its retries
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub ...")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(WeightsError, match=r"cannot reach http://127.0.0.1:9 .* --only video-vae` again") as err:
        dl.download(load_preset("aist"), ["video-vae"])
    assert "\n" not in str(err.value)
