"""so101_driver: the SO-101 arm (MuJoCo sim or Feetech bus) as a ROS 2 node.

Thin wiring: parameters -> an ``ArmController`` (``robot/arm_controller.py``: backend,
safety filter, EE tracking, homing; ROS-free) and messages -> its calls; topics and services
in README.md (so101_driver). Every command, whatever its source, goes through the safety
filter before ``write_joint_targets``.

    python -m drqv2_ros.nodes.driver_node --ros-args --params-file config/so101_driver.yaml
"""

from __future__ import annotations

import sys
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from drqv2_ros.msg import DriverStatus, EndEffectorCommand, EpisodeEvent, SimState
from drqv2_ros.nodes.common import (
    SENSOR_QOS,
    declare_parameters,
    ns_to_stamp,
    numpy_to_image,
    reliable_qos,
    stamp_to_ns,
)
from drqv2_ros.robot.backend import JOINT_NAMES, BackendError
from drqv2_ros.robot.driver_setup import (
    DriverParams,
    make_arm_controller,
    make_backend,
    make_crop,
    validate,
)
from drqv2_ros.robot.kinematics import Kinematics
from drqv2_ros.robot.safety import SafetyFilter

_U32 = 2**32 - 1
_WARN_PERIOD_S = 2.0


class DriverNode(Node):
    def __init__(self):
        super().__init__("so101_driver")
        self.p = p = declare_parameters(self, DriverParams)
        validate(p)
        self.kin = Kinematics()
        self.crop = make_crop(p)
        self.backend = make_backend(p)
        self.backend.connect()
        self.arm = make_arm_controller(p, self.backend, self.kin, warn=self._warn)
        self.camera = None

        self.pub_joints = self.create_publisher(JointState, "joint_states", SENSOR_QOS)
        self.pub_status = self.create_publisher(DriverStatus, "driver/status", reliable_qos(10))
        self.pub_sim = self.create_publisher(SimState, "sim/state", reliable_qos(10))
        self.pub_event = self.create_publisher(EpisodeEvent, "episode_event", reliable_qos(10))
        self.create_subscription(EndEffectorCommand, "ee_command", self.on_ee_command,
                                 reliable_qos(1))
        self.create_subscription(JointState, "joint_command", self.on_joint_command,
                                 reliable_qos(1))
        self.create_service(Trigger, "estop", self.on_estop)
        self.create_service(Trigger, "reset_estop", self.on_reset_estop)
        # reset_episode may wait for the real arm to reach home: its own callback group (and
        # executor thread), so the control tick keeps running meanwhile.
        self.create_service(Trigger, "reset_episode", self.on_reset_episode,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0 / p.rate_hz, self.on_tick)
        if self.backend.cameras:  # a backend that renders its own views (the sim)
            from drqv2_ros.robot.sim_backend import CameraWorker

            self.pub_raw = self.create_publisher(Image, "camera/image_raw", SENSOR_QOS)
            self.pub_policy = self.create_publisher(Image, "camera/image_policy", SENSOR_QOS)
            self.pub_extra = {cam: self.create_publisher(Image, f"camera_{cam}/image_raw",
                                                         SENSOR_QOS)
                              for cam in self.backend.cameras[1:]}
            self.camera = CameraWorker(self.backend, p.camera_rate_hz, self.backend.cameras,
                                       self.on_frames, self._now_ns)
            self.camera.start()
        self.get_logger().info(
            f"so101_driver up: backend={p.backend} rate={p.rate_hz} Hz"
            + (f" camera {p.render_width}x{p.render_height} -> {p.policy_size} at "
               f"{p.camera_rate_hz} Hz" if self.camera is not None else ""))

    # -- helpers ---------------------------------------------------------------------------
    @property
    def safety(self) -> SafetyFilter:
        return self.arm.safety

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=_WARN_PERIOD_S)

    # -- commands and services: messages -> the arm controller ----------------------------
    def on_ee_command(self, msg: EndEffectorCommand) -> None:
        self.arm.ee_command(msg.delta, msg.gripper, stamp_to_ns(msg.header.stamp),
                            self._now_ns())

    def on_joint_command(self, msg: JointState) -> None:
        self.arm.joint_command(msg.name, msg.position, stamp_to_ns(msg.header.stamp),
                               self._now_ns())

    def on_estop(self, request, response):
        self.arm.estop()
        self.get_logger().warning("E-STOP latched: holding position until reset_estop")
        response.success, response.message = True, "e-stop latched"
        return response

    def on_reset_estop(self, request, response):
        was = self.arm.reset_estop()
        response.success = True
        response.message = "e-stop cleared" if was else "e-stop was not latched"
        self.get_logger().info(response.message)
        return response

    def on_reset_episode(self, request, response):
        try:
            response.success, response.message = self.arm.reset_episode(self.p.reset_timeout_s)
        except BackendError as exc:
            response.success, response.message = False, str(exc)
        return response

    # -- timers ----------------------------------------------------------------------------
    def on_tick(self) -> None:
        if not self.context.ok():  # shutting down
            return
        if self.camera is not None and self.camera.error is not None:
            self._warn(f"sim camera stopped: {self.camera.error}")
        now = self._now_ns()
        out = self.arm.tick(now, time.monotonic())
        if out.position is not None:
            js = JointState()
            ns_to_stamp(now, js.header.stamp)
            js.name = list(JOINT_NAMES)
            js.position = out.position.tolist()
            js.velocity = out.velocity.tolist()
            self.pub_joints.publish(js)
        safety = self.arm.safety
        st = DriverStatus()
        ns_to_stamp(now, st.header.stamp)
        st.backend = self.p.backend
        st.estopped = safety.estopped
        st.holding = safety.holding
        st.commands_applied = min(safety.applied, _U32)
        st.commands_rejected = min(safety.rejected, _U32)
        st.last_reject_reason = safety.last_reject_reason
        self.pub_status.publish(st)
        if out.task_state is not None:
            self._publish_task_state(now, out.task_state)
        if out.new_success:
            ev = EpisodeEvent()
            ns_to_stamp(now, ev.header.stamp)
            ev.event = EpisodeEvent.SUCCESS
            ev.source = self.p.backend
            self.pub_event.publish(ev)

    def _publish_task_state(self, now: int, s) -> None:
        msg = SimState()
        ns_to_stamp(now, msg.header.stamp)
        msg.header.frame_id = "base"
        msg.cube_position.x, msg.cube_position.y, msg.cube_position.z = map(
            float, s.cube_position)
        msg.gripper_position.x, msg.gripper_position.y, msg.gripper_position.z = map(
            float, s.gripper_position)
        msg.gripper_opening = float(s.gripper_opening)
        msg.cube_grasped = bool(s.cube_grasped)
        msg.success = bool(s.success)
        self.pub_sim.publish(msg)

    def on_frames(self, frames: dict, stamp_ns: int) -> None:
        """Called in the camera thread (publishers are thread-safe). The first camera is
        the policy's view."""
        if not self.context.ok():
            return
        main_cam = self.backend.cameras[0]
        img = frames[main_cam]
        fid = self.p.camera_frame_id
        try:
            self.pub_policy.publish(numpy_to_image(self.crop(img), stamp_ns, fid))
            if self.pub_raw.get_subscription_count() > 0:
                self.pub_raw.publish(numpy_to_image(img, stamp_ns, fid))
            for cam, pub in self.pub_extra.items():
                if pub.get_subscription_count() > 0:
                    pub.publish(numpy_to_image(frames[cam], stamp_ns, cam))
        except Exception as exc:
            if self.context.ok():
                self._warn(f"camera publish failed: {exc}")

    def close(self) -> None:
        if self.camera is not None:
            self.camera.stop()
            self.camera = None
        self.backend.close()


def main(args: list[str] | None = None) -> int:
    from drqv2_ros.nodes.common import run_node

    return run_node(DriverNode, args, threads=2)


if __name__ == "__main__":
    sys.exit(main())
