"""Stale Fast DDS shared-memory files (left by SIGKILLed processes) are found by their
unheld lock files; segments a live process holds are kept."""

import subprocess
import sys
import time

from drqv2_ros.bringup.shm_clean import clean, stale_segments

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
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
