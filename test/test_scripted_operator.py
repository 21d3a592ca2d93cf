"""Scripted operator state machine on synthetic states, alone and closed-loop with a toy
kinematic pick "sim", and through the Joy encode -> teleop decode path."""

from __future__ import annotations

import numpy as np
import pytest

from drqv2_ros.teleop.joy_mapping import (
    GRIPPER_CLOSED,
    GRIPPER_OPEN,
    JoyEncoder,
    JoyMapper,
    JoyMapping,
    find_mapping_file,
)
from drqv2_ros.teleop.scripted_operator import (
    APPROACH,
    CLOSE,
    DESCEND,
    HOLD,
    LIFT,
    OperatorConfig,
    ScriptedOperator,
    SimStateData,
)

CUBE = np.array([0.30, 0.05, 0.015])


def state(grip, cube=CUBE, opening=1.0, grasped=False, success=False):
    return SimStateData(np.array(cube, float), np.array(grip, float), opening, grasped, success)


def op(**kw):
    # the synthetic states and the toy sim have a point gripper: grasp at the cube centre
    # (the default grasp_y_offset is tuned for the MuJoCo jaws, see test_sim_pick.py)
    o = ScriptedOperator(OperatorConfig(**{"grasp_y_offset": 0.0, **kw}))
    o.new_episode(0.0)
    return o


def test_approach_moves_toward_hover_point_with_open_gripper():
    o = op()
    grip = np.array([0.20, -0.05, 0.12])
    out = o.tick(state(grip), 0.1)
    assert out.intervene and out.phase == APPROACH
    a = out.action
    assert a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
    assert a[3] == GRIPPER_OPEN
    hover = CUBE + [0, 0, 0.06]
    after = grip + a[:3] * 0.02
    assert np.linalg.norm(hover - after) < np.linalg.norm(hover - grip)
    assert a[0] > 0 and a[1] > 0  # REP 103: cube is forward and to the left


def test_rises_before_moving_sideways_when_low():
    # low beside the cube (within clear_xy_m): rise first, so as not to push it
    o = op()
    a = o.tick(state([0.27, 0.05, 0.02]), 0.1).action
    assert a[0] == 0 and a[1] == 0 and a[2] > 0
    # low and away from it: nothing to hit, so move towards the hover point and rise at once
    # (the phase machine only rose: 68% of its labels on a learning policy's rollouts)
    a = op().tick(state([0.20, 0.05, 0.02]), 0.1).action
    assert a[0] > 0 and a[2] > 0


def test_descends_when_aligned_then_closes_then_lifts():
    o = op()
    out = o.tick(state(CUBE + [0.001, 0, 0.06]), 0.1)
    assert out.phase == DESCEND and out.action[2] < 0 and out.action[3] == GRIPPER_OPEN
    out = o.tick(state(CUBE + [0.001, 0, 0.002]), 0.2)
    assert out.phase == CLOSE and out.action[3] == GRIPPER_CLOSED
    assert np.all(np.abs(out.action[:3]) < 0.1)
    out = o.tick(state(CUBE + [0.001, 0, 0.002], opening=0.2, grasped=True), 0.3)
    assert out.phase == LIFT and out.action[2] > 0 and out.action[3] == GRIPPER_CLOSED
    out = o.tick(state(CUBE + [0, 0, 0.14], cube=CUBE + [0, 0, 0.13], grasped=True), 0.4)
    assert out.phase == HOLD and out.action[3] == GRIPPER_CLOSED


def test_blocked_descent_closes_anyway():
    """The jaws rest on the cube above the grasp height: close after stall_ticks."""
    o = op(stall_ticks=5)
    o.phase = DESCEND
    grip = CUBE + [0.001, 0, 0.03]
    phases = [o.tick(state(grip), 0.1 * k).phase for k in range(8)]
    assert phases[:5] == [DESCEND] * 5 and phases[-1] == CLOSE


def test_dropped_cube_restarts_approach():
    o = op()
    o.phase = LIFT
    out = o.tick(state(CUBE + [0.03, 0, 0.05], grasped=False), 0.1)
    assert out.phase == APPROACH and out.action[3] == GRIPPER_OPEN
    # dropped right below the gripper: open and go down for it again
    o.phase = LIFT
    out = o.tick(state(CUBE + [0, 0, 0.05], grasped=False), 0.2)
    assert out.phase == DESCEND and out.action[3] == GRIPPER_OPEN and out.action[2] < 0


