"""The bag reader at a bounded cost: decompression bombs, chunks that inflate past their
declared size, corrupt zstd / lz4 chunks are skipped, counted and named with the bag's path
(the rest of the bag is read); a topic whose channels disagree on QoS (with each other or with
metadata.yaml) loses no message."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from mcap.writer import CompressionType, Writer
from test_bags import synthetic_episodes

from drqv2_ros.bags.episodes import read_episodes
from drqv2_ros.bags.reader import ReadLimits, iter_topic, open_bag
from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore, step_to_rosbags

HEAD = struct.Struct("<BQ")


def steps(n_episodes=6, length=5):
    return synthetic_episodes(n_episodes, length, h=24, w=24)


def write_mcap(path: Path, records, compression=CompressionType.ZSTD, chunk_size=4096,
               qos=("reliable",)) -> Path:
    """One Step message per record; one chunk per episode or so; one channel per QoS
    variant of /step (messages alternate between them, as after a publisher restart)."""
    ts = project_typestore()
    with path.open("wb") as f:
        w = Writer(f, chunk_size=chunk_size, compression=compression)
        w.start("ros2", "test")
        msgdef, _digest = ts.generate_msgdef(STEP_TYPE, ros_version=2)
        sid = w.register_schema(STEP_TYPE, "ros2msg", msgdef.encode())
        cids = [w.register_channel("/step", "cdr", sid, {"offered_qos_profiles": q})
                for q in qos]
        for i, rec in enumerate(records):
            data = ts.serialize_cdr(step_to_rosbags(rec, ts), STEP_TYPE)
            w.add_message(cids[i % len(cids)], rec.stamp_ns, bytes(data), rec.stamp_ns, i)
        w.finish()
    return path


def chunk_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every chunk record in file order."""
    data, pos, out = path.read_bytes(), 8, []
    while pos + 9 <= len(data):
        op, length = HEAD.unpack_from(data, pos)
        if op == 0x06:
            out.append((pos, length))
        if op in (0x02, 0x0F):
            break
        pos += 9 + length
    return out


def chunk_record(data: bytes, compression: str, declared: int) -> bytes:
    body = struct.pack("<QQQI", 0, 0, declared, 0)
    body += struct.pack("<I", len(compression)) + compression.encode()
    body += struct.pack("<Q", len(data)) + data
    return HEAD.pack(0x06, len(body)) + body


def replace_chunk(path: Path, index: int, record: bytes, out: Path) -> Path:
    """A copy of the file with chunk ``index`` replaced (summary section dropped: offsets
    would be stale, the reader scans)."""
    data = path.read_bytes()
    off, length = chunk_offsets(path)[index]
    end = chunk_offsets(path)[-1][0] + 9 + chunk_offsets(path)[-1][1]
    out.write_bytes(data[:off] + record + data[off + 9 + length:end])
    return out


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reader")
    p = write_mcap(tmp / "good.mcap", steps())
    assert len(chunk_offsets(p)) >= 4
    return p


def _episodes(path):
    eps = list(read_episodes([path], report=(rep := __import__(
        "drqv2_ros.bags.episodes", fromlist=["ReadReport"]).ReadReport())))
    return eps, rep


def test_a_clean_bag_reads_whole(bag):
    eps, rep = _episodes(bag)
    assert len(eps) == 6 and not rep.lost and not rep.skipped


