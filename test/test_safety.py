"""SafetyFilter: one test per rule."""

import numpy as np
import pytest

from drqv2_ros.robot.safety import NS, SafetyFilter, SafetyLimits

LOWER = np.array([-1.9, -1.7, -1.7, -1.6, -2.7, -0.17])
UPPER = np.array([1.9, 1.7, 1.7, 1.6, 2.8, 1.74])
T0 = 1_000 * NS


def make(**kw) -> SafetyFilter:
    kw.setdefault("max_relative_target", 0.2)
    kw.setdefault("watchdog_timeout_s", 0.5)
    kw.setdefault("max_command_age_s", 0.3)
    return SafetyFilter(SafetyLimits(joint_lower=LOWER, joint_upper=UPPER,
                                     joint_margin_rad=0.02, **kw))


def test_valid_ee_command_is_accepted():
    f = make()
    assert f.check_ee([0.5, -1.0, 1.0], -1.0, T0, T0 + NS // 100)
    assert f.rejected == 0


@pytest.mark.parametrize("delta,gripper", [([np.nan, 0, 0], 0.0), ([0, np.inf, 0], 0.0),
                                           ([0, 0, 0], np.nan)])
def test_nan_inf_refused_and_counted(delta, gripper):
    f = make()
    assert not f.check_ee(delta, gripper, T0, T0)
    assert f.rejected == 1 and f.reject_counts["nan"] == 1
    assert "NaN" in f.last_reject_reason


@pytest.mark.parametrize("delta,gripper", [([1.01, 0, 0], 0.0), ([0, 0, -3], 0.0),
                                           ([0, 0, 0], 1.5)])
def test_out_of_range_policy_units_refused(delta, gripper):
    f = make()
    assert not f.check_ee(delta, gripper, T0, T0)
    assert f.reject_counts["out of range"] == 1


def test_malformed_length_refused():
    f = make()
    assert not f.check_ee([0, 0], 0.0, T0, T0)
    assert not f.check_joints([0.0] * 5, T0, T0)
    assert f.reject_counts["malformed"] == 2


def test_stale_missing_and_future_stamps_refused():
    f = make(max_command_age_s=0.3)
    assert not f.check_ee([0, 0, 0], 0.0, T0, T0 + int(0.31 * NS))
    assert not f.check_ee([0, 0, 0], 0.0, 0, T0)                       # no stamp
    assert not f.check_ee([0, 0, 0], 0.0, T0 + NS, T0)                 # 1 s in the future
    assert not f.check_joints(np.zeros(6), T0, T0 + NS)
    assert f.reject_counts["stale"] == 4
    assert f.check_ee([0, 0, 0], 0.0, T0, T0 + int(0.29 * NS))


def test_joint_command_nan_or_out_of_limits_refused_in_range_clamped():
    f = make()
    assert not f.check_joints([0, 0, np.nan, 0, 0, 0], T0, T0)
    for bad in ([5, 0, 0, 0, 0, 0], [1e300, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, -1e300]):
        assert not f.check_joints(bad, T0, T0)       # refused, not clamped
    assert f.reject_counts["out of range"] == 3
    assert "outside the joint limits" in f.last_reject_reason
    edge = UPPER[0] - 0.001                          # in range, inside the margin: clamped
    assert f.check_joints([edge, 0, 0, 0, 0, 0], T0, T0)
    t = f.apply(np.array([edge, 0, 0, 0, 0, 0]), np.array([1.85, 0, 0, 0, 0, 0]), T0)
    assert t[0] == pytest.approx(UPPER[0] - 0.02)    # joint limit with margin


def test_relative_target_clamp_per_joint():
    f = make(max_relative_target=0.2)
    cur = np.zeros(6)
    t = f.apply(np.array([1.0, -1.0, 0.1, 0.0, 0.5, -0.05]), cur, T0)
    np.testing.assert_allclose(t, [0.2, -0.2, 0.1, 0.0, 0.2, -0.05])
    assert f.applied == 1 and not f.holding


def test_apply_refuses_non_finite_targets_or_measurement():
    f = make()
    assert f.apply(np.array([0, 0, np.nan, 0, 0, 0]), np.zeros(6), T0) is None
    assert f.apply(np.zeros(6), np.array([np.inf, 0, 0, 0, 0, 0]), T0) is None
    assert f.rejected == 2 and f.applied == 0 and f.target is None


def test_watchdog_holds_current_position_once():
    f = make(watchdog_timeout_s=0.5)
    assert f.tick(T0, np.zeros(6)) is None            # nothing commanded yet: no write
    f.apply(np.full(6, 0.1), np.zeros(6), T0)
    assert f.tick(T0 + int(0.4 * NS), np.zeros(6)) is None
    cur = np.array([0.05, 0.04, 0.03, 0.02, 0.01, 0.0])
    hold = f.tick(T0 + int(0.6 * NS), cur)
    np.testing.assert_allclose(hold, cur)
    assert f.holding
    assert f.tick(T0 + int(0.7 * NS), cur) is None    # only on the transition
    f.apply(np.zeros(6), cur, T0 + NS)                # fresh command ends the hold
    assert not f.holding


def test_estop_latches_until_reset():
    f = make()
    cur = np.full(6, 0.1)
    hold = f.estop(cur)
    np.testing.assert_allclose(hold, cur)
    assert f.estopped
    assert not f.check_ee([0, 0, 0], 0.0, T0, T0)
    assert not f.check_joints(np.zeros(6), T0, T0)
    assert f.apply(np.zeros(6), cur, T0) is None
    assert f.tick(T0 + 10 * NS, cur) is None          # no watchdog motion either
    assert f.reject_counts["estop latched"] == 3
    assert f.reset_estop()
    assert not f.estopped and f.holding
    assert f.check_ee([0, 0, 0], 0.0, T0, T0)
    assert f.apply(np.zeros(6), cur, T0) is not None
    assert not f.reset_estop()                        # not latched any more


def test_limits_validation():
    with pytest.raises(ValueError):
        SafetyLimits(joint_lower=LOWER, joint_upper=UPPER, max_relative_target=0.0)
    with pytest.raises(ValueError):
        SafetyLimits(joint_lower=LOWER, joint_upper=UPPER, workspace_min=(0.5, 0, 0),
                     workspace_max=(0.1, 1, 1))
