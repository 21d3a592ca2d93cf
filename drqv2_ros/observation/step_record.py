"""One control step, as the policy node publishes it on ``step`` (``drqv2_ros/msg/Step``).

This module is the single codec between a Step message and the arrays the learner stores.
Decoding has two halves: :func:`check_step` reads one message and checks what can be checked
per message (flags, image geometry, sizes) without copying, and :func:`stack_steps` turns a
run of checked steps into arrays (float conversion, finite checks, the CHW copy) in one go.
The learner node decodes each live ``step`` message with :func:`from_msg` (both halves for
one step); bag ingest reads each recorded message straight from its bytes
(:mod:`drqv2_ros.observation.step_cdr`, the same checks) and stacks a whole episode at once.
Same code, same bits: a transition rebuilt from a bag is bit-identical to the one the learner
saw live.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["StepBatch", "StepFields", "StepFormatError", "StepRecord", "StepStack",
           "UndecodableStepError", "check_step", "from_msg", "stack_steps", "to_msg"]

#: The only image encoding a policy-ready frame may have.
POLICY_ENCODING = "rgb8"


class StepFormatError(ValueError):
    """A Step message that cannot be turned into a transition; the message says why.
    ``episode`` is the episode the message claims, when it could be read."""

    def __init__(self, text: str, episode: int | None = None):
        super().__init__(text)
        self.episode = episode


class UndecodableStepError(ValueError):
    """Serialized bytes that are not a Step message at all (truncated, garbage)."""


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


def _length(data: Any, what: str) -> int:
    """Number of values of a float sequence field, without converting it."""
    if isinstance(data, np.ndarray):
        return int(data.size)
    try:
        return len(data)
    except TypeError as exc:
        raise StepFormatError(f"{what}: not a float sequence: {exc}") from None


def _as_float32(data: Any, what: str) -> np.ndarray:
    """``data`` as a float32 1-D array (not yet checked for finite values; may alias)."""
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
        try:
            arr = arr.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise StepFormatError(f"{what}: not a float sequence: {exc}") from None
    return arr


def _image_hwc(enc: str, h: int, w: int, step: int, data: Any, view: int
               ) -> np.ndarray:
    """One rgb8 view as an (H, W, 3) array over the message's buffer."""
    if enc != POLICY_ENCODING:
        raise StepFormatError(
            f"images[{view}]: encoding {enc!r}, policy frames must be {POLICY_ENCODING!r}")
    if h <= 0 or w <= 0:
        raise StepFormatError(f"images[{view}]: empty image {h}x{w}")
    if step < 3 * w:
        raise StepFormatError(f"images[{view}]: step {step} < width*3 = {3 * w}")
    buf = _as_uint8(data, f"images[{view}]")
    if buf.size != h * step:
        raise StepFormatError(f"images[{view}]: data has {buf.size} bytes, expected "
                              f"{h * step} ({h} rows x step {step})")
    return _hwc(buf, h, w, step)


def _hwc(buf: np.ndarray, h: int, w: int, step: int) -> np.ndarray:
    """``h`` rows of ``step`` bytes (rgb8, maybe padded) as an (H, W, 3) view."""
    return (buf.reshape(h, w, 3) if step == 3 * w
            else buf.reshape(h, step)[:, : 3 * w].reshape(h, w, 3))


class StepFields(NamedTuple):
    """One Step message after the per-message checks (flags, image geometry, sizes): its
    scalars, and its arrays still over the message's buffers. :func:`stack_steps` turns a
    run of them into arrays (conversion, finite checks, copies)."""

    episode: int
    index: int
    stamp_ns: int
    is_first: bool
    is_last: bool
    terminated: bool
    reward: float
    is_intervention: bool
    is_demo: bool
    views: tuple[np.ndarray, ...]  # (H, W, 3) uint8 per view
    frame_ids: tuple[str, ...]
    low_dim: Any
    action: Any

    def where(self) -> str:
        return f"step episode {self.episode} index {self.index}"


