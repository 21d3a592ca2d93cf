"""A full disk never kills the learner (no SIGBUS through the memory map, no dead training
thread): it stops storing and training, says so, resumes when space returns, and what it had
flushed stays intact. Tested on a small tmpfs (root; skipped with the reason elsewhere)."""

from __future__ import annotations

import errno
import subprocess
import threading
import time

import numpy as np
import pytest
from test_training_loop import cfg_for, episode, small_policy

from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.learning.training_loop import TrainingLoop

SPEC = dict(image_shape=(1, 3, 24, 24), low_dim_size=18, action_size=4, frame_stack=2,
            nstep=3, discount=0.99)


def mount_tmpfs(d, options: str):
    """A tmpfs at ``d`` (made); skips the test, saying why, where mounting is not allowed."""
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {r.stderr.strip()}")
    return d


def unmount(d) -> None:
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    d = mount_tmpfs(tmp_path / "disk", "size=12m")
    yield d
    unmount(d)


def fill(d):
    """Take every free byte of the file system holding ``d``."""
    ballast = d / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):  # down to the last byte
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return ballast


def test_ring_files_hold_their_blocks(tmp_path):
    buf = ReplayBuffer(tmp_path / "rb", capacity=200, **SPEC)
    for f in (tmp_path / "rb").glob("*.npy"):
        st = f.stat()
        assert st.st_blocks * 512 >= st.st_size, f.name  # not sparse: no SIGBUS later
    buf.close()


def test_a_ring_the_disk_cannot_hold_is_refused_at_once(small_disk):
    with pytest.raises(OSError, match="cannot allocate") as info:
        ReplayBuffer(small_disk / "rb", capacity=20_000, **SPEC)  # ~35 MB on a 12 MB disk
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (small_disk / "rb").iterdir()) == ["lock"]  # no debris


class RunningLoop:
    """A TrainingLoop on ``small_disk`` with its work loop in a thread; ``wait`` for a
    condition (failing if the thread died or it timed out); ``stop`` ends it."""

    def __init__(self, small_disk, checkpoint_period_updates: int):
        cfg = cfg_for(small_disk, flush_period_s=0.05, fault_retry_s=0.2)
        cfg.checkpoint_period_updates = checkpoint_period_updates
        self.loop = TrainingLoop(cfg, small_policy())
        self.stop_event, self.metrics = threading.Event(), []
        self.thread = threading.Thread(target=self.loop.run, args=(
            self.stop_event, lambda w: None, self.metrics.append))
        self.thread.start()

    def wait(self, pred, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.thread.is_alive(), f"training thread died waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        self.loop.close()


def test_full_disk_pauses_the_learner_and_loses_nothing(small_disk):
    run = RunningLoop(small_disk, checkpoint_period_updates=4)
    loop, wait, metrics, th = run.loop, run.wait, run.metrics, run.thread
    rng = np.random.default_rng(0)
    fed = [r for ep in range(3) for r in episode(ep, 12, rng)]
    try:
        for r in fed:
            loop.submit(r)
        wait(lambda: loop.counters.stored == len(fed) and
             loop.replay.online.num_unflushed_steps == 0 and loop.counters.updates >= 4,
             "the first episodes stored, flushed and trained on")
        ballast = fill(small_disk)
        more = [r for r in episode(3, 12, rng)]
        for r in more:
            loop.submit(r)
        wait(lambda: bool(loop.fault), "the storage fault")
        assert loop.status().startswith("storage fault (retrying)")
        updates = loop.counters.updates
        time.sleep(0.5)
        assert th.is_alive() and loop.counters.updates == updates  # no training meanwhile
        wait(lambda: metrics and metrics[-1]["storage_ok"] == 0.0, "metrics saying so")
        ballast.unlink()  # space returns
        wait(lambda: not loop.fault and loop.counters.stored == len(fed) + len(more),
             "storing to resume")
        assert loop.status() == "ok"
        c = loop.intake.counts()[""]
        assert c.received == c.stored + sum(c.dropped.values())
    finally:
        run.stop()
    buf = ReplayBuffer.open(small_disk / "out" / "replay" / "online")
    assert buf.total_steps_added == loop.counters.stored
    for i, r in enumerate(fed + more):  # what was stored is what was sent, in order
        if i < buf.total_steps_added:
            np.testing.assert_array_equal(buf.read_step(i)["images"], r.images)
    buf.close()


def test_a_read_only_output_dir_is_refused_with_the_reason(tmp_path):
    d = mount_tmpfs(tmp_path / "ro", "size=1m,ro")
    try:
        with pytest.raises(OSError, match="not writable.*Read-only file system") as info:
            TrainingLoop(cfg_for(d), small_policy())
        assert info.value.errno == errno.EROFS and str(d) in str(info.value)
    finally:
        unmount(d)


def test_garbage_replay_state_files_name_the_file(tmp_path):
    buf = ReplayBuffer(tmp_path / "rb", capacity=20, **SPEC)
    buf.close()
    for name in ("state.json", "spec.json"):
        good = (tmp_path / "rb" / name).read_text()
        for garbage in ("garbage{", "[1, 2]", '{"total": "x"}'):
            (tmp_path / "rb" / name).write_text(garbage)
            with pytest.raises(ValueError, match=name):
                ReplayBuffer.open(tmp_path / "rb")
        (tmp_path / "rb" / name).write_text(good)
    ReplayBuffer.open(tmp_path / "rb").close()


def test_a_disk_without_room_for_checkpoints_keeps_storing_steps(small_disk):
    """Room for the buffers (preallocated) but not for the learner state and checkpoint:
    storing and training go on, each failed save is reported and tried again, acknowledged
    steps stay durable, and saving works again once space returns."""
    import os

    run = RunningLoop(small_disk, checkpoint_period_updates=2)
    loop, wait, metrics = run.loop, run.wait, run.metrics
    rng = np.random.default_rng(1)
    first = [r for ep in range(2) for r in episode(ep, 12, rng)]
    try:
        for r in first:
            loop.submit(r)
        wait(lambda: loop.counters.stored == len(first) and loop.counters.updates >= 2,
             "the first steps stored and trained on")
        ckpt = small_disk / "out" / "checkpoints" / "last" / "model.safetensors"
        wait(ckpt.is_file, "a first checkpoint")
        size = ckpt.stat().st_size
        ballast = fill(small_disk)
        os.truncate(ballast, ballast.stat().st_size - 16 * 4096)  # room for small files only
        assert size > 16 * 4096
        more = [r for ep in range(2, 5) for r in episode(ep, 12, rng)]
        updates = loop.counters.updates
        for r in more:
            loop.submit(r)
        wait(lambda: loop.checkpoint_faults > 0, "a failed checkpoint reported")
        wait(lambda: loop.counters.stored == len(first) + len(more)
             and loop.replay.online.num_unflushed_steps == 0, "storing to go on")
        wait(lambda: loop.counters.updates > updates + 4, "training to go on")
        assert not loop.fault and loop.status() == "ok"
        wait(lambda: metrics and metrics[-1]["checkpoint_ok"] == 0.0
             and metrics[-1]["storage_ok"] == 1.0, "metrics saying so")
        ballast.unlink()  # space returns: the next periodic save works
        wait(lambda: not loop.checkpoint_fault, "saving to work again")
    finally:
        run.stop()
    buf = ReplayBuffer.open(small_disk / "out" / "replay" / "online")
    assert buf.total_steps_added == len(first) + len(more)
    for i, r in enumerate(first + more):
        np.testing.assert_array_equal(buf.read_step(i)["images"], r.images)
    buf.close()
