"""Stale Fast DDS shared-memory files (left by SIGKILLed processes) are found by their
unheld lock files; segments a live process holds are kept, also those of a real running
node (Fast DDS holds BSD flock locks, which a POSIX-lock probe cannot see)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ros_harness import wait_for

from drqv2_ros.bringup.shm_clean import clean, stale_segments

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""


def test_only_unheld_segments_are_removed(tmp_path):
    for base in ("fastrtps_aaaa", "fastrtps_bbbb"):
        (tmp_path / base).write_bytes(b"x")
        (tmp_path / f"{base}_el").write_bytes(b"")
    (tmp_path / "sem.fastrtps_aaaa_mutex").write_bytes(b"")
    (tmp_path / "unrelated").write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "fastrtps_bbbb_el")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert sorted(stale_segments(tmp_path)) == sorted(
            ["fastrtps_aaaa", "fastrtps_aaaa_el", "sem.fastrtps_aaaa_mutex"])
        clean(tmp_path)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == ["fastrtps_bbbb", "fastrtps_bbbb_el", "unrelated"]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert sorted(stale_segments(tmp_path)) == ["fastrtps_bbbb", "fastrtps_bbbb_el"]


@pytest.mark.dds
def test_a_running_nodes_shared_memory_is_never_stale(launch_node):
    node = launch_node("drqv2_ros.nodes.teleop_node", params_file="config/teleop.yaml")

    def held() -> set[str]:  # /dev/shm files the node process has open (Fast DDS's own)
        names = set()
        for fd in Path(f"/proc/{node.proc.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("/dev/shm/fastrtps_"):
                names.add(Path(target).name)
        return names

    wait_for(lambda: any(n.endswith("_el") for n in held()), 30, "the node's Fast DDS locks",
             [node])
    mine = held()
    assert not mine & set(stale_segments()), "a live node's segments were taken for stale"
    clean()
    assert all((Path("/dev/shm") / n).exists() for n in mine)
    assert node.alive()


def test_sim_finetune_reports_only_its_own_leftovers(tmp_path):
    """sim-finetune's end-of-run check: files new since the start that nobody holds, and
    its private domain's port files (removed), count; another process's live files made
    meanwhile (a test suite beside the run) are neither reported nor touched."""
    from drqv2_ros.demo.sim_finetune import _release_shm

    (tmp_path / "fastrtps_old").write_bytes(b"")           # there before the run
    (tmp_path / "fastrtps_old_el").write_bytes(b"")
    before = {p.name for p in tmp_path.iterdir()}
    for base in ("fastrtps_live", "fastrtps_dead"):         # made during the run
        (tmp_path / base).write_bytes(b"x")
        (tmp_path / f"{base}_el").write_bytes(b"")
    own = 7400 + 250 * 42 + 11                              # domain 42's port
    for name in (f"fastrtps_port{own}", f"sem.fastrtps_port{own}_mutex", "fastrtps_port7011"):
        (tmp_path / name).write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "fastrtps_live_el")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cleaned, leftover = _release_shm(before, 42, timeout=0.5, shm=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert cleaned == sorted([f"fastrtps_port{own}", f"sem.fastrtps_port{own}_mutex"])
    assert leftover == ["fastrtps_dead", "fastrtps_dead_el"]
    assert {"fastrtps_live", "fastrtps_live_el", "fastrtps_port7011", "fastrtps_old"} <= \
        {p.name for p in tmp_path.iterdir()}