def test_the_expert_acts_on_the_state_from_any_state():
    # For relabelling: the action depends on the state, not on the path taken to it (a
    # fresh operator and one that ran another episode agree), and is sensible everywhere.
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        grip = CUBE + rng.uniform((-0.12, -0.12, -0.01), (0.12, 0.12, 0.15))
        grip[2] = max(grip[2], 0.0)
        opening = float(rng.choice([1.0, 0.5, 0.1]))
        grasped = bool(rng.random() < 0.15)
        s = state(grip, opening=opening, grasped=grasped)
        used = op()
        sim = ToyPickSim([0.18, -0.10, 0.10])
        for k in range(int(rng.integers(0, 30))):  # some history
            sim.step(used.tick(sim.state(), 0.05 * k).action)
        if used.phase == CLOSE:
            continue  # a grasp attempt in progress is the one thing it remembers
        fresh = op()
        a, b = fresh.tick(s, 1.0), used.tick(s, 1.0)
        np.testing.assert_array_equal(a.action, b.action)
        assert a.phase == b.phase
        seen.add(a.phase)
        act, xy_dist = a.action, np.linalg.norm(grip[:2] - CUBE[:2])
        to_hover = CUBE[:2] - grip[:2]
        if grasped:
            assert a.phase in (LIFT, HOLD) and act[3] == GRIPPER_CLOSED
            assert grip[2] >= 0.14 or act[2] > 0
        elif a.phase == APPROACH:
            assert act[3] == GRIPPER_OPEN
            if xy_dist >= 0.04 and np.linalg.norm(to_hover) > 0.01:
                assert float(act[:2] @ to_hover) > 0  # heads for the cube
        elif a.phase == DESCEND:
            assert act[3] == GRIPPER_OPEN and xy_dist < 0.02
        elif a.phase == CLOSE:
            assert act[3] == GRIPPER_CLOSED and grip[2] < CUBE[2] + 0.06 + 0.008
    assert seen == {APPROACH, DESCEND, CLOSE, LIFT, HOLD}


def test_presses_success_once_and_lets_go_at_episode_end():
    o = op()
    out = o.tick(state(CUBE + [0, 0, 0.1], grasped=True, success=True), 0.1)
    assert out.press == ["success"]
    assert o.tick(state(CUBE + [0, 0, 0.1], grasped=True, success=True), 0.2).press == []
    o.end_episode()
    out = o.tick(state(CUBE + [0, 0, 0.1], success=True), 0.3)
    assert not out.intervene and out.press == []


def test_episode_schedule():
    o = ScriptedOperator(OperatorConfig(intervene_every_n_episodes=3))
    takes = []
    for _ in range(9):
        o.new_episode(0.0)
        takes.append(o.takeover)
    assert takes == [True, False, False] * 3
    o = ScriptedOperator(OperatorConfig(intervene_every_n_episodes=0,
                                        intervene_probability=0.3, seed=1))
    n = 0
    for _ in range(1000):
        o.new_episode(0.0)
        n += o.takeover
    assert 240 < n < 360 and o.episodes_intervened == n
    o = ScriptedOperator(OperatorConfig(intervene_start_s=1.0, intervene_duration_s=2.0))
    o.new_episode(10.0)
    s = state([0.2, 0, 0.1])
    assert [o.tick(s, t).intervene for t in (10.5, 11.5, 12.9, 13.1)] == [
        False, True, True, False]


class ToyPickSim:
    """Gripper site moves by action * 0.02 m; the cube is grasped when the gripper closes
    around it and follows it; success after 10 ticks above 0.08 m (pick-101's rule)."""

    def __init__(self, grip, cube=CUBE):
        self.grip = np.array(grip, float)
        self.cube = np.array(cube, float)
        self.opening = 1.0
        self.grasped = False
        self.above = 0

    def state(self):
        return state(self.grip, self.cube, self.opening, self.grasped, self.above >= 10)

    def step(self, a):
        self.grip = self.grip + np.clip(a[:3], -1, 1) * 0.02
        self.grip[2] = max(self.grip[2], 0.0)
        closing = (a[3] - GRIPPER_OPEN) / (GRIPPER_CLOSED - GRIPPER_OPEN) > 0.5
        target = 0.0 if closing else 1.0
        self.opening += float(np.clip(target - self.opening, -0.25, 0.25))
        near = np.linalg.norm(self.grip - self.cube) < 0.012
        if not self.grasped and near and self.opening < 0.3:
            self.grasped = True
        if not closing:
            self.grasped = False
        if self.grasped:
            self.cube = self.grip.copy()
        else:
            self.cube[2] = CUBE[2]
        self.above = self.above + 1 if self.grasped and self.cube[2] > 0.08 else 0