def test_a_decompression_bomb_chunk_is_skipped_without_inflating(bag, tmp_path):
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (500 << 20))   # 500 MB of zeros
    assert len(bomb) < 64 << 10
    for declared, why in [(500 << 20, "above the ceiling"), (4096, "inflates to more")]:
        p = replace_chunk(bag, 1, chunk_record(bomb, "zstd", declared),
                          tmp_path / f"bomb{declared}.mcap")
        tracemalloc.start()
        t0 = time.monotonic()
        info = open_bag(p, ReadLimits(max_chunk_bytes=64 << 20))
        n = sum(1 for _ in iter_topic(info, "/step"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 << 20, f"peak {peak >> 20} MB while reading a bomb"
        assert time.monotonic() - t0 < 10
        assert info.skipped_chunks >= 1 and n > 0
        assert any(why in m and str(p) in m for m in info.problems), info.problems


@pytest.mark.parametrize("compression", [CompressionType.ZSTD, CompressionType.LZ4])
def test_a_corrupt_chunk_is_skipped_named_and_the_rest_read(bag, tmp_path, compression):
    src = write_mcap(tmp_path / "src.mcap", steps(), compression=compression)
    off, length = chunk_offsets(src)[2]
    data = bytearray(src.read_bytes())
    mid = off + 9 + length // 2
    data[mid:mid + 64] = bytes(64)   # garbage in the compressed stream
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    eps, rep = _episodes(bad)
    assert 0 < len(eps) < 6, "the chunk's episodes are skipped, the others ingested"
    assert any("bad.mcap" in m and "skipped" in m for m in rep.lost), rep.lost


def test_channels_that_disagree_on_qos_lose_no_message(tmp_path):
    p = tmp_path / "bag"
    p.mkdir()
    write_mcap(p / "bag_0.mcap", steps(), qos=("- history: 1\n  depth: 10\n  reliability: 1",
                                               "- history: 1\n  depth: 1\n  reliability: 2"))
    # rosbag2's metadata.yaml saying a third thing (as rosbag2's own test bags do)
    (p / "metadata.yaml").write_text(
        "rosbag2_bagfile_information:\n  version: 9\n  storage_identifier: mcap\n"
        "  relative_file_paths: [bag_0.mcap]\n  topics_with_message_count:\n"
        "    - topic_metadata:\n        name: /step\n        type: drqv2_ros/msg/Step\n"
        "        serialization_format: cdr\n        offered_qos_profiles: ''\n"
        "      message_count: 36\n")
    info = open_bag(p)
    assert info.topics["/step"].count == 36
    assert sum(1 for _ in iter_topic(info, "/step")) == 36
    eps, rep = _episodes(p)
    assert len(eps) == 6 and not rep.lost


def test_a_file_cut_short_gives_up_what_is_whole(bag, tmp_path):
    data = bag.read_bytes()
    off, length = chunk_offsets(bag)[3]
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: off + 9 + length // 2])
    eps, rep = _episodes(cut)
    assert 0 < len(eps) < 6 and any("cut short" in m for m in rep.lost), rep.lost


@pytest.mark.parametrize("damage", ["overrun", "short_message"])
def test_a_malformed_record_inside_a_chunk_skips_that_chunk(tmp_path, damage):
    """Message records inside a chunk are framed from their fixed fields: one whose length
    runs past the chunk, or is too short for those fields, costs its chunk (named), not the
    bag, and nothing is read outside the chunk."""
    src = write_mcap(tmp_path / "src.mcap", steps(), compression=CompressionType.NONE)
    off, length = chunk_offsets(src)[2]
    data = src.read_bytes()
    body = data[off + 9:off + 9 + length]
    # chunk header: start, end, size (8 each), crc (4), compression "" (4 + 0), length (8)
    records = bytearray(body[40:])
    pos = 0
    while records[pos] != 0x05:  # the first message record of the chunk
        pos += 9 + HEAD.unpack_from(records, pos)[1]
    new_len = len(records) if damage == "overrun" else 10
    if damage == "short_message":
        records[pos + 9 + 10:pos + 9 + HEAD.unpack_from(records, pos)[1]] = b""
    HEAD.pack_into(records, pos, 0x05, new_len)
    bad = replace_chunk(src, 2, chunk_record(bytes(records), "", len(records)),
                        tmp_path / "bad.mcap")
    eps, rep = _episodes(bad)
    assert 0 < len(eps) < 6
    assert any("bad.mcap" in m and "malformed records inside" in m for m in rep.lost), rep.lost


def test_an_episode_that_never_ends_cannot_exhaust_memory(tmp_path):
    """Frames of an open episode are held until its last step: past
    ``ReadLimits.max_episode_bytes`` the episode is skipped (its memory freed, its further
    steps dropped as they come) and the other episodes are read."""
    records = synthetic_episodes(3, 40, h=24, w=24)
    p = write_mcap(tmp_path / "long.mcap", records)
    frame = 3 * 24 * 24
    info = open_bag(p, ReadLimits(max_episode_bytes=32 * frame))
    from drqv2_ros.bags.episodes import ReadReport, check_bags

    report = ReadReport()
    checked = check_bags([p])
    checked = [(info, topic, first) for _i, topic, first in checked]
    eps = list(read_episodes([p], report=report, checked=checked))
    assert eps == [] and report.dropped_steps == 3 * 41
    assert all("ReadLimits.max_episode_bytes" in s for s in report.skipped), report.skipped
    info = open_bag(p, ReadLimits(max_episode_bytes=64 * frame))  # 41 steps fit in 64
    assert len(list(read_episodes([p], checked=[(info, "/step", None)]))) == 3
