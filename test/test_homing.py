"""Real-arm episode reset (ROS-free): home is approached through the safety filter, paced by
the per-step clamp, stops at the tolerance, and an e-stop stops it."""

import numpy as np

from drqv2_ros.robot.homing import Homing
from drqv2_ros.robot.safety import SafetyFilter, SafetyLimits


def test_homing_paced_by_the_clamp_and_stops_at_home():
    safety = SafetyFilter(SafetyLimits(max_relative_target=0.1))
    homing = Homing(np.zeros(6), tolerance_rad=0.02)
    q = np.array([1.0, -0.8, 0.6, 0.5, -0.4, 0.3])
    ticks = 0
    while (target := homing.step(q, safety, ticks)) is not None:
        assert np.max(np.abs(target - q)) <= 0.1 + 1e-9  # never more than one clamp step
        q = target  # a perfect arm reaches each target
        ticks += 1
        assert ticks < 100
    assert homing.reached(q) and ticks == 10  # 1.0 rad at 0.1 rad per tick
    assert abs(q[-1] - 0.0) <= 0.3  # gripper moved too, but is not waited for


def test_estop_stops_homing():
    safety = SafetyFilter(SafetyLimits())
    homing = Homing(np.zeros(6), tolerance_rad=0.02)
    q = np.full(6, 0.5)
    safety.estop(q)
    assert homing.step(q, safety, 0) is None and not homing.reached(q)
    assert safety.last_reject_reason == "estop latched"