def check_step(
    msg: Any,
    *,
    image_shape: tuple[int, int, int, int] | None = None,
    low_dim_size: int | None = None,
    action_size: int | None = None,
) -> StepFields:
    """The per-message half of decoding: read and check a Step message's fields (no copies).
    Raises :class:`StepFormatError`; see :func:`from_msg` for the arguments."""
    try:
        stamp = msg.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        episode, index = int(msg.episode), int(msg.index)
        is_first, is_last = bool(msg.is_first), bool(msg.is_last)
        terminated = bool(msg.terminated)
        images_in = msg.images
        low_dim_in, action_in = msg.low_dim, msg.action
        reward = float(msg.reward)
        is_intervention, is_demo = bool(msg.is_intervention), bool(msg.is_demo)
        images = [(str(getattr(img, "encoding", "")), int(img.height), int(img.width),
                   int(img.step), img.data,
                   str(getattr(getattr(img, "header", None), "frame_id", "") or ""))
                  for img in images_in]
    except AttributeError as exc:
        raise StepFormatError(f"not a drqv2_ros/Step message: {exc}") from None
    return _checked(stamp_ns, episode, index, is_first, is_last, terminated, reward,
                    is_intervention, is_demo, images, low_dim_in, action_in,
                    image_shape, low_dim_size, action_size)


def _fail(episode: int, index: int, reason: str) -> StepFormatError:
    return StepFormatError(f"step episode {episode} index {index}: {reason}", episode)


def _check_flags(episode: int, index: int, is_first: bool, is_last: bool, terminated: bool,
                 reward: float) -> None:
    """The checks of a step's scalars (the first of :func:`_checked`)."""
    if is_first != (index == 0):
        raise _fail(episode, index, f"is_first={is_first} but index={index} (only index 0 is "
                                    "first)")
    if terminated and not is_last:
        raise _fail(episode, index, "terminated but not is_last")
    if not math.isfinite(reward):
        raise _fail(episode, index, f"reward {reward} is not finite")


def _check_action(episode: int, index: int, is_first: bool, n_act: int,
                  action_size: int | None, reward: float) -> float:
    """The checks of a step's action size against its flag; the reward to keep (0 on a
    first step)."""
    if is_first:
        if n_act and action_size is not None and n_act != action_size:
            raise _fail(episode, index, f"first-step action has size {n_act}, expected 0 or "
                                        f"{action_size}")
        return 0.0
    if n_act == 0:
        raise _fail(episode, index, "no action (only a first step may have none)")
    if action_size is not None and n_act != action_size:
        raise _fail(episode, index, f"action size {n_act}, expected {action_size}")
    return reward


def _checked(stamp_ns: int, episode: int, index: int, is_first: bool, is_last: bool,
             terminated: bool, reward: float, is_intervention: bool, is_demo: bool,
             images: list[tuple[str, int, int, int, Any, str]], low_dim_in: Any, action_in: Any,
             image_shape: tuple[int, int, int, int] | None, low_dim_size: int | None,
             action_size: int | None) -> StepFields:
    """The checks of one step, whatever it was read from (``images``: encoding, height,
    width, step, data, frame id per view), in this order: :func:`_check_flags`, the
    frames' geometry, :func:`_check_action`, the expected shapes."""
    _check_flags(episode, index, is_first, is_last, terminated, reward)
    if not images:
        raise _fail(episode, index, "no images")
    try:
        views = tuple([_image_hwc(enc, h, w, st, data, i)
                       for i, (enc, h, w, st, data, _fid) in enumerate(images)])
        n_low, n_act = _length(low_dim_in, "low_dim"), _length(action_in, "action")
    except StepFormatError as exc:
        raise _fail(episode, index, str(exc)) from None
    if len(views) > 1 and len({v.shape for v in views}) != 1:
        raise _fail(episode, index, "views differ in size: "
                                    f"{[v.transpose(2, 0, 1).shape for v in views]}")
    reward = _check_action(episode, index, is_first, n_act, action_size, reward)
    if image_shape is not None:
        h, w, _ = views[0].shape
        if (len(views), 3, h, w) != tuple(image_shape):
            raise _fail(episode, index, f"image shape (V,3,H,W) {(len(views), 3, h, w)}, "
                                        f"expected {tuple(image_shape)}")
    if low_dim_size is not None and n_low != low_dim_size:
        raise _fail(episode, index, f"low_dim size {n_low}, expected {low_dim_size}")
    return StepFields(episode, index, stamp_ns, is_first, is_last, terminated, reward,
                      is_intervention, is_demo, views, tuple([im[5] for im in images]),
                      low_dim_in, action_in)


