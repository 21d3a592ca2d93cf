"""Record serialized ROS 2 messages into a rosbag2 bag (mcap or sqlite3) with ``rosbags``.

ROS-free core of the ``recorder`` node (``drqv2_ros/nodes/recorder_node.py``) and of
``drqv2-ros record``: the node subscribes with ``raw=True`` and hands the CDR bytes to
:class:`BagRecorder`, which writes them unchanged, with the QoS the publishers offered, so
the bag is what ``ros2 bag record`` would have written (metadata version 9, RIHS01 type hashes
of the installed definitions, ``offered_qos_profiles`` per topic).

The demo-recording topic set and each topic's type and QoS class follow
``docs/architecture.md``; ``config/recorder.yaml`` selects the topics.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer

from drqv2_ros.atomic_write import atomic_write_text
from drqv2_ros.bags.typestore import project_typestore

__all__ = [
    "BagRecorder",
    "DEMO_TOPICS",
    "TOPIC_TABLE",
    "TopicSpec",
    "default_bag_path",
    "load_recorder_config",
    "qos_from_profile",
    "storage_plugin",
]


@dataclass(frozen=True)
class TopicSpec:
    """A recordable topic: ROS type name and how to subscribe (``sensor``: best effort, keep
    last ``depth``; ``reliable``: reliable, keep last ``depth``; ``latched``: reliable +
    transient local)."""

    msgtype: str
    qos: str = "reliable"
    depth: int = 100


#: The topic graph of docs/architecture.md (relative names).
TOPIC_TABLE: dict[str, TopicSpec] = {
    "step": TopicSpec("drqv2_ros/msg/Step", "reliable", 100),
    "joint_states": TopicSpec("sensor_msgs/msg/JointState", "sensor", 50),
    "camera/image_raw": TopicSpec("sensor_msgs/msg/Image", "sensor", 10),
    "camera/image_policy": TopicSpec("sensor_msgs/msg/Image", "sensor", 10),
    "ee_command": TopicSpec("drqv2_ros/msg/EndEffectorCommand", "reliable", 10),
    "joint_command": TopicSpec("sensor_msgs/msg/JointState", "reliable", 10),
    "intervention": TopicSpec("drqv2_ros/msg/Intervention", "reliable", 10),
    "episode_event": TopicSpec("drqv2_ros/msg/EpisodeEvent", "reliable", 10),
    "reward": TopicSpec("std_msgs/msg/Float32", "reliable", 10),
    "driver/status": TopicSpec("drqv2_ros/msg/DriverStatus", "reliable", 10),
    "sim/state": TopicSpec("drqv2_ros/msg/SimState", "reliable", 10),
    "joy": TopicSpec("sensor_msgs/msg/Joy", "sensor", 10),
    "learner/metrics": TopicSpec("drqv2_ros/msg/TrainingMetrics", "reliable", 10),
    "policy_weights": TopicSpec("drqv2_ros/msg/PolicyWeights", "latched", 1),
}

#: What a demonstration bag holds (also the default of config/recorder.yaml).
DEMO_TOPICS: list[str] = [
    "step",
    "joint_states",
    "camera/image_raw",
    "camera/image_policy",
    "ee_command",
    "intervention",
    "episode_event",
    "reward",
    "driver/status",
]

_INFINITE_NS = 2**63 - 1
#: RMW_DURATION_INFINITE {9223372036, 854775807}, as rosbag2 (metadata version 9, Jazzy)
#: writes an infinite duration. ({2147483647, 4294967295} is what Foxy-era Fast DDS
#: reported; rosbag2 only reads it back as infinite.)
_RMW_INFINITE = QosTime(9223372036, 854775807)


def ros_distro() -> str:
    """The ROS 2 distro the bag is recorded with (rosbag2 writes ``$ROS_DISTRO``; the
    package's ROS 2 wheels are Jazzy's when it is unset)."""
    return (os.environ.get("ROS_DISTRO") or "jazzy").strip().lower()


def storage_plugin(name: str) -> StoragePlugin:
    key = name.strip().lower()
    if key in ("mcap",):
        return StoragePlugin.MCAP
    if key in ("sqlite3", "sqlite", "db3"):
        return StoragePlugin.SQLITE3
    raise ValueError(f"unknown storage {name!r}: use 'mcap' (default) or 'sqlite3'")


def default_bag_path(prefix: str = "demo", root: str | Path = "bags") -> Path:
    """``bags/demo_YYYYmmdd_HHMMSS`` (local time), like ``ros2 bag record``'s default."""
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    return Path(root) / f"{prefix}_{stamp}"


def _enum(cls: type, value: Any, unknown: Any) -> Any:
    try:
        return cls(int(getattr(value, "value", value)))
    except (TypeError, ValueError):
        return unknown


