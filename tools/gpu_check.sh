#!/usr/bin/env bash
# The GPU checks of the engine issue, prepared to run as one call on a lent GPU machine:
#
#   bash tools/gpu_check.sh          # results under $OUT (the device tool's folder), else out/gpu_check
#
# 1. env.txt: the GPU, torch, triton;
# 2. cuda_tests.log: the CUDA tests (every attention backend, hard and soft edge; every memory plan
#    vs the dense reference; float64 gradients vs the dense ones; the cap at 64 MiB-1 GiB; bfloat16);
# 3. attention_backends.md: each backend's whole call at 1024² on CUDA and its max error vs matmul;
# 4. gpu/gpu.md: the GPU table (benchmarks/gpu.py), 448²-4096², float32 and bfloat16, ours vs
#    dense vs bilinear, with each output's max error against the float32 dense reference;
# 5. grad_step.txt: a training step through AnyUp at 448² from 32²×384 on CUDA, ours vs the dense
#    reference (seconds, peak memory, gradient checksums; benchmarks/grad_step.py).
# Every step has its own time limit (570 s in all: run it with the device tool's
# timeout_s=600), so one hang cannot spend the lease; the GPU table is written row by row.
# It needs only what the device image has (python3 with torch, triton, pytest): the package runs
# from this checkout (PYTHONPATH), nothing is installed. DEVICE=cpu SIZES=56 ATTN_SIZE=56
# CHANNELS=16 BACKENDS="matmul sdpa" GRAD_SIZE=56 is a dry run of the same steps (tests/test_benchmarks.py).
set -u -o pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu_check}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
sizes=${SIZES:-448 1024 2048 4096}
channels=${CHANNELS:-384}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
    $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    $py -c "import triton; print('triton', triton.__version__)"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
timeout 190 $py -m pytest -q -p no:cacheprovider -rs tests/test_engine.py tests/test_model.py -k cuda 2>&1 | tee "$out/cuda_tests.log"
# shellcheck disable=SC2086  # BACKENDS and SIZES are word lists
timeout 150 $py benchmarks/attention_backends.py --device "$device" --size "${ATTN_SIZE:-1024}" --channels "$channels" \
    --backends ${BACKENDS:-matmul sdpa flex triton} --out "$out" 2>&1 | tee "$out/attention_backends.log"
# shellcheck disable=SC2086
timeout 200 $py benchmarks/gpu.py --device "$device" --sizes $sizes --channels "$channels" --out "$out/gpu" 2>&1 |
    tee "$out/gpu.log"
timeout 30 $py benchmarks/grad_step.py --device "$device" --size "${GRAD_SIZE:-448}" --channels "$channels" \
    --rounds 3 --methods ours dense 2>&1 | tee "$out/grad_step.txt"
