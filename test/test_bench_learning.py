"""bench/bench_learning.py --scale smoke: the whole learning pipeline (scripted demos ->
pretrain -> nominal and shifted policy-only evaluations -> HIL fine-tuning under the shift)
runs and writes learning.json and learning.png. Structure only: a smoke run learns nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mujoco")


def runs_head_change(data):
    return data["runs"][0]["change_points"]


@pytest.mark.slow
@pytest.mark.timeout(660)  # above the subprocess wait (600 s) so that its message wins
def test_smoke_scale_pipeline(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_learning.py"),
                           "--scale", "smoke", "--out", str(tmp_path), "--seeds", "2",
                           "--variants", "drqv2,bc"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "learning.json").read_text())
    assert data["scale"] == "smoke" and data["shift"] == "real_proxy"
    assert data["shift_parameters"]["light_scale"] == 0.55  # the report names what it shifts
    assert data["start"]["demo_episodes"] == 2 and data["start"]["pretrain_updates"] == 4
    ev = data["evaluations"]
    assert [e["after_episodes"] for e in ev] == [0, 1, 2]
    assert all(0.0 <= e["policy_only_success_rate"] <= 1.0 for e in ev)
    assert ev[-1]["env_steps"] == data["env_steps"] > 0
    assert len(data["intervention_windows"]) == 2
    assert runs_head_change(data) == pytest.approx(
        100 * (ev[-1]["policy_only_success_rate"] - ev[0]["policy_only_success_rate"]))
    assert (tmp_path / "learning.png").stat().st_size > 10_000
    assert "points vs the start policy" in proc.stdout
    # two seeds x two variants, each its own start policy per seed; mean and spread
    runs = data["runs"]
    assert [(r["seed"], r["variant"]) for r in runs] == [(0, "drqv2"), (0, "bc"),
                                                         (1, "drqv2"), (1, "bc")]
    assert [r["bc_weight"] for r in runs] == [0.0, 1.0, 0.0, 1.0]
    assert len(data["starts"]) == 2 and data["starts"][0]["start"] != data["starts"][1]["start"]
    cp = data["summary"]["drqv2"]["change_points"]
    assert cp["min"] <= cp["mean"] <= cp["max"] and data["summary"]["bc"]["seeds"] == [0, 1]
    assert data["change_points"] == pytest.approx(cp["mean"])
    # an existing result is not overwritten
    again = subprocess.run([sys.executable, str(root / "bench" / "bench_learning.py"),
                            "--scale", "smoke", "--out", str(tmp_path)], cwd=root,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--out" in again.stderr
