#!/usr/bin/env bash
# The embedded default: set up (first run only), then run the whole HIL fine-tuning loop in
# simulation for a few minutes and write a report. Arguments go to `drqv2-ros sim-finetune`
# (e.g. --minutes 10, --snapshot my_robobase_snapshot.pt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
source "$ROOT/tools/ros_env.sh"
cd "$ROOT"
exec drqv2-ros sim-finetune "$@"