def _duration(value: Any) -> QosTime:
    ns = getattr(value, "nanoseconds", value)
    try:
        ns = int(ns)
    except (TypeError, ValueError):
        return QosTime(0, 0)
    if ns >= _INFINITE_NS or ns < 0:
        return _RMW_INFINITE
    sec, nsec = divmod(ns, 1_000_000_000)
    if sec > _RMW_INFINITE.sec:
        return _RMW_INFINITE
    return QosTime(sec, nsec)


def qos_from_profile(profile: Any) -> Qos:
    """An rclpy ``QoSProfile`` (duck-typed: enum members or ints, ``Duration``s) as the
    rosbags ``Qos`` written to ``offered_qos_profiles``. The rmw enum numbering is the one
    rosbag2 stores."""
    return Qos(
        history=_enum(QosHistory, profile.history, QosHistory.UNKNOWN),
        depth=int(getattr(profile, "depth", 0) or 0),
        reliability=_enum(QosReliability, profile.reliability, QosReliability.UNKNOWN),
        durability=_enum(QosDurability, profile.durability, QosDurability.UNKNOWN),
        deadline=_duration(getattr(profile, "deadline", 0)),
        lifespan=_duration(getattr(profile, "lifespan", 0)),
        liveliness=_enum(QosLiveliness, profile.liveliness, QosLiveliness.UNKNOWN),
        liveliness_lease_duration=_duration(getattr(profile, "liveliness_lease_duration", 0)),
        avoid_ros_namespace_conventions=bool(
            getattr(profile, "avoid_ros_namespace_conventions", False)
        ),
    )


def load_recorder_config(path: str | Path) -> dict[str, Any]:
    """The ``ros__parameters`` of the recorder in a ROS params file (``config/recorder.yaml``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    for key, value in data.items():
        if isinstance(value, dict) and "ros__parameters" in value:
            if key.strip("/").split("/")[-1] in ("recorder", "**"):
                return dict(value["ros__parameters"] or {})
    raise ValueError(f"{path}: no 'recorder: ros__parameters:' section")


class BagRecorder:
    """A rosbag2 bag being written from serialized messages. Thread-safe; :meth:`close` is
    idempotent and leaves a valid bag (storage closed, ``metadata.yaml`` written).

    Topics are registered with :meth:`add_topic` (any time before their first message);
    :meth:`write` takes the receive stamp (ns) and the CDR bytes."""

    def __init__(self, path: str | Path, storage: str = "mcap", typestore: Any | None = None,
                 custom_data: dict[str, str] | None = None):
        self.path = Path(path)
        self.storage = storage_plugin(storage)
        self.typestore = typestore if typestore is not None else project_typestore()
        self._lock = threading.Lock()
        self._writer = Writer(self.path, version=9, storage_plugin=self.storage)
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(key, str(value))
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.bytes_written = 0
        self.closed = False

    @property
    def topics(self) -> list[str]:
        return list(self._connections)

    def has_topic(self, topic: str) -> bool:
        return topic in self._connections

    def add_topic(self, topic: str, msgtype: str, offered_qos: Iterable[Any] = ()) -> None:
        """Register a topic (fully-resolved name) with the QoS profiles its publishers offer
        (rclpy ``QoSProfile``s or rosbags ``Qos``)."""
        qos = [q if isinstance(q, Qos) else qos_from_profile(q) for q in offered_qos]
        with self._lock:
            if self.closed:
                raise RuntimeError(f"bag {self.path} is closed")
            if topic in self._connections:
                return
            if msgtype not in self.typestore.types:
                raise KeyError(f"type {msgtype} of {topic} is not in the typestore")
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.typestore, offered_qos_profiles=qos)
            self.counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, data: bytes | memoryview) -> bool:
        """Append one serialized message; False (nothing written) once closed."""
        with self._lock:
            if self.closed:
                return False
            self._writer.write(self._connections[topic], int(stamp_ns), data)
            self.counts[topic] += 1
            self.bytes_written += len(data)
            return True

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._writer.close()
            self._stamp_distro()

    def _stamp_distro(self) -> None:
        """``ros_distro`` as rosbag2 writes it (rosbags writes ``rosbags`` there; the copy
        of the metadata inside an MCAP file keeps rosbags' value)."""
        meta = self.path / "metadata.yaml"
        text = meta.read_text()
        fixed = re.sub(r"(?m)^(\s*ros_distro:) rosbags$", rf"\1 {ros_distro()}", text)
        if fixed != text:
            atomic_write_text(meta, fixed)

    def abort(self) -> None:
        """Stop without finishing the bag (leaves what a crash would)."""
        with self._lock:
            self.closed = True
            self._writer.abort()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> str:
        parts = [f"{t}: {n}" for t, n in sorted(self.counts.items())]
        return (f"bag {self.path} ({self.storage.name.lower()}): "
                f"{sum(self.counts.values())} messages, {self.bytes_written / 1e6:.1f} MB"
                + (" [" + ", ".join(parts) + "]" if parts else ""))
