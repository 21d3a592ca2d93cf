"""The SO-101 driver's logic, ROS-free: commands in, checked joint targets out.

:class:`ArmController` owns the backend, the safety filter, the EE target tracker and the
homing of an episode reset. The driver node turns messages into calls and publishes what
:meth:`ArmController.tick` returns; every write to the arm passes the safety filter here.
Simulation and hardware differ only through the backend protocol (``resets_scene``,
``advance``, ``task_state``), never by asking which backend this is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from drqv2_ros.robot.backend import JOINT_NAMES, NUM_JOINTS, ArmBackend, BackendError
from drqv2_ros.robot.homing import Homing
from drqv2_ros.robot.kinematics import EeTargetTracker
from drqv2_ros.robot.safety import SafetyFilter


@dataclass
class TickOutput:
    position: np.ndarray | None      # measured joints (rad), None when the read failed
    velocity: np.ndarray | None      # rad/s
    task_state: object | None        # the backend's privileged state (sim) or None
    new_success: bool                # the task succeeded on this tick (once per episode)


class ArmController:
    def __init__(self, backend: ArmBackend, safety: SafetyFilter, tracker: EeTargetTracker,
                 homing: Homing, warn: Callable[[str], None] = lambda text: None):
        self.backend, self.safety, self.tracker, self.homing = backend, safety, tracker, homing
        self.warn = warn
        self.q: np.ndarray | None = None
        self.v = np.zeros(NUM_JOINTS)
        self.read_errors = 0
        self.write_errors = 0
        self._homing = threading.Event()
        self._success_sent = False

    # -- the arm ---------------------------------------------------------------------------
    def read(self) -> np.ndarray | None:
        """Measured joints, or None (counted, warned) when the read failed or is not finite."""
        try:
            q, v = self.backend.read_joints()
        except BackendError as exc:
            self.read_errors += 1
            self.warn(f"joint read failed: {exc}")
            return None
        q = np.asarray(q, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if q.shape != (NUM_JOINTS,) or not np.all(np.isfinite(q)):
            self.read_errors += 1
            self.warn(f"joint read not finite: {q}")
            return None
        self.q, self.v = q, (v if v.shape == (NUM_JOINTS,) and np.all(np.isfinite(v))
                             else np.zeros(NUM_JOINTS))
        return q

    def write(self, target: np.ndarray | None) -> None:
        if target is None:
            return
        try:
            self.backend.write_joint_targets(target)
        except BackendError as exc:
            self.write_errors += 1
            self.warn(f"joint write failed: {exc}")

    def _refused(self) -> bool:
        self.warn(f"command refused ({self.safety.rejected} so far): "
                  f"{self.safety.last_reject_reason}")
        return False

    # -- commands --------------------------------------------------------------------------
    def ee_command(self, delta, gripper: float, stamp_ns: int, now_ns: int) -> bool:
        """An EE delta in policy units; returns whether a target was sent."""
        if self._homing.is_set():
            self.safety.reject("homing for an episode reset")
            return self._refused()
        if not self.safety.check_ee(delta, gripper, stamp_ns, now_ns):
            return self._refused()
        q = self.read()
        if q is None:
            self.safety.reject("no valid joint measurement")
            return self._refused()
        try:
            q_target = self.tracker(q, np.asarray(delta, dtype=np.float64), float(gripper))
        except ValueError as exc:
            self.safety.reject(f"ik: {exc}")
            return self._refused()
        target = self.safety.apply(q_target, q, now_ns)
        self.write(target)
        return target is not None

    def joint_command(self, names: Sequence[str], positions, stamp_ns: int,
                      now_ns: int) -> bool:
        """Absolute joint targets (rad), names empty (JOINT_NAMES order) or all six."""
        if self._homing.is_set():
            self.safety.reject("homing for an episode reset")
            return self._refused()
        positions = np.asarray(positions, dtype=np.float64).reshape(-1)
        names = list(names)
        if names:
            if sorted(names) != sorted(JOINT_NAMES) or len(names) != len(positions):
                self.safety.reject(f"malformed: joint_command names {names} must be exactly "
                                   f"{list(JOINT_NAMES)} with one position each")
                return self._refused()
            positions = positions[[names.index(n) for n in JOINT_NAMES]]
        if not self.safety.check_joints(positions, stamp_ns, now_ns):
            return self._refused()
        q = self.read()
        if q is None:
            self.safety.reject("no valid joint measurement")
            return self._refused()
        self.tracker.reset()
        target = self.safety.apply(positions, q, now_ns)
        self.write(target)
        return target is not None

    def estop(self) -> None:
        q = self.read()
        self.write(self.safety.estop(q if q is not None else self.q))
        self.tracker.reset()

    def reset_estop(self) -> bool:
        was = self.safety.reset_estop()
        self.tracker.reset()
        return was

    # -- episode reset ---------------------------------------------------------------------
    def reset_episode(self, timeout_s: float, poll_s: float = 0.02, *,
                      placement_seed: int | None = None) -> tuple[bool, str]:
        """A backend that resets its scene does so at once (``placement_seed``: a fixed
        scene, for evaluation); otherwise the arm is driven home by :meth:`tick` (through the
        safety filter) and this waits until it is there. Call it from a thread other than
        the one running ``tick``."""
        self.tracker.reset()
        if self.backend.resets_scene:
            message = (self.backend.reset_episode() if placement_seed is None else
                       self.backend.reset_episode(placement_seed=placement_seed))
            self.safety.forget_target()
            self._success_sent = False
            return True, message
        self._homing.set()
        deadline = time.monotonic() + timeout_s
        while self._homing.is_set() and time.monotonic() < deadline:
            time.sleep(poll_s)
        if self._homing.is_set():
            self._homing.clear()
            return False, (f"arm did not reach home within {timeout_s:.0f} s "
                           f"({self.safety.last_reject_reason or 'blocked'})")
        self.safety.forget_target()
        return True, "arm at home; reset the scene by hand"

    @property
    def homing_active(self) -> bool:
        return self._homing.is_set()

    # -- the control tick ------------------------------------------------------------------
    def tick(self, now_ns: int, mono_s: float) -> TickOutput:
        self.backend.advance(mono_s)
        q = self.read()
        if q is not None and self._homing.is_set():
            target = self.homing.step(q, self.safety, now_ns)
            if target is None and self.homing.reached(q):
                self._homing.clear()
            self.write(target)
        if q is not None:
            hold = self.safety.tick(now_ns, q)
            if hold is not None:
                self.tracker.reset()
                self.warn("watchdog: no fresh command, holding position")
                self.write(hold)
        state = self.backend.task_state()
        new_success = bool(state is not None and getattr(state, "success", False)
                           and not self._success_sent)
        self._success_sent |= new_success
        return TickOutput(q, None if q is None else self.v.copy(), state, new_success)
