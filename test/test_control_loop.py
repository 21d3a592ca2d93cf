"""The actor's control loop (ROS-free): freshness gate, episode bookkeeping, executed-action
recording, intervention priority, tick-boundary policy swaps."""

import numpy as np
import pytest

from drqv2_ros.acting.control_loop import ControlLoop, Event, LoopConfig
from drqv2_ros.observation.frame_stack import FrameStacker
from drqv2_ros.observation.low_dim import LowDimLayout, LowDimLayoutError, build_low_dim
from drqv2_ros.policy.configuration_drqv2 import (
    PICK101_LOW_DIM_LAYOUT_18,
    PICK101_LOW_DIM_LAYOUT_21,
)

MS = 1_000_000


def _loop(**kw):
    calls = []

    def act(rgb, low, explore):
        calls.append((rgb.copy(), low.copy(), explore))
        return np.full(4, 0.5, np.float32)

    cfg = LoopConfig(**{"max_episode_steps": 5, **kw})
    loop = ControlLoop(cfg, frame_stack=3, action_dim=4,
                       low_dim_fn=lambda p, v: np.concatenate([p, v]).astype(np.float32), act=act)
    return loop, calls


def _feed(loop, t_ns, value=0):
    loop.on_image(np.full((1, 3, 4, 4), value, np.uint8), t_ns)
    loop.on_joints(np.full(2, value, float), np.zeros(2), t_ns)


def test_nothing_commanded_before_reset_or_with_stale_data():
    loop, calls = _loop()
    assert loop.tick(0).skipped == "waiting for episode reset"
    loop.start_episode()
    assert loop.tick(0).skipped == "no image yet"
    _feed(loop, 0)
    res = loop.tick(300 * MS)  # older than max_obs_age_s = 0.25
    assert res.command is None and res.step is None and res.skipped == "stale image"
    loop.on_image(np.zeros((1, 3, 4, 4), np.uint8), 290 * MS)
    assert loop.tick(300 * MS).skipped == "stale joint state"
    assert not calls


def test_episode_records_executed_actions_and_truncates():
    loop, calls = _loop()
    loop.start_episode()
    steps = []
    for k in range(6):
        _feed(loop, k * 100 * MS, value=k)
        res = loop.tick(k * 100 * MS + 10 * MS)
        steps.append(res.step)
        if k < 5:
            assert res.command is not None
    assert [s.index for s in steps] == list(range(6))
    assert steps[0].is_first and not steps[0].is_last
    assert np.all(steps[0].action == 0)
    for s in steps[1:]:
        np.testing.assert_array_equal(s.action, np.full(4, 0.5, np.float32))
    last = steps[-1]
    assert last.is_last and not last.terminated  # truncation bootstraps
    assert res.request_reset and res.command is None and res.end_reason == "timeout"
    # the policy saw a stack rebuilt oldest-first, starting with repeated first frames
    rgb0 = calls[0][0]
    assert rgb0.shape == (1, 9, 4, 4) and np.all(rgb0 == 0)
    rgb2 = calls[2][0]
    assert [int(rgb2[0, 3 * i, 0, 0]) for i in range(3)] == [0, 1, 2]


def test_success_event_terminates_with_reward_on_next_step():
    loop, _ = _loop(max_episode_steps=0)
    loop.start_episode()
    _feed(loop, 0)
    loop.tick(1 * MS)
    loop.on_event(Event.SUCCESS)
    _feed(loop, 100 * MS)
    res = loop.tick(101 * MS)
    assert res.step.is_last and res.step.terminated and res.step.reward == 1.0
    assert res.request_reset and res.command is None and res.end_reason == "success"


def test_reward_topic_threshold_ends_episode():
    loop, _ = _loop(max_episode_steps=0, reward_success_threshold=0.9)
    loop.start_episode()
    _feed(loop, 0)
    loop.tick(MS)
    loop.on_reward(0.3)
    _feed(loop, 100 * MS)
    res = loop.tick(101 * MS)
    assert res.step.reward == pytest.approx(0.3) and not res.step.is_last
    loop.on_reward(0.95)
    _feed(loop, 200 * MS)
    res = loop.tick(201 * MS)
    assert res.step.terminated and res.step.reward == pytest.approx(0.95)


def test_intervention_overrides_policy_and_is_flagged_on_the_next_step():
    loop, calls = _loop(max_episode_steps=0)
    loop.start_episode()
    _feed(loop, 0)
    human = np.array([0.1, -0.2, 0.3, 1.0], np.float32)
    loop.on_operator(True, human, 0)
    res = loop.tick(MS)
    np.testing.assert_array_equal(res.command, human)
    assert res.is_intervention and not calls
    _feed(loop, 100 * MS)
    loop.on_operator(False, human, 100 * MS)
    res = loop.tick(101 * MS)
    np.testing.assert_array_equal(res.step.action, human)
    assert res.step.is_intervention
    assert not res.is_intervention and len(calls) == 1
    # an operator message older than the timeout is ignored
    _feed(loop, 200 * MS)
    loop.on_operator(True, human, 0)
    res = loop.tick(700 * MS - 1)
    assert res.skipped == "stale image"


