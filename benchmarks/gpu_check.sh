#!/usr/bin/env bash
# RECALL on a GPU in under five minutes: a merge of a TinyLlama-1.1B-shaped random bfloat16 base and
# three rank-16 LoRA experts with device: cuda, in float32 and in bfloat16 arithmetic, each compared
# tensor by tensor with the same merge on the CPU in float32 (benchmarks/merge_speed/scale.py
# --compare-device; tolerances there). Writes merge_scale_gpu.json into $OUT when set, else into
# benchmarks/results/. Exit 0: within tolerance; 1: outside it or a merge failed; 2: no CUDA here.
#
#   bash benchmarks/gpu_check.sh                      # SHAPE=smollm2-135m for a quicker check
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SHAPE=${SHAPE:-tinyllama-1.1b}

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no usable CUDA GPU here (torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not importable')): nothing was run." >&2
  echo "gpu_check.sh: run it on a machine with an NVIDIA GPU and a CUDA build of torch (pip install torch from the CUDA index)." >&2
  exit 2
fi

results="${OUT:-benchmarks/results}/merge_scale_gpu.json"
mkdir -p "$(dirname "$results")"
"$PYTHON" -c "import torch; print('gpu_check.sh:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
started=$SECONDS
HF_HUB_OFFLINE=1 "$PYTHON" benchmarks/merge_speed/scale.py --shape "$SHAPE" --case lora \
  --device cuda --compute-dtype float32 --compute-dtype bfloat16 --compare-device cpu \
  --results "$results"
echo "gpu_check.sh: within tolerance in $((SECONDS - started)) s; results in $results"
