"""so101_driver (sim backend) over real DDS: one driver process for the module, in its own
ROS_DOMAIN_ID, started with the shipped config/so101_driver.yaml. The first tests check the
ROS-free SimBackend the driver wraps (no DDS)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip("mujoco")

from ros_harness import (
    ROOT,
    NodeProcess,
    Probe,
    allocate_domain_id,
    ros_environment,
    wait_for,
)

dds = pytest.mark.dds

JOINT_NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll",
               "gripper"]
RATE_HZ = 50.0
CAMERA_HZ = 10.0
WATCHDOG_S = 0.5
# Commands are refused when older than this on arrival. The shipped 0.3 s is for a robot;
# on a loaded 2-core CI machine DDS delivery to a busy process has taken 0.7 s, so the rig
# allows more (the refusal itself is what test_safety.py and the stale test check).
MAX_COMMAND_AGE_S = 1.5


class Rig:
    def __init__(self, tmp):
        from sensor_msgs.msg import Image, JointState

        from drqv2_ros.msg import DriverStatus, EndEffectorCommand, SimState
        from drqv2_ros.nodes.common import SENSOR_QOS, reliable_qos

        env = ros_environment(allocate_domain_id(), tmp / "roslog")
        self.driver = NodeProcess(
            "drqv2_ros.nodes.driver_node", env, tmp,
            params_file=ROOT / "config" / "so101_driver.yaml",
            params={"rate_hz": RATE_HZ, "camera_rate_hz": CAMERA_HZ,
                    "watchdog_timeout_s": WATCHDOG_S,
                    "max_command_age_s": MAX_COMMAND_AGE_S})
        self.probe = Probe(env)
        self.joints = self.probe.collect(JointState, "joint_states", SENSOR_QOS)
        self.policy_images = self.probe.collect(Image, "camera/image_policy", SENSOR_QOS)
        self.raw_images = self.probe.collect(Image, "camera/image_raw", SENSOR_QOS)
        self.status = self.probe.collect(DriverStatus, "driver/status", reliable_qos(10))
        self.sim = self.probe.collect(SimState, "sim/state", reliable_qos(10))
        self.ee_pub = self.probe.publisher(EndEffectorCommand, "ee_command", reliable_qos(1))
        self.EndEffectorCommand = EndEffectorCommand
        wait_for(lambda: self.joints and self.sim and self.status and self.policy_images,
                 60, "first joint_states, sim/state, driver/status and image_policy",
                 [self.driver])
        wait_for(lambda: self.ee_pub.get_subscription_count() > 0, 20,
                 "driver subscribed to ee_command", [self.driver])

    def latest(self, lst):
        with self.probe.lock:
            return lst[-1][1]

    def gripper_xyz(self) -> np.ndarray:
        p = self.latest(self.sim).gripper_position
        return np.array([p.x, p.y, p.z])

    def send_ee(self, delta, gripper=0.0, stamp_ns=None):
        msg = self.EndEffectorCommand()
        now = time.time_ns() if stamp_ns is None else stamp_ns
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        msg.delta = [float(v) for v in delta]
        msg.gripper = float(gripper)
        self.ee_pub.publish(msg)

    def trigger(self, name: str):
        from std_srvs.srv import Trigger

        return self.probe.call(Trigger, name, Trigger.Request(), timeout=20)

    def hold_until(self, pred, what, timeout=5.0):
        """Stream zero-delta commands at 10 Hz (as the policy does: the EE target holds, the
        watchdog stays quiet) until pred() holds."""
        def step():
            if pred():
                return True
            self.send_ee((0.0, 0.0, 0.0), gripper=1.0)
            return False
        wait_for(step, timeout, what, [self.driver], interval=0.1)

    def settle(self, timeout=10.0) -> np.ndarray:
        """Wait until the gripper site is at rest (moves < 0.3 mm in 0.2 s): a reset's motion
        can still be running on a loaded machine, and the first EE command anchors its target
        on the measured site."""
        last = [self.gripper_xyz()]

        def still():
            time.sleep(0.2)
            p = self.gripper_xyz()
            moved, last[0] = np.linalg.norm(p - last[0]), p
            return moved < 3e-4
        wait_for(still, timeout, "gripper at rest", [self.driver], interval=0.0)
        return last[0]

    def wait_status(self, pred, what, timeout=5.0):
        wait_for(lambda: pred(self.latest(self.status)), timeout, what, [self.driver])
        return self.latest(self.status)

    def close(self):
        self.probe.close()
        self.driver.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("driver"))
    yield r
    r.close()


def _rate(samples, window_s: float) -> float:
    """Messages per second by their header stamps (when the driver made them), so a
    delivery hiccup on a loaded machine does not count; the newest 0.3 s may still be in
    flight and is left out."""
    from drqv2_ros.nodes.common import stamp_to_ns

    stamps = sorted(stamp_to_ns(m.header.stamp) for _, m in samples)
    t_end = stamps[-1] - 300_000_000
    return sum(t_end - window_s * 1e9 < t <= t_end for t in stamps) / window_s


def test_sim_backend_reset_is_seeded_and_steps_in_real_time():
    from drqv2_ros.robot.sim_backend import SimBackend
    from drqv2_ros.robot.sim_world import SimConfig

    cfg = SimConfig(seed=7)
    a, b = SimBackend(cfg), SimBackend(cfg)
    a.connect()
    b.connect()
    try:
        cubes = []
        for _ in range(3):
            ca, cb = a.task_state().cube_position, b.task_state().cube_position
            np.testing.assert_allclose(ca, cb)                     # same seed, same episodes
            assert cfg.cube_xy_min[0] <= ca[0] <= cfg.cube_xy_max[0]
            assert cfg.cube_xy_min[1] <= ca[1] <= cfg.cube_xy_max[1]
            cubes.append(ca)
            a.reset_episode()
            b.reset_episode()
        assert not np.allclose(cubes[0], cubes[1])
        s = a.task_state()
        assert not s.cube_grasped and not s.success and 0.0 <= s.gripper_opening <= 1.0
        q0, _ = a.read_joints()
        np.testing.assert_allclose(q0, cfg.home_position, atol=1e-9)  # home (wrist_view)
        assert a.advance(100.0) == 0                               # first call anchors time
        assert a.advance(100.1) == 50                              # 0.1 s of 2 ms steps
        assert a.advance(110.0) == 50                              # backlog capped at 0.1 s
        assert a.dropped_s == pytest.approx(9.8, abs=1e-6)
        target = np.array([0.3, -0.2, 0.2, 0.1, 0.0, 1.0])
        a.write_joint_targets(target)
        for t in np.arange(110.02, 111.0, 0.02):                   # 1 s of 50 Hz ticks
            a.advance(float(t))
        q, _ = a.read_joints()
        np.testing.assert_allclose(q[:5], target[:5], atol=0.02)
        assert q[5] > 0.3                                          # gripper opening (no load)
    finally:
        a.close()
        b.close()


@dds
def _span_s(samples) -> float:
    """Seconds between the oldest and newest header stamp received."""
    from drqv2_ros.nodes.common import stamp_to_ns

    if len(samples) < 2:
        return 0.0
    stamps = [stamp_to_ns(m.header.stamp) for _, m in samples]
    return (max(stamps) - min(stamps)) / 1e9


def test_publishes_joint_states_and_images_at_rate(rig):
    # _rate's 2 s window + the 0.3 s it leaves for messages in flight, for both streams
    wait_for(lambda: min(_span_s(rig.joints), _span_s(rig.policy_images)) > 2.5
             and rig.raw_images and rig.status, 30, "2.5 s of joint states and images",
             [rig.driver])
    js = rig.latest(rig.joints)
    assert list(js.name) == JOINT_NAMES
    assert len(js.position) == 6 and len(js.velocity) == 6
    assert all(math.isfinite(v) for v in js.position)
    assert js.header.stamp.sec > 0
    joint_rate = _rate(rig.joints, 2.0)
    image_rate = _rate(rig.policy_images, 2.0)
    print(f"\njoint_states {joint_rate:.1f} Hz, image_policy {image_rate:.1f} Hz")
    assert joint_rate > 0.8 * RATE_HZ, joint_rate
    # ~40-70 ms per frame on CPU (geometry-bound): under load on 2 cores the camera thread
    # falls behind first; the control tick must not.
    assert image_rate > 0.4 * CAMERA_HZ, image_rate
    img = rig.latest(rig.policy_images)
    assert (img.height, img.width, img.encoding) == (84, 84, "rgb8")
    assert len(img.data) == 84 * 84 * 3
    raw = rig.latest(rig.raw_images)
    assert (raw.height, raw.width) == (480, 640)
    st = rig.latest(rig.status)
    assert st.backend == "sim" and not st.estopped


@dds
def test_ee_command_moves_gripper_site_by_delta(rig):
    assert rig.trigger("reset_episode").success
    time.sleep(0.5)
    p0 = rig.settle()
    steps = [(0.0, 0.5, -1.0)] * 3
    expected = np.zeros(3)
    for d in steps:                               # one command, then hold until it is there
        applied = rig.latest(rig.status).commands_applied
        rig.send_ee(d, gripper=1.0)
        rig.wait_status(lambda s, a=applied: s.commands_applied > a, "command applied")
        expected = expected + 0.02 * np.asarray(d)  # ee_step_m 0.02 per unit
        rig.hold_until(lambda e=expected: np.linalg.norm(rig.gripper_xyz() - p0 - e) < 0.004,
                       f"gripper at {np.round(expected, 3)}", timeout=10.0)
    time.sleep(0.2)
    moved = rig.gripper_xyz() - p0
    err = np.linalg.norm(moved - expected)
    print(f"\ncommanded {expected}, moved {np.round(moved, 4)}, error {err * 1e3:.1f} mm")
    assert err < 0.006, (moved, expected)
    assert rig.latest(rig.status).commands_applied >= 3


@dds
def test_watchdog_holds_position(rig):
    rig.send_ee((0.0, 0.0, 1.0), gripper=1.0)
    rig.wait_status(lambda s: not s.holding, "command accepted")
    st = rig.wait_status(lambda s: s.holding, "watchdog hold", timeout=WATCHDOG_S + 2.0)
    assert st.holding and not st.estopped
    p0 = rig.gripper_xyz()
    time.sleep(1.0)
    assert np.linalg.norm(rig.gripper_xyz() - p0) < 0.002


@dds
def test_nan_out_of_range_and_stale_commands_refused(rig):
    before = rig.latest(rig.status)
    applied = before.commands_applied
    p0 = rig.gripper_xyz()
    rig.send_ee((float("nan"), 0.0, 0.0))
    st = rig.wait_status(lambda s: s.commands_rejected >= before.commands_rejected + 1,
                         "NaN command counted")
    assert "NaN" in st.last_reject_reason
    rig.send_ee((0.0, 0.0, 1.5))
    st = rig.wait_status(lambda s: "out of range" in s.last_reject_reason, "out-of-range")
    rig.send_ee((0.0, 0.0, 1.0), stamp_ns=time.time_ns() - 5_000_000_000)
    st = rig.wait_status(lambda s: "stale" in s.last_reject_reason, "stale refused")
    assert st.commands_rejected >= before.commands_rejected + 3
    assert st.commands_applied == applied
    time.sleep(0.3)
    assert np.linalg.norm(rig.gripper_xyz() - p0) < 0.002


@dds
def test_estop_latches_until_reset(rig):
    resp = rig.trigger("estop")
    assert resp.success
    rig.wait_status(lambda s: s.estopped, "estopped status")
    p0 = rig.gripper_xyz()
    for _ in range(3):
        rig.send_ee((0.0, 0.0, 1.0))
        time.sleep(0.1)
    st = rig.wait_status(lambda s: s.last_reject_reason == "estop latched", "refused")
    assert st.estopped
    assert np.linalg.norm(rig.gripper_xyz() - p0) < 0.002, "moved while e-stopped"
    assert rig.trigger("reset_estop").success
    rig.wait_status(lambda s: not s.estopped, "estop cleared")
    applied = rig.latest(rig.status).commands_applied
    rig.send_ee((0.0, 0.0, 1.0))
    rig.wait_status(lambda s: s.commands_applied > applied, "command applied after reset")
    rig.hold_until(lambda: rig.gripper_xyz()[2] - p0[2] > 0.01, "moved up after reset")


@dds
def test_joint_command_applied_and_malformed_refused(rig):
    from sensor_msgs.msg import JointState

    from drqv2_ros.nodes.common import ns_to_stamp, reliable_qos

    pub = rig.probe.publisher(JointState, "joint_command", reliable_qos(1))
    wait_for(lambda: pub.get_subscription_count() > 0, 20, "joint_command subscribed",
             [rig.driver])
    bad = JointState()
    bad.header.stamp.sec, bad.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    bad.name = ["shoulder_pan"]
    bad.position = [0.1]
    pub.publish(bad)
    rig.wait_status(lambda s: s.last_reject_reason.startswith("malformed"), "malformed")
    q0 = np.array(rig.latest(rig.joints).position)
    good = JointState()
    good.header.stamp.sec, good.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    good.name = list(reversed(JOINT_NAMES))
    target = q0.copy()
    target[0] += 0.1                                  # shoulder_pan +0.1 rad
    good.position = [float(v) for v in reversed(target)]

    def stream():  # a joint streamer republishes its (fresh-stamped) target at 10 Hz
        if abs(rig.latest(rig.joints).position[0] - target[0]) < 0.01:
            return True
        ns_to_stamp(time.time_ns(), good.header.stamp)
        pub.publish(good)
        return False

    wait_for(stream, 10, "shoulder_pan reached the joint command", [rig.driver],
             interval=0.1)
