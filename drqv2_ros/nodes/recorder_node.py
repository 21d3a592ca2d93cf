"""Recorder node: writes a topic set into a rosbag2 bag (mcap by default, sqlite3 on request)
without ``rosbag2_py`` or the ``ros2`` CLI.

    python -m drqv2_ros.nodes.recorder_node --ros-args --params-file config/recorder.yaml \\
        -p output:=bags/demo_01
    drqv2-ros record -o bags/demo_01            # the same, from the project CLI

Every topic is subscribed with ``raw=True`` and the CDR bytes are written unchanged, stamped
with the receive time of the node clock (``use_sim_time`` respected), with the QoS profiles
the publishers offered. Known topics (docs/architecture.md) are subscribed at start with their
QoS class (sensor-data topics best effort); other names wait for a publisher to show their
type and get a QoS that matches it. SIGINT / SIGTERM stop it cleanly: the writer is closed
and ``metadata.yaml`` written, so the bag is valid.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args

from drqv2_ros.bags.recorder import (
    DEMO_TOPICS,
    TOPIC_TABLE,
    BagRecorder,
    TopicSpec,
    default_bag_path,
)
from drqv2_ros.nodes.common import declare_parameters, param
from drqv2_ros.package_files import config_file


@dataclass
class RecorderParams:
    output: str = param("", "bag directory to create (must not exist); empty: "
                            "bags/<prefix>_YYYYmmdd_HHMMSS")
    prefix: str = param("demo", "name prefix of the default output directory")
    storage: str = param("mcap", "storage plugin: mcap (default) or sqlite3")
    topics: list = param(list(DEMO_TOPICS), "topics to record (relative names resolve in the "
                                            "node's namespace)")
    discovery_period: float = param(0.5, "s between graph checks (types of unknown topics, "
                                         "offered QoS of publishers)")


def subscription_qos(spec: TopicSpec) -> QoSProfile:
    if spec.qos == "sensor":
        return QoSProfile(depth=spec.depth, history=HistoryPolicy.KEEP_LAST,
                          reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)
    durability = (DurabilityPolicy.TRANSIENT_LOCAL if spec.qos == "latched"
                  else DurabilityPolicy.VOLATILE)
    return QoSProfile(depth=spec.depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def adapted_spec(msgtype: str, offered: list) -> TopicSpec:
    """QoS class for an unknown topic from its publishers' profiles (as rosbag2 adapts):
    best effort if any publisher is, transient local if all are."""
    if any(p.reliability == ReliabilityPolicy.BEST_EFFORT for p in offered):
        return TopicSpec(msgtype, "sensor", 10)
    if offered and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered):
        return TopicSpec(msgtype, "latched", max(p.depth for p in offered) or 1)
    return TopicSpec(msgtype, "reliable", 100)


class RecorderNode(Node):
    def __init__(self, **kw):
        super().__init__("recorder", **kw)
        self.p = declare_parameters(self, RecorderParams)
        if not self.p.topics:
            raise ValueError("no topics to record")
        out = self.p.output or str(default_bag_path(self.p.prefix))
        self.bag = BagRecorder(out, self.p.storage, custom_data={
            "drqv2_ros.recorder": "recorder_node",
            "drqv2_ros.topics": ",".join(self.p.topics),
        })
        self._subs: dict[str, object] = {}
        self._specs: dict[str, TopicSpec] = {}
        self._pending: list[str] = []  # resolved names whose type is not known yet
        for topic in self.p.topics:
            resolved = self.resolve_topic_name(topic)
            spec = TOPIC_TABLE.get(topic.strip("/")) or TOPIC_TABLE.get(topic)
            if spec is not None and spec.msgtype in self.bag.typestore.types:
                self._subscribe(resolved, spec)
            else:
                self._pending.append(resolved)
        self.create_timer(self.p.discovery_period, self._discover)
        self.get_logger().info(
            f"recording {len(self.p.topics)} topics into {self.bag.path} "
            f"({self.p.storage}); Ctrl-C to stop")

    # -- subscriptions -------------------------------------------------------------------
    def _subscribe(self, resolved: str, spec: TopicSpec) -> None:
        msg_cls = _import_msg(spec.msgtype)
        self._specs[resolved] = spec
        self._subs[resolved] = self.create_subscription(
            msg_cls, resolved, lambda raw, t=resolved: self._on_raw(t, raw),
            subscription_qos(spec), raw=True)

    def _register(self, resolved: str) -> None:
        """Add the bag connection with the QoS its publishers offer now."""
        if self.bag.has_topic(resolved):
            return
        offered = [i.qos_profile for i in self.get_publishers_info_by_topic(resolved)]
        self.bag.add_topic(resolved, self._specs[resolved].msgtype, offered)
        spec = self._specs[resolved]
        self.get_logger().info(
            f"recording {resolved} ({spec.msgtype}, {spec.qos}, {len(offered)} publisher(s))")

    def _on_raw(self, resolved: str, raw: bytes) -> None:
        if self.bag.closed:
            return
        self._register(resolved)
        if self.bag.write(resolved, self.get_clock().now().nanoseconds, raw) and \
                self.bag.counts[resolved] == 1:
            self.get_logger().info(f"first message on {resolved}")

    def _discover(self) -> None:
        if self.bag.closed:
            return
        types = dict(self.get_topic_names_and_types())
        for resolved in list(self._pending):
            names = types.get(resolved)
            if not names:
                continue
            msgtype = names[0]
            if msgtype not in self.bag.typestore.types:
                self.get_logger().error(f"cannot record {resolved}: type {msgtype} unknown "
                                        "to the typestore")
                self._pending.remove(resolved)
                continue
            offered = [i.qos_profile for i in self.get_publishers_info_by_topic(resolved)]
            self._subscribe(resolved, adapted_spec(msgtype, offered))
            self._pending.remove(resolved)
        # Topics with publishers appear in the bag even before their first message.
        for resolved in self._subs:
            if not self.bag.has_topic(resolved) and self.count_publishers(resolved):
                self._register(resolved)

    def close(self) -> None:
        if not self.bag.closed:
            self.bag.close()
            print(f"[recorder] {self.bag.summary()}", flush=True)


def _import_msg(msgtype: str):
    pkg, kind, name = msgtype.split("/")
    module = __import__(f"{pkg}.{kind}", fromlist=[name])
    return getattr(module, name)


def main(args: list[str] | None = None) -> int:
    """Run the recorder until SIGINT/SIGTERM; returns the exit code."""
    args = list(sys.argv if args is None else args)
    faulthandler.enable()  # a crash in C code still prints the Python stacks to the log
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def _on_signal(signum, frame):  # only a flag: never interrupt a write half-way
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor()
    node = None
    code = 0
    try:
        extra = remove_ros_args(args)[1:]
        if extra:
            raise ValueError(f"unexpected arguments {extra} (parameters go after --ros-args)")
        node = RecorderNode()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # a node that fails says why and exits non-zero
        print(f"[recorder] fatal: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if node is not None:
            try:
                node.close()
            except Exception as exc:
                print(f"[recorder] closing the bag failed: {exc}", file=sys.stderr, flush=True)
                code = 1
            executor.remove_node(node)
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
    return code


def record_main(argv: list[str] | None = None) -> int:
    """`drqv2-ros record`: this node in the foreground, its options as a command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    ap = argparse.ArgumentParser(
        prog="drqv2-ros record",
        description="Record a topic set (default: the demo set of config/recorder.yaml) into a "
                    "rosbag2 bag until Ctrl-C / SIGTERM. Anything after --ros-args goes to the "
                    "node (remaps, namespace, use_sim_time).")
    ap.add_argument("-o", "--output", default="",
                    help="bag directory to create (default bags/demo_YYYYmmdd_HHMMSS)")
    ap.add_argument("-s", "--storage", choices=["mcap", "sqlite3"], default=None,
                    help="storage plugin (default: the config's, mcap)")
    ap.add_argument("--topics", nargs="+", default=None,
                    help="topics to record instead of the config's set")
    ap.add_argument("--config", default=None,
                    help="recorder params file (default config/recorder.yaml)")
    args = ap.parse_args(argv)
    config = Path(args.config) if args.config else config_file("recorder.yaml")
    if args.config and not config.is_file():
        print(f"drqv2-ros record: error: no params file {config}", file=sys.stderr)
        return 2
    node_args = ["drqv2-ros-record", "--ros-args"]
    if config is not None:
        node_args += ["--params-file", str(config)]
    if args.output:
        node_args += ["-p", f"output:={args.output}"]
    if args.storage:
        node_args += ["-p", f"storage:={args.storage}"]
    if args.topics:
        node_args += ["-p", "topics:=[" + ",".join(args.topics) + "]"]
    node_args += ros_args
    return main(node_args)

if __name__ == "__main__":
    sys.exit(main())
