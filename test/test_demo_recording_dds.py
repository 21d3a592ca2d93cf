"""Demonstrations end to end over real DDS: the sim graph in demo mode (policy off, the
scripted operator drives through Joy -> teleop -> policy), recorded by the recorder node;
the bag, ingested, gives back exactly the steps the policy node produced live (images
bit-exact, actions, rewards, flags), and the replay buffer holds those transitions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from ros_harness import ROOT, NodeProcess, Probe, allocate_domain_id, ros_environment, wait_for

from drqv2_ros.bags.episodes import TargetShapes, read_episodes
from drqv2_ros.bags.ingest import ingest_bags
from drqv2_ros.convert.robobase import convert_snapshot
from drqv2_ros.convert.robobase_writer import make_robobase_snapshot
from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.observation.step_record import from_msg

pytestmark = pytest.mark.dds


def test_recorded_demo_bag_rebuilds_the_live_steps(tmp_path):
    from drqv2_ros.msg import Step
    from drqv2_ros.nodes.common import reliable_qos

    make_robobase_snapshot(tmp_path / "s.pt", seed=1)
    convert_snapshot(tmp_path / "s.pt", tmp_path / "ckpt", progress=False)
    env = ros_environment(allocate_domain_id(), tmp_path / "roslog")
    cfg = ROOT / "config"
    probe = Probe(env)
    live = probe.collect(Step, "step", reliable_qos(100))
    recorder = NodeProcess("drqv2_ros.nodes.recorder_node", env, tmp_path,
                           params_file=cfg / "recorder.yaml",
                           params={"output": str(tmp_path / "bag"),
                                   "topics": ["step", "intervention", "episode_event"]})
    procs = [recorder]
    try:
        procs += [
            NodeProcess("drqv2_ros.nodes.driver_node", env, tmp_path,
                        params_file=cfg / "so101_driver.yaml",
                        params={"render_width": 160, "render_height": 120}),
            NodeProcess("drqv2_ros.nodes.teleop_node", env, tmp_path,
                        params_file=cfg / "teleop.yaml"),
            NodeProcess("drqv2_ros.nodes.scripted_operator_node", env, tmp_path,
                        params_file=cfg / "scripted_operator.yaml",
                        params={"intervene_every_n_episodes": 1}),
        ]
        wait_for(lambda: "recording" in recorder.log().lower() or len(recorder.log()) > 0,
                 30, "recorder up", procs)
        procs.append(NodeProcess(
            "drqv2_ros.nodes.policy_node", env, tmp_path, params_file=cfg / "policy.yaml",
            params={"checkpoint": str(tmp_path / "ckpt"), "policy_enabled": False,
                    "demo": True, "max_episode_steps": 15}))
        wait_for(lambda: sum(m.is_last for _, m in live) >= 4, 180,
                 "four demo episodes", procs)
        assert recorder.stop() == 0, recorder.log()
    finally:
        for p in procs:
            p.stop()
        probe.close()

    live_recs = {(r.episode, r.index): r for r in
                 (from_msg(m, action_size=4) for _, m in live)}
    target = TargetShapes.from_checkpoint(tmp_path / "ckpt")
    episodes = list(read_episodes([tmp_path / "bag"], target=target))
    assert len(episodes) >= 3
    n_steps = compared = 0
    for ep in episodes:
        assert ep.steps[0].is_first and ep.steps[-1].is_last
        n_steps += len(ep.steps)
        if not all((r.episode, r.index) in live_recs for r in ep.steps):
            continue  # the probe joined after this episode began (DDS discovery)
        for rec in ep.steps:
            ref = live_recs[(rec.episode, rec.index)]
            assert rec.equals(ref), f"episode {rec.episode} step {rec.index} differs"
            assert rec.is_demo
        compared += 1
    assert compared >= 2, "too few episodes seen whole both live and in the bag"
    # demo mode: every executed action came from the operator
    assert any(r.is_intervention for ep in episodes for r in ep.steps[1:])

    buf = ReplayBuffer(tmp_path / "buffer", capacity=5000, image_shape=(1, 3, 84, 84),
                       low_dim_size=18, action_size=4, frame_stack=3, nstep=3, discount=0.99)
    summary = ingest_bags([tmp_path / "bag"], buf, target=target)
    assert summary.episodes == len(episodes)
    assert summary.transitions == n_steps - len(episodes)
    assert buf.num_steps == n_steps
    first = episodes[0].steps[0]
    got = buf.read_step(0)
    np.testing.assert_array_equal(got["images"], first.images)
    np.testing.assert_array_equal(got["low_dim"], first.low_dim)
    buf.close()
