"""Codecs on tiny random models saved in the real formats: shapes, scale, parity with references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from avdit_cli import hub
from avdit_cli.codecs import build_codecs
from avdit_cli.codecs.mel import MelFrontEnd
from avdit_cli.codecs.pixels import MEL_OFFSET, MEL_SPREAD, PixelMelCodec, PixelVideoCodec
from avdit_cli.codecs.vocoder import GriffinLimVocoder, HifiGanVocoder, load_hifigan
from avdit_cli.config import load_preset
from avdit_cli.errors import WeightsError
from avdit_cli.pipelines import download as dl
from hub_server import FakeHub, stand_in_table  # tests/ is on sys.path (pytest rootdir-less test modules)

SR, HOP, CLIP = 16000, 160, 25_600


# ----------------------------------------------------------------------------------------------------------
# Tiny stand-ins written in the real formats
# ----------------------------------------------------------------------------------------------------------
def tiny_vae(in_channels: int, latent_channels: int, levels: int, scaling_factor: float) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * levels, layers_per_block=1, norm_num_groups=4, scaling_factor=scaling_factor,
    ).eval()


def tiny_vocoder_config(**overrides: object) -> SpeechT5HifiGanConfig:
    kwargs = dict(model_in_dim=64, sampling_rate=SR, upsample_initial_channel=32, upsample_rates=[5, 4, 2, 2, 2],
                  upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
                  resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], normalize_before=False)
    kwargs.update(overrides)
    return SpeechT5HifiGanConfig(**kwargs)


def tiny_vocoder(**overrides: object) -> SpeechT5HifiGan:
    torch.manual_seed(1)
    model = SpeechT5HifiGan(tiny_vocoder_config(**overrides)).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (init may zero some biases)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        model.mean.copy_(torch.randn(64))
        model.scale.copy_(torch.rand(64) + 0.5)
    return model


@pytest.fixture(scope="module")
def served_codecs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the Hub repos, holding tiny VAEs (x8 video, x4 audio) and a tiny vocoder."""
    root = tmp_path_factory.mktemp("served")
    tiny_vae(3, 4, 4, 0.18215).save_pretrained(root / "stabilityai/sd-vae-ft-ema")
    tiny_vae(1, 8, 3, 0.75).save_pretrained(root / "cvssp/audioldm-s-full-v2/vae")
    tiny_vocoder().save_pretrained(root / "cvssp/audioldm-s-full-v2/vocoder")
    return root


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("AVDIT_HOME", str(tmp_path / "avdit"))
    return tmp_path


