"""Where the package's data files are: the source tree when running from a checkout
(edits take effect at once), else the installed share directory (colcon / ament)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = "drqv2_ros"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_dir() -> Path:
    if (_SOURCE_ROOT / "package.xml").is_file() and (_SOURCE_ROOT / "config").is_dir():
        return _SOURCE_ROOT
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE))


def config_file(name: str) -> Path:
    return share_dir() / "config" / name


def msg_dir() -> Path:
    return share_dir() / "msg"
