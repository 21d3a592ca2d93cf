"""The learner's work loop (ROS-free): steps in, updates at the UTD ratio after warm-up,
weights pushed, state saved; a restart resumes buffers and learner state, never silently
starting over."""

import threading
import time

import numpy as np
import pytest

from drqv2_ros.acting.policy_runner import PolicyRunner
from drqv2_ros.acting.weights import WeightsError
from drqv2_ros.learning.training_loop import STATE_FILE, TrainingConfig, TrainingLoop
from drqv2_ros.observation.step_record import StepRecord
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy


def small_policy(seed=0):
    import torch

    torch.manual_seed(seed)
    cfg = DrQV2Config(image_height=24, image_width=24, frame_stack=2, low_dim_size=36,
                      low_dim_per_frame=18, actor_mlp_nodes=[32], critic_mlp_nodes=[32],
                      encoder_channels=8, bottleneck_size=16, batch_size=16)
    policy = DrQV2Policy(cfg)
    policy.training_counters.main_loop_iterations = 1000
    return policy


def episode(ep, length, rng, intervene_at=()):
    for k in range(length + 1):
        yield StepRecord(
            episode=ep, index=k, stamp_ns=k, is_first=k == 0, is_last=k == length,
            terminated=k == length, images=rng.integers(0, 255, (1, 3, 24, 24), np.uint8),
            low_dim=rng.normal(size=18).astype(np.float32),
            action=(np.zeros(4) if k == 0 else rng.uniform(-1, 1, 4)).astype(np.float32),
            reward=float(k == length), is_intervention=k in intervene_at)


def cfg_for(tmp_path, **kw):
    return TrainingConfig(output_dir=str(tmp_path / "out"), batch_size=8, warmup_transitions=20,
                          utd_ratio=0.5, online_capacity=500, offline_capacity=200,
                          publish_weights_period_s=0.05, metrics_period_s=0.05,
                          checkpoint_period_updates=5, tensorboard=False, **kw)


def run_until(loop, cond, timeout=60.0):
    stop, weights, metrics = threading.Event(), [], []
    th = threading.Thread(target=loop.run, args=(stop, weights.append, metrics.append))
    th.start()
    deadline = time.monotonic() + timeout
    while not cond(weights, metrics) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    th.join(30)
    assert cond(weights, metrics), "condition not reached"
    return weights, metrics


def test_updates_follow_utd_after_warmup_and_weights_reach_an_actor(tmp_path):
    rng = np.random.default_rng(0)
    loop = TrainingLoop(cfg_for(tmp_path), small_policy())
    for r in episode(0, 10, rng):
        loop.submit(r)
    loop.drain()
    assert loop.updates_owed() == 0  # below warm-up
    for ep in (1, 2, 3):
        for r in episode(ep, 10, rng, intervene_at={3, 4}):
            loop.submit(r)
    weights, metrics = run_until(loop, lambda w, m: loop.counters.updates >= 10 and len(w) >= 2)
    assert loop.counters.updates <= int(0.5 * loop.counters.stored)
    assert len(loop.replay.offline) > 0 and metrics[-1]["intervention_rate"] > 0
    # the actor side accepts the pushed weights and acts with them
    actor = PolicyRunner(small_policy(seed=1))
    runner = actor.with_weights(weights[-1])
    assert runner.schedule_step == weights[-1].learner_step > 1000
    a = runner(np.zeros((1, 6, 24, 24), np.uint8), np.zeros(36, np.float32), False)
    assert a.shape == (4,) and np.all(np.abs(a) <= 1)
    bad = weights[-1]
    bad.data = bad.data[:-1] + bytes([bad.data[-1] ^ 1])
    with pytest.raises(WeightsError, match="sha256"):
        actor.with_weights(bad)
    loop.close()


def test_restart_resumes_buffers_and_state(tmp_path):
    rng = np.random.default_rng(1)
    loop = TrainingLoop(cfg_for(tmp_path), small_policy())
    for ep in range(4):
        for r in episode(ep, 10, rng):
            loop.submit(r)
    run_until(loop, lambda w, m: loop.counters.updates >= 6)
    n_online, it = len(loop.replay.online), loop.learner.iteration
    loop.close()
    assert (tmp_path / "out" / STATE_FILE).exists()
    assert (tmp_path / "out" / "checkpoints" / "last" / "model.safetensors").exists()

    again = TrainingLoop(cfg_for(tmp_path), small_policy(seed=5))
    assert again.resumed and again.learner.iteration == it
    assert len(again.replay.online) == n_online
    # a mid-episode step after a restart is dropped, not glued onto another episode
    again.submit(next(x for x in episode(9, 3, rng) if x.index == 2))
    again.drain()
    assert sum(again.counters.dropped.values()) == 1
    again.close()


def test_corrupt_state_is_an_error_not_a_fresh_start(tmp_path):
    loop = TrainingLoop(cfg_for(tmp_path), small_policy())
    loop.save()
    loop.close()
    state = tmp_path / "out" / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(Exception, match="(?i)corrupt|truncated|cannot|checksum|sha"):
        TrainingLoop(cfg_for(tmp_path), small_policy())


def test_intake_queue_is_bounded_and_overflow_is_counted_not_silent(tmp_path):
    loop = TrainingLoop(cfg_for(tmp_path, intake_queue_steps=3), small_policy())
    rng = np.random.default_rng(0)
    accepted = [loop.submit(r, "robot1") for r in episode(0, 4, rng)]  # 5 steps, room for 3
    assert accepted == [True, True, True, False, False]
    loop.drain()
    c = loop.intake.counts()["robot1"]
    assert c.received == 5 and c.stored == 3
    assert c.dropped == {"intake queue full (the learner fell behind)": 2}
    loop.close()
