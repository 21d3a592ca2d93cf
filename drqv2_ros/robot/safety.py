"""The safety layer every arm command passes, whatever its source (policy EE command, user
joint command, watchdog, e-stop). ROS-free: times are integer nanoseconds passed in.

Rules, in order:
1. Latched e-stop: while latched every command is refused ("estop latched") and the arm
   holds the position it had when the e-stop came; only ``reset_estop()`` clears it.
2. Validation: NaN/Inf, policy units outside [-1, 1] (EE commands), wrong joint count,
   missing stamp, stamps older than ``max_command_age_s`` (or from the future by more than
   that) are refused, counted per reason, and the last reason kept.
   Joint commands with a target beyond the model's joint limits are refused ("out of
   range"): such a target is a fault upstream (degrees sent as radians, a corrupt message),
   not a step to shorten.
3. Clamping of accepted joint targets: to the model's joint limits shrunk by
   ``joint_margin_rad``, and to ``current +- max_relative_target`` per command (LeRobot's
   ``max_relative_target`` semantics, in radians).
4. Watchdog: no accepted command for ``watchdog_timeout_s`` -> hold the current measured
   position (once, on the transition) until a fresh command arrives.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from drqv2_ros.robot.backend import NUM_JOINTS

NS = 1_000_000_000


@dataclass
class SafetyLimits:
    """Limits of the safety filter. Joint limits are the MJCF's; ``from_kinematics``
    fills them from a ``Kinematics`` instance."""

    joint_lower: np.ndarray = field(default_factory=lambda: np.full(NUM_JOINTS, -np.pi))
    joint_upper: np.ndarray = field(default_factory=lambda: np.full(NUM_JOINTS, np.pi))
    joint_margin_rad: float = 0.02
    max_relative_target: float = 0.25     # rad per command, each joint
    watchdog_timeout_s: float = 0.5
    max_command_age_s: float = 0.3
    workspace_min: tuple[float, float, float] = (0.1, -0.3, 0.01)
    workspace_max: tuple[float, float, float] = (0.5, 0.3, 0.4)

    def __post_init__(self) -> None:
        self.joint_lower = np.asarray(self.joint_lower, dtype=np.float64).reshape(NUM_JOINTS)
        self.joint_upper = np.asarray(self.joint_upper, dtype=np.float64).reshape(NUM_JOINTS)
        if np.any(self.joint_upper - self.joint_lower <= 2 * self.joint_margin_rad):
            raise ValueError("joint limits narrower than twice the margin")
        for name in ("max_relative_target", "watchdog_timeout_s", "max_command_age_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError("workspace_min must be below workspace_max on every axis")

    @classmethod
    def from_kinematics(cls, kin, **kw) -> SafetyLimits:
        return cls(joint_lower=kin.lower.copy(), joint_upper=kin.upper.copy(), **kw)

    @property
    def lower(self) -> np.ndarray:
        return self.joint_lower + self.joint_margin_rad

    @property
    def upper(self) -> np.ndarray:
        return self.joint_upper - self.joint_margin_rad


class SafetyFilter:
    """Gate between command sources and ``ArmBackend.write_joint_targets``.

    Typical use (the driver node)::

        if f.check_ee(delta, gripper, stamp_ns, now_ns):
            q = kinematics(...)                  # may raise -> f.reject("ik: ...")
            target = f.apply(q, current, now_ns)  # None if refused
            if target is not None: backend.write_joint_targets(target)
        ...
        hold = f.tick(now_ns, current)           # every control tick
        if hold is not None: backend.write_joint_targets(hold)
    """

    def __init__(self, limits: SafetyLimits):
        self.limits = limits
        self.estopped = False
        self.holding = True              # nothing commanded yet: the arm keeps its pose
        self.applied = 0
        self.rejected = 0
        self.reject_counts: Counter[str] = Counter()
        self.last_reject_reason = ""
        self.target: np.ndarray | None = None
        self._last_command_ns: int | None = None

    # -- bookkeeping -----------------------------------------------------------------------
    def reject(self, reason: str) -> bool:
        """Count a refused command; returns False (for ``return f.reject(...)``)."""
        self.rejected += 1
        key = reason.split(":", 1)[0]
        self.reject_counts[key] += 1
        self.last_reject_reason = reason
        return False

    def _check_stamp(self, stamp_ns: int, now_ns: int) -> bool:
        if stamp_ns <= 0:
            return self.reject("stale: command has no stamp")
        age = (now_ns - stamp_ns) / NS
        if age > self.limits.max_command_age_s:
            return self.reject(f"stale: command is {age:.3f} s old "
                               f"(max {self.limits.max_command_age_s} s)")
        if age < -self.limits.max_command_age_s:
            return self.reject(f"stale: command stamp {-age:.3f} s in the future")
        return True

    # -- validation ------------------------------------------------------------------------
    def check_ee(self, delta, gripper: float, stamp_ns: int, now_ns: int) -> bool:
        """An EE command in policy units: finite, each in [-1, 1], fresh, not e-stopped."""
        if self.estopped:
            return self.reject("estop latched")
        values = np.append(np.asarray(delta, dtype=np.float64).ravel(), float(gripper))
        if values.shape != (4,):
            return self.reject(f"malformed: need 3 delta values + gripper, got {values.size}")
        if not np.all(np.isfinite(values)):
            return self.reject("nan: command contains NaN/Inf")
        if np.any(np.abs(values) > 1.0):
            return self.reject(f"out of range: policy units must be in [-1, 1], got "
                               f"{np.round(values, 3).tolist()}")
        return self._check_stamp(stamp_ns, now_ns)

    def check_joints(self, positions, stamp_ns: int, now_ns: int) -> bool:
        """A joint-position command (rad): 6 finite values within the joint limits, fresh,
        not e-stopped. In-range targets are clamped later (margin, per-command step)."""
        if self.estopped:
            return self.reject("estop latched")
        q = np.asarray(positions, dtype=np.float64).ravel()
        if q.shape != (NUM_JOINTS,):
            return self.reject(f"malformed: need {NUM_JOINTS} joint positions, got {q.size}")
        if not np.all(np.isfinite(q)):
            return self.reject("nan: command contains NaN/Inf")
        lim = self.limits
        out = (q < lim.joint_lower) | (q > lim.joint_upper)
        if out.any():
            j = int(np.argmax(out))
            return self.reject(f"out of range: joint {j} target {q[j]:.4g} rad outside the "
                               f"joint limits [{lim.joint_lower[j]:.3f}, "
                               f"{lim.joint_upper[j]:.3f}]")
        return self._check_stamp(stamp_ns, now_ns)

    # -- the final gate --------------------------------------------------------------------
    def clamp(self, targets: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Joint limits (with margin) and per-command relative clamp around ``current``."""
        lim = self.limits
        t = np.asarray(targets, dtype=np.float64).reshape(NUM_JOINTS)
        c = np.asarray(current, dtype=np.float64).reshape(NUM_JOINTS)
        t = np.clip(t, c - lim.max_relative_target, c + lim.max_relative_target)
        return np.clip(t, lim.lower, lim.upper)

    def apply(self, targets: np.ndarray, current: np.ndarray, now_ns: int) -> np.ndarray | None:
        """Clamp validated targets; returns what may be sent to the arm, or None when
        refused (e-stop, non-finite targets or measurement)."""
        if self.estopped:
            self.reject("estop latched")
            return None
        t = np.asarray(targets, dtype=np.float64).ravel()
        c = np.asarray(current, dtype=np.float64).ravel()
        if t.shape != (NUM_JOINTS,) or not np.all(np.isfinite(t)):
            self.reject("nan: joint targets not finite")
            return None
        if c.shape != (NUM_JOINTS,) or not np.all(np.isfinite(c)):
            self.reject("nan: measured joints not finite")
            return None
        self.target = self.clamp(t, c)
        self._last_command_ns = now_ns
        self.holding = False
        self.applied += 1
        return self.target.copy()

    def tick(self, now_ns: int, current: np.ndarray) -> np.ndarray | None:
        """Watchdog, every control tick. Returns a hold target to send when the watchdog
        fires (no fresh command within the timeout), else None."""
        if self.estopped or self.holding:
            return None
        assert self._last_command_ns is not None
        if (now_ns - self._last_command_ns) / NS <= self.limits.watchdog_timeout_s:
            return None
        self.holding = True
        return self._hold(current)

    def _hold(self, current: np.ndarray) -> np.ndarray | None:
        c = np.asarray(current, dtype=np.float64).ravel()
        if c.shape != (NUM_JOINTS,) or not np.all(np.isfinite(c)):
            self.target = None  # nothing safe to send: the arm keeps its last goal
            return None
        self.target = np.clip(c, self.limits.lower, self.limits.upper)
        return self.target.copy()

    # -- e-stop ----------------------------------------------------------------------------
    def estop(self, current: np.ndarray) -> np.ndarray | None:
        """Latch the e-stop; returns the hold target (current position) to send once."""
        self.estopped = True
        self.holding = True
        return self._hold(current)

    def reset_estop(self) -> bool:
        """Clear the latch; the arm keeps holding until a fresh command. Returns whether
        it was latched."""
        was = self.estopped
        self.estopped = False
        self.holding = True
        return was

    def forget_target(self) -> None:
        """After an episode reset the held target is meaningless: hold until commanded."""
        self.holding = True
        self.target = None
