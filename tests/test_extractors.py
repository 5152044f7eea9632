"""I3D and VGGish extractors loading tiny random stand-ins saved in the real file formats."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avdit_cli.errors import DataError, WeightsError
from avdit_cli.metrics import I3DFeatures, VGGishFeatures
from avdit_cli.metrics.vggish import VGGishNet, log_mel, waveform_to_examples

# ------------------------------------------------------------------------------------------------------ I3D


class FakeI3D(torch.nn.Module):
    """Same call signature as StyleGAN-V's i3d_torchscript.pt; features from per-channel means."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(3, 400, generator=torch.Generator().manual_seed(0)))

    def forward(
        self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        x = videos.float()  # (b, 3, f, h, w)
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        feats = x.mean(dim=(2, 3, 4)) @ self.proj  # (b, 400)
        feats[:, 0] = float(x.shape[-1])  # records the frame size the network saw
        feats[:, 1] = float(videos.shape[2])  # and the number of frames it was given
        if return_features:
            return feats
        return feats.softmax(dim=-1)


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(FakeI3D()), str(path))
    return str(path)


def _constant_videos(colours: np.ndarray, frames: int = 4, size: int = 24) -> np.ndarray:
    """(b, f, h, w, 3) uint8 videos, each one constant colour (b, 3)."""
    b = colours.shape[0]
    return np.broadcast_to(colours[:, None, None, None, :], (b, frames, size, size, 3)).astype(np.uint8).copy()


