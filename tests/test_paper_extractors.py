"""The mm-diffusion protocol's extractors (InceptionI3d logits, AudioCLIP's audio head) on random weights
saved in the published key layouts (tiny widths, the published key names), and their preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics import audioclip as ac
from avdit_cli.metrics import i3d_400 as i3d

TINY_I3D = i3d.I3DWidths(stem=(4, 4, 8), mixed={m: (2, 2, 4, 2, 2, 2) for m in i3d.PUBLISHED_MIXED})
TINY_AUDIO = ac.AudioHeadWidths(base=8, groups=2, width_per_group=32, embed_dim=16)


def _randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random values for every tensor (fan-in scaled weights, positive variances), so that a wrongly mapped
    key changes the output and activations neither vanish nor explode."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked") or not v.numel():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif v.ndim > 1:  # conv / linear weights
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith("weight"):  # norm scales
            out[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        else:  # biases, running means
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
    return out


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory) -> Path:
    """The converter's layout: plain dict, no num_batches_tracked, bn.weight present."""
    state = {k: v for k, v in i3d.InceptionI3d(TINY_I3D).state_dict().items() if "num_batches" not in k}
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(_randomised(state, 0), path)
    return path


@pytest.fixture(scope="module")
def audioclip_file(tmp_path_factory) -> Path:
    """AudioCLIP's layout: the head under audio. beside CLIP's towers (here a few stand-in tensors)."""
    head = ac.AudioCLIPAudioHead(TINY_AUDIO)
    state = {ac.PREFIX + k: v for k, v in _randomised(head.state_dict(), 1).items()}
    state[ac.PREFIX + "window"] = head.window.clone()
    g = torch.Generator().manual_seed(2)
    state[ac.PREFIX + "fbsp.m"] = torch.rand(1025, generator=g)
    state[ac.PREFIX + "fbsp.fb"] = 0.5 + torch.rand(1025, generator=g)
    state[ac.PREFIX + "fbsp.fc"] = torch.arange(1025.0)
    state.update({"visual.conv1.weight": torch.zeros(4, 3, 3, 3), "transformer.resblocks.0.ln_1.weight":
                  torch.ones(4), "logit_scale": torch.tensor(4.6), "logit_scale_ai": torch.tensor(4.6)})
    path = tmp_path_factory.mktemp("audioclip") / "AudioCLIP-Full-Training.pt"
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------------- I3D-400
def test_published_i3d_layout() -> None:
    keys = i3d.expected_keys(i3d.I3DWidths())
    assert len(keys) == 287  # what the converter writes (and cd-fvd's InceptionI3d state dict, less counters)
    assert keys["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert keys["Mixed_4b.b1b.conv3d.weight"] == (208, 96, 3, 3, 3)
    assert keys["Mixed_5c.b3b.bn.running_var"] == (128,)
    assert keys["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and keys["logits.conv3d.bias"] == (400,)
    assert not any(k.startswith("logits.bn") or "num_batches" in k for k in keys)


def test_i3d_runs_on_random_weights_in_the_published_layout(i3d_file: Path) -> None:
    feats = i3d.I3D400Features(i3d_file, batch_size=2)
    assert feats.protocol["widths"].startswith("custom") and len(feats.protocol["weights_sha256"]) == 64
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 64, 64, 3), dtype=np.uint8)
    out = feats(frames)
    assert out.shape == (3, 400) and out.dtype == np.float32 and np.isfinite(out).all()
    with torch.no_grad():
        direct = feats.model(i3d.preprocess(frames)).numpy()
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)  # batching does not change the numbers
    assert np.abs(out[0] - out[1]).max() > 1e-4  # different clips, different logits


@pytest.mark.parametrize("change, named", [
    ("drop", "Mixed_4d.b2b.bn.running_mean"),
    ("reshape", "Mixed_4d.b1b.conv3d.weight"),
    ("extra", "Mixed_4d.b9.conv3d.weight"),
])
def test_i3d_partial_or_mismatched_file_is_refused_by_name(i3d_file: Path, tmp_path: Path, change: str,
                                                          named: str) -> None:
    state = torch.load(i3d_file, weights_only=True)
    if change == "drop":
        del state[named]
    elif change == "reshape":
        state[named] = torch.zeros(2, 3, 3, 3, 3)  # in-channels that do not chain
    else:
        state[named] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")) as err:
        i3d.load_i3d_400(bad)
    assert "avdit download --only eval-paper" in str(err.value) and "\n" not in str(err.value)


def test_i3d_refuses_what_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match="not a state dict"):
        i3d.load_i3d_400(path)
    with pytest.raises(WeightsError, match="not found"):
        i3d.load_i3d_400(tmp_path / "absent.pt")


