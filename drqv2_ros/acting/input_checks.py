"""Range checks on everything the actor receives, before it is used to command or stored.

Each check returns the cleaned value or raises :class:`InputRejected` whose ``reason`` is a
short stable key (counted per reason in ``policy/status``) and whose message says what was
wrong. Nothing is clamped into range here: a value out of range is a fault upstream (a driver
in degrees, a corrupt message, a clock in the future), and acting on it would command the arm
from data that does not describe it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drqv2_ros.robot.backend import JOINT_NAMES


class InputRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass
class InputLimits:
    joint_lower: np.ndarray                  # rad, (6,): the model's joint limits
    joint_upper: np.ndarray
    joint_margin_rad: float = 0.2            # measured positions may overshoot this much
    max_joint_velocity: float = 50.0         # rad/s; the STS3215 peaks near 5 rad/s, sim
    #                                          contacts spike higher
    max_future_s: float = 0.05               # stamps later than now + this are refused
    action_tolerance: float = 1e-6           # operator actions within [-1-tol, 1+tol]

    def __post_init__(self) -> None:
        self.joint_lower = np.asarray(self.joint_lower, np.float64).reshape(len(JOINT_NAMES))
        self.joint_upper = np.asarray(self.joint_upper, np.float64).reshape(len(JOINT_NAMES))
        for name in ("joint_margin_rad", "max_joint_velocity", "max_future_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")


class InputChecks:
    def __init__(self, limits: InputLimits):
        self.limits = limits

    def stamp(self, stamp_ns: int, now_ns: int) -> int:
        if stamp_ns <= 0:
            raise InputRejected("no stamp", "header stamp is zero")
        ahead = (stamp_ns - now_ns) / 1e9
        if ahead > self.limits.max_future_s:
            raise InputRejected("future stamp", f"stamped {ahead:.3f} s in the future "
                                f"(tolerance {self.limits.max_future_s} s)")
        return stamp_ns

    def joints(self, names, position, velocity, stamp_ns: int, now_ns: int):
        """(position, velocity) in ``JOINT_NAMES`` order, rad and rad/s."""
        self.stamp(stamp_ns, now_ns)
        names = list(names)
        try:
            index = [names.index(n) for n in JOINT_NAMES]
        except ValueError:
            raise InputRejected("missing joints", f"need {list(JOINT_NAMES)}, got "
                                f"{names[:10]}") from None
        pos = np.asarray(position, np.float64)
        vel = np.asarray(velocity, np.float64)
        if pos.shape != (len(names),) or (vel.size and vel.shape != (len(names),)):
            raise InputRejected("malformed", f"{len(names)} names, {pos.size} positions, "
                                f"{vel.size} velocities")
        pos = pos[index]
        vel = vel[index] if vel.size else np.zeros(len(JOINT_NAMES))
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))):
            raise InputRejected("non-finite", "NaN/Inf joint position or velocity")
        lim = self.limits
        bad = (pos < lim.joint_lower - lim.joint_margin_rad) | \
              (pos > lim.joint_upper + lim.joint_margin_rad)
        if bad.any():
            j = int(np.argmax(bad))
            raise InputRejected("out of joint limits", (
                f"{JOINT_NAMES[j]} at {pos[j]:.4g} rad, limits [{lim.joint_lower[j]:.3f}, "
                f"{lim.joint_upper[j]:.3f}] +- {lim.joint_margin_rad} (degrees sent as "
                "radians?)"))
        fast = np.abs(vel) > lim.max_joint_velocity
        if fast.any():
            j = int(np.argmax(fast))
            raise InputRejected("velocity out of range", (
                f"{JOINT_NAMES[j]} at {vel[j]:.4g} rad/s (max {lim.max_joint_velocity})"))
        return pos, vel

    def action(self, action, action_dim: int) -> np.ndarray:
        """An operator's action: exactly ``action_dim`` finite values in [-1, 1]."""
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (action_dim,):
            raise InputRejected("wrong length", f"{a.size} values, the policy has {action_dim}")
        if not np.all(np.isfinite(a)):
            raise InputRejected("non-finite", "NaN/Inf in the operator's action")
        tol = 1.0 + self.limits.action_tolerance
        if np.any(np.abs(a) > tol):
            raise InputRejected("out of range", f"{np.round(a, 3).tolist()} outside [-1, 1]")
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def image(self, chw: np.ndarray, want: tuple[int, int, int], stamp_ns: int,
              now_ns: int) -> np.ndarray:
        """One view's frame, (C, H, W) uint8, of exactly the loop's size."""
        self.stamp(stamp_ns, now_ns)
        if chw.dtype != np.uint8 or chw.shape != tuple(want):
            raise InputRejected("wrong size", f"{chw.dtype} {tuple(chw.shape)}, the loop takes "
                                f"uint8 {tuple(want)} (C, H, W)")
        return chw
