"""The install the README's set-up makes (tools/setup.sh, the venv CI uses): one metadata
record of the package, listing every executable, and a launcher per executable in
lib/drqv2_ros, so that `ros2 run` / `ros2 launch` can start the nodes from it."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drqv2_ros.executables import EXECUTABLES

PREFIX = Path(sys.prefix)
pytestmark = pytest.mark.skipif(
    not (PREFIX / ".drqv2_stamps").is_dir(),
    reason=f"not the venv made by tools/setup.sh ({PREFIX})")


def _name(dist) -> str:
    return (dist.metadata["Name"] or "").replace("-", "_").lower()


def test_exactly_one_metadata_record_lists_every_executable():
    records = [d for d in importlib.metadata.distributions() if _name(d) == "drqv2_ros"]
    assert len(records) == 1, [str(getattr(d, "_path", d)) for d in records]
    scripts = {e.name: e.value for e in records[0].entry_points if e.group == "console_scripts"}
    assert scripts == EXECUTABLES
    listed = {e.name for e in importlib.metadata.entry_points(group="console_scripts")}
    assert set(EXECUTABLES) <= listed


def test_a_launcher_per_executable_in_lib_drqv2_ros():
    lib = PREFIX / "lib" / "drqv2_ros"
    for exe, target in EXECUTABLES.items():
        launcher = lib / exe
        assert launcher.is_file() and os.access(launcher, os.X_OK), launcher
        module, func = target.split(":")
        text = launcher.read_text()
        assert text.startswith("#!") and f"from {module} import {func}" in text
    r = subprocess.run([str(lib / "drqv2-ros"), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "usage: drqv2-ros" in r.stdout, r.stderr
