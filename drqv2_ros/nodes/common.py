"""What every drqv2_ros node shares: parameter declaration from dataclasses, QoS profiles,
Image <-> numpy conversion, stamps, and a clean `main` runner.

Nodes stay thin: each declares a parameter dataclass (field metadata ``help`` becomes the
ROS parameter descriptor), builds its ROS-free core object, and wires topics to it.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from drqv2_ros.settings import param  # noqa: F401 - re-exported for the nodes

T = TypeVar("T")

#: Camera images and joint states: best effort, keep last 5 (REP 2003 sensor data).
SENSOR_QOS = qos_profile_sensor_data
#: Learner -> actor weights: the latest push only, kept for actors that (re)join later.
WEIGHTS_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


#: Commands, events, transitions, weights: reliable, keep last N.
def reliable_qos(depth: int = 10) -> QoSProfile:
    return QoSProfile(
        depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
    )


#: Actor -> learner steps: reliable, and a history long enough to carry a minute of steps at
#: 10 Hz (about 15 MB of 84x84 frames) through a pause of the learner or a cut network link:
#: DDS re-sends what the learner did not acknowledge once it is reachable again. Transient
#: local: a learner that restarts gets that minute again and keeps what it had not stored
#: (it drops what it had, by its durable stream marks). A transient-local reader refuses a
#: volatile writer: publish steps with this QoS.
STEP_HISTORY = 600
STEP_QOS = QoSProfile(depth=STEP_HISTORY, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


_PTYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}


def declare_parameters(node: Node, cls: type[T]) -> T:
    """Declare every field of dataclass ``cls`` as a ROS parameter with a descriptor (its
    ``help`` text), read the values (params file / ``-p`` overrides) and return an instance.
    Types are enforced by ROS: an int field refuses a string from YAML with a clear error."""
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        desc = ParameterDescriptor(description=f.metadata.get("help", ""))
        if isinstance(default, list):
            elem = type(default[0]) if default else float
            desc.type = {
                float: ParameterType.PARAMETER_DOUBLE_ARRAY,
                int: ParameterType.PARAMETER_INTEGER_ARRAY,
                str: ParameterType.PARAMETER_STRING_ARRAY,
                bool: ParameterType.PARAMETER_BOOL_ARRAY,
            }[elem]
        else:
            desc.type = _PTYPES[type(default)]
        if isinstance(default, float):
            # YAML `1` for a double parameter: accept ints where a float is expected.
            desc.dynamic_typing = False
        value = node.declare_parameter(f.name, default, desc).value
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if isinstance(default, list):
            value = list(value)
        values[f.name] = value
    return cls(**values)


def parameter_table(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) rows, for the README and ``--help``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, type(default).__name__, repr(default), f.metadata.get("help", "")))
    return rows


def publish_quietly(publisher, msg) -> bool:
    """Publish unless the context is already shut down (Ctrl-C reached rclpy before a
    background thread stopped): returns False instead of raising at shutdown."""
    try:
        publisher.publish(msg)
        return True
    except Exception:  # RCLError / InvalidHandle once the (default) context is gone
        if rclpy.ok():
            raise
        return False


# -- stamps --------------------------------------------------------------------------------

def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp) -> Any:
    stamp.sec, stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return stamp


# -- images --------------------------------------------------------------------------------

class ImageFormatError(ValueError):
    """A sensor_msgs/Image that cannot be read as an 8-bit colour image."""


_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_numpy(msg: Image, want: str = "rgb8") -> np.ndarray:
    """Zero-copy view of an 8-bit image as (H, W, C) in ``want`` channel order.

    Validates encoding, step and data size; raises ImageFormatError with the reason."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ImageFormatError(f"unsupported encoding {enc!r} (want one of {sorted(_CHANNELS)})")
    c = _CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < w * c:
        raise ImageFormatError(f"bad geometry {h}x{w} step {step} for {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != h * step:
        raise ImageFormatError(f"data has {buf.size} bytes, expected {h * step} ({h}x{step})")
    img = buf.reshape(h, step)[:, : w * c].reshape(h, w, c)
    if want == "rgb8":
        if enc in ("bgr8", "bgra8"):
            img = img[:, :, 2::-1]
        elif enc == "mono8":
            img = np.repeat(img, 3, axis=2)
        else:
            img = img[:, :, :3]
    return img


def numpy_to_image(img: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 -> sensor_msgs/Image. Uses ``tobytes`` (fast), never a numpy assign."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ImageFormatError(f"need (H, W, C) uint8, got {img.dtype} {img.shape}")
    msg = Image()
    ns_to_stamp(stamp_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * img.shape[2])
    msg.data = np.ascontiguousarray(img).tobytes()
    return msg


# -- running -------------------------------------------------------------------------------

def run_node(factory: Callable[[], Node], args: list[str] | None = None, *,
             threads: int = 1) -> int:
    """Init rclpy, spin ``factory()`` and shut down cleanly on Ctrl-C / SIGTERM. Returns a
    process exit code.

    ``threads=1``: a single-threaded executor (inference and torch work must not share a
    multi-threaded executor on small CPUs). A node that must answer a slow service without
    stalling its control timer uses ``threads=2`` and puts that service alone in a callback
    group of its own; everything else stays in the node's default (mutually exclusive)
    group, so it still runs one callback at a time."""
    # SIGINT and SIGTERM are this function's own: rclpy's handlers are not installed
    # (signal_handler_options NO), a Python handler only sets a flag, and the executor is
    # spun in short waits so that the flag is seen within 0.1 s. So a signal never lands
    # inside rcl/DDS teardown (a second Ctrl-C under `ros2 launch` used to crash the driver
    # in its clean-up): the first asks for shutdown, later ones are counted and ignored.
    stop = threading.Event()
    signals_seen = [0]

    def _on_signal(signum, frame):
        signals_seen[0] += 1
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    # A crash inside a C extension (rcl, Fast DDS, torch) prints every thread's Python stack
    # to the node's log instead of dying silently.
    faulthandler.enable()
    rclpy.init(args=args if args is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(threads)

    code = 0
    try:
        node = factory()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # a node that fails to start says why, once, and exits non-zero
        name = node.get_name() if node is not None else "node"
        if node is not None and not rclpy.ok():
            # Raised by the executor while Ctrl-C was tearing the context down: that is
            # the shutdown we were asked for, not a failure.
            print(f"[{name}] shutdown: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)
        else:
            print(f"[{name}] fatal: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            code = 1
    finally:
        # Further Ctrl-C / SIGTERM only bump the counter: the node's own clean-up (a learner
        # saving its state) runs to its end; launch escalates to SIGKILL if it must.
        name = node.get_name() if node is not None else "node"
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    print(f"close failed: {exc}", file=sys.stderr)
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
        # Python restores the default (deadly) action of handled signals while the
        # interpreter finalises; ignored ones stay ignored: a late signal cannot turn a
        # clean exit into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if signals_seen[0] > 1:
            print(f"[{name}] clean shutdown "
                  f"({signals_seen[0] - 1} further signals ignored)", file=sys.stderr,
                  flush=True)
    return code
