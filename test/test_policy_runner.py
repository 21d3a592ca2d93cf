"""Hot-swap validation (ROS-free): the allow-listed root, image layout vs the live camera,
finite weights, and learner weights for another architecture are all refused."""

import numpy as np
import pytest
import torch

from drqv2_ros.acting.policy_runner import IncompatibleCheckpoint, PolicyRunner, load_runner
from drqv2_ros.acting.weights import WeightsError, WeightsPacket, actor_state_bytes
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import CheckpointError, DrQV2Policy


def small(**kw):
    base = dict(image_height=24, image_width=24, frame_stack=2, low_dim_size=36,
                low_dim_per_frame=18, actor_mlp_nodes=[16], critic_mlp_nodes=[16],
                encoder_channels=4, bottleneck_size=8)
    base.update(kw)
    return DrQV2Policy(DrQV2Config(**base))


def test_root_allow_list_and_live_image_shape(tmp_path):
    small().save_pretrained(tmp_path / "root" / "ok")
    runner = load_runner(tmp_path / "root" / "ok", image_shape=(1, 3, 24, 24),
                         root=str(tmp_path / "root"))
    assert runner.summary()["image"] == [24, 24]
    a = runner(np.zeros((1, 6, 24, 24), np.uint8), np.zeros(36, np.float32), True)
    assert a.shape == (4,) and np.all(np.abs(a) <= 1)
    small().save_pretrained(tmp_path / "elsewhere")
    with pytest.raises(IncompatibleCheckpoint, match="outside the allowed checkpoint root"):
        load_runner(tmp_path / "elsewhere", root=str(tmp_path / "root"))
    with pytest.raises(IncompatibleCheckpoint, match=r"\(1, 3, 84, 84\)"):
        load_runner(tmp_path / "root" / "ok", image_shape=(1, 3, 84, 84))


def test_non_finite_weights_refused(tmp_path):
    p = small()
    with torch.no_grad():
        next(p.actor.parameters()).view(-1)[0] = float("inf")
    p.save_pretrained(tmp_path / "inf")
    with pytest.raises((IncompatibleCheckpoint, CheckpointError), match="(?i)nan|inf|finite"):
        load_runner(tmp_path / "inf")


def test_learner_weights_of_another_architecture_refused():
    runner = PolicyRunner(small())
    other = small(actor_mlp_nodes=[32])
    pkt = WeightsPacket.make(actor_state_bytes(other), version=1, learner_step=5, run_id="r")
    with pytest.raises(WeightsError):
        runner.with_weights(pkt)
    same = small()
    ok = runner.with_weights(WeightsPacket.make(actor_state_bytes(same), version=2,
                                                learner_step=7, run_id="r"))
    assert ok.weights_version == 2 and ok.schedule_step == 7
    # the running policy was not touched by either attempt
    assert runner.weights_version == -1
