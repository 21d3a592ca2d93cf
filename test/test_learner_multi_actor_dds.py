"""Two actors, each in its own namespace, feed one learner node over real DDS: both streams
are stored whole, no transition in the learner's buffers crosses actors or episodes, both
actors receive the weights, and the learner reports per-actor counts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from ros_harness import ROOT, NodeProcess, wait_for

from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.observation.step_record import StepRecord, to_msg
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy

pytestmark = pytest.mark.dds
T = 2  # frame stack of the test checkpoint
ACTORS = ("robot1", "robot2")


def make_checkpoint(path):
    torch.manual_seed(0)
    cfg = DrQV2Config(image_height=24, image_width=24, frame_stack=T, low_dim_size=36,
                      low_dim_per_frame=18, actor_mlp_nodes=[32], critic_mlp_nodes=[32],
                      encoder_channels=8, bottleneck_size=16)
    policy = DrQV2Policy(cfg)
    policy.training_counters.main_loop_iterations = 1000
    policy.save_pretrained(path)
    return path


def step(actor: int, ep: int, k: int, last: bool) -> StepRecord:
    img = np.zeros((1, 3, 24, 24), np.uint8)
    img[0, 0], img[0, 1], img[0, 2] = actor, ep, k
    low = np.zeros(18, np.float32)
    low[:3] = actor, ep, k
    return StepRecord(episode=ep, index=k, stamp_ns=1_000_000 * (100 * ep + k), is_first=k == 0,
                      is_last=last, terminated=last, images=img, low_dim=low,
                      action=np.array([0.5 * actor, 0, k / 100, 0], np.float32) if k
                      else np.zeros(4, np.float32), reward=float(last),
                      is_intervention=k % 4 == 1)


def test_two_actors_one_learner(tmp_path, probe, ros_env):
    from sensor_msgs.msg import Image

    from drqv2_ros.msg import PolicyWeights, Step, TrainingMetrics
    from drqv2_ros.nodes.common import STEP_QOS, WEIGHTS_QOS, reliable_qos

    ckpt = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "learner"
    learner = NodeProcess("drqv2_ros.nodes.learner_node", ros_env, tmp_path, name="learner",
                          params_file=ROOT / "config" / "learner.yaml",
                          params={"checkpoint": str(ckpt), "output_dir": str(out),
                                  "actor_namespaces": list(ACTORS), "device": "cpu",
                                  "warmup_transitions": 10, "batch_size": 8, "utd_ratio": 0.2,
                                  "publish_weights_period_s": 0.5, "metrics_period_s": 0.5,
                                  "tensorboard": False, "torch_threads": 1})
    try:
        weights = {a: probe.collect(PolicyWeights, f"/{a}/policy_weights", WEIGHTS_QOS)
                   for a in ACTORS}
        metrics = probe.collect(TrainingMetrics, "/learner/metrics", reliable_qos(10))
        pubs = [probe.publisher(Step, f"/{a}/step", STEP_QOS) for a in ACTORS]
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60,
                 "the learner's step subscriptions", [learner])
        # Interleave step by step: robot1 episodes of 7 steps, robot2 of 11.
        streams = [[step(a, ep, k, k == n) for ep in range(3) for k in range(n + 1)]
                   for a, n in enumerate((7, 11))]
        sent = [len(s) for s in streams]
        order = [a for i in range(max(sent)) for a in (0, 1) if i < sent[a]]
        it = [iter(s) for s in streams]
        for a in order:
            pubs[a].publish(to_msg(next(it[a]), Step, Image))
            time.sleep(0.005)

        def stored():
            with probe.lock:
                if not metrics:
                    return {}
                m = metrics[-1][1]
            return dict(zip(m.actors, m.actor_steps_stored))

        wait_for(lambda: stored() == {"robot1": sent[0], "robot2": sent[1]}, 60,
                 "both actors' steps stored", [learner])
        wait_for(lambda: all(weights[a] for a in ACTORS), 60, "weights on both actors",
                 [learner])
        bad = Step()  # no images: malformed, refused before the intake, counted by reason
        bad.episode, bad.index, bad.is_first = 9, 0, True
        pubs[0].publish(bad)

        def reasons():
            with probe.lock:
                m = metrics[-1][1]
            return dict(zip(m.drop_reasons, m.drop_counts))

        wait_for(lambda: reasons() == {"malformed Step message": 1}, 30,
                 "the malformed step counted by reason", [learner])
        with probe.lock:
            m = metrics[-1][1]
        # counted for the actor that sent it, in the per-actor arrays too
        assert list(m.actors) == list(ACTORS)
        assert list(m.actor_steps_dropped) == [1, 0] and list(m.actor_episodes) == [3, 3]
        assert list(m.actor_steps_received) == [sent[0] + 1, sent[1]]
        with probe.lock:  # every push goes to both actors: same versions, same bytes
            got = [{w.version: w.sha256 for _t, w in weights[a]} for a in ACTORS]
        common = got[0].keys() & got[1].keys()
        assert common and all(got[0][v] == got[1][v] for v in common)
    finally:
        assert learner.stop(30) == 0, learner.log()[-3000:]
    # The learner flushed its buffers on the way out: read them back.
    for part in ("online", "offline"):
        buf = ReplayBuffer.open(out / "replay" / part)
        assert buf.num_episodes >= (6 if part == "online" else 1)
        batch = buf.sample(256, np.random.default_rng(0))
        for i in range(256):
            cur = batch["rgb"][i, 0].reshape(T, 3, 24, 24)[:, :, 0, 0]
            nxt = batch["next_rgb"][i, 0].reshape(T, 3, 24, 24)[:, :, 0, 0]
            ids = {tuple(x) for x in np.concatenate([cur, nxt])[:, :2].tolist()}
            assert len(ids) == 1, f"{part} transition crosses actors/episodes: {ids}"
            k_next, k_cur = int(nxt[-1, 2]), int(cur[-1, 2])
            assert 1 <= k_next - k_cur <= 3
            assert round(float(batch["action"][i][2]) * 100) == k_cur + 1
        buf.close()
