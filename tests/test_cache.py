"""The latent cache: atomic shard records, manifest merge, config refusal, the Dataset's reads and flips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avdit_cli.data.cache import (
    CacheHeader,
    LatentCache,
    check_or_write_header,
    extension,
    find_videos,
    merge_manifest,
    plan_shards,
    shard_done,
    write_shard,
)
from avdit_cli.errors import DataError
from avdit_cli.fileio import atomic_write_json


def make_cache(root: Path, shards: int = 2, per_shard: int = 3) -> list[torch.Tensor]:
    header = CacheHeader(config_hash="abc", data={"num_frames": 2}, codecs={"video": "pixels"}, data_dir="/x")
    check_or_write_header(root, header)
    videos = []
    for s in range(shards):
        video = torch.randn(per_shard, 2, 3, 4, 4)
        audio = torch.randn(per_shard, 1, 8, 4)
        videos.append(video)
        clips = [{"source": f"f{s}.mp4", "start": float(i), "flags": ["audio-padded"] if i == 1 else [],
                  "label": s} for i in range(per_shard)]
        skipped = [{"source": f"bad{s}.mp4", "reason": "no-audio", "message": "no audio stream"}]
        write_shard(root, s, {"video": video, "audio": audio, "label": torch.full((per_shard,), s)},
                    {"clips": clips, "skipped": skipped})
    merge_manifest(root, shards)
    return videos


def test_manifest_merge_and_reads(tmp_path: Path) -> None:
    videos = make_cache(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_clips"] == 6 and manifest["config_hash"] == "abc"
    assert [c["shard"] for c in manifest["clips"]] == [0, 0, 0, 1, 1, 1]
    lines = (tmp_path / "skipped.jsonl").read_text().splitlines()
    assert [json.loads(x)["reason"] for x in lines] == ["no-audio", "no-audio"]
    ds = LatentCache(tmp_path)
    assert len(ds) == 6
    item = ds[4]
    assert torch.equal(item["video"], videos[1][1])
    assert item["label"].item() == 1 and not item["audio_ok"].item()
    assert ds[3]["audio_ok"].item()


def test_hflip_is_seeded_and_only_at_load(tmp_path: Path) -> None:
    videos = make_cache(tmp_path, shards=1, per_shard=3)
    flipped = LatentCache(tmp_path, hflip=True, seed=1)
    seen = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        for i in range(3):
            v = flipped[i]["video"]
            if torch.equal(v, videos[0][i].flip(-1)):
                seen.add("flip")
            else:
                assert torch.equal(v, videos[0][i])
                seen.add("same")
    assert seen == {"flip", "same"}
    again = LatentCache(tmp_path, hflip=True, seed=1)
    again.set_epoch(3)
    flipped.set_epoch(3)
    assert all(torch.equal(again[i]["video"], flipped[i]["video"]) for i in range(3))
    assert torch.equal(LatentCache(tmp_path)[0]["video"], videos[0][0])  # the cache itself is untouched


def test_other_config_is_refused(tmp_path: Path) -> None:
    make_cache(tmp_path)
    other = CacheHeader(config_hash="zzz", data={}, codecs={"video": "pixels"}, data_dir="/x")
    with pytest.raises(DataError, match="another data config"):
        check_or_write_header(tmp_path, other)
    with pytest.raises(DataError, match="another data config"):
        LatentCache(tmp_path, expect={"config_hash": "zzz"})


def test_a_cache_of_an_older_reader_is_refused(tmp_path: Path) -> None:
    """Clips read before issue 14 (late audio shifted, first audio track) must not be mixed with new ones."""
    header = CacheHeader(config_hash="abc", data={}, codecs={"video": "pixels"}, data_dir="/x")
    old = {k: v for k, v in header.to_dict().items() if k != "reader"}  # what the former version wrote
    atomic_write_json(tmp_path / "header.json", old)
    with pytest.raises(DataError, match="older avdit.*reader 1, now 2.*another -o folder"):
        check_or_write_header(tmp_path, header)
    atomic_write_json(tmp_path / "header.json", header.to_dict())
    check_or_write_header(tmp_path, header)  # the same reader: fine


def test_missing_shard_and_missing_cache(tmp_path: Path) -> None:
    make_cache(tmp_path)
    assert shard_done(tmp_path, 1) and not shard_done(tmp_path, 2)
    with pytest.raises(DataError, match="avdit preprocess"):
        merge_manifest(tmp_path, 3)
    with pytest.raises(DataError, match="avdit preprocess"):
        LatentCache(tmp_path / "nothing")


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_planning_is_sorted_and_recursive(tmp_path: Path) -> None:
    """Every file is planned whatever its extension (probing decides); hidden ones and an excluded folder are not."""
    for rel in ["b/2.mp4", "a/1.MOV", "a/0.mkv", "c.txt", "z.webm", "d/clip", ".DS_Store", "a/._0.mkv",
                ".git/objects/x", "cache/shards/shard_00000.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = find_videos(tmp_path, exclude=[tmp_path / "cache"])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == \
        ["a/0.mkv", "a/1.MOV", "b/2.mp4", "c.txt", "d/clip", "z.webm"]
    assert [len(s) for s in plan_shards(files, 4)] == [4, 2]
    assert [extension(p) for p in files] == [".mkv", ".mov", ".mp4", ".txt", "(none)", ".webm"]
    with pytest.raises(DataError, match="not a folder"):
        find_videos(tmp_path / "c.txt")


def test_cache_files_get_normal_permissions(tmp_path: Path) -> None:
    from avdit_cli.fileio import file_mode

    make_cache(tmp_path)
    for f in [tmp_path / "manifest.json", tmp_path / "header.json", *(tmp_path / "shards").iterdir()]:
        assert f.stat().st_mode & 0o777 == file_mode(), f
