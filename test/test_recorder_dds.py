"""The recorder node over real DDS: it records what a probe publishes (Step reliable, Image
best effort), stops cleanly on SIGINT / SIGTERM and leaves a valid bag whose messages are
bit-exact copies of the published ones."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from ros_harness import wait_for  # test/ is on sys.path (conftest.py)

pytestmark = pytest.mark.dds


def _records(n_episodes=2, length=5, seed=0):
    from drqv2_ros.observation.step_record import StepRecord

    rng = np.random.default_rng(seed)
    out, t = [], time.time_ns()
    for e in range(n_episodes):
        for k in range(length + 1):
            t += 50_000_000
            out.append(StepRecord(
                episode=e, index=k, stamp_ns=t, is_first=k == 0, is_last=k == length,
                terminated=k == length, images=rng.integers(0, 256, (1, 3, 84, 84), np.uint8),
                low_dim=rng.standard_normal(18).astype(np.float32),
                action=(np.zeros(0, np.float32) if k == 0
                        else rng.uniform(-1, 1, 4).astype(np.float32)),
                reward=float(k == length), is_intervention=k == 2, is_demo=True))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_recorder_node_records_bit_exact_and_stops_cleanly(launch_node, probe, tmp_path, sig):
    from rosbags.interfaces import QosReliability
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import Image

    from drqv2_ros.bags.ingest import ingest_bags
    from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore
    from drqv2_ros.learning.replay_buffer import ReplayBuffer
    from drqv2_ros.msg import Step
    from drqv2_ros.nodes.common import SENSOR_QOS, numpy_to_image, reliable_qos, stamp_to_ns
    from drqv2_ros.observation.step_record import from_msg, to_msg

    bag = tmp_path / "bag"
    node = launch_node("drqv2_ros.nodes.recorder_node", params={
        "output": str(bag), "topics": ["step", "camera/image_policy", "episode_event"]})
    step_pub = probe.publisher(Step, "step", reliable_qos(100))
    img_pub = probe.publisher(Image, "camera/image_policy", SENSOR_QOS)
    wait_for(lambda: step_pub.get_subscription_count() > 0
             and img_pub.get_subscription_count() > 0, 30, "recorder subscriptions", [node])

    # Best effort drops whatever arrives before the recorder's reader has matched this
    # writer (discovery is one-sided for a while on a loaded machine): warm up until the
    # recorder says it got an image. The warm-up frames are recorded too (own stamps).
    rng = np.random.default_rng(1)
    frames = {}
    warm_stamp = time.time_ns() - 60_000_000_000

    def warm_up():
        nonlocal warm_stamp
        warm_stamp += 1_000_000
        frames[warm_stamp] = rng.integers(0, 256, (84, 84, 3), np.uint8)
        img_pub.publish(numpy_to_image(frames[warm_stamp], warm_stamp, "cam"))
        return "first message on /camera/image_policy" in node.log()

    wait_for(warm_up, 30, "the recorder's first image", [node], interval=0.1)
    records = _records()
    for rec in records:
        step_pub.publish(to_msg(rec, Step, Image))
        frame = rng.integers(0, 256, (84, 84, 3), np.uint8)
        frames[rec.stamp_ns] = frame
        img_pub.publish(numpy_to_image(frame, rec.stamp_ns, "cam"))
        time.sleep(0.02)
    time.sleep(1.0)  # let the last messages arrive
    node.kill(sig)
    node.proc.wait(15)
    log = node.log()
    assert node.proc.returncode == 0, log
    assert "messages" in log  # the closing summary

    ts = project_typestore()
    with Reader(bag) as reader:  # metadata.yaml written, storage closed
        topics = {c.topic: c for c in reader.connections}
        assert set(topics) >= {"/step", "/camera/image_policy"}
        assert topics["/step"].msgtype == STEP_TYPE
        qos_img = topics["/camera/image_policy"].ext.offered_qos_profiles[0]
        assert qos_img.reliability == QosReliability.BEST_EFFORT
        assert topics["/step"].ext.offered_qos_profiles[0].reliability == \
            QosReliability.RELIABLE
        steps = [from_msg(ts.deserialize_cdr(raw, STEP_TYPE)) for _, _, raw in
                 reader.messages(connections=[topics["/step"]])]
        images = [ts.deserialize_cdr(raw, "sensor_msgs/msg/Image") for _, _, raw in
                  reader.messages(connections=[topics["/camera/image_policy"]])]
    assert len(steps) == len(records)  # reliable: every one
    assert all(a.equals(b) for a, b in zip(steps, records))
    record_stamps = {r.stamp_ns for r in records}
    live = [img for img in images if stamp_to_ns(img.header.stamp) in record_stamps]
    assert len(live) >= len(records) // 2, f"{len(live)} of {len(records)} images"
    for img in images:
        assert img.data.tobytes() == frames[stamp_to_ns(img.header.stamp)].tobytes()

    with ReplayBuffer(tmp_path / "buf", capacity=100, image_shape=(1, 3, 84, 84),
                      low_dim_size=18, action_size=4) as buf:
        summary = ingest_bags([bag], buf)
    assert summary.episodes == 2 and summary.transitions == 10 and summary.success_rate == 1.0


def test_sigkilled_recorder_leaves_a_salvageable_bag(launch_node, probe, tmp_path):
    """No metadata.yaml, no mcap footer: ingest still gets the episodes of the written chunks."""
    from sensor_msgs.msg import Image

    from drqv2_ros.bags.ingest import ingest_bags
    from drqv2_ros.learning.replay_buffer import ReplayBuffer
    from drqv2_ros.msg import Step
    from drqv2_ros.nodes.common import reliable_qos
    from drqv2_ros.observation.step_record import to_msg

    bag = tmp_path / "bag"
    node = launch_node("drqv2_ros.nodes.recorder_node",
                       params={"output": str(bag), "topics": ["step"]})
    pub = probe.publisher(Step, "step", reliable_qos(100))
    wait_for(lambda: pub.get_subscription_count() > 0, 30, "recorder subscription", [node])
    records = _records(n_episodes=8, length=9)  # 80 steps, ~1.7 MB: more than one chunk
    for rec in records:
        pub.publish(to_msg(rec, Step, Image))
        time.sleep(0.005)
    # Kill once the recorder has written what it will write before the bag is closed: its
    # first full chunk (rosbags closes an MCAP chunk past 1 MiB) is on disk and the file
    # has stopped growing; the rest of the 1.7 MB is in the open chunk, lost to the kill.
    sizes: list[int] = []

    def settled() -> bool:
        sizes.append(sum(p.stat().st_size for p in bag.glob("*") if p.is_file()))
        return len(sizes) >= 6 and sizes[-1] > 2**20 and len(set(sizes[-6:])) == 1

    wait_for(settled, 30, "the recorder's chunks on disk", [node], interval=0.1)
    node.kill(signal.SIGKILL)
    node.proc.wait(10)
    assert not (bag / "metadata.yaml").exists()
    with ReplayBuffer(tmp_path / "buf", capacity=200, image_shape=(1, 3, 84, 84),
                      low_dim_size=18, action_size=4) as buf:
        summary = ingest_bags([bag], buf)
        assert 1 <= summary.episodes < 8
        n = summary.steps
        for i, rec in enumerate(records[:n]):
            assert np.array_equal(buf.read_step(i)["images"], rec.images)
    assert summary.lost, summary.format()
