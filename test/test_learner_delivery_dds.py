"""Every step an actor produces is in the learner's buffer exactly once, or counted with its
reason, through a paused learner (SIGSTOP/SIGCONT) and a killed and restarted one
(SIGKILL, then the same command again). The actor is a probe publishing Steps whose frames
name their episode and index, with the policy node's QoS (reliable, transient local, 600)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from ros_harness import ROOT, NodeProcess, wait_for
from test_learner_multi_actor_dds import make_checkpoint

from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.observation.step_record import StepRecord, to_msg

pytestmark = pytest.mark.dds
EP_LEN = 15


def step(ep: int, k: int) -> StepRecord:
    img = np.zeros((1, 3, 24, 24), np.uint8)
    img[0, 1], img[0, 2] = ep, k
    low = np.zeros(18, np.float32)
    low[1:3] = ep, k
    return StepRecord(episode=ep, index=k, stamp_ns=time.time_ns(), is_first=k == 0,
                      is_last=k == EP_LEN, terminated=k == EP_LEN, images=img, low_dim=low,
                      action=np.full(4, 0.1, np.float32) if k else np.zeros(4, np.float32),
                      reward=0.0)


def start_learner(ros_env, tmp_path, ckpt, out, name):
    return NodeProcess("drqv2_ros.nodes.learner_node", ros_env, tmp_path, name=name,
                       params_file=ROOT / "config" / "learner.yaml",
                       params={"checkpoint": str(ckpt), "output_dir": str(out),
                               "device": "cpu", "warmup_transitions": 10_000,
                               "flush_period_s": 0.2, "metrics_period_s": 0.3,
                               "tensorboard": False, "torch_threads": 1})


class Actor:
    def __init__(self, probe):
        from sensor_msgs.msg import Image

        from drqv2_ros.msg import Step
        from drqv2_ros.nodes.common import STEP_QOS

        self.pub = probe.publisher(Step, "step", STEP_QOS)
        self.Step, self.Image = Step, Image
        self.produced: list[tuple[int, int]] = []

    def episodes(self, first: int, n: int, period: float = 0.02) -> None:
        for ep in range(first, first + n):
            for k in range(EP_LEN + 1):
                self.pub.publish(to_msg(step(ep, k), self.Step, self.Image))
                self.produced.append((ep, k))
                time.sleep(period)


def metrics_of(probe):
    from drqv2_ros.msg import TrainingMetrics
    from drqv2_ros.nodes.common import reliable_qos

    return probe.collect(TrainingMetrics, "learner/metrics", reliable_qos(10))


def last(metrics):
    return metrics[-1][1] if metrics else None


def ring_keys(out):
    buf = ReplayBuffer.open(out / "replay" / "online")
    keys = [tuple(int(x) for x in buf.read_step(i)["low_dim"][1:3])
            for i in range(buf.total_steps_added)]
    buf.close()
    return keys


def test_paused_learner_loses_nothing(tmp_path, probe, ros_env):
    ckpt, out = make_checkpoint(tmp_path / "ckpt"), tmp_path / "out"
    learner = start_learner(ros_env, tmp_path, ckpt, out, "learner")
    metrics = metrics_of(probe)
    actor = Actor(probe)
    try:
        wait_for(lambda: actor.pub.get_subscription_count() > 0, 60, "the learner", [learner])
        actor.episodes(0, 3)
        os.killpg(learner.proc.pid, signal.SIGSTOP)  # a GC pause, a swap storm, a debugger
        actor.episodes(3, 6)  # ~2 s of steps into a frozen learner...
        time.sleep(6.0)  # ...and it stays frozen a while longer
        os.killpg(learner.proc.pid, signal.SIGCONT)
        actor.episodes(9, 2)
        n = len(actor.produced)
        wait_for(lambda: last(metrics) is not None and last(metrics).transitions_received >= n,
                 60, f"{n} steps received", [learner])
        m = last(metrics)
        assert dict(zip(m.drop_reasons, m.drop_counts)) == {} and list(m.actor_steps_lost) == [0]
    finally:
        assert learner.stop(30) == 0, learner.log()[-3000:]
    keys = ring_keys(out)
    assert keys == actor.produced  # all of them, once, in order: nothing fabricated


def test_killed_and_restarted_learner_stores_each_step_once_or_counts_it(tmp_path, probe,
                                                                        ros_env):
    ckpt, out = make_checkpoint(tmp_path / "ckpt"), tmp_path / "out"
    first = start_learner(ros_env, tmp_path, ckpt, out, "learner_first")
    actor = Actor(probe)
    second = None
    try:
        wait_for(lambda: actor.pub.get_subscription_count() > 0, 60, "the learner", [first])
        actor.episodes(0, 4)
        actor.episodes(4, 1, period=0.0)
        first.kill(signal.SIGKILL)  # mid-episode 5, some steps not flushed
        first.proc.wait(10)
        actor.episodes(5, 2)  # produced while no learner runs
        metrics = metrics_of(probe)
        second = start_learner(ros_env, tmp_path, ckpt, out, "learner_second")
        wait_for(lambda: last(metrics) is not None, 60, "the restarted learner", [second])
        actor.episodes(7, 2)
        n_resent_or_new = len(actor.produced)

        def settled():
            m = last(metrics)
            return m is not None and m.transitions_received >= n_resent_or_new - 1 and \
                list(m.actor_steps_staged) == [0]

        wait_for(settled, 60, "the history and new steps taken in", [second])
        m = last(metrics)
        reasons = dict(zip(m.drop_reasons, m.drop_counts))
    finally:
        if second is not None:
            assert second.stop(30) == 0, second.log()[-3000:]
    keys = ring_keys(out)
    assert len(keys) == len(set(keys)), "a step stored twice"
    assert set(keys) <= set(actor.produced)
    counted = sum(v for k, v in reasons.items() if k != "stored before the learner restarted")
    assert len(keys) + counted == len(actor.produced), (len(keys), reasons)
    assert keys[-2 * (EP_LEN + 1):] == actor.produced[-2 * (EP_LEN + 1):]
