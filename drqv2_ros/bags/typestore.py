"""A ``rosbags`` typestore for the installed ROS 2 distro with this project's messages.

The stock store (``Stores.ROS2_JAZZY``, or the closest one this ``rosbags`` knows) holds the
standard interfaces (sensor_msgs, std_msgs, geometry_msgs...); the ``drqv2_ros/msg/*`` types
are registered at run time from their ``.msg`` definitions, read from the installed package's
share directory (ament index) when there is one, else from the source tree's ``msg/``. No
generated code is needed, and the type hashes (RIHS01) match the ones rosidl generates, so
bags written here carry the same ``type_description_hash`` as ``ros2 bag record``'s.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

PACKAGE = "drqv2_ros"

STEP_TYPE = f"{PACKAGE}/msg/Step"
IMAGE_TYPE = "sensor_msgs/msg/Image"

# Newest first: the store used is the one for the distro in ROS_DISTRO if rosbags knows it,
# else the first of these it has.
_STORE_PREFERENCE = ["ROS2_JAZZY", "ROS2_KILTED", "ROS2_HUMBLE", "LATEST"]


def store_for_distro(distro: str | None = None) -> Stores:
    """The rosbags store for ``distro`` (default ``$ROS_DISTRO``, else Jazzy)."""
    distro = (distro or os.environ.get("ROS_DISTRO") or "jazzy").strip().lower()
    name = f"ROS2_{distro.upper()}"
    for candidate in [name, *_STORE_PREFERENCE]:
        if candidate in Stores.__members__:
            return Stores[candidate]
    raise RuntimeError("rosbags has no ROS 2 typestore")  # pragma: no cover


def msg_dir() -> Path:
    """Where the project's ``.msg`` files are (``drqv2_ros.package_files``: the source
    checkout, else the ament index)."""
    from drqv2_ros import package_files

    d = package_files.msg_dir()
    if not any(d.glob("*.msg")):
        raise FileNotFoundError(f"no {PACKAGE} .msg definitions in {d}")
    return d


def custom_types(directory: Path | None = None) -> dict[str, Any]:
    """Parse every ``.msg`` in ``directory`` into rosbags type definitions."""
    directory = Path(directory) if directory is not None else msg_dir()
    types: dict[str, Any] = {}
    for path in sorted(directory.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    return types


@functools.lru_cache(maxsize=4)
def _cached(store: Stores, directory: str) -> Any:
    ts = get_typestore(store)
    ts.register(custom_types(Path(directory)))
    return ts


def project_typestore(distro: str | None = None, directory: Path | None = None) -> Any:
    """Typestore for the distro with all ``drqv2_ros/msg/*`` types registered (cached)."""
    return _cached(store_for_distro(distro), str(directory or msg_dir()))


def step_to_rosbags(record: Any, typestore: Any | None = None) -> Any:
    """A :class:`~drqv2_ros.observation.step_record.StepRecord` as a rosbags Step message
    (for ``typestore.serialize_cdr(msg, STEP_TYPE)``)."""
    from drqv2_ros.observation.step_record import to_msg

    ts = typestore or project_typestore()
    return to_msg(record, ts.types[STEP_TYPE], ts.types[IMAGE_TYPE], types=ts.types)