# ----------------------------------------------------------------------------------------------------------
# build_codecs: from the cache only, through hub.py
# ----------------------------------------------------------------------------------------------------------
def test_missing_weights_name_the_command(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never contacted: build_codecs does not download
    with pytest.raises(WeightsError) as err:
        build_codecs(load_preset("aist"))
    msg = str(err.value)
    assert "\n" not in msg and "run `avdit download --preset aist --only video-vae`" in msg


def test_paper_codecs_from_downloaded_stand_ins(served_codecs: Path, env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_preset("aist")
    with FakeHub(served_codecs) as fake:
        monkeypatch.setattr(hub, "WEIGHTS", stand_in_table(fake))
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        dl.download(cfg, ["video-vae", "audio-vae", "vocoder"])
        commit = fake.commit("stabilityai/sd-vae-ft-ema")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    codecs = build_codecs(cfg, "cpu")
    assert codecs.video.dtype == torch.float32 and codecs.device == torch.device("cpu")  # CPU default
    described = json.loads(json.dumps(codecs.describe()))  # plain data for cache manifests
    assert described["video"]["repo"] == "stabilityai/sd-vae-ft-ema" and described["video"]["commit"] == commit
    assert described["audio"]["subfolder"] == "vae" and described["audio"]["scale"] == 0.75
    assert described["vocoder"]["kind"] == "HifiGanVocoder" and described["mel"]["hop_length"] == HOP

    # Video: 16 frames of 256x256 -> (16, 4, 32, 32), scaled once by the config's 0.18215.
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(16, 3, 256, 256, generator=g) * 2 - 1  # (n, 3, H, W) in [-1, 1]
    z = codecs.video.encode(frames)
    assert z.shape == (16, 4, 32, 32) == (cfg.data.num_frames, *cfg.data.video_latent_shape[1:])
    assert codecs.video.scale == pytest.approx(0.18215)
    ref = tiny_vae(3, 4, 4, 0.18215)
    with torch.no_grad():
        mean = ref.encode(frames[:2]).latent_dist.mean
        torch.testing.assert_close(z[:2], mean * 0.18215, atol=1e-5, rtol=1e-4)
        back = codecs.video.decode(z[:2])
        # z / 0.18215 is not bit-identical to `mean`, and the decoder amplifies that rounding: 1e-4, not 1e-5.
        torch.testing.assert_close(back, ref.decode(mean).sample, atol=1e-4, rtol=1e-4)
    assert back.shape == (2, 3, 256, 256)

    # Audio: the paper's 1.6 s clip -> mel (1, 160, 64) -> latents (8, 40, 16), scaled by its config (0.75).
    wave = 0.3 * torch.sin(2 * math.pi * 440 * torch.arange(CLIP) / SR)[None]
    mel = codecs.mel(wave)
    assert mel.shape == (1, 1, 160, 64)
    za = codecs.audio.encode(mel)
    assert za.shape == (1, *cfg.data.audio_latent_shape) == (1, 8, 40, 16)
    ref_a = tiny_vae(1, 8, 3, 0.75)
    with torch.no_grad():
        mean_a = ref_a.encode(mel).latent_dist.mean
        torch.testing.assert_close(za, mean_a * 0.75, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(codecs.audio.decode(za), ref_a.decode(mean_a).sample, atol=1e-5, rtol=1e-4)
    assert codecs.audio.decode(za).shape == mel.shape

    # Sampling instead of the mean: reproducible with a generator, different from the mean.
    s1 = codecs.audio.encode(mel, generator=torch.Generator().manual_seed(3))
    s2 = codecs.audio.encode(mel, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, za)

    # Vocoder: (b, 1, T, M) -> (b, T * 160) = the clip's samples.
    audio = codecs.vocoder(mel)
    assert audio.shape == (1, CLIP) and torch.isfinite(audio).all()


def test_tiny_preset_needs_no_weights(env: Path) -> None:
    cfg = load_preset("tiny")
    codecs = build_codecs(cfg)
    assert isinstance(codecs.video, PixelVideoCodec) and isinstance(codecs.audio, PixelMelCodec)
    frames = torch.rand(16, 3, 32, 32) * 2 - 1
    z = codecs.video.encode(frames)
    assert z.shape == (16, *cfg.data.video_latent_shape[1:]) == (16, 3, 16, 16)
    assert codecs.video.decode(z).shape == frames.shape
    mel = codecs.mel(0.1 * torch.randn(2, CLIP, generator=torch.Generator().manual_seed(0)))
    za = codecs.audio.encode(mel)
    assert za.shape == (2, *cfg.data.audio_latent_shape) == (2, 1, 40, 16)
    assert codecs.vocoder(codecs.audio.decode(za)).shape == (2, CLIP)


# ----------------------------------------------------------------------------------------------------------
# Pixels codecs
# ----------------------------------------------------------------------------------------------------------
def test_pixel_codecs_are_area_resizes() -> None:
    video = PixelVideoCodec(2)
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]]).expand(1, 3, 2, 2) / 10  # (n, 3, 2, 2)
    assert video.encode(x).flatten().tolist() == pytest.approx([0.4] * 3)  # the mean of each 2x2 area
    flat = torch.full((4, 3, 8, 8), 0.25)
    torch.testing.assert_close(video.decode(video.encode(flat)), flat)

    mel_codec = PixelMelCodec(4)
    silence = torch.full((1, 1, 160, 64), math.log(1e-5))
    z = mel_codec.encode(silence)
    assert z.shape == (1, 1, 40, 16)
    torch.testing.assert_close(z, torch.full_like(z, (math.log(1e-5) - MEL_OFFSET) / MEL_SPREAD))
    torch.testing.assert_close(mel_codec.decode(z), silence)
    # From silence to a full-scale tone, the latents stay within about unit scale.
    t = torch.arange(CLIP) / SR
    for wave in (torch.zeros(1, CLIP), torch.sin(2 * math.pi * 440 * t)[None],
                 0.3 * torch.randn(1, CLIP, generator=torch.Generator().manual_seed(0))):
        z = mel_codec.encode(MelFrontEnd()(wave))
        assert z.abs().max() < 2.0


# ----------------------------------------------------------------------------------------------------------
# Mel front end against an independent float64 numpy computation
# ----------------------------------------------------------------------------------------------------------
def _hz_to_mel(f: np.ndarray) -> np.ndarray:  # slaney: linear below 1 kHz, logarithmic above
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def _slaney_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        fb[i] = np.maximum(0, np.minimum(lower, upper))
    return fb * (2.0 / (edges[2:] - edges[:-2]))[:, None]  # slaney area normalisation


