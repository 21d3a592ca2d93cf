"""The policy node alone over real DDS, with the test as its robot: stale images stop the
commands (and the node says why), malformed sensor messages are counted and dropped, and
commands resume when fresh data returns."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("mujoco")

from ros_harness import ROOT, wait_for

from drqv2_ros.convert.robobase import convert_snapshot
from drqv2_ros.convert.robobase_writer import make_robobase_snapshot

pytestmark = pytest.mark.dds
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


class FakeRobot:
    """Publishes camera/image_policy and joint_states at 20 Hz and serves reset_episode."""

    def __init__(self, probe):
        from sensor_msgs.msg import Image, JointState
        from std_srvs.srv import Trigger

        from drqv2_ros.nodes.common import SENSOR_QOS, numpy_to_image

        self.probe, self.Image, self.JointState = probe, Image, JointState
        self.numpy_to_image = numpy_to_image
        self.img_pub = probe.publisher(Image, "camera/image_policy", SENSOR_QOS)
        self.js_pub = probe.publisher(JointState, "joint_states", SENSOR_QOS)
        probe.node.create_service(Trigger, "reset_episode", self._reset)
        self.images_on = True
        self.bad_image = False
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _reset(self, req, resp):
        resp.success = True
        return resp

    def _run(self):
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            now = self.probe.node.get_clock().now()
            js = self.JointState()
            js.header.stamp = now.to_msg()
            js.name = JOINTS
            js.position = [0.0] * 6
            js.velocity = [0.0] * 6
            self.js_pub.publish(js)
            if self.images_on:
                img = self.numpy_to_image(rng.integers(0, 255, (84, 84, 3), np.uint8),
                                          now.nanoseconds, "wrist")
                if self.bad_image:
                    img.data = img.data[:-10]  # truncated payload
                self.img_pub.publish(img)
            time.sleep(0.05)

    def close(self):
        self._stop.set()
        self._th.join(2)


def test_stale_images_stop_commands_and_bad_messages_are_counted(tmp_path, launch_node, probe):
    from std_msgs.msg import String

    from drqv2_ros.msg import EndEffectorCommand
    from drqv2_ros.nodes.common import reliable_qos, stamp_to_ns

    make_robobase_snapshot(tmp_path / "s.pt", seed=2)
    convert_snapshot(tmp_path / "s.pt", tmp_path / "ckpt", progress=False)
    cmds = probe.collect(EndEffectorCommand, "ee_command", reliable_qos(10))
    status = probe.collect(String, "policy/status", reliable_qos(10))
    robot = FakeRobot(probe)
    policy = launch_node("drqv2_ros.nodes.policy_node", params_file=ROOT / "config/policy.yaml",
                         params={"checkpoint": str(tmp_path / "ckpt"), "max_episode_steps": 0})
    last = lambda: json.loads(status[-1][1].data) if status else {}  # noqa: E731
    try:
        wait_for(lambda: len(cmds) >= 10, 60, "commands from fresh data", [policy])
        for _, c in cmds:
            assert np.all(np.isfinite(c.delta)) and np.all(np.abs(c.delta) <= 1.0)
            assert c.header.stamp.sec > 0

        robot.images_on = False  # the camera stops delivering
        t_stop = time.time_ns()   # no image is stamped later than this until recovery
        wait_for(lambda: last().get("skipped", {}).get("stale image", 0) > 0, 10,
                 "status reporting stale images", [policy])
        # Hold the stale period until the node has really skipped ticks for it (not a fixed
        # sleep): ten more skipped ticks, ~1 s at 10 Hz, during which any command would be
        # one built from a stale frame.
        stale0 = last()["skipped"]["stale image"]
        wait_for(lambda: last().get("skipped", {}).get("stale image", 0) >= stale0 + 10, 20,
                 "ten ticks skipped for stale images", [policy])

        robot.bad_image, robot.images_on = True, True  # malformed frames: counted, dropped
        wait_for(lambda: last().get("malformed", {}).get("image", 0) > 3, 10,
                 "malformed images counted", [policy])

        t_recover = time.time_ns()  # fresh, valid data again: control resumes
        robot.bad_image = False
        n = len(cmds)
        wait_for(lambda: len(cmds) >= n + 5, 10, "commands after the camera recovered",
                 [policy])
        # Judged by the commands' own stamps (the tick time), not by when they arrived: a
        # command sent more than max_obs_age_s (0.25 s) after the last valid image, before
        # valid images returned, was built from a stale or malformed frame.
        max_age_ns = 250_000_000 + 1_000_000
        bad = [s for s in (stamp_to_ns(c.header.stamp) for _, c in cmds)
               if t_stop + max_age_ns < s < t_recover]
        assert not bad, f"{len(bad)} commands sent from stale or malformed images"
    finally:
        robot.close()
