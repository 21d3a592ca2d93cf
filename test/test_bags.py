"""Bags of Step messages -> replay buffer: bit-exact transitions, independent readability,
salvage of truncated bags, refusals (missing topic, shapes), export and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from drqv2_ros.bags.episodes import (
    ReadReport,
    ShapeMismatchError,
    TargetShapes,
    read_episodes,
)
from drqv2_ros.bags.ingest import ingest_bags
from drqv2_ros.bags.reader import BagError, open_bag
from drqv2_ros.bags.recorder import BagRecorder, qos_from_profile
from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore, step_to_rosbags
from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.observation.step_record import StepRecord

LOW, ACT = 18, 4


def synthetic_episodes(n_episodes=4, length=12, views=1, h=84, w=84, seed=0, low=LOW,
                       act=ACT, demo=None, first_episode=0) -> list[StepRecord]:
    """Episodes of ``length`` transitions (length + 1 steps) in dm_env layout; even episodes
    succeed (terminated, reward 1), odd ones time out (truncated)."""
    rng = np.random.default_rng(seed)
    out, t = [], 1_700_000_000_000_000_000
    for e in range(first_episode, first_episode + n_episodes):
        for k in range(length + 1):
            t += 33_333_333
            last = k == length
            out.append(StepRecord(
                episode=e, index=k, stamp_ns=t, is_first=k == 0, is_last=last,
                terminated=last and e % 2 == 0,
                images=rng.integers(0, 256, (views, 3, h, w), dtype=np.uint8),
                low_dim=rng.standard_normal(low).astype(np.float32),
                action=(np.zeros(0, np.float32) if k == 0
                        else rng.uniform(-1, 1, act).astype(np.float32)),
                reward=0.0 if k == 0 else float(last and e % 2 == 0),
                is_intervention=k > 0 and 3 <= k <= 5,
                is_demo=bool(demo(e, k)) if demo else False))
    return out


def write_bag(path: Path, records: list[StepRecord], storage="mcap", step_topic="/step",
              extra=True) -> Path:
    """A bag like the demo recording: /step plus an interleaved /joint_states stream."""
    ts = project_typestore()
    JointState = ts.types["sensor_msgs/msg/JointState"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    with BagRecorder(path, storage) as bag:
        if extra:
            bag.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        if step_topic:
            bag.add_topic(step_topic, STEP_TYPE)
        for rec in records:
            if extra:
                js = JointState(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""),
                                name=["a", "b"], position=np.array([0.1, 0.2]),
                                velocity=np.zeros(2), effort=np.zeros(2))
                bag.write("/joint_states", rec.stamp_ns - 1000,
                          ts.serialize_cdr(js, "sensor_msgs/msg/JointState"))
            if step_topic:
                bag.write(step_topic, rec.stamp_ns,
                          ts.serialize_cdr(step_to_rosbags(rec, ts), STEP_TYPE))
    return path


def new_buffer(path: Path, capacity=2000, h=84, w=84, views=1) -> ReplayBuffer:
    return ReplayBuffer(path, capacity=capacity, image_shape=(views, 3, h, w),
                        low_dim_size=LOW, action_size=ACT)


def episodes_of(records):
    eps: dict[int, list[StepRecord]] = {}
    for r in records:
        eps.setdefault(r.episode, []).append(r)
    return eps


def assert_episodes_equal(episodes, records):
    """Read episodes equal the written records bit for bit (a first step's absent action
    reads as zeros of the episode's action size)."""
    for e in episodes:
        want = episodes_of(records)[e.episode]
        want[0] = dataclasses.replace(want[0], action=np.zeros(want[1].action.size, np.float32))
        assert len(e.steps) == len(want) and all(a.equals(b) for a, b in zip(e.steps, want))


def assert_buffer_holds(buf: ReplayBuffer, records: list[StepRecord], demo_flags=None):
    assert buf.num_steps == len(records)
    for i, rec in enumerate(records):
        got = buf.read_step(buf.total_steps_added - buf.num_steps + i)
        assert np.array_equal(got["images"], rec.images), f"images of step {i}"
        assert got["low_dim"].tobytes() == rec.low_dim.tobytes()
        want_action = rec.action if rec.action.size else np.zeros(ACT, np.float32)
        assert got["action"].tobytes() == want_action.tobytes()
        assert got["reward"] == np.float32(rec.reward)
        assert (got["is_first"], got["is_last"], got["terminated"]) == (
            rec.is_first, rec.is_last, rec.terminated)
        if not rec.is_first:
            assert got["is_intervention"] == rec.is_intervention
            want_demo = True if demo_flags is None else demo_flags(rec)
            assert got["is_demo"] == want_demo, f"is_demo of step {rec.episode}/{rec.index}"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_ingest_rebuilds_transitions_bit_exact(tmp_path, storage):
    records = synthetic_episodes()
    bag = write_bag(tmp_path / f"demo_{storage}", records, storage)
    with new_buffer(tmp_path / "buf") as buf:
        summary = ingest_bags([bag], buf)
        assert_buffer_holds(buf, records)
        assert len(buf) == summary.transitions == 4 * 12
        assert buf.num_episodes == summary.episodes == 4
        assert buf.num_intervention_transitions == summary.intervention_transitions == 4 * 3
        assert buf.num_demo_transitions == 48
        batch = buf.sample(8, np.random.default_rng(0))
        assert batch["rgb"].shape == (8, 1, 9, 84, 84) and batch["is_demo"].all()
    assert summary.successes == 2 and summary.success_rate == 0.5
    assert not summary.skipped and not summary.lost
    assert "success rate 50.0% (2/4)" in summary.format()


def test_ingest_is_deterministic_and_keeps_bag_order(tmp_path):
    a = write_bag(tmp_path / "a", synthetic_episodes(2, 6, seed=1))
    b = write_bag(tmp_path / "b", synthetic_episodes(2, 6, seed=2, first_episode=5))
    dirs = []
    for i in range(2):
        with new_buffer(tmp_path / f"buf{i}") as buf:
            ingest_bags([b, a], buf)
        dirs.append(tmp_path / f"buf{i}")
    for name in ("images", "low_dim", "action", "reward", "flags"):
        assert np.array_equal(np.load(dirs[0] / f"{name}.npy"), np.load(dirs[1] / f"{name}.npy"))
    with ReplayBuffer.open(dirs[0]) as buf:  # b's episodes first
        first = buf.read_step(0)
        assert np.array_equal(first["images"], synthetic_episodes(2, 6, seed=2)[0].images)


def test_demo_flags(tmp_path):
    # Episode 0 recorded in demo mode only from step 4 on: its flags are kept (auto);
    # episode 1 carries none: flagged demo as a whole.
    recs = synthetic_episodes(2, 6, demo=lambda e, k: e == 0 and k >= 4)
    bag = write_bag(tmp_path / "bag", recs)
    with new_buffer(tmp_path / "auto") as buf:
        ingest_bags([bag], buf)
        assert_buffer_holds(buf, recs, lambda r: r.is_demo if r.episode == 0 else True)
    with new_buffer(tmp_path / "keep") as buf:
        s = ingest_bags([bag], buf, demo_flags="keep")
        assert_buffer_holds(buf, recs, lambda r: r.is_demo)
        assert s.demo_transitions == 3
    with new_buffer(tmp_path / "all") as buf:
        ingest_bags([bag], buf, demo_flags="all")
        assert_buffer_holds(buf, recs, lambda r: True)


def test_mcap_readable_by_independent_reader(tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    records = synthetic_episodes(2, 5, views=2, h=32, w=40)
    bag = write_bag(tmp_path / "bag", records)
    (mcap_file,) = bag.glob("*.mcap")
    seen = []
    with mcap_file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, msg in reader.iter_decoded_messages(topics=["/step"]):
            assert schema.name == STEP_TYPE and channel.message_encoding == "cdr"
            rec = records[len(seen)]
            assert message.log_time == rec.stamp_ns
            assert (msg.episode, msg.index, msg.is_first, msg.is_last, msg.terminated) == (
                rec.episode, rec.index, rec.is_first, rec.is_last, rec.terminated)
            assert (msg.is_intervention, msg.is_demo) == (rec.is_intervention, rec.is_demo)
            assert np.float32(msg.reward) == np.float32(rec.reward)
            assert np.asarray(msg.low_dim, np.float32).tobytes() == rec.low_dim.tobytes()
            assert np.asarray(msg.action, np.float32).tobytes() == rec.action.tobytes()
            assert len(msg.images) == 2
            for img, view in zip(msg.images, rec.images):
                assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 32, 40, 120)
                assert bytes(img.data) == view.transpose(1, 2, 0).tobytes()
            seen.append(msg)
    assert len(seen) == len(records)


def _assert_prefix_episodes(buf: ReplayBuffer, records, n_episodes):
    eps = episodes_of(records)
    want = [r for e in sorted(eps)[:n_episodes] for r in eps[e]]
    assert_buffer_holds(buf, want)


@pytest.mark.parametrize("keep_metadata", [True, False])
def test_truncated_mcap_ingests_whole_episodes_and_reports_loss(tmp_path, keep_metadata):
    records = synthetic_episodes(6, 10)
    bag = write_bag(tmp_path / "bag", records)
    (mcap_file,) = bag.glob("*.mcap")
    size = mcap_file.stat().st_size
    os.truncate(mcap_file, int(size * 0.6))
    if not keep_metadata:  # like a `ros2 bag record` killed before writing its metadata
        (bag / "metadata.yaml").unlink()
    with new_buffer(tmp_path / "buf") as buf:
        summary = ingest_bags([bag], buf)
        assert 1 <= summary.episodes < 6
        _assert_prefix_episodes(buf, records, summary.episodes)
    text = summary.format()
    assert summary.lost and "truncated" in text
    if keep_metadata:
        assert "66 /step messages listed" in text
    assert any("no is_last" in s for s in summary.skipped), text


def test_truncated_sqlite_bag_keeps_whole_episodes(tmp_path):
    records = synthetic_episodes(4, 8)
    bag = write_bag(tmp_path / "bag", records, "sqlite3")
    (db,) = bag.glob("*.db3")
    os.truncate(db, int(db.stat().st_size * 0.6))
    try:
        with new_buffer(tmp_path / "buf") as buf:
            summary = ingest_bags([bag], buf)
            _assert_prefix_episodes(buf, records, summary.episodes)
        assert summary.lost or summary.skipped
    except BagError as exc:  # sqlite may refuse a cut file outright: then it says so
        assert "unreadable" in str(exc)


def test_steps_lost_mid_episode_skip_only_that_episode(tmp_path):
    records = synthetic_episodes(3, 6)
    del records[7 + 3]  # episode 1 loses index 3
    bag = write_bag(tmp_path / "bag", records)
    with new_buffer(tmp_path / "buf") as buf:
        summary = ingest_bags([bag], buf)
        kept = [r for r in records if r.episode != 1]
        assert_buffer_holds(buf, kept)
    assert summary.episodes == 2
    assert summary.skipped == ["bag: episode 1: steps 3..3 missing (lost messages)"]


def test_an_invalid_step_skips_only_its_episode(tmp_path):
    records = synthetic_episodes(3, 6, h=24, w=24)
    records[7 + 4].low_dim[2] = np.nan  # refused when episode 1 is stacked
    records[14 + 2].images = np.zeros((1, 3, 24, 20), np.uint8)  # refused as it arrives
    bag = write_bag(tmp_path / "bag", records)
    with new_buffer(tmp_path / "buf", h=24, w=24) as buf:
        summary = ingest_bags([bag], buf)
        assert_buffer_holds(buf, [r for r in records if r.episode == 0])
    assert summary.episodes == 1 and summary.dropped_steps == 14
    assert summary.skipped[0].startswith("bag: episode 1: invalid step: step episode 1 index 4")
    assert "low_dim: non-finite values at indices [2]" in summary.skipped[0]
    assert "episode 2: invalid step: step episode 2 index 2" in summary.skipped[1]
    report = ReadReport()  # without expected shapes (export): the episode's stack refuses
    assert [e.episode for e in read_episodes([bag], report=report)] == [0]
    assert "differs from the steps before it" in report.skipped[1]


def test_bytes_decoder_and_deserialiser_ingest_the_same(tmp_path, monkeypatch):
    """A bag read straight from the CDR bytes (the fast path) and through the rosbags
    deserialiser (the path for other definitions and big-endian data) fill the buffer
    alike, bit for bit."""
    from drqv2_ros.bags import episodes as ep_mod
    from drqv2_ros.observation.step_record import UndecodableStepError

    records = synthetic_episodes(4, 9, demo=lambda e, k: k % 3 == 0)
    bag = write_bag(tmp_path / "bag", records)
    with new_buffer(tmp_path / "fast") as buf:
        fast = ingest_bags([bag], buf)
        a = {k: np.array(v) for k, v in buf._a.items()}

    class Refuse:
        def __init__(self, **_kw):
            pass

        def __call__(self, raw):
            raise UndecodableStepError("forced")

    monkeypatch.setattr(ep_mod, "StepCdrDecoder", Refuse)
    with new_buffer(tmp_path / "slow") as buf:
        slow = ingest_bags([bag], buf)
        b = {k: np.array(v) for k, v in buf._a.items()}
    assert fast.transitions == slow.transitions == 4 * 9
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with ReplayBuffer.open(tmp_path / "fast") as buf:
        assert_buffer_holds(buf, records, demo_flags=lambda r: r.is_demo)


def test_recording_started_mid_episode(tmp_path):
    records = synthetic_episodes(2, 5)[3:]
    bag = write_bag(tmp_path / "bag", records)
    with new_buffer(tmp_path / "buf") as buf:
        summary = ingest_bags([bag], buf)
        assert summary.episodes == 1
    assert "first step missing" in summary.skipped[0]


def test_missing_step_topic_refused_naming_it(tmp_path):
    bag = write_bag(tmp_path / "bag", synthetic_episodes(1, 3), step_topic=None)
    with new_buffer(tmp_path / "buf") as buf:
        with pytest.raises(BagError, match=r"required topic /step \(drqv2_ros/msg/Step\) is "
                                           r"missing; it has: /joint_states"):
            ingest_bags([bag], buf)
        assert buf.num_steps == 0
    other = write_bag(tmp_path / "other", synthetic_episodes(1, 3), step_topic="/robot/step")
    with new_buffer(tmp_path / "buf2") as buf:
        with pytest.raises(BagError, match="/step_demo"):
            ingest_bags([other], buf, step_topic="step_demo")
        assert ingest_bags([other], buf).episodes == 1  # the only Step topic is found


@pytest.mark.parametrize("kw, expect", [
    (dict(h=64, w=64), r"images \(1, 3, 64, 64\) != \(1, 3, 84, 84\)"),
    (dict(low=21), "low_dim 21 != 18"),
    (dict(act=7), "action 7 != 4"),
])
def test_shape_mismatch_refused_with_shapes(tmp_path, kw, expect):
    good = write_bag(tmp_path / "good", synthetic_episodes(1, 3))
    bad = write_bag(tmp_path / "bad", synthetic_episodes(1, 3, **kw))
    with new_buffer(tmp_path / "buf") as buf:
        with pytest.raises(ShapeMismatchError, match=expect):
            ingest_bags([good, bad], buf)
        assert buf.num_steps == 0  # refused before anything was written


def write_checkpoint_config(path: Path, h=84, w=84, low=LOW, act=ACT) -> Path:
    path.mkdir(parents=True)
    try:
        from drqv2_ros.policy.configuration_drqv2 import DrQV2Config, default_low_dim_layout

        DrQV2Config(image_height=h, image_width=w, low_dim_per_frame=low,
                    low_dim_size=3 * low, low_dim_layout=default_low_dim_layout(low),
                    action_dim=act).save_pretrained(path)
    except ImportError:
        (path / "config.json").write_text(json.dumps(dict(
            num_views=1, channels_per_frame=3, image_height=h, image_width=w, frame_stack=3,
            low_dim_per_frame=low, low_dim_size=3 * low, action_dim=act)))
    return path


def test_cli_ingest_with_checkpoint(tmp_path, capsys):
    from drqv2_ros.bags.cli import ingest_main

    bag = write_bag(tmp_path / "bag", synthetic_episodes(2, 5))
    ckpt = write_checkpoint_config(tmp_path / "ckpt")
    assert ingest_main([str(bag), "--buffer", str(tmp_path / "buf"), "--checkpoint", str(ckpt),
                        "--no-progress", "--summary-json", str(tmp_path / "s.json")]) == 0
    assert "2 episodes, 10 transitions" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["transitions"] == 10
    with ReplayBuffer.open(tmp_path / "buf") as buf:
        assert buf.num_steps == 12 and buf.capacity >= 12

    small = write_checkpoint_config(tmp_path / "ckpt64", h=64, w=64)
    code = ingest_main([str(bag), "--buffer", str(tmp_path / "buf2"), "--checkpoint",
                        str(small), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "(1, 3, 84, 84) != (1, 3, 64, 64)" in err and "checkpoint" in err
    assert not (tmp_path / "buf2").exists()  # nothing created for a refused ingest


def test_target_from_checkpoint_config(tmp_path):
    t = TargetShapes.from_checkpoint(write_checkpoint_config(tmp_path / "c", low=21, act=4))
    assert (t.image_shape, t.low_dim_size, t.action_size) == ((1, 3, 84, 84), 21, 4)
    # read like every checkpoint config: a pipe is refused, never read (no hang)
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(BagError, match="named pipe"):
        TargetShapes.from_checkpoint(tmp_path / "pipe.json")


def test_recorder_writes_offered_qos_and_valid_metadata(tmp_path):
    from rosbags.interfaces import QosReliability
    from rosbags.rosbag2 import Reader

    class Profile:  # an rclpy QoSProfile, duck-typed
        history, depth, reliability, durability, liveliness = 1, 5, 2, 2, 1
        deadline = lifespan = liveliness_lease_duration = 0
        avoid_ros_namespace_conventions = False

    with BagRecorder(tmp_path / "bag", "mcap") as bag:
        bag.add_topic("/camera/image_policy", "sensor_msgs/msg/Image", [Profile()])
    with Reader(tmp_path / "bag") as reader:
        (conn,) = reader.connections
        assert conn.ext.offered_qos_profiles[0].reliability == QosReliability.BEST_EFFORT
    assert qos_from_profile(Profile()).depth == 5
    info = open_bag(tmp_path / "bag")
    assert info.topics["/camera/image_policy"].count == 0 and not info.salvage


def test_read_episodes_gives_complete_episodes_in_order(tmp_path):
    recs = synthetic_episodes(3, 4)
    bag = write_bag(tmp_path / "bag", recs)
    eps = list(read_episodes([bag]))
    assert [e.episode for e in eps] == [0, 1, 2]
    assert_episodes_equal(eps, recs)


# ------------------------------------------------------------------------------ export

def test_export_unavailable_says_why_and_writes_nothing(tmp_path, capsys):
    from drqv2_ros.bags.cli import export_main
    from drqv2_ros.bags.export import ExportUnavailable, lerobot_dataset_class

    try:
        lerobot_dataset_class()
    except ExportUnavailable:
        pass
    else:
        pytest.skip("LeRobotDataset is importable here")
    bag = write_bag(tmp_path / "bag", synthetic_episodes(1, 3))
    assert export_main([str(bag), str(tmp_path / "ds"), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "cannot export here" in err and "lerobot" in err
    assert not (tmp_path / "ds").exists()


class FakeDataset:
    """Records what LeRobotDataset.create/add_frame/save_episode receive."""

    fail_after: int | None = None
    created: list = []

    @classmethod
    def create(cls, repo_id, fps, features, root, robot_type=None, use_videos=True):
        ds = cls()
        ds.root, ds.features, ds.fps, ds.episodes, ds.frames = Path(root), features, fps, [], []
        ds.root.mkdir(parents=True, exist_ok=False)
        cls.created.append(ds)
        return ds

    def add_frame(self, frame):
        assert set(frame) == set(self.features) | {"task"}
        for k, spec in self.features.items():
            assert tuple(np.shape(frame[k])) == tuple(spec["shape"]), k
        self.frames.append(frame)

    def save_episode(self):
        if self.fail_after is not None and len(self.episodes) == self.fail_after:
            raise RuntimeError("disk full")
        (self.root / f"episode_{len(self.episodes)}").write_text("x")
        self.episodes.append(len(self.frames))

    def finalize(self):
        (self.root / "meta").write_text("done")


def test_export_frames_and_atomic_output(tmp_path):
    from drqv2_ros.bags.export import export_bags

    recs = synthetic_episodes(2, 5)
    bag = write_bag(tmp_path / "bag", recs)
    FakeDataset.created, FakeDataset.fail_after = [], None
    summary = export_bags([bag], tmp_path / "ds", dataset_cls=FakeDataset)
    assert (summary.episodes, summary.frames, summary.fps) == (2, 10, 30)
    assert (tmp_path / "ds" / "meta").read_text() == "done"
    ds = FakeDataset.created[-1]
    f0 = ds.frames[0]
    assert np.array_equal(f0["observation.images.rgb"], recs[0].images[0].transpose(1, 2, 0))
    assert f0["action"].tobytes() == recs[1].action.tobytes()  # a_0 is carried by step 1
    last = ds.frames[4]
    assert last["next.done"][0] and last["next.success"][0] and last["next.reward"][0] == 1.0
    assert not ds.frames[9]["next.success"][0]  # episode 1 timed out

    FakeDataset.fail_after = 1
    with pytest.raises(RuntimeError, match="disk full"):
        export_bags([bag], tmp_path / "ds2", dataset_cls=FakeDataset)
    assert not (tmp_path / "ds2").exists()
    assert not list(tmp_path.glob(".ds2.partial-*"))
    with pytest.raises(FileExistsError):
        export_bags([bag], tmp_path / "ds", dataset_cls=FakeDataset)


def test_reader_equals_rosbags_on_an_intact_bag(tmp_path):
    """The package's one reader yields exactly what the rosbags reader does on an intact
    bag, and what it reads record by record (no summary) equals what it reads with one."""
    from rosbags.rosbag2 import Reader

    from drqv2_ros.bags.reader import iter_topic

    recs = synthetic_episodes(2, 4)
    bag = write_bag(tmp_path / "bag", recs)
    ours = [(t, bytes(r)) for t, r in iter_topic(open_bag(bag), "/step")]
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == "/step"]
        theirs = [(t, bytes(r)) for _c, t, r in reader.messages(connections=conns)]
    assert ours == theirs and len(ours) == len(recs)
    (mcap_file,) = bag.glob("*.mcap")
    data = mcap_file.read_bytes()
    cut = tmp_path / "nosummary.mcap"   # the data section only: no footer, no summary
    cut.write_bytes(data[: len(data) - 200])
    info = open_bag(cut)
    assert info.salvage
    scanned = [(t, bytes(r)) for t, r in iter_topic(info, "/step")]
    assert scanned == ours[: len(scanned)] and len(scanned) >= len(ours) - 1
    shutil.rmtree(bag)


def write_external_mcap(path: Path, records: list[StepRecord]) -> Path:
    """A bare .mcap written by the independent `mcap_ros2` writer (zstd chunks with CRCs,
    schemas outside chunks, no metadata.yaml), like a C++ rosbag2 mcap file."""
    from mcap_ros2.writer import Writer

    text = project_typestore().generate_msgdef(STEP_TYPE, ros_version=2)[0]
    with path.open("wb") as f:
        w = Writer(f, chunk_size=100_000)
        schema = w.register_msgdef(STEP_TYPE, text)
        for r in records:
            sec, nsec = divmod(r.stamp_ns, 1_000_000_000)
            hdr = {"stamp": {"sec": sec, "nanosec": nsec}, "frame_id": ""}
            w.write_message("/step", schema, {
                "header": hdr, "episode": r.episode, "index": r.index, "is_first": r.is_first,
                "is_last": r.is_last, "terminated": r.terminated,
                "images": [{"header": hdr, "height": v.shape[1], "width": v.shape[2],
                            "encoding": "rgb8", "is_bigendian": 0, "step": 3 * v.shape[2],
                            "data": v.transpose(1, 2, 0).tobytes()} for v in r.images],
                "low_dim": r.low_dim.tolist(), "action": r.action.tolist(),
                "reward": r.reward, "is_intervention": r.is_intervention,
                "is_demo": r.is_demo}, log_time=r.stamp_ns, publish_time=r.stamp_ns)
        w.finish()
    return path


def test_external_mcap_and_corrupt_chunk(tmp_path):
    records = synthetic_episodes(4, 10, h=48, w=48)
    good = write_external_mcap(tmp_path / "ext.mcap", records)
    eps = list(read_episodes([good]))
    assert [e.episode for e in eps] == [0, 1, 2, 3]
    assert_episodes_equal(eps, records)

    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a compressed chunk
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    buf_dir = tmp_path / "buf"
    with ReplayBuffer(buf_dir, capacity=200, image_shape=(1, 3, 48, 48), low_dim_size=LOW,
                      action_size=ACT) as buf:
        summary = ingest_bags([bad], buf)
        kept = {e for e in range(4)} - {int(s.split("episode ")[1].split(":")[0])
                                        for s in summary.skipped}
        assert 2 <= summary.episodes == len(kept) < 4
        assert_buffer_holds(buf, [r for r in records if r.episode in kept])
    text = summary.format()
    assert "CRC" in text and "lost messages" in text


def test_ingest_into_replay_adds_each_bag_once(tmp_path):
    from drqv2_ros.bags.ingest import ingest_into_replay

    a = write_bag(tmp_path / "a", synthetic_episodes(1, 4, seed=1))
    b = write_bag(tmp_path / "b", synthetic_episodes(1, 4, seed=2))
    with new_buffer(tmp_path / "buf") as buf:
        s1 = ingest_into_replay([a], buf, tmp_path / "run")
        s2 = ingest_into_replay([a, b], buf, tmp_path / "run")  # a learner restart + new bag
        assert (s1.episodes, s2.episodes, buf.num_episodes) == (1, 1, 2)
        assert "already ingested" in s2.notes[0] and "1 episodes" in str(s2)
    with new_buffer(tmp_path / "fresh") as buf:  # a recreated buffer: ledger ignored
        assert ingest_into_replay([a, b], buf, tmp_path / "run").episodes == 2


def test_metadata_matches_rosbag2_jazzy_field_by_field(tmp_path, monkeypatch):
    """The layout rosbag2 (metadata version 9, Jazzy) writes (rosbag2_storage yaml.hpp /
    qos.cpp): the same keys at every level, QoS policies as rmw's strings, infinite durations
    as RMW_DURATION_INFINITE, RIHS01 type hashes, ros_distro from $ROS_DISTRO."""
    import yaml

    monkeypatch.delenv("ROS_DISTRO", raising=False)

    class Profile:  # reliable, transient local, keep last 600; infinite deadline/lifespan
        history, depth, reliability, durability, liveliness = 1, 600, 1, 1, 1
        deadline = lifespan = liveliness_lease_duration = 2**63 - 1
        avoid_ros_namespace_conventions = False

    recs = synthetic_episodes(1, 2, h=8, w=8)
    ts = project_typestore()
    with BagRecorder(tmp_path / "bag", "mcap") as bag:
        bag.add_topic("/step", STEP_TYPE, [Profile()])
        for r in recs:
            bag.write("/step", r.stamp_ns, ts.serialize_cdr(step_to_rosbags(r, ts), STEP_TYPE))
    info = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())
    meta = info["rosbag2_bagfile_information"]
    assert set(info) == {"rosbag2_bagfile_information"}
    assert set(meta) == {"version", "storage_identifier", "duration", "starting_time",
                         "message_count", "topics_with_message_count", "compression_format",
                         "compression_mode", "relative_file_paths", "files", "custom_data",
                         "ros_distro"}
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    assert meta["ros_distro"] == "jazzy"
    assert set(meta["duration"]) == {"nanoseconds"}
    assert set(meta["starting_time"]) == {"nanoseconds_since_epoch"}
    assert meta["message_count"] == len(recs) and meta["compression_format"] == ""
    (f,) = meta["files"]
    assert set(f) == {"path", "starting_time", "duration", "message_count"}
    assert meta["relative_file_paths"] == [f["path"]]
    (topic,) = meta["topics_with_message_count"]
    assert set(topic) == {"topic_metadata", "message_count"}
    tm = topic["topic_metadata"]
    assert set(tm) == {"name", "type", "serialization_format", "offered_qos_profiles",
                       "type_description_hash"}
    assert tm["type_description_hash"] == ts.hash_rihs01(STEP_TYPE)
    assert tm["type_description_hash"].startswith("RIHS01_")
    (q,) = tm["offered_qos_profiles"]
    infinite = {"sec": 9223372036, "nsec": 854775807}
    assert q == {"history": "keep_last", "depth": 600, "reliability": "reliable",
                 "durability": "transient_local", "deadline": infinite, "lifespan": infinite,
                 "liveliness": "automatic", "liveliness_lease_duration": infinite,
                 "avoid_ros_namespace_conventions": False}
    monkeypatch.setenv("ROS_DISTRO", "kilted")
    with BagRecorder(tmp_path / "bag2", "mcap") as bag:
        bag.add_topic("/step", STEP_TYPE, [Profile()])
    assert "ros_distro: kilted" in (tmp_path / "bag2" / "metadata.yaml").read_text()


def test_an_ingest_killed_half_way_leaves_the_buffer_as_it_was(tmp_path):
    """SIGKILL after some episodes were stored (and written back): the buffer reopens as
    before the ingest, so ingesting the bag again adds each episode once."""
    import subprocess
    import sys
    import textwrap

    records = synthetic_episodes(6, 8, h=24, w=24)
    bag = write_bag(tmp_path / "bag", records)
    with new_buffer(tmp_path / "buf", h=24, w=24) as buf:
        buf.add_steps(np.zeros((2, 1, 3, 24, 24), np.uint8), np.zeros((2, LOW), np.float32),
                      np.zeros((2, ACT), np.float32), np.zeros(2), is_first=[True, False],
                      is_last=[False, True], terminated=False)
    child = textwrap.dedent(f"""
        import os, signal
        import drqv2_ros.bags.ingest as ingest
        from drqv2_ros.learning.replay_buffer import ReplayBuffer
        real = ingest.read_episodes
        def killed_after_four(*a, **kw):
            for k, ep in enumerate(real(*a, **kw)):
                if k == 4:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield ep
        ingest.read_episodes = killed_after_four
        buf = ReplayBuffer.open({str(tmp_path / "buf")!r})
        ingest.ingest_bags([{str(bag)!r}], buf)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    with ReplayBuffer.open(tmp_path / "buf") as buf:
        assert (buf.total_steps_added, buf.episodes_added) == (2, 1)
        summary = ingest_bags([bag], buf)
        assert summary.episodes == 6 and buf.total_steps_added == 2 + len(records)


def test_export_opens_as_a_real_lerobot_dataset_equal_to_the_bag(tmp_path):
    """drqv2-ros export against the real LeRobotDataset (LeRobot 0.4.4, no mock): the dataset
    opens with LeRobotDataset(repo_id, root=...) and its frames, states, actions, rewards,
    done/success and intervention flags equal the bag's episodes."""
    from drqv2_ros.bags.cli import export_main
    from drqv2_ros.bags.export import ExportUnavailable, lerobot_dataset_class

    try:
        cls = lerobot_dataset_class()
    except ExportUnavailable as exc:
        pytest.skip(f"no LeRobotDataset here: {exc}")
    recs = synthetic_episodes(3, 6, seed=4)
    bag = write_bag(tmp_path / "bag", recs)
    out = tmp_path / "ds"
    assert export_main([str(bag), str(out), "--no-progress", "--repo-id", "local/demo"]) == 0
    ds = cls("local/demo", root=out)
    assert ds.num_episodes == 3 and ds.num_frames == 18 and ds.fps == 30
    by_episode = {}
    for r in recs:
        by_episode.setdefault(r.episode, []).append(r)
    i = 0
    for e, steps in sorted(by_episode.items()):
        for cur, nxt in zip(steps[:-1], steps[1:]):
            f = ds[i]
            assert int(f["episode_index"]) == e - min(by_episode)
            img = (f["observation.images.rgb"] * 255).round().to(torch.uint8).numpy()
            np.testing.assert_array_equal(img, cur.images[0])  # (C, H, W), exact
            np.testing.assert_array_equal(f["observation.state"].numpy(), cur.low_dim)
            np.testing.assert_array_equal(f["action"].numpy(), nxt.action)
            assert float(f["next.reward"]) == nxt.reward
            assert bool(f["next.done"]) == nxt.is_last
            assert bool(f["next.success"]) == (nxt.is_last and nxt.terminated and nxt.reward > 0)
            assert bool(f["is_intervention"]) == nxt.is_intervention
            i += 1
    assert i == len(ds)


# ------------------------------------------------------------- a failed ingest changes nothing

def _corrupt_sqlite(bag: Path, sql: str, *args) -> None:
    """Run ``sql`` on the bag's database, its messages table first rebuilt without the
    NOT NULL constraints rosbag2 declares (a hostile bag holds whatever it likes)."""
    import sqlite3

    (db,) = sorted(bag.glob("*.db3"))
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(messages)")]
    con.executescript(
        "ALTER TABLE messages RENAME TO m_old;"
        f"CREATE TABLE messages ({', '.join(cols)});"
        f"INSERT INTO messages ({', '.join(cols)}) SELECT {', '.join(cols)} FROM m_old;"
        "DROP TABLE m_old;")
    with con:
        con.execute(sql, args)
    con.close()


def _last_step_row(bag: Path) -> int:
    import sqlite3

    (db,) = sorted(bag.glob("*.db3"))
    con = sqlite3.connect(db)
    (rowid,) = con.execute("SELECT max(m.rowid) FROM messages m JOIN topics t ON "
                           "m.topic_id = t.id WHERE t.name = '/step'").fetchone()
    con.close()
    return rowid


def _buffer_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name == "state.json"
            or p.name == "spec.json"}


@pytest.mark.parametrize("column,value,why", [
    ("timestamp", "abc", "timestamp is TEXT, not INTEGER"),
    ("timestamp", 1.5, "timestamp is REAL, not INTEGER"),
    ("data", None, "data is NULL, not a BLOB"), ("data", "text", "data is TEXT, not a BLOB"),
    ("data", 2.5, "data is REAL, not a BLOB"), ("data", 700_000_000, "data is INTEGER")])
def test_a_failed_ingest_changes_nothing_and_says_where(tmp_path, capsys, column, value, why):
    import time

    from drqv2_ros.bags.cli import ingest_main
    from drqv2_ros.learning.replay_buffer import ReplayBuffer

    good = write_bag(tmp_path / "good", synthetic_episodes(2, 4, seed=1), storage="sqlite3")
    bad_recs = synthetic_episodes(3, 4, seed=2, first_episode=2)
    bad = write_bag(tmp_path / "bad", bad_recs, storage="sqlite3")
    row = _last_step_row(bad)  # the last step of the last episode: two are read before it
    _corrupt_sqlite(bad, f"UPDATE messages SET {column} = ? WHERE rowid = ?", value, row)
    buf = tmp_path / "buf"
    assert ingest_main([str(good), "--buffer", str(buf), "--capacity", "200",
                        "--no-progress"]) == 0
    before = _buffer_files(buf)
    with ReplayBuffer.open(buf) as b:
        counts = (len(b), b.num_steps, b.num_episodes, b.total_steps_added)
    capsys.readouterr()
    t0 = time.monotonic()
    assert ingest_main([str(bad), "--buffer", str(buf), "--no-progress"]) == 1
    assert time.monotonic() - t0 < 20  # bounded: no 700 MB of zeros made from an INTEGER
    err = capsys.readouterr().err
    assert why in err and "sqlite3" in err and f"row {row}" in err and str(bad) in err, err
    assert "nothing stored" in err
    assert _buffer_files(buf) == before  # the state and spec files, byte for byte
    with ReplayBuffer.open(buf) as b:
        assert (len(b), b.num_steps, b.num_episodes, b.total_steps_added) == counts
    # the same bad bag into a NEW buffer: no folder, no temporary sibling left behind
    assert ingest_main([str(bad), "--buffer", str(tmp_path / "new"), "--no-progress"]) == 1
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new.ingest-")]
    # fixed, the rerun stores its episodes once (none twice)
    fixed = write_bag(tmp_path / "fixed", bad_recs, storage="sqlite3")
    assert ingest_main([str(fixed), "--buffer", str(buf), "--no-progress"]) == 0
    with ReplayBuffer.open(buf) as b:
        assert b.num_episodes == counts[2] + 3 and b.num_steps == counts[1] + 15


def test_an_ingest_that_would_evict_reads_every_bag_before_storing(tmp_path, capsys):
    # a full ring: storing evicts stored steps, so a bad record must refuse the ingest
    # before anything is written, not half way
    from drqv2_ros.bags.cli import ingest_main
    from drqv2_ros.learning.replay_buffer import ReplayBuffer

    first = write_bag(tmp_path / "first", synthetic_episodes(2, 4, seed=1), storage="sqlite3")
    buf = tmp_path / "buf"
    assert ingest_main([str(first), "--buffer", str(buf), "--no-progress"]) == 0  # full
    with ReplayBuffer.open(buf) as b:
        stored = [b.read_step(i)["images"].tobytes() for i in range(b.num_steps)]
        free = b.capacity - b.num_steps
    assert free == 0
    more = write_bag(tmp_path / "more", synthetic_episodes(2, 4, seed=3, first_episode=5),
                     storage="sqlite3")
    _corrupt_sqlite(more, "UPDATE messages SET timestamp = 'x' WHERE rowid = ?",
                    _last_step_row(more))
    assert ingest_main([str(more), "--buffer", str(buf), "--no-progress"]) == 1
    assert "refused" in capsys.readouterr().err
    with ReplayBuffer.open(buf) as b:
        assert [b.read_step(i)["images"].tobytes() for i in range(b.num_steps)] == stored


@pytest.mark.parametrize("args,option", [
    (["--capacity", "0"], "--capacity"), (["--capacity", "-3"], "--capacity"),
    (["--frame-stack", "0"], "--frame-stack"), (["--nstep", "0"], "--nstep"),
    (["--discount", "nan"], "--discount"), (["--discount", "1.5"], "--discount"),
    (["--image-size", "0", "84", "--low-dim", "18", "--action-size", "4"], "--image-size"),
    (["--image-size", "84", "84", "--low-dim", "-1", "--action-size", "4"], "--low-dim"),
    (["--image-size", "84", "84", "--views", "0", "--low-dim", "18", "--action-size", "4"],
     "--views"),
    (["--image-size", "84", "84", "--low-dim", "18", "--action-size", "0"], "--action-size")])
def test_ingest_options_refuse_nonsense_before_any_work(tmp_path, capsys, args, option):
    from drqv2_ros.bags.cli import ingest_main

    bag = write_bag(tmp_path / "bag", synthetic_episodes(1, 3))
    with pytest.raises(SystemExit) as exc:
        ingest_main([str(bag), "--buffer", str(tmp_path / "buf"), *args])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "buf").exists()


def test_export_fps_out_of_range_is_refused(tmp_path, capsys):
    from drqv2_ros.bags.cli import export_main

    bag = write_bag(tmp_path / "bag", synthetic_episodes(1, 3))
    for fps in ("0", "-1", "100000"):
        with pytest.raises(SystemExit) as exc:
            export_main([str(bag), str(tmp_path / "ds"), "--fps", fps])
        assert exc.value.code == 2 and "--fps" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
