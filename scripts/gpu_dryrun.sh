#!/usr/bin/env bash
# Dry run of the GPU command on this CPU machine (docs/gpu.md): a clean Python 3.12 virtualenv
# holding what the GPU machine holds (torch 2.11, transformers 5.17, ... from the package index),
# the carried wheels of .whl/ installed exactly as the device command installs them (no index,
# no dependencies, into a --target folder), then benchmarks/gpu_suite.py --tiny in it.
# Run scripts/gpu_prepare.sh first.
#
# Usage: scripts/gpu_dryrun.sh PYTHON3.12 [VENV] [OUT]
#   PYTHON3.12  a CPython 3.12 interpreter (e.g. ~/.pyenv/versions/3.12.1/bin/python3.12)
#   VENV        where the virtualenv goes; reused when it exists (default /tmp/vidcom2-gpu-venv)
#   OUT         the suite's output folder (default /tmp/vidcom2-gpu-dryrun)
set -euo pipefail
cd "$(dirname "$0")/.."

python="${1:?usage: scripts/gpu_dryrun.sh PYTHON3.12 [VENV] [OUT]}"
venv="${2:-/tmp/vidcom2-gpu-venv}"
out="${3:-/tmp/vidcom2-gpu-dryrun}"
site="$venv/carried-site"
# The GPU machine's versions (KINDS.md of the device tool, 2026-11); the rest unpinned.
GPU_MACHINE=(torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 accelerate==1.15.0
             numpy==2.5.2 safetensors==0.8.0 tokenizers==0.23.2 huggingface_hub==1.33.0
             pillow rich typer pyarrow packaging)

version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$version" != "3.12" ]]; then
    echo "error: $python is Python $version; the GPU machine has 3.12" >&2
    exit 2
fi
if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: .whl/ holds no wheel; run scripts/gpu_prepare.sh first" >&2
    exit 2
fi
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "${GPU_MACHINE[@]}"
fi
# The device command's install step, word for word but for the target folder.
rm -rf "$site"
"$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
video=()
if [[ -f .carry/big_buck_bunny_20s.mp4 ]]; then
    video=(--video .carry/big_buck_bunny_20s.mp4)
fi
rm -rf "$out"
PYTHONPATH="$site" PYTHONUNBUFFERED=1 "$venv/bin/python" benchmarks/gpu_suite.py --tiny \
    --out "$out" "${video[@]}"
