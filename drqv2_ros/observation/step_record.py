"""One control step, as the policy node publishes it on ``step`` (``drqv2_ros/msg/Step``).

This module is the single codec between a Step message and the arrays the learner stores:
the learner node decodes live ``step`` messages with :func:`from_msg`, and bag ingest decodes
recorded ones with the same function, so a transition rebuilt from a bag is bit-identical to
the one the learner saw live.

No ROS import: :func:`from_msg` is duck-typed. It reads an rclpy ``drqv2_ros.msg.Step``
(``uint8[]`` data as ``array.array``, ``float32[]`` as ``array.array('f')``) and a
``rosbags``-deserialised Step (numpy arrays) alike, and also plain ``bytes``/lists.
:func:`to_msg` builds a message of a given class (rclpy's ``Step``/``Image`` for publishing,
or the ``rosbags`` typestore classes when writing bags).

Layout (see ``msg/Step.msg``): step k of an episode carries observation o_k and, unless
``is_first``, the action a_{k-1} executed to reach it and the reward r_k that followed it.
"""

from __future__ import annotations

import array
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StepFormatError", "StepRecord", "from_msg", "to_msg"]

#: The only image encoding a policy-ready frame may have.
POLICY_ENCODING = "rgb8"


class StepFormatError(ValueError):
    """A Step message that cannot be turned into a transition; the message says why."""


@dataclass
class StepRecord:
    """A decoded, validated Step.

    ``images`` is uint8 ``(V, 3, H, W)`` (channels first, the layout the encoder and the
    replay buffer use); ``low_dim`` and ``action`` are float32 1-D. For the first step of an
    episode ``action`` is all zeros when the expected action size was given to
    :func:`from_msg`, else empty, and ``reward`` is 0."""

    episode: int
    index: int
    stamp_ns: int
    is_first: bool
    is_last: bool
    terminated: bool
    images: np.ndarray
    low_dim: np.ndarray
    action: np.ndarray
    reward: float
    is_intervention: bool = False
    is_demo: bool = False
    frame_ids: tuple[str, ...] = field(default=(), compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        return tuple(int(x) for x in self.images.shape)  # type: ignore[return-value]

    def equals(self, other: StepRecord) -> bool:
        """Field-by-field equality, arrays compared exactly (bit for bit)."""
        return (
            self.episode == other.episode
            and self.index == other.index
            and self.stamp_ns == other.stamp_ns
            and self.is_first == other.is_first
            and self.is_last == other.is_last
            and self.terminated == other.terminated
            and self.is_intervention == other.is_intervention
            and self.is_demo == other.is_demo
            and np.float32(self.reward).tobytes() == np.float32(other.reward).tobytes()
            and self.images.shape == other.images.shape
            and self.images.dtype == other.images.dtype
            and bool(np.array_equal(self.images, other.images))
            and self.low_dim.tobytes() == other.low_dim.tobytes()
            and self.action.tobytes() == other.action.tobytes()
        )


# -- decoding --------------------------------------------------------------------------------

def _as_uint8(data: Any, what: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise StepFormatError(f"{what}: data dtype {data.dtype}, expected uint8")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, array.array):
        if data.itemsize != 1:
            raise StepFormatError(f"{what}: data typecode {data.typecode!r}, expected bytes")
        return np.frombuffer(data, dtype=np.uint8)
    try:
        arr = np.asarray(data)
    except Exception as exc:  # anything unreadable is a format error
        raise StepFormatError(f"{what}: unreadable data ({type(data).__name__}): {exc}") from None
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255):
        raise StepFormatError(f"{what}: data is not a byte sequence")
    return arr.astype(np.uint8).reshape(-1)


