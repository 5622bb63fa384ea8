#!/usr/bin/env bash
# Measure and calibrate a CUDA machine for kvsim in under ten minutes (docs/calibration.md):
#   1. probe the device (GEMM, HBM copy, attention, pinned host<->device copies, disk) against
#      the catalog entry $HARDWARE: a profile with the datasheet peaks and measured fractions;
#   2. calibrate: time the designed real steps of $MODEL and fit the cost model's efficiencies
#      on the probed profile's peaks (a new profile; the catalog is never touched);
#   3. validate: held-out steps (timed in step 2) and end-to-end replays of held-out workloads
#      with the torch executor and the cost model, into an HTML report;
#   4. time prefill/decode steps of the catalog models in $MODELS (random weights) in the
#      published-CSV layout, and report the catalog cost model's error on them.
# Results go to $DEST (default calibration/<hardware>/). The torch executor's prompts come from
# shared/data/text beside the checkout, or $TEXT (a file or folder of .txt).
#   HARDWARE=h200-sxm bash calibration/run_gpu.sh
# Smoke test of this script without a GPU (small design, no end-to-end replays, tiny steps):
#   DEVICE=cpu QUICK=1 HARDWARE=l4 DEST=/tmp/kvsim-smoke bash calibration/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HARDWARE=${HARDWARE:-h200-sxm}
MODEL=${MODEL:-smollm2-135m}
MODELS=${MODELS:-smollm2-135m,llama-3.1-8b}
DEST=${DEST:-calibration/$HARDWARE}
PYTHON=${PYTHON:-python3}
REPEATS=${REPEATS:-9}
DEVICE=${DEVICE:-cuda}
QUICK_ARGS=()
STEP_ARGS=()
if [ -n "${QUICK:-}" ]; then
  QUICK_ARGS=(--quick)
  STEP_ARGS=(--prompts 16,64 --decodes 1x64,4x128)
  MODELS=$MODEL
fi
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TEXT_ARGS=()
if [ -n "${TEXT:-}" ]; then TEXT_ARGS=(--text "$TEXT"); fi
started=$SECONDS
stage() { echo "== $1 ($((SECONDS - started)) s elapsed)" >&2; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
  --format=csv > "$DEST/nvidia_smi.csv" || true

stage "probe"
"$PYTHON" -m sim probe --device "$DEVICE" --base "$HARDWARE" --id "$HARDWARE-probed" \
  --out "$DEST/$HARDWARE-probed.toml" --repeats "$REPEATS" --force \
  ${QUICK_ARGS[@]+"${QUICK_ARGS[@]}"} --json > "$DEST/probe.json"

stage "calibrate"
"$PYTHON" -m sim calibrate --device "$DEVICE" --model "$MODEL" \
  --hardware-file "$DEST/$HARDWARE-probed.toml" --id "$HARDWARE-calibrated" \
  --out "$DEST/$HARDWARE-calibrated.toml" --repeats "$REPEATS" --force \
  ${QUICK_ARGS[@]+"${QUICK_ARGS[@]}"} --json > "$DEST/calibrate.json"

stage "validate"
E2E_ARGS=(${TEXT_ARGS[@]+"${TEXT_ARGS[@]}"})
if [ -n "${QUICK:-}" ]; then E2E_ARGS=(--no-e2e); fi
"$PYTHON" -m sim validate --device "$DEVICE" --model "$MODEL" \
  --profile "$DEST/$HARDWARE-calibrated.toml" --steps "$DEST/$HARDWARE-calibrated.steps.csv" \
  --report "$DEST/validation.html" ${E2E_ARGS[@]+"${E2E_ARGS[@]}"} --json > "$DEST/validate.json"

stage "published-layout steps"
"$PYTHON" calibration/gpu_steps.py --device "$DEVICE" --hardware "$HARDWARE" --models "$MODELS" \
  --repeats "$REPEATS" ${STEP_ARGS[@]+"${STEP_ARGS[@]}"} --out "$DEST/steps.csv"
"$PYTHON" -m sim validate --published "$DEST/steps.csv" --report "$DEST/published.html" \
  --json > "$DEST/published.json"
stage "done"
