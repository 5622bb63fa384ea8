#!/usr/bin/env bash
# Measure a CUDA machine for kvsim in a few minutes: the device probe (GEMM, HBM copy, attention,
# pinned host<->device copies, disk) against the catalog entry named by $HARDWARE, then real
# prefill/decode step times of kvsim's torch model (random weights) for the catalog models in
# $MODELS. Results go to $DEST (default calibration/<hardware>/).
#   HARDWARE=h200-sxm bash calibration/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HARDWARE=${HARDWARE:-h200-sxm}
MODELS=${MODELS:-smollm2-135m,llama-3.1-8b}
DEST=${DEST:-calibration/$HARDWARE}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
  --format=csv > "$DEST/nvidia_smi.csv" || true
"$PYTHON" - "$HARDWARE" "$DEST" <<'PY'
import json, sys
from pathlib import Path
from hardware.catalog import get_accelerator
from hardware.probe import probe, profile_toml
hardware, dest = sys.argv[1], Path(sys.argv[2])
result = probe("cuda", dtype="bf16", repeats=9)
(dest / "probe.json").write_text(json.dumps(result.as_dict(), indent=1))
(dest / f"{hardware}-probed.toml").write_text(profile_toml(result, f"{hardware}-probed", get_accelerator(hardware)))
print((dest / f"{hardware}-probed.toml").read_text())
PY
"$PYTHON" calibration/gpu_steps.py --device cuda --hardware "$HARDWARE" --models "$MODELS" \
  --out "$DEST/steps.csv"
