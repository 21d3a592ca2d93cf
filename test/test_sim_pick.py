"""The scripted operator completes the pick in the real MuJoCo sim, in-process (no DDS):
SimBackend stepped on a synthetic clock like the driver's 50 Hz tick, the operator at its
20 Hz Joy rate, EE commands at the policy node's 10 Hz through EeTargetTracker (with the
driver's default top-down IK task) and the safety filter's clamp. No rendering."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("mujoco")

from drqv2_ros.robot.kinematics import EeTargetTracker, Kinematics, TopDown
from drqv2_ros.robot.safety import SafetyFilter, SafetyLimits
from drqv2_ros.teleop.scripted_operator import (
    LIFT,
    OperatorConfig,
    ScriptedOperator,
    SimStateData,
)

try:
    from drqv2_ros.robot.kinematics import asset_dir

    asset_dir()
except FileNotFoundError as exc:  # pragma: no cover - sim extra not installed
    pytest.skip(str(exc), allow_module_level=True)

from drqv2_ros.robot.sim_backend import SimBackend
from drqv2_ros.robot.sim_world import SimConfig

CLOCK_S = 0.01        # base clock: driver tick every 2, Joy every 5, command every 10
DRIVER_EVERY, JOY_EVERY, COMMAND_EVERY = 2, 5, 10
MAX_STEPS = 100       # the policy node's default max_episode_steps at 10 Hz
#: the whole turn in one solve (the driver's default turns 0.1 rad per command)
ONE_SHOT = TopDown(max_turn_rad=np.pi, max_joint_step_rad=np.pi)


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def pick_episode(kin: Kinematics, seed: int, top_down: TopDown | None = None):
    """One episode; returns (success, seconds to success or None, phases seen,
    max cube z)."""
    backend = SimBackend(SimConfig(seed=seed))
    backend.connect()
    safety = SafetyFilter(SafetyLimits.from_kinematics(kin))
    tracker = EeTargetTracker(kin, top_down=top_down or TopDown())
    op = ScriptedOperator(OperatorConfig())
    op.new_episode(0.0)
    phases: list[str] = []
    action = None
    max_z = 0.0
    try:
        backend.advance(0.0)
        for k in range(MAX_STEPS * COMMAND_EVERY):
            t = k * CLOCK_S
            if k % JOY_EVERY == 0:
                s = backend.task_state()
                max_z = max(max_z, float(s.cube_position[2]))
                if s.success:
                    return True, t, phases, max_z
                out = op.tick(SimStateData(s.cube_position, s.gripper_position,
                                           s.gripper_opening, s.cube_grasped, s.success), t)
                assert out.intervene
                action = out.action
                if not phases or phases[-1] != out.phase:
                    phases.append(out.phase)
            if k % COMMAND_EVERY == 0:
                q, _ = backend.read_joints()
                target = tracker(q, action[:3].astype(np.float64), float(action[3]))
                backend.write_joint_targets(safety.apply(target, q, int(t * 1e9)))
            if k % DRIVER_EVERY == 0:
                backend.advance(t)
        return False, None, phases, max_z
    finally:
        backend.close()


def test_scripted_operator_picks_the_cube_in_sim(kin):
    t0 = time.perf_counter()
    results = [pick_episode(kin, seed) for seed in (0, 1, 2)]
    wall = time.perf_counter() - t0
    ok = [r[0] for r in results]
    print(f"\nsim picks: {sum(ok)}/3 succeeded, sim time to success "
          f"{[r[1] for r in results]}, wall {wall:.1f} s")
    assert sum(ok) >= 2, [(r[0], r[2], round(r[3], 3)) for r in results]
    for success, _, phases, max_z in results:
        if success:
            assert LIFT in phases and max_z > 0.08


def test_top_down_ik_keeps_position_semantics_and_points_down(kin):
    """The orientation task never costs position accuracy where the target is reachable,
    and turns the gripper much further down than position-only IK from the home pose."""
    q = np.zeros(6)
    for target in ([0.40, -0.10, 0.08], [0.40, -0.10, 0.02], [0.30, 0.05, 0.05]):
        plain = kin.solve(q, target)
        down = kin.solve(q, target, top_down=ONE_SHOT)
        assert down.error_m < 5e-4 and plain.error_m < 5e-4
        assert down.tilt_rad < plain.tilt_rad - np.radians(25)
        assert np.all(down.q >= kin.lower - 1e-9) and np.all(down.q <= kin.upper + 1e-9)
    # the SO-101 reaches straight down close to the base
    assert kin.solve(q, [0.25, 0.0, 0.1], top_down=ONE_SHOT).tilt_rad < np.radians(10)


def test_wrist_camera_sits_where_pick101_mounts_it():
    """Images from the sim must be the ones pick-101 checkpoints saw: the camera on the
    ``gripper`` body at pick-101's mount (its so101_new_calib.xml: pos (0, -0.055, 0.02),
    euler (0, 0, pi), fovy 75), and the kinematic chain to that body as pick-101's model
    has it (numbers from that file; pick-101's wrapper neither flips nor rotates images)."""
    from drqv2_ros.robot.sim_world import WRIST_CAMERA, SimConfig, SimWorld

    world = SimWorld(SimConfig())
    m = world.model
    world.close()
    cam = m.camera(WRIST_CAMERA)
    assert m.body(int(m.cam_bodyid[cam.id])).name == "gripper"
    np.testing.assert_allclose(cam.pos, [0.0, -0.055, 0.02], atol=1e-9)
    q = np.asarray(cam.quat) * np.sign(cam.quat[3])   # euler (0, 0, pi): (0, 0, 0, 1)
    np.testing.assert_allclose(q, [0.0, 0.0, 0.0, 1.0], atol=1e-5)
    assert m.cam_fovy[cam.id] == pytest.approx(75.0)
    chain = {  # body: (pos, quat) in its parent, pick-101's so101_new_calib.xml
        "gripper": ([0.0, -0.0611, 0.0181], [0.0172091, -0.0172091, 0.706897, 0.706897]),
        "wrist": ([-0.1349, 0.0052, 0.0], [0.707107, 0.0, 0.0, -0.707107]),
        "lower_arm": ([-0.11257, -0.028, 0.0], [0.707107, 0.0, 0.0, 0.707107]),
    }
    for name, (pos, quat) in chain.items():
        np.testing.assert_allclose(m.body(name).pos, pos, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(m.body(name).quat, quat, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(m.joint("elbow_flex").range, [-1.69, 1.69], atol=1e-6)
