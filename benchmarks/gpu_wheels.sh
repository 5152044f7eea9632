#!/usr/bin/env bash
# Wheels that the H200 device image lacks, for benchmarks/gpu_suite.py, into .whl/ (git-ignored; carried with
# the device call as `carry: [".whl"]`). The image has torch, torchaudio, timm, typer, rich, einops,
# huggingface-hub (>= 1.32, what diffusers 0.42 needs), safetensors (>= 0.8), pyyaml, numpy, scipy, pillow,
# regex, requests and filelock (device KINDS.md), so only these two travel:
#   diffusers       0.42.1 (the version the tests here run; pure Python)
#   imageio-ffmpeg  0.6.0  (bundles ffmpeg 7.0.2; 29 MB. 0.8.x's wheel is 68 MB, over the 64 MiB a call carries)
# importlib-metadata, which diffusers lists, is only imported on Python < 3.8 (the device has 3.12).
# Recipe: /work/.library/device/README.md, "nvidia-h200: a Python package missing there".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .whl  # one version of each: two stop the install on the device
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  diffusers==0.42.1 imageio-ffmpeg==0.6.0
ls -l .whl
du -sh .whl  # with the repo (~2.5 MB) it must stay under 64 MiB
