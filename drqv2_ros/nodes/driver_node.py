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
from dataclasses import dataclass

import numpy as np
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
    param,
    reliable_qos,
    stamp_to_ns,
)
from drqv2_ros.observation.preprocessing import CropResize
from drqv2_ros.robot.arm_controller import ArmController
from drqv2_ros.robot.backend import JOINT_NAMES, NUM_JOINTS, ArmBackend, BackendError
from drqv2_ros.robot.homing import Homing
from drqv2_ros.robot.kinematics import EeTargetTracker, Kinematics, TopDown
from drqv2_ros.robot.safety import SafetyFilter, SafetyLimits

_U32 = 2**32 - 1
_WARN_PERIOD_S = 2.0


@dataclass
class DriverParams:
    backend: str = param("sim", "Arm backend: 'sim' (MuJoCo pick-cube world) or 'feetech' "
                         "(real SO-101 follower through LeRobot's Feetech bus).")
    rate_hz: float = param(50.0, "Control tick: joint_states, driver/status, sim/state "
                           "publication, watchdog check, sim physics stepping (Hz).")
    ee_step_m: float = param(0.02, "Metres of gripper-site motion per unit of "
                             "EndEffectorCommand.delta (pick-101: 0.02).")
    ee_max_lead_m: float = param(0.03, "EE deltas accumulate on the previous EE target while "
                                 "it is within this distance (m) of the measured gripper "
                                 "site; beyond it, or after a hold, they restart from the "
                                 "measured site.")
    ik_top_down_weight: float = param(0.05, "EE commands: weight (m of position error per "
                                      "rad of tilt) of the IK task that turns the "
                                      "gripper's approach axis straight down (as far as "
                                      "reachable; position is matched after it); 0: "
                                      "position-only IK.")
    ik_wrist_roll: float = param(1.5708, "EE commands with the top-down task: wrist_roll "
                                 "target (rad; pi/2: jaws open horizontally, as pick-101 "
                                 "grasps); NaN: free.")
    workspace_min: list = param([0.1, -0.3, 0.01], "EE target clamp, lower corner x, y, z "
                                "(m, base frame).")
    workspace_max: list = param([0.5, 0.3, 0.4], "EE target clamp, upper corner x, y, z "
                                "(m, base frame).")
    joint_margin_rad: float = param(0.02, "Joint targets stay this far (rad) inside the "
                                    "MJCF joint limits.")
    max_relative_target_rad: float = param(0.25, "Per-command clamp of each joint target "
                                           "around the measured position (rad).")
    watchdog_timeout_s: float = param(0.5, "No accepted command for this long (s): hold "
                                      "the current position.")
    max_command_age_s: float = param(0.3, "Commands whose header stamp is older (or newer) "
                                     "than this (s) are refused as stale.")
    camera_rate_hz: float = param(10.0, "Sim camera render + publish rate (Hz).")
    render_width: int = param(640, "Sim camera render width (px); pick-101 renders 640.")
    render_height: int = param(480, "Sim camera render height (px); pick-101 renders 480.")
    policy_size: int = param(84, "camera/image_policy side (px): crop then INTER_AREA resize.")
    crop_box: list = param([0, 0, 0, 0], "Crop x, y, width, height (px) before the policy "
                           "resize; all zeros: centre square.")
    front_camera: bool = param(False, "Sim: also render the fixed 'front' camera to "
                               "camera_front/image_raw.")
    camera_frame_id: str = param("wrist_camera", "frame_id of the published images.")
    seed: int = param(0, "Sim RNG seed (cube placement); episodes draw from one stream.")
    reset_timeout_s: float = param(15.0, "Real arm: reset_episode fails if home is not "
                                   "reached within this time (s).")
    home_tolerance_rad: float = param(0.05, "Real arm: home is reached when every arm joint "
                                      "is this close (rad).")
    home_position: list = param([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Home joint positions "
                                "(rad, JOINT_NAMES order) at every episode reset.")
    cube_xy_min: list = param([0.37, -0.13], "Sim cube placement box, lower x, y (m).")
    cube_xy_max: list = param([0.43, -0.07], "Sim cube placement box, upper x, y (m).")
    cube_half_size_m: float = param(0.015, "Sim cube half edge (m); pick-101: 3 cm cube.")
    jaw_pads: bool = param(True, "Sim: enable the fingertip contact pads of the MJCF.")
    actuator_kp: float = param(998.22, "Sim position-actuator stiffness (pick-101's servo "
                               "model); <= 0 keeps the MJCF's kp 17.8.")
    actuator_kv: float = param(2.731, "Sim position-actuator damping (with actuator_kp).")
    lift_height_m: float = param(0.08, "Sim success: cube grasped above this height (m) ...")
    success_hold_steps: int = param(10, "... for this many consecutive control ticks.")
    feetech_port: str = param("/dev/ttyACM0", "Feetech: serial port of the follower arm.")
    feetech_robot_id: str = param("so101_follower", "Feetech: LeRobot robot id (selects "
                                  "the calibration file).")
    feetech_calibration_dir: str = param("", "Feetech: calibration folder; empty: LeRobot's "
                                         "default.")


def make_backend(p: DriverParams) -> ArmBackend:
    if p.backend == "sim":
        from drqv2_ros.robot.sim_backend import SimBackend
        from drqv2_ros.robot.sim_world import FRONT_CAMERA, WRIST_CAMERA, SimConfig

        cams = (WRIST_CAMERA, FRONT_CAMERA) if p.front_camera else (WRIST_CAMERA,)
        return SimBackend(SimConfig(
            seed=p.seed, home_position=tuple(p.home_position),
            cube_xy_min=tuple(p.cube_xy_min), cube_xy_max=tuple(p.cube_xy_max),
            cube_half_size_m=p.cube_half_size_m, jaw_pads=p.jaw_pads,
            actuator_kp=p.actuator_kp, actuator_kv=p.actuator_kv,
            render_width=p.render_width, render_height=p.render_height,
            lift_height_m=p.lift_height_m, success_hold_steps=p.success_hold_steps),
            cameras=cams)
    if p.backend == "feetech":
        try:  # lazy: the sim needs neither lerobot nor a serial port
            from drqv2_ros.robot.feetech_backend import FeetechBackend, FeetechConfig
        except ImportError as exc:
            raise BackendError(f"backend 'feetech' unavailable ({exc}); install the feetech "
                               "extra and lerobot (see README)") from exc
        return FeetechBackend(FeetechConfig(
            port=p.feetech_port, robot_id=p.feetech_robot_id,
            calibration_dir=p.feetech_calibration_dir or None,
            max_relative_target_rad=p.max_relative_target_rad))
    raise BackendError(f"unknown backend {p.backend!r}: use 'sim' or 'feetech'")


def validate(p: DriverParams) -> None:
    errors = []
    for name in ("rate_hz", "camera_rate_hz", "ee_step_m", "watchdog_timeout_s",
                 "max_command_age_s", "max_relative_target_rad"):
        if not getattr(p, name) > 0:
            errors.append(f"{name} must be > 0")
    if not p.ik_top_down_weight >= 0:
        errors.append("ik_top_down_weight must be >= 0")
    if len(p.workspace_min) != 3 or len(p.workspace_max) != 3:
        errors.append("workspace_min/workspace_max need 3 values")
    if len(p.crop_box) != 4:
        errors.append("crop_box needs 4 values (x, y, width, height)")
    if len(p.home_position) != NUM_JOINTS:
        errors.append(f"home_position needs {NUM_JOINTS} values")
    if p.policy_size <= 0 or p.render_width <= 0 or p.render_height <= 0:
        errors.append("policy_size, render_width, render_height must be > 0")
    if errors:
        raise ValueError("bad parameters: " + "; ".join(errors))


class DriverNode(Node):
    def __init__(self):
        super().__init__("so101_driver")
        self.p = p = declare_parameters(self, DriverParams)
        validate(p)
        self.kin = Kinematics()
        workspace = (tuple(p.workspace_min), tuple(p.workspace_max))
        safety = SafetyFilter(SafetyLimits.from_kinematics(
            self.kin, joint_margin_rad=p.joint_margin_rad,
            max_relative_target=p.max_relative_target_rad,
            watchdog_timeout_s=p.watchdog_timeout_s, max_command_age_s=p.max_command_age_s,
            workspace_min=workspace[0], workspace_max=workspace[1]))
        top_down = TopDown(weight=p.ik_top_down_weight,
                           wrist_roll=None if np.isnan(p.ik_wrist_roll) else p.ik_wrist_roll)
        tracker = EeTargetTracker(self.kin, p.ee_step_m, workspace, p.ee_max_lead_m,
                                  top_down=top_down if top_down.enabled else None)
        self.crop = CropResize(p.policy_size, None if not any(p.crop_box) else
                               tuple(int(v) for v in p.crop_box))
        self.backend = make_backend(p)
        self.backend.connect()
        self.arm = ArmController(self.backend, safety, tracker,
                                 Homing(np.asarray(p.home_position, dtype=np.float64),
                                        p.home_tolerance_rad), warn=self._warn)
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
