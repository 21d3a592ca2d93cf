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
    """Implemented by ``sim_backend.SimBackend`` and ``feetech_backend.FeetechBackend``.

    What differs between a simulation and hardware is expressed here, not by the driver
    asking which backend it has: ``resets_scene`` (the backend puts arm and scene back at once;
    otherwise the driver homes the arm through the safety filter and a person resets the
    scene), ``cameras`` (views the backend renders itself), ``advance`` (time-driven state,
    the sim's physics) and ``task_state`` (privileged state, None on hardware)."""

    name: str  # "sim" or "feetech"
    resets_scene: bool
    cameras: tuple[str, ...]

    def connect(self) -> None:
        """Open the device/world. Never prompts: raises BackendError with instructions."""

    def read_joints(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions rad (6,), velocities rad/s (6,)) in JOINT_NAMES order."""

    def write_joint_targets(self, targets: np.ndarray) -> None:
        """Send position targets, rad (6,). Already checked and clamped by the safety layer."""

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def advance(self, now_s: float) -> None:
        """Bring time-driven state up to ``now_s`` (monotonic s); hardware: nothing."""

    def reset_episode(self) -> str:
        """Only where ``resets_scene``: arm home and a new scene; returns a description."""

    def task_state(self):
        """Privileged task state (``sim_world.TaskState``) or None."""