@dataclass
class StepBatch:
    """Consecutive decoded, validated steps as arrays with a leading step axis ``T``:
    ``images`` uint8 ``(T, V, 3, H, W)``, ``low_dim`` float32 ``(T, D)``, ``action`` float32
    ``(T, A)`` (zeros on first steps), ``reward`` float32 ``(T,)`` (0 on first steps), and the
    flags and ids as ``(T,)`` arrays. Owns its memory (never aliases message buffers)."""

    episode: np.ndarray
    index: np.ndarray
    stamp_ns: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    terminated: np.ndarray
    is_intervention: np.ndarray
    is_demo: np.ndarray
    images: np.ndarray
    low_dim: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    frame_ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def record(self, k: int) -> StepRecord:
        """Step ``k`` as a :class:`StepRecord` (its arrays are views of this batch's)."""
        first = bool(self.is_first[k])
        return StepRecord(
            episode=int(self.episode[k]), index=int(self.index[k]),
            stamp_ns=int(self.stamp_ns[k]), is_first=first, is_last=bool(self.is_last[k]),
            terminated=bool(self.terminated[k]), images=self.images[k],
            low_dim=self.low_dim[k], action=self.action[k], reward=float(self.reward[k]),
            is_intervention=bool(self.is_intervention[k]), is_demo=bool(self.is_demo[k]),
            frame_ids=self.frame_ids)


def _float_rows(rows: list[Any], size: int, what: str, steps: Sequence[StepFields],
                skip: np.ndarray | None = None) -> np.ndarray:
    """Rows of a float field as one float32 ``(T, size)`` array (a copy), every value
    finite; rows where ``skip`` is set are zeros (the absent action of a first step)."""
    if skip is not None:
        zero = np.zeros(size, np.float32)
        rows = [zero if f else r for r, f in zip(rows, skip)]
    out = None
    if all(type(r) is np.ndarray for r in rows):  # what deserialisers give: one copy
        try:
            out = np.array(rows)
        except ValueError:  # ragged
            out = None
        if out is not None and (out.dtype != np.float32 or out.shape != (len(rows), size)):
            out = None
    if out is None:  # anything else (lists, doubles, bad sizes): row by row, named
        out = np.zeros((len(rows), size), np.float32)
        for k, r in enumerate(rows):
            try:
                arr = _as_float32(r, what)
                if arr.size != size:
                    raise StepFormatError(f"{what} size {arr.size}, expected {size}")
            except StepFormatError as exc:
                raise StepFormatError(f"{steps[k].where()}: {exc}", steps[k].episode) from None
            out[k] = arr
    if not np.isfinite(out).all():
        k = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        bad = np.flatnonzero(~np.isfinite(out[k]))[:5].tolist()
        raise StepFormatError(f"{steps[k].where()}: {what}: non-finite values at indices {bad}",
                              steps[k].episode)
    return out


def _copy_chw_numpy(dst: np.ndarray, hwc: np.ndarray) -> None:
    dst[...] = hwc.transpose(2, 0, 1)


def _copy_chw_cv2(dst: np.ndarray, hwc: np.ndarray) -> None:
    # OpenCV's vectorised de-interleave, straight into the three planes: 2-3x faster than
    # numpy's strided copy (the largest per-step cost of a bag ingest); same bytes (tested)
    _cv2.split(hwc, [dst[0], dst[1], dst[2]])


try:  # OpenCV is there wherever the camera pipeline is (tools/requirements*, package.xml)
    import cv2 as _cv2
except ImportError:  # pragma: no cover - numpy alone gives the same bytes, slower
    _cv2 = None

