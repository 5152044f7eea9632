"""Cost of `avdit eval --protocol mm-diffusion`: measured on CPU for a few clips, extrapolated to 2048.

    python benchmarks/eval_paper_bench.py [--clips 8] [--threads 1] [--json out.json]
    python benchmarks/eval_paper_bench.py --device cuda --clips 64      # on a GPU, if there is one

The networks have the published sizes with random weights saved in the published key layouts (no weights are
downloaded: the cost does not depend on the values). Timed separately, per clip: reading one window of a
synthetic 30 fps / 44.1 kHz file (decode, letterbox, round trip, audio at 44.1 kHz), InceptionI3d-400 on 16 x
224 x 224 (batch of 8), AudioCLIP's audio head on 1.6 s at 44.1 kHz (one batch of 8); and the distances on
2048 x 400 and 2048 x 1024 random features. FLOPs per clip are counted with torch's FlopCounterMode so the
GPU figure can be estimated from a throughput instead of guessed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def _timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from avdit_cli.data.synthetic import make_dataset
    from avdit_cli.metrics import audioclip as ac
    from avdit_cli.metrics import i3d_400 as i3d
    from avdit_cli.metrics.frechet import frechet_distance_tfgan
    from avdit_cli.metrics.kid import kvd_sklearn_float32
    from avdit_cli.pipelines import eval_mmdiffusion as mmd

    out: dict[str, float] = {"clips": args.clips, "threads": args.threads}
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        i3d_file, ac_file = folder / "i3d_pretrained_400.pt", folder / "AudioCLIP-Full-Training.pt"
        torch.save({k: v for k, v in i3d.InceptionI3d().state_dict().items() if "num_batches" not in k}, i3d_file)
        torch.save({ac.PREFIX + k: v for k, v in ac.AudioCLIPAudioHead().state_dict().items()}, ac_file)
        video = i3d.I3D400Features(i3d_file, device, batch_size=8)
        audio = ac.AudioCLIPAudioFeatures(ac_file, device, batch_statistics=True)

        # Reading: windows of 6.4 s, 30 fps, 128 x 96 files (letterboxed), 44.1 kHz audio.
        files = make_dataset(folder / "data", max(1, args.clips // 8), seconds=6.4, seed=0, size=128, fps=30,
                             sample_rate=44100, workers=1)
        lines = {Path(p): mmd.read_timeline(Path(p)) for p in files}
        start = time.perf_counter()
        clips = []
        for path, line in lines.items():
            clips += list(mmd.read_windows(path, line, list(range(min(8, line.windows)))).values())
        out["read_s_per_clip"] = (time.perf_counter() - start) / len(clips)
        frames = torch.stack([c.frames for c in clips])[:8]
        waves = np.stack([c.audio for c in clips])[:8]

        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        video(frames[:2]), audio(waves[:2])  # warm-up
        out["i3d_s_per_clip"] = _timed(lambda: (video(frames), sync())) / len(frames)
        out["audioclip_s_per_clip"] = _timed(lambda: (audio(waves), sync())) / len(waves)

        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                video.model(i3d.preprocess(frames[:1]).to(device))
        out["i3d_gflop_per_clip"] = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                audio.head(torch.as_tensor(waves[:2]).to(device))
        out["audioclip_gflop_per_clip"] = counter.get_total_flops() / 2 / 1e9

    rng = np.random.default_rng(0)
    for dim, name in ((400, "fvd+kvd"), (1024, "fad")):
        x = rng.normal(size=(2048, dim)).astype(np.float32)
        y = (rng.normal(size=(2048, dim)) + 0.1).astype(np.float32)
        seconds = _timed(lambda x=x, y=y: frechet_distance_tfgan(x, y), 1)
        if dim == 400:
            seconds += _timed(lambda x=x, y=y: kvd_sklearn_float32(x, y), 1)
        out[f"{name}_s_at_2048"] = seconds

    per_clip = out["read_s_per_clip"] + out["i3d_s_per_clip"] + out["audioclip_s_per_clip"]
    out["cpu_s_per_clip"] = per_clip
    out["cpu_hours_2x2048"] = 2 * 2048 * per_clip / 3600
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