def test_closed_loop_pick_through_joy_encoding():
    """The operator's action goes Joy-encoded through the teleop mapping, as in the nodes."""
    mapping = JoyMapping.load(find_mapping_file("xbox"))
    enc, dec = JoyEncoder(mapping), JoyMapper(mapping)
    sim = ToyPickSim([0.18, -0.10, 0.10])
    o = op()
    phases, events = [], []
    for k in range(200):
        out = o.tick(sim.state(), 0.05 * k)
        on, act, ev = dec.update(*enc.encode(out.intervene, out.action, out.press), t=0.05 * k)
        events += ev
        if not phases or phases[-1] != out.phase:
            phases.append(out.phase)
        if ev:
            break
        assert on
        np.testing.assert_allclose(act, out.action, atol=1e-5)
        sim.step(act)
    assert events == ["success"], (phases, sim.grip, sim.cube)
    assert phases == [APPROACH, DESCEND, CLOSE, LIFT, HOLD]
    assert sim.cube[2] > 0.08
    print(f"\ntoy pick solved in {k} ticks")


def _run(o, positions, dt=0.1, **kw):
    """(t, intervening) per tick for a gripper path (cube at CUBE)."""
    return [(round(k * dt, 3), o.tick(state(p, **kw), k * dt).intervene)
            for k, p in enumerate(positions)]


def test_assist_takes_over_a_stalled_policy_for_a_bounded_time_within_the_budget():
    o = op(takeover="assist", assist_window_s=1.0, assist_duration_s=0.5, assist_budget_s=0.8)
    far = CUBE + [0.1, 0.0, 0.1]
    out = _run(o, [far] * 40)  # the policy does not move
    on = [t for t, i in out if i]
    assert on[0] == 1.0  # a full window of evidence first
    assert on[:5] == [1.0, 1.1, 1.2, 1.3, 1.4] and 1.5 not in on  # 0.5 s, then handed back
    assert 2.5 in on and 2.8 not in on  # the next stall: only the 0.3 s left of the budget
    assert len(on) == 8 and o.assists == 2 and o.assist_reasons == {"stalled": 2}
    assert not o.tick(state(far), 4.0).intervene  # budget spent: the policy's alone
    o.new_episode(5.0)  # a new episode, a new budget
    assert [t for t, i in _run(o, [far] * 12) if i][:1] == [1.0]


def test_assist_takes_over_a_policy_heading_away_and_leaves_a_progressing_one_alone():
    o = op(takeover="assist", assist_window_s=1.0)
    start = CUBE + [0.1, 0.0, 0.1]
    toward = [start - [0.008 * k, 0.0, 0.008 * k] for k in range(12)]  # 1.1 cm per tick
    assert not any(i for _, i in _run(o, toward))
    o = op(takeover="assist", assist_window_s=1.0)
    away = [start + [0.005 * k, 0.0, 0.0] for k in range(12)]
    out = _run(o, away)
    assert [t for t, i in out if i][0] == 1.0 and o.assist_reasons == {"heading away": 1}
    # holding the cube is progress whatever the distance does
    o = op(takeover="assist", assist_window_s=1.0)
    assert not any(i for _, i in _run(o, [start] * 15, grasped=True))
    with pytest.raises(ValueError, match="takeover must be one of"):
        OperatorConfig(takeover="sometimes")


def test_node_parameters_and_yaml_hold_every_operator_field_with_its_default():
    # the node builds its OperatorConfig from its parameters: a field missing there fails
    # the node at start, a different default changes the sim graph's operator silently
    from dataclasses import fields

    import yaml

    from drqv2_ros.nodes.scripted_operator_node import ScriptedOperatorParams
    from drqv2_ros.package_files import config_file

    params, cfg = ScriptedOperatorParams(), OperatorConfig()
    yml = yaml.safe_load(config_file("scripted_operator.yaml").read_text())
    yml = yml["/**"]["ros__parameters"]
    for f in fields(OperatorConfig):
        assert getattr(params, f.name) == getattr(cfg, f.name), f.name
        assert yml[f.name] == getattr(cfg, f.name), f.name