def _as_float32(data: Any, what: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        arr = data.reshape(-1)
    elif isinstance(data, array.array) and data.typecode == "f":
        arr = np.frombuffer(data, dtype=np.float32)
    else:
        try:
            arr = np.asarray(list(data), dtype=np.float64)
        except Exception as exc:
            raise StepFormatError(f"{what}: not a float sequence: {exc}") from None
    if arr.dtype != np.float32:
        if arr.size and arr.dtype.kind == "f" and not np.all(
            np.isfinite(arr) == np.isfinite(arr.astype(np.float32))
        ):
            raise StepFormatError(f"{what}: values overflow float32")
        arr = arr.astype(np.float32)
    arr = np.array(arr, dtype=np.float32, copy=True)  # own the memory (msg buffers are reused)
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise StepFormatError(f"{what}: non-finite values at indices {bad}")
    return arr


def _image_chw(img: Any, view: int) -> tuple[np.ndarray, str]:
    what = f"images[{view}]"
    enc = str(getattr(img, "encoding", ""))
    if enc != POLICY_ENCODING:
        raise StepFormatError(
            f"{what}: encoding {enc!r}, policy frames must be {POLICY_ENCODING!r}")
    h, w, step = int(img.height), int(img.width), int(img.step)
    if h <= 0 or w <= 0:
        raise StepFormatError(f"{what}: empty image {h}x{w}")
    if step < 3 * w:
        raise StepFormatError(f"{what}: step {step} < width*3 = {3 * w}")
    buf = _as_uint8(img.data, what)
    if buf.size != h * step:
        raise StepFormatError(
            f"{what}: data has {buf.size} bytes, expected {h * step} ({h} rows x step {step})"
        )
    hwc = buf.reshape(h, step)[:, : 3 * w].reshape(h, w, 3)
    frame_id = str(getattr(getattr(img, "header", None), "frame_id", "") or "")
    return hwc.transpose(2, 0, 1), frame_id


def from_msg(
    msg: Any,
    *,
    image_shape: tuple[int, int, int, int] | None = None,
    low_dim_size: int | None = None,
    action_size: int | None = None,
) -> StepRecord:
    """Decode and validate a Step message (rclpy or rosbags).

    ``image_shape`` ``(V, 3, H, W)``, ``low_dim_size`` and ``action_size``, when given, are
    the shapes the consumer expects (checkpoint / replay buffer); a mismatch raises
    :class:`StepFormatError` naming both shapes. With ``action_size`` the empty action of a
    first step becomes zeros. Arrays of the result never alias the message buffers."""
    try:
        stamp = msg.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        episode, index = int(msg.episode), int(msg.index)
        is_first, is_last = bool(msg.is_first), bool(msg.is_last)
        terminated = bool(msg.terminated)
        images_in = list(msg.images)
        low_dim_in, action_in = msg.low_dim, msg.action
        reward = float(msg.reward)
        is_intervention, is_demo = bool(msg.is_intervention), bool(msg.is_demo)
    except AttributeError as exc:
        raise StepFormatError(f"not a drqv2_ros/Step message: {exc}") from None
    where = f"step episode {episode} index {index}"

    def fail(reason: str) -> StepFormatError:
        return StepFormatError(f"{where}: {reason}")

    if is_first != (index == 0):
        raise fail(f"is_first={is_first} but index={index} (only index 0 is first)")
    if terminated and not is_last:
        raise fail("terminated but not is_last")
    if not math.isfinite(reward):
        raise fail(f"reward {reward} is not finite")
    if not images_in:
        raise fail("no images")
    try:
        views = [_image_chw(img, i) for i, img in enumerate(images_in)]
    except StepFormatError as exc:
        raise fail(str(exc)) from None
    shapes = {v[0].shape for v in views}
    if len(shapes) != 1:
        raise fail(f"views differ in size: {[v[0].shape for v in views]}")
    images = np.empty((len(views), *views[0][0].shape), np.uint8)  # (V, 3, H, W), C order
    for i, (chw, _fid) in enumerate(views):
        images[i] = chw
    try:
        low_dim = _as_float32(low_dim_in, "low_dim")
        action = _as_float32(action_in, "action")
    except StepFormatError as exc:
        raise fail(str(exc)) from None
    if is_first:
        if action.size and action_size is not None and action.size != action_size:
            raise fail(f"first-step action has size {action.size}, expected 0 or {action_size}")
        if action_size is not None:
            action = np.zeros(action_size, np.float32)
        reward = 0.0
    else:
        if action.size == 0:
            raise fail("no action (only a first step may have none)")
        if action_size is not None and action.size != action_size:
            raise fail(f"action size {action.size}, expected {action_size}")
    if image_shape is not None and tuple(images.shape) != tuple(image_shape):
        raise fail(f"image shape (V,3,H,W) {tuple(images.shape)}, expected {tuple(image_shape)}")
    if low_dim_size is not None and low_dim.size != low_dim_size:
        raise fail(f"low_dim size {low_dim.size}, expected {low_dim_size}")
    return StepRecord(
        episode=episode, index=index, stamp_ns=stamp_ns, is_first=is_first, is_last=is_last,
        terminated=terminated, images=images, low_dim=low_dim, action=action,
        reward=float(np.float32(reward)), is_intervention=is_intervention, is_demo=is_demo,
        frame_ids=tuple(v[1] for v in views),
    )


# -- encoding --------------------------------------------------------------------------------

def _float_array(arr: np.ndarray) -> array.array:
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return out


def _try_default(cls: type) -> Any | None:
    try:
        return cls()
    except TypeError:  # rosbags typestore classes need every field
        return None


def to_msg(record: StepRecord, msg_cls: type, image_cls: type,
           frame_ids: tuple[str, ...] | list[str] | None = None,
           types: Any = None) -> Any:
    """Build a Step message from a record.

    ``msg_cls``/``image_cls`` are rclpy's ``drqv2_ros.msg.Step``/``sensor_msgs.msg.Image``
    (for publishing), or a rosbags typestore's classes with ``types=typestore.types`` (for
    writing bags; see :func:`drqv2_ros.bags.typestore.step_to_rosbags`). Images go out
    rgb8, tightly packed."""
    images = np.asarray(record.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise StepFormatError(f"images must be uint8 (V,3,H,W), got {images.dtype} {images.shape}")
    ids = list(frame_ids if frame_ids is not None else record.frame_ids)
    ids += [""] * (images.shape[0] - len(ids))
    sec, nanosec = divmod(int(record.stamp_ns), 1_000_000_000)
    msg = _try_default(msg_cls)
    if msg is not None:  # rclpy
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
        imgs = []
        for view, fid in zip(images, ids):
            img = image_cls()
            img.header.stamp.sec, img.header.stamp.nanosec = sec, nanosec
            img.header.frame_id = fid
            img.height, img.width = int(view.shape[1]), int(view.shape[2])
            img.encoding = POLICY_ENCODING
            img.is_bigendian = 0
            img.step = 3 * img.width
            img.data = np.ascontiguousarray(view.transpose(1, 2, 0)).tobytes()
            imgs.append(img)
        msg.images = imgs
        msg.episode, msg.index = int(record.episode), int(record.index)
        msg.is_first, msg.is_last = bool(record.is_first), bool(record.is_last)
        msg.terminated = bool(record.terminated)
        msg.low_dim = _float_array(record.low_dim)
        msg.action = _float_array(record.action)
        msg.reward = float(record.reward)
        msg.is_intervention, msg.is_demo = bool(record.is_intervention), bool(record.is_demo)
        return msg
    # rosbags: dataclasses with required fields, nested types from the same typestore
    if types is None:
        raise TypeError(f"{msg_cls.__name__} needs every field: pass types=typestore.types")
    header_cls = types["std_msgs/msg/Header"]
    time_cls = types["builtin_interfaces/msg/Time"]

    def header(fid: str) -> Any:
        return header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=fid)

    imgs = [
        image_cls(
            header=header(fid), height=int(view.shape[1]), width=int(view.shape[2]),
            encoding=POLICY_ENCODING, is_bigendian=0, step=3 * int(view.shape[2]),
            data=np.ascontiguousarray(view.transpose(1, 2, 0)).reshape(-1),
        )
        for view, fid in zip(images, ids)
    ]
    return msg_cls(
        header=header(""), episode=int(record.episode), index=int(record.index),
        is_first=bool(record.is_first), is_last=bool(record.is_last),
        terminated=bool(record.terminated), images=imgs,
        low_dim=np.ascontiguousarray(record.low_dim, dtype=np.float32).reshape(-1),
        action=np.ascontiguousarray(record.action, dtype=np.float32).reshape(-1),
        reward=float(record.reward), is_intervention=bool(record.is_intervention),
        is_demo=bool(record.is_demo),
    )
