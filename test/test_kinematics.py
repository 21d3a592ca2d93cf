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


# -- the solver against the straightforward algorithm --------------------------------------
def _reference_solve(kin, q_current, target, top_down, damping=0.02, max_iterations=100,
                     tolerance_m=1e-4, max_step_rad=0.3):
    """The top-down IK written plainly (the form it had before it was tuned for speed):
    position-only IK first, then turn, turn/2, ... each followed by position-only IK,
    accepted when no arm joint moves more than max(max_joint_step_rad, the position-only
    step)."""
    import math

    import mujoco

    def rows(q, goal_tilt, roll_goal):
        rot = kin.data.site_xmat[kin.site_id].reshape(3, 3)
        axis = rot[:, 0]
        c = np.cross(axis, [0.0, 0.0, -1.0])
        sin_t = float(np.linalg.norm(c))
        tilt = math.atan2(sin_t, float(-axis[2]))
        turn = max(tilt - goal_tilt, 0.0)
        rotvec = c * (turn / sin_t) if sin_t > 1e-9 else (
            rot[:, 1] * turn if tilt > 1.0 else np.zeros(3))
        perp = rot[:, [1, 2]].T
        err = [top_down.weight * (perp @ rotvec)]
        jac = [top_down.weight * (perp @ kin._jacr[:, kin._dadr[:5]])]
        if roll_goal is not None and top_down.roll_weight > 0:
            row = np.zeros((1, 5))
            row[0, 4] = top_down.roll_weight
            err.append([top_down.roll_weight * (roll_goal - q[4])])
            jac.append(row)
        return np.concatenate(err), np.vstack(jac)

    def dls(q, orient, turn=0.0):
        best_q, best_cost, it = q.copy(), np.inf, 0
        goal_tilt, roll_goal = 0.0, None
        if orient:
            goal_tilt = max(kin.approach_tilt(q) - turn, 0.0)
            if top_down.wrist_roll is not None:
                roll_goal = q[4] + float(np.clip(top_down.wrist_roll - q[4], -turn, turn))
        for it in range(1, max_iterations + 1):  # noqa: B007
            kin.data.qpos[kin._qadr] = q
            mujoco.mj_kinematics(kin.model, kin.data)
            err = target - kin.data.site_xpos[kin.site_id]
            cost = float(err @ err)
            if not orient:
                if cost < best_cost:
                    best_q, best_cost = q.copy(), cost
                if cost < tolerance_m ** 2:
                    break
            mujoco.mj_comPos(kin.model, kin.data)
            mujoco.mj_jacSite(kin.model, kin.data, kin._jacp, kin._jacr, kin.site_id)
            jac = kin._jacp[:, kin._dadr[:5]]
            if orient:
                o_err, o_jac = rows(q, goal_tilt, roll_goal)
                cost += float(o_err @ o_err)
                if cost < best_cost:
                    best_q, best_cost = q.copy(), cost
                err, jac = np.concatenate([err, o_err]), np.vstack([jac, o_jac])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping ** 2 * np.eye(len(err)), err)
            scale = np.max(np.abs(dq)) / max_step_rad
            if scale > 1.0:
                dq /= scale
            q_next = q.copy()
            q_next[:5] = np.clip(q[:5] + dq, kin.lower[:5], kin.upper[:5])
            if orient and np.max(np.abs(q_next - q)) < 1e-5:
                break
            q = q_next
        return best_q

    q = np.clip(np.asarray(q_current, dtype=np.float64), kin.lower, kin.upper)
    best_q = dls(q, False)
    if top_down is not None and top_down.enabled:
        limit = max(top_down.max_joint_step_rad, float(np.max(np.abs(best_q - q)[:5])))
        turn = top_down.max_turn_rad
        for _ in range(4):
            q_o = dls(dls(q, True, turn), False)
            if np.max(np.abs(q_o - q)[:5]) <= limit + 1e-9:
                return q_o
            turn *= 0.5
    return best_q


@pytest.mark.parametrize("top_down", [TopDown(), TopDown(wrist_roll=None), None],
                         ids=["top_down", "no_roll", "position_only"])
def test_solver_matches_the_straightforward_algorithm(kin, top_down):
    # The solver is tuned (rows filled in place, position-only IK only where the turn's
    # step needs it as the limit): its joint targets must stay those of the plain
    # algorithm, from poses all over the workspace, reachable or not.
    #
    # Not bit for bit: the two paths do the same algebra with different memory layouts
    # (rows written in place vs concatenated), and BLAS sums matrix products in an order
    # that depends on the CPU's kernels (an Intel Xeon measured 3.3e-15 rad on 5 of 6
    # joints). Tolerance: each solve is at most a few hundred damped least-squares steps
    # on matrices of at most 8x5 with entries O(1); one step's rounding is a few ulp of
    # O(1) values (~1e-15 rad), and the iteration contracts towards its fixed point, so
    # rounding does not grow with the steps: the paths agree to ~1e-14 rad. 1e-9 rad
    # leaves five orders of margin, while any change of the algorithm (another branch, a
    # missed or extra iteration, another turn) moves a joint by more than the solver's
    # own stopping step (1e-5 rad) or its tolerance (1e-4 m), far beyond it.
    rng = np.random.default_rng(7)
    for _ in range(40):
        q = rng.uniform(kin.lower, kin.upper)
        q[:5] *= 0.6
        start = kin.fk(q)
        target = start + rng.uniform(-0.04, 0.04, 3) if rng.random() < 0.7 else \
            rng.uniform((0.0, -0.4, -0.05), (0.6, 0.4, 0.5))
        got = kin.solve(q, target, top_down=top_down).q
        want = _reference_solve(kin, q, target, top_down)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
