"""The arm backend contract: what the SO-101 driver needs from the sim or the real arm.

Units at this boundary (REP 103): joint positions in radians, velocities in rad/s, for the
six LeRobot motors in this order. The gripper is a joint like the others: its position is
the angle of the SO-101 gripper joint in radians (MJCF `gripper` joint range); the feetech
backend maps LeRobot's 0-100 gripper range linearly onto that joint range.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

#: LeRobot's SO-101 motor names, ids 1..6; also the JointState names.
JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
NUM_JOINTS = len(JOINT_NAMES)


class BackendError(RuntimeError):
    """The backend cannot start or lost the hardware; the message says what to do."""


class ArmBackend(Protocol):
    """Implemented by ``sim_backend.SimBackend`` and ``feetech_backend.FeetechBackend``."""

    name: str  # "sim" or "feetech"

    def connect(self) -> None:
        """Open the device/world. Never prompts: raises BackendError with instructions."""

    def read_joints(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions rad (6,), velocities rad/s (6,)) in JOINT_NAMES order."""

    def write_joint_targets(self, targets: np.ndarray) -> None:
        """Send position targets, rad (6,). Already checked and clamped by the safety layer."""

    def close(self) -> None:
        """Release the device; safe to call twice."""
