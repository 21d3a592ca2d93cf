"""Ingest throughput vs the raw read speed of the same bag.

    python bench/bench_ingest.py [--episodes 40 --length 100 --storage mcap]

Writes a synthetic demo bag (84x84 rgb8 single view, 18 low-dim, 4 actions; /step plus an
interleaved /joint_states stream as in a demo recording), then times
  raw:    rosbags Reader iterating the /step messages + CDR deserialisation only,
  decode: raw + StepRecord.from_msg (validation, CHW copy),
  ingest: drqv2_ros.bags.ingest.ingest_bags into a fresh ReplayBuffer (pre-check, episode
          assembly, buffer writes, flushes),
and prints steps/s of each and the ingest/raw ratio. Best of --repeat interleaved runs.
Where /dev/shm is a tmpfs, the ingest is timed again with the buffer there (no disk
write-back: what the per-step work alone costs), and the disk alone is timed writing and
syncing the same bytes of frames (the floor of the durable part).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from drqv2_ros.bags.ingest import ingest_bags
from drqv2_ros.bags.recorder import BagRecorder
from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore, step_to_rosbags
from drqv2_ros.cli_checks import int_in
from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.observation.step_record import StepRecord, from_msg


def write_demo_bag(path: Path, episodes: int, length: int, storage: str, size: int) -> int:
    ts = project_typestore()
    JointState = ts.types["sensor_msgs/msg/JointState"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(0)
    t, n = 1_700_000_000_000_000_000, 0
    with BagRecorder(path, storage) as bag:
        bag.add_topic("/step", STEP_TYPE)
        bag.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        for e in range(episodes):
            for k in range(length + 1):
                t += 33_333_333
                rec = StepRecord(
                    episode=e, index=k, stamp_ns=t, is_first=k == 0, is_last=k == length,
                    terminated=k == length and e % 2 == 0,
                    images=rng.integers(0, 256, (1, 3, size, size), np.uint8),
                    low_dim=rng.standard_normal(18).astype(np.float32),
                    action=(np.zeros(0, np.float32) if k == 0
                            else rng.uniform(-1, 1, 4).astype(np.float32)),
                    reward=float(k == length and e % 2 == 0), is_intervention=False,
                    is_demo=True)
                js = JointState(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""),
                                name=[f"j{i}" for i in range(6)], position=np.zeros(6),
                                velocity=np.zeros(6), effort=np.zeros(6))
                bag.write("/joint_states", t - 1, ts.serialize_cdr(js, "sensor_msgs/msg/"
                                                                       "JointState"))
                bag.write("/step", t, ts.serialize_cdr(step_to_rosbags(rec, ts), STEP_TYPE))
                n += 1
    return n


def time_raw(bag: Path, decode: bool) -> tuple[float, int]:
    from rosbags.rosbag2 import Reader

    ts = project_typestore()
    t0 = time.perf_counter()
    n = 0
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == "/step"]
        for _c, _t, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, STEP_TYPE)
            if decode:
                from_msg(msg, action_size=4)
            n += 1
    return time.perf_counter() - t0, n


def time_ingest(bag: Path, work: Path, steps: int, size: int) -> tuple[float, int]:
    buf_dir = work / "buffer"
    shutil.rmtree(buf_dir, ignore_errors=True)
    buf = ReplayBuffer(buf_dir, capacity=steps, image_shape=(1, 3, size, size),
                       low_dim_size=18, action_size=4)
    t0 = time.perf_counter()
    summary = ingest_bags([bag], buf)
    dt = time.perf_counter() - t0
    buf.close()
    return dt, summary.transitions


def time_disk(work: Path, nbytes: int, block: int = 2 << 20) -> float:
    """What the disk alone takes for the frames an ingest stores: ``nbytes`` written into a
    fresh preallocated file next to the buffer in ``block``-sized ``pwrite``-s, then
    ``fdatasync``. No decoding: the floor the durable part of an ingest cannot go under."""
    path = work / "disk_floor.bin"
    data = np.random.default_rng(0).integers(0, 256, block, np.uint8).tobytes()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, nbytes)
        t0 = time.perf_counter()
        for off in range(0, nbytes, block):
            os.pwrite(fd, data[:min(block, nbytes - off)], off)
        os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int_in(1, 100_000), default=40)
    ap.add_argument("--length", type=int_in(1, 100_000), default=100,
                    help="transitions per episode")
    ap.add_argument("--size", type=int_in(8, 1024), default=84)
    ap.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    ap.add_argument("--repeat", type=int_in(1, 1000), default=5)
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ingest_"))
    work.mkdir(parents=True, exist_ok=True)
    bag = work / f"demo_{args.storage}"
    shutil.rmtree(bag, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        steps = write_demo_bag(bag, args.episodes, args.length, args.storage, args.size)
        mb = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        print(f"bag: {steps} steps ({args.episodes} episodes x {args.length + 1}), "
              f"{args.size}x{args.size}, {args.storage}, {mb:.0f} MB, written in "
              f"{time.perf_counter() - t0:.1f} s")
        # Interleaved repeats (raw, decode, ingest, ingest on tmpfs, raw, ...), best of each:
        # a shared machine's slow phases then hit every measurement alike.
        shm = Path("/dev/shm")
        mem_work = (Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=shm))
                    if shm.is_dir() and os.access(shm, os.W_OK) else None)
        raws, decs, runs, mems, disks = [], [], [], [], []
        frame_bytes = steps * 3 * args.size * args.size
        try:
            for _ in range(args.repeat):
                raws.append(time_raw(bag, False)[0])
                decs.append(time_raw(bag, True)[0])
                runs.append(time_ingest(bag, work, steps, args.size))
                disks.append(time_disk(work, frame_bytes))
                if mem_work is not None:
                    mems.append(time_ingest(bag, mem_work, steps, args.size)[0])
        finally:
            if mem_work is not None:
                shutil.rmtree(mem_work, ignore_errors=True)
        raw, dec = min(raws), min(decs)
        ing, transitions = min(runs)
        print(f"raw read + deserialise : {steps / raw:8.0f} steps/s ({raw:.2f} s)")
        print(f"  + StepRecord.from_msg: {steps / dec:8.0f} steps/s ({dec:.2f} s)")
        print(f"ingest into buffer     : {steps / ing:8.0f} steps/s, {transitions / ing:.0f} "
              f"transitions/s ({ing:.2f} s)")
        print(f"ingest / raw throughput: {raw / ing:.2f}")
        if mems:
            mem = min(mems)
            print(f"ingest, buffer on tmpfs: {steps / mem:8.0f} steps/s ({mem:.2f} s): "
                  f"{raw / mem:.2f} of raw (the per-step work, without the disk)")
        disk = min(disks)
        print(f"the disk alone         : {frame_bytes / 1e6:.0f} MB of frames written and "
              f"synced in {disk:.2f} s ({frame_bytes / 1e6 / disk:.0f} MB/s): a durable "
              f"ingest can reach at most {raw / disk:.2f} of raw here")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
