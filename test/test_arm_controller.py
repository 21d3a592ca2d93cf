"""The driver's logic without ROS: every write passes the safety filter, homing through it,
watchdog holds, read faults counted, success announced once per episode; simulation and
hardware differ only through the backend protocol."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from drqv2_ros.robot.arm_controller import ArmController
from drqv2_ros.robot.backend import JOINT_NAMES, BackendError
from drqv2_ros.robot.homing import Homing
from drqv2_ros.robot.kinematics import EeTargetTracker, Kinematics
from drqv2_ros.robot.safety import SafetyFilter, SafetyLimits

NS = 1_000_000_000
T0 = 1_000 * NS


class FakeArm:
    """Hardware-like: no scene reset, no cameras; a target moves the arm there at once."""

    name = "fake"
    resets_scene = False
    cameras = ()

    def __init__(self, q=None):
        self.q = np.zeros(6) if q is None else np.asarray(q, float)
        self.writes: list[np.ndarray] = []
        self.fail_reads = False
        self.success = False

    def connect(self):
        pass

    def read_joints(self):
        if self.fail_reads:
            raise BackendError("bus unplugged")
        return self.q.copy(), np.zeros(6)

    def write_joint_targets(self, t):
        self.writes.append(np.asarray(t, float).copy())
        self.q = np.asarray(t, float).copy()

    def advance(self, now_s):
        pass

    def reset_episode(self):
        raise BackendError("no scene reset on hardware")

    def task_state(self):
        return None

    def close(self):
        pass


class FakeSim(FakeArm):
    resets_scene = True
    cameras = ("wrist_cam",)

    def __init__(self):
        super().__init__()
        self.episodes = 0

    def reset_episode(self):
        self.episodes += 1
        self.q = np.zeros(6)
        self.success = False
        return f"episode {self.episodes} started"

    def task_state(self):
        return SimpleNamespace(success=self.success)


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def make(kin, backend, **kw):
    safety = SafetyFilter(SafetyLimits.from_kinematics(kin, max_relative_target=0.2, **kw))
    home = np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    return ArmController(backend, safety, EeTargetTracker(kin), Homing(home, 0.01))


def test_every_write_passes_the_safety_filter(kin):
    arm = FakeArm()
    c = make(kin, arm)
    assert c.joint_command([], [1.0, 0, 0, 0, 0, 0], T0, T0)
    assert arm.writes[-1][0] == pytest.approx(0.2)          # per-command clamp
    assert not c.joint_command([], [1e300, 0, 0, 0, 0, 0], T0, T0)   # refused, not clamped
    assert not c.joint_command(["a"], [0.0], T0, T0)                  # malformed
    assert not c.ee_command([0, 0, 2.0], 0.0, T0, T0)                 # out of [-1, 1]
    assert not c.ee_command([0, 0, 0.5], 0.0, T0 - 10 * NS, T0)       # stale
    assert len(arm.writes) == 1
    assert c.ee_command([0.0, 0.0, 0.5], 1.0, T0, T0) and len(arm.writes) == 2
    c.estop()
    assert not c.ee_command([0, 0, 0.5], 0.0, T0, T0)                 # latched
    assert c.safety.reject_counts["estop latched"] == 1
    assert c.reset_estop()


def test_read_faults_are_counted_and_nothing_is_written(kin):
    arm = FakeArm()
    c = make(kin, arm)
    arm.fail_reads = True
    assert not c.ee_command([0, 0, 0.5], 0.0, T0, T0)
    out = c.tick(T0, 0.0)
    assert out.position is None and c.read_errors == 2 and not arm.writes


def test_watchdog_holds_the_measured_position(kin):
    arm = FakeArm()
    c = make(kin, arm, watchdog_timeout_s=0.5)
    assert c.joint_command([], [0.1, 0, 0, 0, 0, 0], T0, T0)
    c.tick(T0 + NS // 10, 0.1)
    assert len(arm.writes) == 1
    c.tick(T0 + NS, 1.0)                       # no command for 0.9 s
    assert len(arm.writes) == 2 and c.safety.holding
    np.testing.assert_allclose(arm.writes[-1], arm.q)


def test_hardware_reset_homes_through_the_safety_filter(kin):
    arm = FakeArm()
    c = make(kin, arm)
    result = {}
    th = threading.Thread(target=lambda: result.update(ok=c.reset_episode(5.0)))
    th.start()
    while not c.homing_active:
        time.sleep(0.001)
    assert not c.ee_command([0, 0, 0.5], 0.0, T0, T0)   # refused while homing
    t = T0
    while th.is_alive():
        t += NS // 50
        c.tick(t, t / NS)
        time.sleep(0.005)
    assert result["ok"][0], result
    steps = np.diff([w[0] for w in arm.writes])
    assert len(arm.writes) >= 2 and np.all(steps <= 0.2 + 1e-9)  # clamped per command


def test_sim_reset_is_immediate_and_success_is_announced_once(kin):
    sim = FakeSim()
    c = make(kin, sim)
    assert c.reset_episode(1.0) == (True, "episode 1 started")
    sim.success = True
    assert c.tick(T0, 0.0).new_success
    assert not c.tick(T0 + NS // 50, 0.02).new_success
    c.reset_episode(1.0)
    sim.success = True
    assert c.tick(T0 + NS, 1.0).new_success  # a new episode may succeed again


def test_joint_names_in_any_order(kin):
    arm = FakeArm()
    c = make(kin, arm)
    names = list(reversed(JOINT_NAMES))
    assert c.joint_command(names, [0.0, 0.0, 0.0, 0.0, 0.0, 0.15], T0, T0)
    assert arm.writes[-1][0] == pytest.approx(0.15)
