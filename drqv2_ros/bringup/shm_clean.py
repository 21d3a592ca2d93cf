"""Remove Fast DDS shared-memory files that no live process uses any more.

Fast DDS keeps each shared-memory segment and port in ``/dev/shm`` (``fastrtps_<id>``,
``fastrtps_port<N>``) next to a ``<name>_el`` file that its owner holds a BSD ``flock``
on for as long as it lives. A process that is SIGKILLed never removes them. A segment whose
lock file we can ``flock`` ourselves has no live owner and is removed, as ``fastdds shm
clean`` does (that tool is not on PyPI). The lock must be ``flock``, not ``fcntl``/``lockf``:
on Linux the two kinds never see each other, and a POSIX-lock probe would take every live
segment for stale (pulling shared memory from under every running node). An ``flock`` on a
fresh open file conflicts even with a lock of the same process, so this is safe in-process
too; ``python -m drqv2_ros.bringup.shm_clean`` runs it from a shell.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

SHM = Path("/dev/shm")


def stale_segments(shm: Path = SHM) -> list[str]:
    """Names of ``fastrtps_*`` segments (with their lock files) that nobody holds."""
    stale = []
    try:
        locks = sorted(p for p in shm.iterdir()
                       if p.name.startswith("fastrtps_") and p.name.endswith("_el"))
    except OSError:
        return stale
    for lock in locks:
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live process holds it
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            base = lock.name[: -len("_el")]
            stale += [n for n in (base, lock.name, f"sem.{base}_mutex") if (shm / n).exists()]
        finally:
            os.close(fd)
    return stale


def clean(shm: Path = SHM) -> list[str]:
    removed = []
    for name in stale_segments(shm):
        try:
            (shm / name).unlink()
            removed.append(name)
        except OSError:
            pass
    return removed


def main(argv: list[str] | None = None) -> int:
    removed = clean()
    print(f"removed {len(removed)} stale Fast DDS shared-memory files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