def test_nan_operator_action_is_not_executed():
    loop, calls = _loop(max_episode_steps=0)
    loop.start_episode()
    _feed(loop, 0)
    loop.on_operator(True, np.array([np.nan, 0, 0, 0], np.float32), 0)
    res = loop.tick(MS)
    assert not res.is_intervention and len(calls) == 1
    np.testing.assert_array_equal(res.command, np.full(4, 0.5, np.float32))


def test_demo_mode_holds_without_operator():
    loop, calls = _loop(policy_enabled=False, demo=True, max_episode_steps=0)
    loop.start_episode()
    _feed(loop, 0)
    res = loop.tick(MS)
    np.testing.assert_array_equal(res.command, np.zeros(4, np.float32))
    assert res.step.is_demo and not calls


def test_policy_swap_happens_at_tick_boundary():
    loop, calls = _loop(max_episode_steps=0)
    loop.start_episode()
    _feed(loop, 0)
    loop.tick(MS)
    loop.swap_policy(lambda rgb, low, explore: np.full(4, -0.25, np.float32))
    _feed(loop, 100 * MS)
    res = loop.tick(101 * MS)
    np.testing.assert_array_equal(res.command, np.full(4, -0.25, np.float32))


def test_invalid_policy_action_raises_and_commands_nothing():
    loop, _ = _loop(max_episode_steps=0)
    loop.swap_policy(lambda rgb, low, explore: np.array([np.inf, 0, 0, 0], np.float32))
    loop.start_episode()
    _feed(loop, 0)
    with pytest.raises(RuntimeError, match="invalid action"):
        loop.tick(MS)


def test_frame_stacker_repeats_first_and_keeps_oldest_first():
    fs = FrameStacker(3)
    rgb, low = fs.push(np.zeros((1, 3, 2, 2), np.uint8), np.zeros(2, np.float32))
    assert rgb.shape == (1, 9, 2, 2) and low.shape == (6,)
    fs.push(np.ones((1, 3, 2, 2), np.uint8), np.ones(2, np.float32))
    rgb, low = fs.push(np.full((1, 3, 2, 2), 2, np.uint8), np.full(2, 2, np.float32))
    assert rgb[0, ::3, 0, 0].tolist() == [0, 1, 2] and low.tolist() == [0, 0, 1, 1, 2, 2]


def test_low_dim_layout_from_the_recorded_one_and_refusals():
    lay54 = LowDimLayout.from_recorded(PICK101_LOW_DIM_LAYOUT_18)
    assert lay54.size == 18 and not lay54.needs_privileged
    lay63 = LowDimLayout.from_recorded(PICK101_LOW_DIM_LAYOUT_21)
    assert lay63.needs_privileged
    with pytest.raises(LowDimLayoutError, match="recorded as 10 values"):
        LowDimLayout.from_recorded([("joint_pos", 10, "rad")])
    with pytest.raises(LowDimLayoutError, match="repeats a field"):
        LowDimLayout.from_recorded([("joint_pos", 6, "rad")] * 2)
    q = np.arange(6, dtype=float)
    v = build_low_dim(lay54, q, q, np.ones(3), np.zeros(3))
    assert v.dtype == np.float32 and v.shape == (18,)
    with pytest.raises(LowDimLayoutError, match="cube_pos"):
        build_low_dim(lay63, q, q, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        build_low_dim(lay54, q * np.nan, q, np.ones(3), np.zeros(3))


def test_late_event_from_the_previous_episode_is_ignored():
    loop, _ = _loop(max_episode_steps=0)
    loop.start_episode(now_ns=1000 * MS)
    _feed(loop, 1000 * MS)
    loop.tick(1001 * MS)
    loop.on_event(Event.SUCCESS, stamp_ns=900 * MS)  # stamped before this episode began
    _feed(loop, 1100 * MS)
    res = loop.tick(1101 * MS)
    assert not res.step.is_last and res.command is not None
    loop.on_event(Event.FAILURE, stamp_ns=1150 * MS)
    _feed(loop, 1200 * MS)
    res = loop.tick(1201 * MS)
    assert res.step.is_last and res.step.terminated and res.step.reward == 0.0


def test_evaluation_episode_acts_alone_with_the_mean_action():
    # Evaluation: the policy alone (the operator's takeover is ignored), mean action, steps
    # marked so that nobody trains on them; the next training episode is as before.
    loop, calls = _loop(policy_enabled=False)  # even where the policy does not drive training
    loop.start_episode(evaluate=True)
    _feed(loop, 0)
    loop.on_operator(True, np.full(4, -1.0, np.float32), 0)
    res = loop.tick(10 * MS)
    assert not res.is_intervention and res.evaluation and res.step.is_first
    np.testing.assert_array_equal(res.command, np.full(4, 0.5, np.float32))
    assert calls[-1][2] is False  # explore off
    assert res.step.episode == 0 and loop.evaluations == 1
    loop.start_episode(100 * MS)
    _feed(loop, 100 * MS)
    loop.on_operator(True, np.full(4, -1.0, np.float32), 100 * MS)
    res = loop.tick(110 * MS)
    # the training stream's numbering skips no number for the evaluation
    assert res.step.episode == 0 and loop.episode == 0
    assert res.is_intervention and not res.evaluation
    np.testing.assert_array_equal(res.command, np.full(4, -1.0, np.float32))
