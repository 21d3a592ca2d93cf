"""The SO-101 driver's settings and how they become an arm (ROS-free).

``DriverParams`` are the ``so101_driver`` node's parameters (``config/so101_driver.yaml``);
:func:`make_backend`, :func:`make_arm_controller` and :func:`make_crop` build what the node
wires to topics, and what ``drqv2-ros sim-train`` drives in-process: one construction of the
safety filter, EE tracker and homing for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drqv2_ros.observation.preprocessing import CropResize
from drqv2_ros.robot.arm_controller import ArmController
from drqv2_ros.robot.backend import NUM_JOINTS, ArmBackend, BackendError
from drqv2_ros.robot.homing import Homing
from drqv2_ros.robot.kinematics import EeTargetTracker, Kinematics, TopDown
from drqv2_ros.robot.safety import SafetyFilter, SafetyLimits
from drqv2_ros.settings import param


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
    home_position: list = param([0.4043, 0.033, -0.5888, 1.6412, 0.6672, 1.7453],
                                "Home joint positions (rad, JOINT_NAMES order) at every "
                                "episode reset; the default is the 'wrist_view' start pose "
                                "(cube in the wrist image from step 0), pick-101's is all "
                                "zeros.")
    cube_xy_min: list = param([0.37, -0.13], "Sim cube placement box, lower x, y (m).")
    cube_xy_max: list = param([0.43, -0.07], "Sim cube placement box, upper x, y (m).")
    cube_half_size_m: float = param(0.015, "Sim cube half edge (m); pick-101: 3 cm cube.")
    jaw_pads: bool = param(True, "Sim: enable the fingertip contact pads of the MJCF.")
    actuator_kp: float = param(998.22, "Sim position-actuator stiffness (pick-101's servo "
                               "model); <= 0 keeps the MJCF's kp 17.8.")
    actuator_kv: float = param(2.731, "Sim position-actuator damping (with actuator_kp).")
    lift_height_m: float = param(0.08, "Sim success: cube grasped above this height (m) ...")
    success_hold_steps: int = param(10, "... for this many consecutive control ticks.")
    sim_shift: str = param("none", "Sim: sim-to-real proxy, a preset (none, real_proxy) or "
                           "a YAML file of SimShift fields (robot/sim_shift.py).")
    sim_render: str = param("pick101", "Sim: what the wrist camera draws: pick101 (every "
                            "mesh), wrist_only (same image, faster), fast (reduced meshes).")
    feetech_port: str = param("/dev/ttyACM0", "Feetech: serial port of the follower arm.")
    feetech_robot_id: str = param("so101_follower", "Feetech: LeRobot robot id (selects "
                                  "the calibration file).")
    feetech_calibration_dir: str = param("", "Feetech: calibration folder; empty: LeRobot's "
                                         "default.")


def sim_config(p: DriverParams, **overrides):
    """The MuJoCo world of ``p`` (``overrides``: further ``SimConfig`` fields, e.g. the
    render or a shift)."""
    from drqv2_ros.robot.sim_world import SimConfig

    return SimConfig(
        seed=p.seed, home_position=tuple(p.home_position),
        cube_xy_min=tuple(p.cube_xy_min), cube_xy_max=tuple(p.cube_xy_max),
        cube_half_size_m=p.cube_half_size_m, jaw_pads=p.jaw_pads,
        actuator_kp=p.actuator_kp, actuator_kv=p.actuator_kv,
        render_width=p.render_width, render_height=p.render_height,
        lift_height_m=p.lift_height_m, success_hold_steps=p.success_hold_steps,
        **{"shift": p.sim_shift, "render": p.sim_render, **overrides})


def make_backend(p: DriverParams) -> ArmBackend:
    if p.backend == "sim":
        from drqv2_ros.robot.sim_backend import SimBackend
        from drqv2_ros.robot.sim_world import FRONT_CAMERA, WRIST_CAMERA

        cams = (WRIST_CAMERA, FRONT_CAMERA) if p.front_camera else (WRIST_CAMERA,)
        return SimBackend(sim_config(p), cameras=cams)
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
    if p.backend == "sim":
        from drqv2_ros.robot.sim_shift import shift_named
        from drqv2_ros.robot.sim_world import RENDERS

        try:
            shift_named(p.sim_shift)
        except ValueError as exc:
            errors.append(f"sim_shift: {exc}")
        if p.sim_render not in RENDERS:
            errors.append(f"sim_render must be one of {RENDERS}")
    if errors:
        raise ValueError("bad parameters: " + "; ".join(errors))


def make_arm_controller(p: DriverParams, backend: ArmBackend, kin: Kinematics, *,
                        warn: Callable[[str], None] = lambda text: None) -> ArmController:
    """The safety filter, EE tracker and homing of ``p`` around a connected ``backend``."""
    workspace = (tuple(p.workspace_min), tuple(p.workspace_max))
    safety = SafetyFilter(SafetyLimits.from_kinematics(
        kin, joint_margin_rad=p.joint_margin_rad,
        max_relative_target=p.max_relative_target_rad,
        watchdog_timeout_s=p.watchdog_timeout_s, max_command_age_s=p.max_command_age_s,
        workspace_min=workspace[0], workspace_max=workspace[1]))
    top_down = TopDown(weight=p.ik_top_down_weight,
                       wrist_roll=None if np.isnan(p.ik_wrist_roll) else p.ik_wrist_roll)
    tracker = EeTargetTracker(kin, p.ee_step_m, workspace, p.ee_max_lead_m,
                              top_down=top_down if top_down.enabled else None)
    return ArmController(backend, safety, tracker,
                         Homing(np.asarray(p.home_position, dtype=np.float64),
                                p.home_tolerance_rad), warn=warn)


def make_crop(p: DriverParams) -> CropResize:
    """camera/image_policy from a rendered or captured frame: crop, then resize."""
    return CropResize(p.policy_size, None if not any(p.crop_box) else
                      tuple(int(v) for v in p.crop_box))