def test_i3d_features_from_torchscript(i3d_file: str) -> None:
    colours = np.array([[0, 128, 255], [10, 20, 30], [255, 0, 0], [7, 7, 200], [90, 180, 45]], dtype=np.uint8)
    videos = _constant_videos(colours)
    extractor = I3DFeatures(i3d_file, device="cpu", batch_size=2)
    feats = extractor(videos)
    assert feats.shape == (5, 400) and feats.dtype == np.float64

    # rescale=True maps 0..255 to [-1, 1]; channels must arrive in (b, c, f, h, w) order.
    proj = torch.jit.load(i3d_file).proj.detach().double().numpy()
    expected = (colours / 127.5 - 1.0) @ proj
    np.testing.assert_allclose(feats[:, 2:], expected[:, 2:], rtol=1e-5, atol=1e-5)
    assert np.all(feats[:, 0] == 224)  # resize=True reached the model
    assert np.all(feats[:, 1] == 4)  # frames on the time axis

    # Batching and torch input do not change the result.
    np.testing.assert_allclose(I3DFeatures(i3d_file, batch_size=5)(torch.from_numpy(videos)), feats, atol=1e-6)

    protocol = extractor.protocol
    with open(i3d_file, "rb") as f:
        assert protocol["weights_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert protocol["rescale"] and protocol["resize"]
    assert protocol["frames"] == 4 and protocol["input_resolution"] == [24, 24]

    off = I3DFeatures(i3d_file, rescale=False, resize=False)(videos)
    assert np.all(off[:, 0] == 24)


def test_i3d_errors(i3d_file: str, tmp_path) -> None:
    extractor = I3DFeatures(i3d_file)
    with pytest.raises(DataError):
        extractor(np.zeros((1, 4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError):
        extractor(np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(WeightsError):
        I3DFeatures(tmp_path / "missing.pt")
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a torchscript archive")
    with pytest.raises(WeightsError):
        I3DFeatures(bogus)


# --------------------------------------------------------------------------------------------------- VGGish

# torchvggish's released vggish-10086976.pth: key -> shape.
RELEASED_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}  # fmt: skip
TINY_CHANNELS = (4, 8, 8, 8, 16, 16)


def test_default_network_has_released_keys_and_shapes() -> None:
    with torch.device("meta"):
        net = VGGishNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == RELEASED_SHAPES


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in VGGishNet(TINY_CHANNELS, hidden=32).state_dict().items()}
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}


@pytest.fixture(scope="module")
def vggish_files(tmp_path_factory) -> tuple[str, str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("vggish")
    sd = _tiny_state_dict()
    torch.save(sd, folder / "vggish-10086976.pth")  # a plain dict of tensors, as released
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    pca = {"pca_eigen_vectors": q * 3.0, "pca_means": torch.randn(128, dtype=torch.float64) * 0.1}
    torch.save(pca, folder / "vggish_pca_params-970ea276.pth")
    return str(folder / "vggish-10086976.pth"), str(folder / "vggish_pca_params-970ea276.pth"), sd, pca


def _reference_vggish(examples: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """torchvggish's forward written out with functional ops (final ReLU left out, as FAD does)."""
    x = examples[:, None].double()
    for i, conv in enumerate((0, 3, 6, 8, 11, 13)):
        x = F.relu(F.conv2d(x, sd[f"features.{conv}.weight"].double(), sd[f"features.{conv}.bias"].double(), padding=1))
        if i in (0, 1, 3, 5):
            x = F.max_pool2d(x, 2, 2)
    x = torch.transpose(torch.transpose(x, 1, 3), 1, 2).contiguous().view(x.shape[0], -1)
    x = F.relu(F.linear(x, sd["embeddings.0.weight"].double(), sd["embeddings.0.bias"].double()))
    x = F.relu(F.linear(x, sd["embeddings.2.weight"].double(), sd["embeddings.2.bias"].double()))
    return F.linear(x, sd["embeddings.4.weight"].double(), sd["embeddings.4.bias"].double())


def _noise_clips(n: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(n)]


def test_vggish_embeddings_from_released_format(vggish_files) -> None:
    weights, pca_path, sd, pca = vggish_files
    extractor = VGGishFeatures(weights, pca_path, device="cpu")
    clips = _noise_clips(3, 1.6)
    feats = extractor(clips)
    assert feats.shape == (3, 128) and feats.dtype == np.float64

    # 1.6 s gives exactly one 0.96 s example; the raw embedding equals torchvggish's computation.
    examples = waveform_to_examples(clips[0])
    assert examples.shape == (1, 96, 64)
    ref = _reference_vggish(examples, sd).numpy()[0]
    np.testing.assert_allclose(feats[0], ref, rtol=1e-4, atol=1e-4)

    # Longer clips: per-example rows, or their mean per clip.
    long_clip = _noise_clips(1, 3.0, seed=1)
    per_example = VGGishFeatures(weights, device="cpu", pooling="examples")(long_clip)
    assert per_example.shape == (3, 128)  # 298 STFT frames -> 3 examples
    np.testing.assert_allclose(extractor(long_clip)[0], per_example.mean(axis=0), atol=1e-10)

    # PCA + quantisation postprocess, as torchvggish's Postprocessor.
    post = VGGishFeatures(weights, pca_path, use_pca=True)(clips)
    pca_ref = (pca["pca_eigen_vectors"].numpy() @ (feats.T - pca["pca_means"].numpy()[:, None])).T
    expected = np.round((np.clip(pca_ref, -2.0, 2.0) + 2.0) * (255.0 / 4.0))
    assert np.abs(post - expected).max() <= 1.0  # rounding at .5 may flip with float32 network output
    assert post.min() >= 0 and post.max() <= 255 and np.all(post == np.round(post))
    assert VGGishFeatures(weights, pca_path, use_pca=True).protocol["postprocess"] == "pca+quantize"
    assert extractor.protocol["postprocess"] == "raw" and extractor.protocol["final_relu"] is False


def test_vggish_pca_file_with_numpy_arrays_in_legacy_format(vggish_files, tmp_path) -> None:
    weights, _, _, pca = vggish_files
    buf = io.BytesIO()
    torch.save({k: v.numpy() for k, v in pca.items()}, buf, _use_new_zipfile_serialization=False)
    legacy = tmp_path / "pca_legacy.pth"
    legacy.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    extractor = VGGishFeatures(weights, legacy, use_pca=True)
    np.testing.assert_allclose(extractor.pca_matrix.numpy(), pca["pca_eigen_vectors"].numpy())


def test_vggish_rejects_bad_files_and_audio(vggish_files, tmp_path) -> None:
    weights, pca_path, sd, _ = vggish_files
    renamed = {k.replace("embeddings", "fc"): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(WeightsError):
        VGGishFeatures(tmp_path / "renamed.pth")
    bad_shape = dict(sd, **{"embeddings.0.weight": torch.zeros(32, 7)})
    torch.save(bad_shape, tmp_path / "bad_shape.pth")
    with pytest.raises(WeightsError):
        VGGishFeatures(tmp_path / "bad_shape.pth")
    torch.save({"pca_eigen_vectors": torch.eye(64), "pca_means": torch.zeros(64)}, tmp_path / "pca64.pth")
    with pytest.raises(WeightsError):
        VGGishFeatures(weights, tmp_path / "pca64.pth")
    with pytest.raises(WeightsError):
        VGGishFeatures(weights, use_pca=True)

    extractor = VGGishFeatures(weights, pca_path)
    with pytest.raises(DataError):
        extractor(_noise_clips(1, 0.5))  # shorter than one example
    with pytest.raises(DataError):
        extractor(_noise_clips(1, 1.6), sample_rate=44100)


def _numpy_vggish_log_mel(x: np.ndarray) -> np.ndarray:
    """Independent VGGish front end: mel_features.log_mel_spectrogram written with loops."""
    sr, win, hop, n_fft = 16000, 400, 160, 512
    n_frames = 1 + (len(x) - win) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))
    spec = np.stack([np.abs(np.fft.rfft(x[i * hop : i * hop + win] * window, n_fft)) for i in range(n_frames)])

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    bins_mel = mel(np.linspace(0.0, sr / 2, n_fft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((n_fft // 2 + 1, 64))
    for band in range(64):
        lo, mid, hi = edges[band : band + 3]
        for k in range(1, n_fft // 2 + 1):  # HTK leaves out the DC bin
            m = bins_mel[k]
            weights[k, band] = max(0.0, min((m - lo) / (mid - lo), (hi - m) / (hi - mid)))
    return np.log(spec @ weights + 0.01)


def test_log_mel_matches_numpy_reference() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(16000 * 1.6) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = log_mel(x).numpy()
    ref = _numpy_vggish_log_mel(x.astype(np.float64))
    assert ours.shape == ref.shape == (158, 64)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
