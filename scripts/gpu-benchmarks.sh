#!/usr/bin/env bash
# The GPU figures of the README's Performance section, in one run on a machine with one
# NVIDIA GPU (about 5-8 minutes on an H200):
#
#   scripts/gpu-benchmarks.sh [OUTDIR]        # default: benchmark-gpu/
#
# - model, vit_h at 1024: bf16, attention original vs fast, batch 1/8/32 (images/s,
#   TFLOP/s, fraction of the device's bf16 peak, peak memory); fp32 at batch 8 for both paths
# - model, vit_b at 1024: bf16, both attention paths, batch 32
# - train-step, vit_b at 1024, batch 1 and vit_h at 1024, batch 2: with and without
#   activation checkpointing
#
# It needs torch (with CUDA), numpy, safetensors and segment_anything; not Ray (the
# pipeline mode needs Ray and is run separately: `jobs/benchmark.py pipeline`).
# On a machine without segment_anything, carry its wheel and put it on the path first:
#   pip install --no-index --no-deps --target /tmp/site segment_anything-1.0-py3-none-any.whl
#   PYTHONPATH=/tmp/site scripts/gpu-benchmarks.sh "$OUT"
# Each configuration runs in a fresh process (see jobs/benchmark.py). Set ARCH_BIG or
# IMG_SIZE to run the same suite on something smaller (e.g. ARCH_BIG=vit_b IMG_SIZE=256).
set -euo pipefail
cd "$(dirname "$0")/.."
# The package from this checkout, installed or not (the jobs import samadapter).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${1:-benchmark-gpu}
big=${ARCH_BIG:-vit_h}
small=${ARCH_SMALL:-vit_b}
size=${IMG_SIZE:-1024}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

run() { echo "+ $*"; "$py" jobs/benchmark.py "$@"; }

"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
run model --arch "$big" --img-size "$size" --dtypes bf16 --batch-sizes 1 8 32 --attention original fast \
    --warmup 3 --repeats 10 --json "$out/model-$big-bf16.json"
run model --arch "$big" --img-size "$size" --dtypes fp32 --batch-sizes 8 --attention original fast \
    --warmup 2 --repeats 5 --json "$out/model-$big-fp32.json"
run model --arch "$small" --img-size "$size" --dtypes bf16 --batch-sizes 32 --attention original fast \
    --warmup 3 --repeats 10 --json "$out/model-$small-bf16.json"
run train-step --arch "$small" --img-size "$size" --batch-size 1 --warmup 2 --repeats 5 \
    --json "$out/train-step-$small.json"
run train-step --arch "$big" --img-size "$size" --batch-size 2 --warmup 2 --repeats 5 \
    --json "$out/train-step-$big.json"
echo "results in $out/"
