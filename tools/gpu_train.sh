#!/usr/bin/env bash
# A fine-tune of the shipped anyup_offline tensors on a lent GPU, in one device call (issue 14):
#
#   python tools/gpu_carry.py                 # here, once: .gpu_carry/ (encoder weights, photos; ~43 MiB)
#   bash tools/gpu_train.sh                   # there: the device tool's run, carry=[".gpu_carry"], timeout_s=600
#
# Trains with tools/gpu_finetune.yaml until TIME_LIMIT (default 6m, as `timeout` reads it) runs
# out, then exports the last checkpoint (written every 100 steps) and copies model.safetensors,
# metrics.csv, config.yaml and train.log to $OUT (else out/gpu_train). Judge the result here on the CPU before shipping it
# (docs/model-card.md: `anyup eval depth-probe`, `python -m anyup.train.heldout`, the artifact).
# Needs only the device image's python3 (torch, timm, safetensors, pyyaml, scikit-image): the
# EfficientNet-Lite model code comes as a wheel in .gpu_carry/wheels. TRAIN_SET adds flags (e.g.
# "--set data.batch_size=1" for a CPU dry run: DEVICE=cpu).
set -u -o pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu_train}
run=${RUN_DIR:-/tmp/anyup_gpu_finetune}
py=${PYTHON:-python3}
mkdir -p "$out"
if [ ! -d .gpu_carry ]; then
    echo ".gpu_carry/ is missing: run python tools/gpu_carry.py and carry .gpu_carry" >&2
    exit 2
fi
if ! $py -c "import efficientnet_lite_pytorch" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/anyup_site \
        .gpu_carry/wheels/*.whl || exit 2
    export PYTHONPATH=/tmp/anyup_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# shellcheck disable=SC2086  # TRAIN_SET is a list of flags
args=(-m anyup train --config tools/gpu_finetune.yaml --out "$run" --set "device=${DEVICE:-auto}" ${TRAIN_SET:-})
timeout "${TIME_LIMIT:-6m}" $py "${args[@]}" 2>&1 | tee "$out/train.log"
# the run stops at the time limit; a second call with steps=1 resumes at the last checkpoint,
# which is past step 1, so it only exports that checkpoint's weights
$py "${args[@]}" --steps 1 2>&1 | tee -a "$out/train.log"
cp "$run/model.safetensors" "$run/config.yaml" "$out/" || exit 1
cp "$run/metrics.csv" "$out/" 2>/dev/null || true
$py -c "import sys, safetensors; print(sys.argv[1], dict(safetensors.safe_open(sys.argv[1], 'pt').metadata() or {}))" \
    "$out/model.safetensors"
