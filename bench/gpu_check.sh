#!/usr/bin/env bash
# The GPU checks of the learner in one prepared run (a lent CUDA machine has no network and
# no ROS: only torch, numpy, safetensors, tensorboard, pytest are needed). Writes logs and
# JSON under ${OUT:-runs/gpu_check}. Used for the README's GPU figures:
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,utilization.gpu \
  --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
echo "== tests on the GPU"
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -p no:cacheprovider \
  test/test_learner_device.py test/test_learner.py test/test_replay_buffer.py \
  test/test_training_loop.py 2>&1 | tee "$OUT/pytest.log" | tail -25
echo "== bench_update --device cuda"
timeout "${BENCH_TIMEOUT:-240}" "$PY" bench/bench_update.py --device cuda \
  --precision fp32 tf32 bf16 --json "$OUT/bench_update_cuda.json" 2>&1 | tee "$OUT/bench.log"
