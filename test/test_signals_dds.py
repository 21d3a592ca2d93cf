"""Ctrl-C, twice: a node stops cleanly whatever the number and timing of SIGINT/SIGTERM (under
`ros2 launch` a second Ctrl-C used to land in the driver's rcl/DDS teardown and crash it)."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("mujoco")

from ros_harness import ROOT, NodeProcess, allocate_domain_id, ros_environment, wait_for

pytestmark = pytest.mark.dds


@pytest.mark.parametrize("gap_s,burst", [(0.0, 4), (0.01, 30), (0.05, 4), (0.3, 4)])
def test_repeated_signals_end_in_a_clean_exit(tmp_path, gap_s, burst):
    env = ros_environment(allocate_domain_id(), tmp_path / "roslog")
    driver = NodeProcess("drqv2_ros.nodes.driver_node", env, tmp_path,
                         params_file=ROOT / "config" / "so101_driver.yaml",
                         params={"render_width": 160, "render_height": 120})
    try:
        wait_for(lambda: "so101_driver up" in driver.log(), 60, "the driver up", [driver])
        time.sleep(0.5)  # running: timers, camera thread, DDS traffic
        for i in range(burst):  # over the whole clean-up window, SIGTERM among them
            if driver.proc.poll() is not None:
                break
            os.killpg(driver.proc.pid, signal.SIGTERM if i % 3 == 2 else signal.SIGINT)
            time.sleep(gap_s)
        rc = driver.proc.wait(30)
    finally:
        driver.kill()
    log = driver.log()
    assert rc == 0, f"exit {rc}:\n{log[-3000:]}"
    for bad in ("Segmentation fault", "Fatal Python error", "Traceback", "core dumped"):
        assert bad not in log, log[-3000:]