def _numpy_logmel(wave: np.ndarray) -> np.ndarray:
    n_fft, hop = 1024, 160
    pad = (n_fft - hop) // 2
    x = np.pad(wave.astype(np.float64), (pad, pad), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = 1 + (len(x) - n_fft) // hop
    mag = np.stack([np.abs(np.fft.rfft(x[t * hop:t * hop + n_fft] * window)) for t in range(frames)])  # (T, F)
    mel = mag @ _slaney_filters(SR, n_fft, 64, 0.0, 8000.0).T  # (T, M)
    return np.log(np.maximum(mel, 1e-5))


def test_mel_front_end_matches_numpy_float64() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(CLIP) / SR
    wave = 0.4 * torch.sin(2 * math.pi * 523.25 * t) + 0.05 * torch.randn(CLIP, generator=g)
    wave[:3000] = 0  # a silent stretch: exercises the clamp
    ours = MelFrontEnd.from_config(load_preset("aist").data)(wave[None])
    assert ours.shape == (1, 1, 160, 64)  # exactly samples / hop frames
    ref = _numpy_logmel(wave.double().numpy())
    assert ref.shape == (160, 64)
    np.testing.assert_allclose(ours[0, 0].double().numpy(), ref, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# HiFi-GAN port vs transformers' SpeechT5HifiGan
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize_before", [False, True])
def test_hifigan_matches_transformers(tmp_path: Path, normalize_before: bool) -> None:
    ref = tiny_vocoder(normalize_before=normalize_before)
    ref.save_pretrained(tmp_path)
    ours = load_hifigan(tmp_path)
    mel = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(0))  # (b, T, M)
    with torch.no_grad():
        expected = ref(mel)
        got = ours(mel)
    assert got.shape == (2, 20 * HOP)  # exactly hop x frames
    assert expected.shape[-1] >= 20 * HOP  # the reference runs a few samples over (odd kernel - stride)
    torch.testing.assert_close(got, expected[:, : 20 * HOP], atol=1e-5, rtol=1e-5)
    # Behind the vocoder interface, (b, 1, T, M) works too.
    torch.testing.assert_close(HifiGanVocoder(ours)(mel[:, None]), got)


@pytest.mark.parametrize("style", ["parametrizations", "weight_g"])
def test_hifigan_loads_weight_norm_checkpoints(tmp_path: Path, style: str) -> None:
    ref = tiny_vocoder()
    ref.apply_weight_norm()  # torch parametrizations: ...parametrizations.weight.original0 / original1
    with torch.no_grad():  # move g away from ||v|| so that folding it wrongly would show
        for name, p in ref.named_parameters():
            if name.endswith("original0"):
                p.mul_(torch.rand_like(p) + 0.5)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert any(k.endswith("original0") for k in state)
    if style == "weight_g":  # the older torch.nn.utils.weight_norm names
        state = {k.replace(".parametrizations.weight.original0", ".weight_g")
                 .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in state.items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    ref.config.to_json_file(str(tmp_path / "config.json"))
    ours = load_hifigan(tmp_path)
    mel = torch.randn(1, 12, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(mel), ref(mel)[:, : 12 * HOP], atol=1e-5, rtol=1e-5)


def test_hifigan_rejects_mismatched_weights(tmp_path: Path) -> None:
    tiny_vocoder().save_pretrained(tmp_path)
    cfg = tiny_vocoder_config(upsample_initial_channel=64)
    cfg.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_hifigan(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Griffin-Lim
# ----------------------------------------------------------------------------------------------------------
def test_griffin_lim_recovers_a_sine() -> None:
    freq = 1000.0
    wave = 0.5 * torch.sin(2 * math.pi * freq * torch.arange(CLIP) / SR)[None]
    mel = MelFrontEnd()(wave)  # (1, 1, 160, 64)
    vocoder = GriffinLimVocoder(n_iter=16, seed=0)
    audio = vocoder(mel)
    assert audio.shape == (1, CLIP)
    spectrum = torch.fft.rfft(audio[0, 2000:-2000] * torch.hann_window(CLIP - 4000)).abs()
    peak = spectrum.argmax().item() * SR / (CLIP - 4000)
    assert abs(peak - freq) < 40, peak
    torch.testing.assert_close(GriffinLimVocoder(n_iter=16, seed=0)(mel), audio)  # seeded
    assert not torch.allclose(GriffinLimVocoder(n_iter=16, seed=1)(mel), audio)