#: ``dst[...] = hwc.transpose(2, 0, 1)`` for one (H, W, 3) uint8 frame into a (3, H, W) slot.
_copy_chw = _copy_chw_numpy if _cv2 is None else _copy_chw_cv2


class StepStack:
    """:func:`stack_steps`, one step at a time: each step's frames are copied (to CHW) as it
    is appended, while its bytes are still in the cache, into an array that grows by
    doubling; :meth:`finish` adds the rest (floats, finite checks, flags) in one go.
    ``capacity`` is a hint (e.g. the previous episode's length)."""

    def __init__(self, capacity: int = 64):
        self.steps: list[StepFields] = []
        self._capacity = max(1, int(capacity))
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def last(self) -> StepFields:
        return self.steps[-1]

    @property
    def nbytes(self) -> int:
        """Bytes of frame memory held (the array's capacity, which grows by doubling)."""
        return 0 if self._images is None else int(self._images.nbytes)

    def append(self, step: StepFields) -> None:
        """Add a checked step; :class:`StepFormatError` if its frames differ in shape from
        the first step's."""
        k, views = len(self.steps), step.views
        images = self._images
        if images is None:
            h, w, _ = views[0].shape
            images = self._images = np.empty((self._capacity, len(views), 3, h, w), np.uint8)
        elif len(views) != images.shape[1] or views[0].shape != (*images.shape[3:], 3):
            raise StepFormatError(
                f"{step.where()}: image shape (V,3,H,W) {(len(views), 3, *views[0].shape[:2])} "
                f"differs from the steps before it {images.shape[1:]}", step.episode)
        if k == images.shape[0]:  # full: double (amortised O(1) per step)
            grown = np.empty((2 * k, *images.shape[1:]), np.uint8)
            grown[:k] = images
            images = self._images = grown
        for v, hwc in enumerate(views):
            _copy_chw(images[k, v], hwc)
        self.steps.append(step)

    def finish(self, action_size: int | None = None) -> StepBatch:
        """The steps so far as a :class:`StepBatch` (raises :class:`StepFormatError` naming
        the first bad step). Without ``action_size`` the action size is that of the
        non-first steps (0 when all are first)."""
        steps, n = self.steps, len(self.steps)
        if not n or self._images is None:
            raise ValueError("no steps to stack")
        ints = np.array([s[:3] for s in steps], np.int64)  # episode, index, stamp_ns
        flags = np.array([s[3:6] + s[7:9] for s in steps], bool)  # first, last, terminated,
        first = flags[:, 0]  # intervention, demo
        low_dim = _float_rows([s.low_dim for s in steps], _length(steps[0].low_dim, "low_dim"),
                              "low_dim", steps)
        if action_size is None:
            action_size = next((_length(s.action, "action") for s in steps if not s.is_first),
                               0)
        action = _float_rows([s.action for s in steps], action_size, "action", steps,
                             skip=first if first.any() else None)
        return StepBatch(
            episode=ints[:, 0], index=ints[:, 1], stamp_ns=ints[:, 2], is_first=first,
            is_last=flags[:, 1], terminated=flags[:, 2], is_intervention=flags[:, 3],
            is_demo=flags[:, 4], images=self._images[:n], low_dim=low_dim, action=action,
            reward=np.fromiter((s.reward for s in steps), np.float32, n),
            frame_ids=steps[0].frame_ids)


def stack_steps(steps: Sequence[StepFields], action_size: int | None = None) -> StepBatch:
    """The batch half of decoding: checked steps (of one image geometry) -> a
    :class:`StepBatch`. Raises :class:`StepFormatError` naming the first bad step. Without
    ``action_size`` the action size is that of the non-first steps (0 when all are first)."""
    stack = StepStack(len(steps))
    for s in steps:
        stack.append(s)
    return stack.finish(action_size)


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
    first step becomes zeros. Arrays of the result never alias the message buffers.

    :func:`check_step` then :func:`stack_steps` of one step: a run of steps (a bag's
    episode) decodes through the same two halves, to the same bits."""
    fields = check_step(msg, image_shape=image_shape, low_dim_size=low_dim_size,
                        action_size=action_size)
    return stack_steps([fields], action_size).record(0)


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
