#!/usr/bin/env bash
# Prepare what a GPU run of benchmarks/gpu_suite.py carries to the device machine (docs/gpu.md):
#   .whl/    the wheels the GPU machine lacks, for CPython 3.12 on x86_64 Linux: this project
#            (built here), PyAV, decord, and transformers 5.23 (the machine's 5.17 predates
#            mm_encoder_outputs, which the project needs). Everything else the project imports
#            at run time is there already, in versions it accepts (torch 2.11, torchvision
#            0.26, accelerate, tokenizers, safetensors, huggingface-hub 1.33, numpy, pillow,
#            pyarrow, rich, typer); the suite's environment part checks that on the machine.
#   .carry/  the first 20 s of ../shared/videos/big_buck_bunny.mp4 (640x360, 24 fps),
#            re-encoded small: real-size frames for the latency and methods figures. Carried,
#            never committed (both folders are in .gitignore).
# Then it checks that what the device tool sends stays under its 64 MiB.
#
# Usage: scripts/gpu_prepare.sh [PYTHON]   (a Python with pip and PyAV; default python3)
# Run it in the checkout the session started in: the device tool sends that one.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${1:-python3}"
AV_VERSION=18.1.0      # the PyAV the project is tested with (FFmpeg 8.1 inside)
DECORD_VERSION=0.6.0
# The newest transformers whose requirements the GPU machine meets as it is (5.24 and later
# need huggingface-hub 2.x and kernels); the oldest the project is checked with.
TRANSFORMERS_VERSION=5.23.0
VIDEO=../shared/videos/big_buck_bunny.mp4
LIMIT_BYTES=$((64 * 1024 * 1024))

rm -rf .whl .carry
mkdir -p .whl .carry

echo "building the project's wheel ..."
"$python" -m pip wheel --quiet --no-deps --wheel-dir .whl .

echo "downloading PyAV $AV_VERSION, decord $DECORD_VERSION and transformers" \
    "$TRANSFORMERS_VERSION (cp312, manylinux x86_64) ..."
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --dest .whl \
    "av==$AV_VERSION" "decord==$DECORD_VERSION" "transformers==$TRANSFORMERS_VERSION"

if [[ ! -f "$VIDEO" ]]; then
    echo "error: $VIDEO is missing: the device command in docs/gpu.md passes" \
        ".carry/big_buck_bunny_20s.mp4 (drop its --video option to use the sample clip)" >&2
    exit 1
fi
"$python" scripts/excerpt_video.py "$VIDEO" .carry/big_buck_bunny_20s.mp4 --seconds 20

# What travels: tracked and untracked-not-ignored files, plus the carried folders.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
carried_bytes=$(find .whl .carry -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + carried_bytes))
ls -l .whl .carry
awk -v tree="$tree_bytes" -v carried="$carried_bytes" 'BEGIN {
    printf "tree %.1f MiB + .whl and .carry %.1f MiB = %.1f MiB (the device tool sends at most 64)\n",
        tree / 1048576, carried / 1048576, (tree + carried) / 1048576 }'
if ((total > LIMIT_BYTES)); then
    echo "error: over the device tool's 64 MiB" >&2
    exit 1
fi
