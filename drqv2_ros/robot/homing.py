"""Moving the real arm home for an episode reset, ROS-free: each control tick sends the home
position through the safety filter (so the per-step joint clamp paces the motion and the
e-stop stops it) until every arm joint is within a tolerance of home. The gripper is not
waited for (a grasped object may block it)."""

from __future__ import annotations

import numpy as np

from drqv2_ros.robot.safety import SafetyFilter


class Homing:
    def __init__(self, home: np.ndarray, tolerance_rad: float):
        self.home = np.asarray(home, dtype=np.float64)
        self.tolerance_rad = float(tolerance_rad)

    def reached(self, q: np.ndarray) -> bool:
        return bool(np.max(np.abs(np.asarray(q)[:-1] - self.home[:-1])) <= self.tolerance_rad)

    def step(self, q: np.ndarray, safety: SafetyFilter, now_ns: int) -> np.ndarray | None:
        """The target to send this tick (clamped by ``safety``), or None when home is reached
        or the safety filter refuses (e-stop latched, non-finite measurement)."""
        if self.reached(q):
            return None
        return safety.apply(self.home, q, now_ns)
