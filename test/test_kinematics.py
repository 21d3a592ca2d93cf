"""Kinematics on the SO-101 MJCF: FK/IK round trip, unreachable targets, gripper mapping."""

import numpy as np
import pytest

pytest.importorskip("mujoco")

from drqv2_ros.robot.kinematics import (
    GRIPPER_INDEX,
    WORKSPACE_MAX,
    WORKSPACE_MIN,
    EeTargetTracker,
    Kinematics,
    TopDown,
    rotation_to_euler,
)


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def test_fk_home_matches_mjcf(kin):
    xyz = kin.fk(np.zeros(6))
    assert xyz.shape == (3,)
    # All joints at 0: the arm points forward (+x) in the base frame, above the table.
    assert 0.3 < xyz[0] < 0.45 and abs(xyz[1]) < 1e-3 and 0.15 < xyz[2] < 0.3
    assert np.all(np.isfinite(kin.gripper_euler(np.zeros(6))))


def test_ik_round_trip_random_configs(kin):
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(200):
        q = rng.uniform(kin.lower + 0.1, kin.upper - 0.1)
        target = kin.fk(q)
        seed = np.clip(q + rng.uniform(-0.2, 0.2, 6), kin.lower, kin.upper)
        q_ik = kin.ik(seed, target)
        assert np.all(q_ik >= kin.lower - 1e-9) and np.all(q_ik <= kin.upper + 1e-9)
        errors.append(np.linalg.norm(kin.fk(q_ik) - target))
        assert q_ik[GRIPPER_INDEX] == pytest.approx(seed[GRIPPER_INDEX])
    assert max(errors) < 1e-3, f"max IK error {max(errors) * 1e3:.3f} mm"


def test_ik_small_steps_from_home_inside_workspace(kin):
    q = np.zeros(6)
    for delta in ([1, 0, 0], [0, 1, 0], [0, 0, -1], [-1, -1, 1]):
        target = kin.fk(q) + 0.02 * np.asarray(delta, float)
        assert np.linalg.norm(kin.fk(kin.ik(q, target)) - target) < 5e-4


@pytest.mark.parametrize("target", [[2.0, 0.0, 0.2], [0.0, 0.0, -1.0], [0.0, 0.0, 5.0],
                                    [-0.5, 0.5, 0.0]])
def test_unreachable_targets_are_clamped_and_finite(kin, target):
    res = kin.solve(np.zeros(6), target)
    assert np.all(np.isfinite(res.q))
    assert np.all(res.q >= kin.lower - 1e-9) and np.all(res.q <= kin.upper + 1e-9)
    # never further than where it started: the nearest point found
    assert res.error_m <= np.linalg.norm(kin.fk(np.zeros(6)) - target) + 1e-9


def test_ik_rejects_nan(kin):
    with pytest.raises(ValueError):
        kin.ik(np.zeros(6), [np.nan, 0, 0])
    with pytest.raises(ValueError):
        kin.ik(np.full(6, np.nan), [0.3, 0, 0.2])


def test_gripper_mapping_plus_one_is_open(kin):
    lo, hi = kin.lower[GRIPPER_INDEX], kin.upper[GRIPPER_INDEX]
    assert kin.gripper_action_to_joint(1.0) == pytest.approx(hi)     # open
    assert kin.gripper_action_to_joint(-1.0) == pytest.approx(lo)    # closed
    assert kin.gripper_action_to_joint(5.0) == pytest.approx(hi)     # clipped
    for a in (-1.0, -0.3, 0.0, 0.7, 1.0):
        assert kin.gripper_joint_to_action(kin.gripper_action_to_joint(a)) == pytest.approx(a)


def test_ee_delta_semantics_and_workspace_clamp(kin):
    q = np.zeros(6)
    site = kin.fk(q)
    q_t, target = kin.ee_delta_to_joint_targets(q, [0.5, -1.0, 2.0], 1.0)
    np.testing.assert_allclose(target, site + 0.02 * np.array([0.5, -1.0, 1.0]), atol=1e-12)
    assert np.linalg.norm(kin.fk(q_t) - target) < 5e-4
    assert q_t[GRIPPER_INDEX] == pytest.approx(kin.upper[GRIPPER_INDEX])
    # base far outside the box: the target is clamped into it
    _, target = kin.ee_delta_to_joint_targets(q, [0, 0, -1], -1.0, base_xyz=[0.9, 0.9, 0.0])
    np.testing.assert_allclose(target, [WORKSPACE_MAX[0], WORKSPACE_MAX[1], WORKSPACE_MIN[2]])
    with pytest.raises(ValueError):
        kin.ee_delta_to_joint_targets(q, [np.nan, 0, 0], 0.0)


def test_tracker_accumulates_and_reanchors(kin):
    tr = EeTargetTracker(kin, max_lead_m=0.03)
    q = np.zeros(6)
    site = kin.fk(q)
    tr(q, [1, 0, 0], 0.0)
    tr(q, [1, 0, 0], 0.0)     # arm has not moved, lead 0.02 <= 0.03: accumulates
    np.testing.assert_allclose(tr.target, site + [0.04, 0, 0], atol=1e-12)
    tr(q, [1, 0, 0], 0.0)     # lead 0.04 > max: restart from the measured site
    np.testing.assert_allclose(tr.target, site + [0.02, 0, 0], atol=1e-12)
    tr.reset()
    tr(q, [0, 0, 0], 0.0)
    np.testing.assert_allclose(tr.target, site, atol=1e-12)


def test_rotation_to_euler_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        r, p, y = rng.uniform(-1.4, 1.4, 3)
        cx, sx, cy, sy, cz, sz = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        np.testing.assert_allclose(rotation_to_euler(rz @ ry @ rx), [r, p, y], atol=1e-9)


def test_top_down_task_keeps_ee_delta_semantics(kin):
    """With the orientation task the EE target is the same and is reached exactly; the
    gripper turns down over successive commands (home points forward, tilt 90 deg)."""
    tr = EeTargetTracker(kin, top_down=TopDown())
    q = np.zeros(6)
    site = kin.fk(q)
    q_t = tr(q, [0, 0, -1], 1.0)
    assert kin.approach_tilt(q_t) < kin.approach_tilt(q) - 0.05
    np.testing.assert_allclose(tr.target, site + [0, 0, -0.02], atol=1e-12)
    assert np.linalg.norm(kin.fk(q_t) - tr.target) < 5e-4
    assert q_t[GRIPPER_INDEX] == pytest.approx(kin.upper[GRIPPER_INDEX])
    td = TopDown()
    for _ in range(15):   # a limited turn per command, small joint steps
        q_next = kin.ik(q, site, top_down=td)
        assert np.max(np.abs(q_next - q)[:5]) <= td.max_joint_step_rad + 1e-9
        assert np.linalg.norm(kin.fk(q_next) - site) < 5e-4
        q = q_next
    assert kin.approach_tilt(q) < np.radians(70)   # ~67 deg: as far down as reachable here
    off = kin.solve(q, site, top_down=TopDown(weight=0.0))
    np.testing.assert_allclose(off.q, kin.solve(q, site).q)