def test_i3d_preprocessing_hand_computed() -> None:
    colours = np.array([[0, 51, 255], [10, 20, 30]], dtype=np.uint8)
    frames = np.broadcast_to(colours[:, None, None, None, :], (2, 16, 64, 64, 3)).copy()
    x = i3d.preprocess(frames)
    assert x.shape == (2, 3, 16, 224, 224) and x.dtype == torch.float32
    # A constant frame stays constant: (v / 255 - 0.5) * 2; 51 -> -0.6, 255 -> 1.
    for b in range(2):
        for c in range(3):
            expected = (colours[b, c] / 255.0 - 0.5) * 2
            assert torch.allclose(x[b, c], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    # 32 x 64 frames: short side 32 -> 224 (x7), long side 448, centre crop keeps columns 112..335. Output
    # column j samples source column (j + 0.5) / 7 - 0.5: the crop's columns 3..220 fall on source columns
    # 16..47 (white here), its first three blend with black column 15 and its last three with column 48.
    wide = np.zeros((1, 16, 32, 64, 3), dtype=np.uint8)
    wide[..., 16:48, :] = 255
    y = i3d.preprocess(wide)
    assert y.shape == (1, 3, 16, 224, 224)
    assert torch.allclose(y[..., 3:221], torch.tensor(1.0), atol=1e-6)
    assert y[..., 2].max() < 0.99 and y[..., 221].max() < 0.99
    with pytest.raises(DataError, match="uint8"):
        i3d.preprocess(frames.astype(np.float32))


# ----------------------------------------------------------------------------------------------- AudioCLIP
def test_published_audioclip_head_layout() -> None:
    keys = ac.expected_keys(ac.AudioHeadWidths())
    assert len(keys) == 370  # the head's state dict in MM-Diffusion's copy of AudioCLIP, counters included
    assert keys["audio.conv1.weight"] == (64, 3, 7, 7)
    assert keys["audio.layer3.5.conv2.weight"] == (512, 16, 3, 3)  # ResNeXt 32x4d: 32 groups of 16
    assert keys["audio.att5.conv_depth.weight"] == (2048, 1, 3, 5)
    assert keys["audio.fc.weight"] == (1024, 2048)
    assert keys["audio.fbsp.m"] == (1025,) and keys["audio.fbsp.bias"] == (0,)
    assert keys["audio.window"] == (ac.WIN_LENGTH,)


def test_audioclip_runs_on_random_weights_with_batch_statistics(audioclip_file: Path) -> None:
    feats = ac.AudioCLIPAudioFeatures(audioclip_file)
    assert feats.ignored == {"visual": 1, "transformer": 1, "logit_scale": 1, "logit_scale_ai": 1}
    assert feats.window_from_file and "batch statistics" in feats.protocol["batchnorm"]
    rng = np.random.default_rng(3)
    waves = (rng.uniform(-0.5, 0.5, size=(4, 70560))).astype(np.float32)
    out = feats(waves)
    assert out.shape == (4, 16) and out.dtype == np.float32 and np.isfinite(out).all()
    # Batch statistics: a clip's embedding depends on the clips batched with it (the evaluator's quirk) ...
    other = feats(np.concatenate([waves[:1], rng.uniform(-0.1, 0.1, size=(3, 70560)).astype(np.float32)]))
    assert np.abs(other[0] - out[0]).max() > 1e-4
    # ... while running statistics (eval mode) do not.
    plain = ac.AudioCLIPAudioFeatures(audioclip_file, batch_statistics=False)
    np.testing.assert_allclose(plain(waves)[:1], plain(waves[:1]), rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match="batch of 1"):
        feats(waves[:1])


@pytest.mark.parametrize("change, named", [
    ("drop", "audio.layer3.2.bn2.running_var"),
    ("reshape", "audio.att2.conv_point.weight"),
    ("extra", "audio.layer5.0.conv1.weight"),
    ("bias", "audio.fbsp.bias"),
])
def test_audioclip_partial_or_mismatched_file_is_refused_by_name(audioclip_file: Path, tmp_path: Path,
                                                                change: str, named: str) -> None:
    state = torch.load(audioclip_file, weights_only=True)
    if change == "drop":
        del state[named]
    elif change == "reshape":
        state[named] = torch.zeros(3, 3, 1, 1)
    else:
        state[named] = torch.zeros(7)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        ac.load_audioclip_audio(bad)


def test_audioclip_file_without_the_head_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip-only.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="no audio"):
        ac.load_audioclip_audio(path)


def test_audio_front_end_hand_computed() -> None:
    # The int16 rescale the evaluator's [-1, 1] input goes through, in float32: x + 32768 rounds x to a
    # multiple of 2^-8, then (. * 2) / 65535 - 1.
    x = torch.tensor([0.0, 0.3, 0.301, -1.0, 1.0], dtype=torch.float64)
    got = ac.int16_scale(x)
    assert got.dtype == torch.float32
    for value, out in zip([0.0, 0.30078125, 0.30078125, -1.0, 1.0], got.tolist(), strict=True):
        expected = np.float32(np.float32(np.float32(value + 32768.0) * 2.0) / np.float32(65535.0)) - np.float32(1.0)
        assert out == pytest.approx(float(expected), abs=1e-12)
    assert got[1] == got[2]  # 0.3 and 0.301 are the same number to the head
    assert got[0].item() == pytest.approx(1 / 65535, rel=1e-3)

    # 1.6 s at 44.1 kHz: 70560 samples -> 1 + ceil((70560 - 1654) / 561) = 124 frames; 70657 - 70560 = 97 zeros,
    # 48 in front and 49 behind.
    signal = torch.arange(1, 70561, dtype=torch.float32)[None]
    window = torch.ones(ac.WIN_LENGTH)
    frames = ac.frame_signal(signal, ac.WIN_LENGTH, ac.HOP_LENGTH, window)
    assert frames.shape == (1, 124, ac.WIN_LENGTH)
    assert frames[0, 0, 47] == 0 and frames[0, 0, 48] == 1
    assert frames[0, 1, 0] == 561 - 48 + 1
    assert frames[0, -1, -50] == 70560 and torch.all(frames[0, -1, -49:] == 0)
    assert math.isclose(ac.AudioCLIPAudioHead(TINY_AUDIO).window[0].item(), 6e-5, abs_tol=1e-9)  # blackmanharris
