"""Step messages straight from their serialized bytes: the CDR half of the Step codec.

    decode = StepCdrDecoder(image_shape=(1, 3, 84, 84), low_dim_size=18, action_size=4)
    fields = decode(raw)     # the StepFields check_step gives for the deserialised message

What a bag holds for ``drqv2_ros/msg/Step`` is the little-endian CDR of this package's
definition. It is read with ``struct`` at the byte positions the definition implies; the
arrays are views of the bytes, and the checks every decoded step passes
(:func:`~drqv2_ros.observation.step_record._checked`) follow. The result is the same, bit for
bit, as deserialising the message first (tested against the ``rosbags`` deserialiser), at a
fraction of the cost. Bytes that are not such a Step (truncated, garbage, big endian) raise
:class:`~drqv2_ros.observation.step_record.UndecodableStepError`: decode those with a
deserialiser.

A decoder remembers the byte layouts of the messages it has accepted: where each field sits,
which the lengths of the strings and arrays before it decide. The messages of a recording
share a few layouts (a first step carries no action), so most are read by one ``struct``
read of their length fields and strings, compared as a whole with a known layout's, and one
more of their values at the known positions; the geometry checks that layout passed hold
for them too, and only the checks of the values run again. A message that matches no known
layout is walked field by field. Both paths give the same fields and raise the same errors
(tested over random layouts and byte corruptions).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from drqv2_ros.observation.step_record import (
    StepFields,
    UndecodableStepError,
    _check_action,
    _check_flags,
    _checked,
    _hwc,
)

__all__ = ["StepCdrDecoder", "check_step_cdr"]

_CDR_LE = b"\x00\x01"  # encapsulation: plain CDR, little endian
_TIME_LEN = struct.Struct("<iII")  # stamp (sec, nanosec), frame_id length
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_U32X3 = struct.Struct("<III")
_F32_LE = np.dtype("<f4")  # float32 on the hosts ROS 2 runs on (stacking converts elsewhere)
_U8 = np.dtype(np.uint8)
_UNDECODABLE = (struct.error, ValueError, IndexError, UnicodeDecodeError)


class _Layout(NamedTuple):
    """Where the fields of one message layout sit (offsets from the start of the bytes)."""

    size: int  # bytes of the message
    skeleton: struct.Struct  # encapsulation, every length field and string
    expected: tuple  # what ``skeleton`` reads from a message of this layout
    values: struct.Struct  # sec, nanosec, episode, index, is_first, is_last, terminated,
    #                        reward, is_intervention, is_demo
    images: tuple[tuple[int, int, int, int, int], ...]  # data offset, bytes, h, w, step
    encodings: tuple[str, ...]
    frame_ids: tuple[str, ...]
    low_dim: tuple[int, int]  # count, offset
    action: tuple[int, int]


def _align(pos: int) -> int:
    """``pos`` padded to the next 4-byte boundary, counted (as CDR does) from the end of the
    4-byte encapsulation header."""
    return pos + (-(pos - 4) % 4)


def _cdr_string(raw: Any, pos: int, length: int) -> str:
    """A CDR string of ``length`` bytes (its NUL included) at ``pos``."""
    if length == 0 or pos + length > len(raw) or raw[pos + length - 1] != 0:
        raise ValueError(f"bad string of {length} bytes at byte {pos}")
    return bytes(raw[pos:pos + length - 1]).decode()


def _compile(fields: list[tuple[int, str, int]]) -> struct.Struct:
    """One little-endian Struct reading ``fields`` (offset, format code, bytes; ascending,
    not overlapping) at their offsets."""
    fmt, at = ["<"], 0
    for pos, code, nbytes in fields:
        if pos > at:
            fmt.append(f"{pos - at}x")
        fmt.append(code)
        at = pos + nbytes
    return struct.Struct("".join(fmt))


def _walk(raw: Any) -> _Layout:
    """The layout of ``raw``, field by field (ValueError, struct.error, IndexError or
    UnicodeDecodeError where the bytes are not a Step)."""
    n = len(raw)
    if raw[:2] != _CDR_LE:
        raise ValueError(f"encapsulation {bytes(raw[:4]).hex()} is not little-endian CDR")
    skeleton = [(0, "2s", 2)]
    values = [(4, "iI", 8)]  # the header stamp
    _s, _ns, length = _TIME_LEN.unpack_from(raw, 4)
    # the header's frame id (not kept), decoded as the deserialiser decodes it (UTF-8): a
    # message it would refuse is never accepted here
    _cdr_string(raw, 16, length)
    skeleton += [(12, "I", 4), (16, f"{length}s", length)]
    pos = _align(16 + length)
    values.append((pos, "II???", 11))  # episode, index, is_first, is_last, terminated
    pos = _align(pos + 11)
    (count,) = _U32.unpack_from(raw, pos)
    skeleton.append((pos, "I", 4))
    pos += 4
    images, encodings, frame_ids = [], [], []
    for _ in range(count):  # bounded: each view takes at least 12 bytes
        pos = _align(pos)
        _s, _ns, length = _TIME_LEN.unpack_from(raw, pos)  # the view's header
        skeleton.append((pos + 8, "I", 4))
        pos += 12
        frame_ids.append(_cdr_string(raw, pos, length))
        skeleton.append((pos, f"{length}s", length))
        pos = _align(pos + length)
        h, w, length = _U32X3.unpack_from(raw, pos)
        skeleton.append((pos, "III", 12))
        pos += 12
        encodings.append(_cdr_string(raw, pos, length))
        skeleton.append((pos, f"{length}s", length))
        pos = _align(pos + length + 1)  # is_bigendian (rgb8 bytes are the same either way)
        step, size = _U32X2.unpack_from(raw, pos)
        skeleton.append((pos, "II", 8))
        pos += 8
        images.append((pos, size, h, w, step))
        pos += size
    arrays = []
    pos = _align(pos)
    for _field in ("low_dim", "action"):  # float32[]: aligned after low_dim's own length
        (count,) = _U32.unpack_from(raw, pos)
        skeleton.append((pos, "I", 4))
        arrays.append((count, pos + 4))
        pos += 4 + 4 * count
    values.append((pos, "f??", 6))  # reward, is_intervention, is_demo
    pos += 6
    if pos > n:
        raise ValueError(f"ends {pos - n} bytes early")
    if n - pos > 3:  # at most the final padding may follow
        raise ValueError(f"{n - pos} bytes after the end of the message")
    skel = _compile(skeleton)
    return _Layout(n, skel, skel.unpack_from(raw), _compile(values), tuple(images),
                   tuple(encodings), tuple(frame_ids), arrays[0], arrays[1])


class StepCdrDecoder:
    """:func:`check_step_cdr` with a memory of the layouts it accepted (at most
    ``max_layouts``, the latest kept). One per stream of messages (a bag's topic); not
    shared between threads. The expected shapes are those of
    :func:`~drqv2_ros.observation.step_record.from_msg`."""

    def __init__(self, *, image_shape: tuple[int, int, int, int] | None = None,
                 low_dim_size: int | None = None, action_size: int | None = None,
                 max_layouts: int = 8):
        self.image_shape, self.low_dim_size = image_shape, low_dim_size
        self.action_size = action_size
        self.max_layouts = max(1, int(max_layouts))
        self._layouts: dict[int, _Layout] = {}  # by message size

    def __call__(self, raw: Any) -> StepFields:
        layout = self._layouts.get(len(raw))
        if layout is not None and layout.skeleton.unpack_from(raw) == layout.expected:
            return self._known(raw, layout)
        try:
            layout = _walk(raw)
        except _UNDECODABLE as exc:
            raise UndecodableStepError(f"not a serialized Step ({len(raw)} bytes): "
                                       f"{exc}") from None
        sec, nanosec, episode, index, first, last, term, reward, interv, demo = \
            layout.values.unpack_from(raw)
        images = [(enc, h, w, step, np.frombuffer(raw, _U8, size, pos), fid)
                  for (pos, size, h, w, step), enc, fid
                  in zip(layout.images, layout.encodings, layout.frame_ids)]
        fields = _checked(sec * 1_000_000_000 + nanosec, episode, index, first, last, term,
                          float(reward), interv, demo, images,
                          np.frombuffer(raw, _F32_LE, *layout.low_dim),
                          np.frombuffer(raw, _F32_LE, *layout.action), self.image_shape,
                          self.low_dim_size, self.action_size)
        # Accepted: its geometry passed, and passes for every message of this layout.
        self._layouts.pop(layout.size, None)
        if len(self._layouts) >= self.max_layouts:
            del self._layouts[next(iter(self._layouts))]
        self._layouts[layout.size] = layout
        return fields

    def _known(self, raw: Any, layout: _Layout) -> StepFields:
        """A message of an accepted layout: its values, and the checks that depend on them
        (in :func:`_checked`'s order; its geometry checks cannot fail here)."""
        sec, nanosec, episode, index, first, last, term, reward, interv, demo = \
            layout.values.unpack_from(raw)
        reward = float(reward)
        _check_flags(episode, index, first, last, term, reward)
        n_act = layout.action[0]
        reward = _check_action(episode, index, first, n_act, self.action_size, reward)
        views = tuple([_hwc(np.frombuffer(raw, _U8, size, pos), h, w, step)
                       for pos, size, h, w, step in layout.images])
        return StepFields(episode, index, sec * 1_000_000_000 + nanosec, first, last, term,
                          reward, interv, demo, views, layout.frame_ids,
                          np.frombuffer(raw, _F32_LE, *layout.low_dim),
                          np.frombuffer(raw, _F32_LE, n_act, layout.action[1]))


def check_step_cdr(
    raw: Any,
    *,
    image_shape: tuple[int, int, int, int] | None = None,
    low_dim_size: int | None = None,
    action_size: int | None = None,
) -> StepFields:
    """:func:`~drqv2_ros.observation.step_record.check_step` of one serialized Step
    (little-endian CDR of this package's ``msg/Step.msg``, as rosbag2 stores it). Raises
    :class:`~drqv2_ros.observation.step_record.UndecodableStepError` for bytes that are not
    such a Step, :class:`~drqv2_ros.observation.step_record.StepFormatError` for a Step that
    fails the checks. For a stream of messages, a :class:`StepCdrDecoder` is faster."""
    return StepCdrDecoder(image_shape=image_shape, low_dim_size=low_dim_size,
                          action_size=action_size)(raw)
