"""so101_driver: the SO-101 arm (MuJoCo sim or Feetech bus) as a ROS 2 node.

Thin wiring: parameters -> ``Kinematics`` + ``SafetyFilter`` + an ``ArmBackend``; topics and
services in README.md (so101_driver). Every command, whatever its source, goes through the safety
filter before ``write_joint_targets``.

    python -m drqv2_ros.nodes.driver_node --ros-args --params-file config/so101_driver.yaml
"""

from __future__ import annotations

import sys
import threading
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
        from drqv2_ros.robot.sim_world import SimConfig

        return SimBackend(SimConfig(
            seed=p.seed, home_position=tuple(p.home_position),
            cube_xy_min=tuple(p.cube_xy_min), cube_xy_max=tuple(p.cube_xy_max),
            cube_half_size_m=p.cube_half_size_m, jaw_pads=p.jaw_pads,
            actuator_kp=p.actuator_kp, actuator_kv=p.actuator_kv,
            render_width=p.render_width, render_height=p.render_height,
            lift_height_m=p.lift_height_m, success_hold_steps=p.success_hold_steps))
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
        self.safety = SafetyFilter(SafetyLimits.from_kinematics(
            self.kin, joint_margin_rad=p.joint_margin_rad,
            max_relative_target=p.max_relative_target_rad,
            watchdog_timeout_s=p.watchdog_timeout_s, max_command_age_s=p.max_command_age_s,
            workspace_min=workspace[0], workspace_max=workspace[1]))
        top_down = TopDown(weight=p.ik_top_down_weight,
                           wrist_roll=None if np.isnan(p.ik_wrist_roll) else p.ik_wrist_roll)
        self.tracker = EeTargetTracker(self.kin, p.ee_step_m, workspace, p.ee_max_lead_m,
                                       top_down=top_down if top_down.enabled else None)
        self.crop = CropResize(p.policy_size, None if not any(p.crop_box) else
                               tuple(int(v) for v in p.crop_box))
        self.backend = make_backend(p)
        self.backend.connect()
        self.is_sim = p.backend == "sim"
        self.camera = None
        self._q: np.ndarray | None = None
        self._success_sent = False
        self.read_errors = 0

        self.pub_joints = self.create_publisher(JointState, "joint_states", SENSOR_QOS)
        self.pub_status = self.create_publisher(DriverStatus, "driver/status", reliable_qos(10))
        self.create_subscription(EndEffectorCommand, "ee_command", self.on_ee_command,
                                 reliable_qos(1))
        self.create_subscription(JointState, "joint_command", self.on_joint_command,
                                 reliable_qos(1))
        self.create_service(Trigger, "estop", self.on_estop)
        self.create_service(Trigger, "reset_estop", self.on_reset_estop)
        # reset_episode waits for the real arm to reach home: its own callback group (and
        # executor thread), so the control tick keeps running meanwhile.
        self.create_service(Trigger, "reset_episode", self.on_reset_episode,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self._homing = threading.Event()
        self.homing = Homing(np.asarray(p.home_position, dtype=np.float64),
                             p.home_tolerance_rad)
        self.create_timer(1.0 / p.rate_hz, self.on_tick)
        if self.is_sim:
            self.pub_raw = self.create_publisher(Image, "camera/image_raw", SENSOR_QOS)
            self.pub_policy = self.create_publisher(Image, "camera/image_policy", SENSOR_QOS)
            self.pub_front = (self.create_publisher(Image, "camera_front/image_raw",
                                                    SENSOR_QOS) if p.front_camera else None)
            self.pub_sim = self.create_publisher(SimState, "sim/state", reliable_qos(10))
            self.pub_event = self.create_publisher(EpisodeEvent, "episode_event",
                                                   reliable_qos(10))
            from drqv2_ros.robot.sim_backend import CameraWorker
            from drqv2_ros.robot.sim_world import FRONT_CAMERA, WRIST_CAMERA

            cams = (WRIST_CAMERA, FRONT_CAMERA) if p.front_camera else (WRIST_CAMERA,)
            self.camera = CameraWorker(self.backend, p.camera_rate_hz, cams, self.on_frames,
                                       self._now_ns)
            self.camera.start()
        self.get_logger().info(
            f"so101_driver up: backend={p.backend} rate={p.rate_hz} Hz"
            + (f" camera {p.render_width}x{p.render_height} -> {p.policy_size} at "
               f"{p.camera_rate_hz} Hz" if self.is_sim else ""))

    # -- helpers ---------------------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=_WARN_PERIOD_S)

    def _refused(self) -> None:
        self._warn(f"command refused ({self.safety.rejected} so far): "
                   f"{self.safety.last_reject_reason}")

    def _read(self) -> np.ndarray | None:
        try:
            q, v = self.backend.read_joints()
        except BackendError as exc:
            self.read_errors += 1
            self._warn(f"joint read failed: {exc}")
            return None
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (NUM_JOINTS,) or not np.all(np.isfinite(q)):
            self.read_errors += 1
            self._warn(f"joint read not finite: {q}")
            return None
        self._q, self._v = q, np.asarray(v, dtype=np.float64)
        return q

    def _write(self, target: np.ndarray | None) -> None:
        if target is None:
            return
        try:
            self.backend.write_joint_targets(target)
        except BackendError as exc:
            self._warn(f"joint write failed: {exc}")

    # -- commands --------------------------------------------------------------------------
    def on_ee_command(self, msg: EndEffectorCommand) -> None:
        now = self._now_ns()
        if self._homing.is_set():
            self.safety.reject("homing for an episode reset")
            return self._refused()
        if not self.safety.check_ee(msg.delta, msg.gripper, stamp_to_ns(msg.header.stamp), now):
            return self._refused()
        q = self._read()
        if q is None:
            self.safety.reject("no valid joint measurement")
            return self._refused()
        try:
            q_target = self.tracker(q, np.asarray(msg.delta, dtype=np.float64),
                                    float(msg.gripper))
        except ValueError as exc:
            self.safety.reject(f"ik: {exc}")
            return self._refused()
        self._write(self.safety.apply(q_target, q, now))

    def on_joint_command(self, msg: JointState) -> None:
        now = self._now_ns()
        if self._homing.is_set():
            self.safety.reject("homing for an episode reset")
            return self._refused()
        positions = np.asarray(msg.position, dtype=np.float64)
        names = list(msg.name)
        if names:
            if sorted(names) != sorted(JOINT_NAMES) or len(names) != len(positions):
                self.safety.reject(f"malformed: joint_command names {names} must be exactly "
                                   f"{list(JOINT_NAMES)} with one position each")
                return self._refused()
            positions = positions[[names.index(n) for n in JOINT_NAMES]]
        if not self.safety.check_joints(positions, stamp_to_ns(msg.header.stamp), now):
            return self._refused()
        q = self._read()
        if q is None:
            self.safety.reject("no valid joint measurement")
            return self._refused()
        self.tracker.reset()
        self._write(self.safety.apply(positions, q, now))

    # -- services --------------------------------------------------------------------------
    def on_estop(self, request, response):
        q = self._read()
        self._write(self.safety.estop(q if q is not None else self._q))
        self.tracker.reset()
        self.get_logger().warning("E-STOP latched: holding position until reset_estop")
        response.success, response.message = True, "e-stop latched"
        return response

    def on_reset_estop(self, request, response):
        was = self.safety.reset_estop()
        self.tracker.reset()
        response.success = True
        response.message = "e-stop cleared" if was else "e-stop was not latched"
        self.get_logger().info(response.message)
        return response

    def on_reset_episode(self, request, response):
        if not self.is_sim:
            return self._home(response)
        self.backend.reset_episode()
        self.safety.forget_target()
        self.tracker.reset()
        self._success_sent = False
        response.success = True
        response.message = f"episode {self.backend.world.episode} started"
        return response

    def _home(self, response):
        """Real arm: drive to `home_position` through the safety filter (per-step clamp),
        answer once there. The scene itself is reset by the operator."""
        self.tracker.reset()
        self._homing.set()
        deadline = time.monotonic() + self.p.reset_timeout_s
        while self._homing.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._homing.is_set():
            self._homing.clear()
            response.success = False
            response.message = (f"arm did not reach home within {self.p.reset_timeout_s:.0f} s "
                                f"({self.safety.last_reject_reason or 'blocked'})")
        else:
            self.safety.forget_target()
            response.success = True
            response.message = "arm at home; reset the scene by hand"
        return response

    def _homing_step(self, q: np.ndarray, now: int) -> None:
        target = self.homing.step(q, self.safety, now)
        if target is None and self.homing.reached(q):
            self._homing.clear()
        self._write(target)

    # -- timers ----------------------------------------------------------------------------
    def on_tick(self) -> None:
        if not self.context.ok():  # shutting down
            return
        if self.is_sim:
            self.backend.advance(time.monotonic())
            if self.camera is not None and self.camera.error is not None:
                self._warn(f"sim camera stopped: {self.camera.error}")
        now = self._now_ns()
        q = self._read()
        if q is not None and self._homing.is_set():
            self._homing_step(q, now)
        if q is not None:
            hold = self.safety.tick(now, q)
            if hold is not None:
                self.tracker.reset()
                self._warn("watchdog: no fresh command, holding position")
                self._write(hold)
            js = JointState()
            ns_to_stamp(now, js.header.stamp)
            js.name = list(JOINT_NAMES)
            js.position = q.tolist()
            js.velocity = self._v.tolist()
            self.pub_joints.publish(js)
        st = DriverStatus()
        ns_to_stamp(now, st.header.stamp)
        st.backend = self.p.backend
        st.estopped = self.safety.estopped
        st.holding = self.safety.holding
        st.commands_applied = min(self.safety.applied, _U32)
        st.commands_rejected = min(self.safety.rejected, _U32)
        st.last_reject_reason = self.safety.last_reject_reason
        self.pub_status.publish(st)
        if self.is_sim:
            self._publish_sim_state(now)

    def _publish_sim_state(self, now: int) -> None:
        s = self.backend.task_state()
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
        if s.success and not self._success_sent:
            self._success_sent = True
            ev = EpisodeEvent()
            ns_to_stamp(now, ev.header.stamp)
            ev.event = EpisodeEvent.SUCCESS
            ev.source = "sim"
            self.pub_event.publish(ev)

    def on_frames(self, frames: dict, stamp_ns: int) -> None:
        """Called in the camera thread (publishers are thread-safe)."""
        from drqv2_ros.robot.sim_world import FRONT_CAMERA, WRIST_CAMERA

        if not self.context.ok():
            return
        img = frames[WRIST_CAMERA]
        fid = self.p.camera_frame_id
        try:
            self.pub_policy.publish(numpy_to_image(self.crop(img), stamp_ns, fid))
            if self.pub_raw.get_subscription_count() > 0:
                self.pub_raw.publish(numpy_to_image(img, stamp_ns, fid))
            if self.pub_front is not None and self.pub_front.get_subscription_count() > 0:
                self.pub_front.publish(numpy_to_image(frames[FRONT_CAMERA], stamp_ns,
                                                      FRONT_CAMERA))
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
