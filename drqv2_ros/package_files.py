"""Where the package's data files are (``config/``, ``config/joy/``, ``msg/``), in ONE
documented order, used by every node, command, the launcher and ``launch/*.launch.py``:

1. the source tree this module belongs to, when it is a checkout (``package.xml`` and
   ``config/`` beside the ``drqv2_ros/`` folder): an editable install or a run from the
   tree, where an edit to a config file takes effect at once;
2. else the installed share directory from the ament index (a colcon workspace or a ROS 2
   install: ``<prefix>/share/drqv2_ros``).

A file found in neither is an error that names both places.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "drqv2_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _source_checkout() -> bool:
    return (SOURCE_ROOT / "package.xml").is_file() and (SOURCE_ROOT / "config").is_dir()


def share_dir() -> Path:
    """The package's data root, by the order above. Raises ``FileNotFoundError`` when there
    is neither a checkout nor an installed package."""
    if _source_checkout():
        return SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # no ament index, or the package not in it
        raise FileNotFoundError(
            f"{PACKAGE}'s data files: not a source checkout ({SOURCE_ROOT}) and not in the "
            f"ament index ({type(exc).__name__}: {exc})") from None


def package_file(*parts: str) -> Path:
    """``share_dir() / parts``; ``FileNotFoundError`` naming where it looked if missing."""
    p = share_dir().joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"{'/'.join(parts)} is not in {share_dir()} (the package's "
                                "data files: source checkout first, else the ament index)")
    return p


def config_file(name: str) -> Path:
    """``config/<name>`` (not checked: a caller may test for it)."""
    return share_dir() / "config" / name


def msg_dir() -> Path:
    return share_dir() / "msg"
