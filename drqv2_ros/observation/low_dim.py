"""The low-dim state a pick-101 checkpoint expects, built from the robot's joint state.

Per frame (18 values, radians / metres, unnormalised, as pick-101's sim produced them):
``joint_pos`` (6, the five arm joints then the gripper joint, rad), ``joint_vel`` (6, rad/s),
``gripper_xyz`` (3, m, the ``gripperframe`` site in the base frame), ``gripper_euler``
(3, rad: roll, pitch, yaw of the site, ``robot.kinematics.rotation_to_euler``).
Older pick-101 checkpoints append the PRIVILEGED ``cube_pos`` (3, m) -> 21 per frame
(63 stacked): a real robot has no such sensor, so that layout is run only if the
configuration says how to fill it. The layout is the one the checkpoint recorded
(``config.low_dim_layout``), never guessed from its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: What the actor can fill: name -> (size, unit of training).
KNOWN_FIELDS: dict[str, tuple[int, str]] = {
    "joint_pos": (6, "rad"), "joint_vel": (6, "rad/s"), "gripper_xyz": (3, "m"),
    "gripper_euler": (3, "rad"), "cube_pos": (3, "m"),
}


class LowDimLayoutError(ValueError):
    """The checkpoint's low-dim size cannot be filled from the available sensors."""


@dataclass(frozen=True)
class LowDimLayout:
    """Which fields a checkpoint's per-frame low-dim state holds, as it recorded them."""

    fields: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.fields)

    @property
    def needs_privileged(self) -> bool:
        return any(name == "cube_pos" for name, _ in self.fields)

    @classmethod
    def from_recorded(cls, layout) -> LowDimLayout:
        """The layout a checkpoint recorded (``config.low_dim_layout``: [name, size, unit]
        per field), refused unless every field is one the actor fills, in its size and unit."""
        fields = []
        for name, size, unit in layout:
            if name not in KNOWN_FIELDS:
                raise LowDimLayoutError(
                    f"the checkpoint's low-dim field {name!r} cannot be filled from the robot's "
                    f"sensors (known: {', '.join(KNOWN_FIELDS)})")
            if (size, unit) != KNOWN_FIELDS[name]:
                want = KNOWN_FIELDS[name]
                raise LowDimLayoutError(
                    f"low-dim field {name!r} recorded as {size} values in {unit!r}; the actor "
                    f"provides {want[0]} in {want[1]!r}")
            fields.append((name, size))
        if len({n for n, _ in fields}) != len(fields):
            raise LowDimLayoutError(f"low-dim layout repeats a field: {[n for n, _ in fields]}")
        return cls(tuple(fields))


def build_low_dim(layout: LowDimLayout, joint_pos: np.ndarray, joint_vel: np.ndarray,
                  gripper_xyz: np.ndarray, gripper_euler: np.ndarray,
                  cube_pos: np.ndarray | None = None) -> np.ndarray:
    """One frame of low-dim state in ``layout`` order, float32. Raises on non-finite input."""
    parts = {
        "joint_pos": joint_pos,
        "joint_vel": joint_vel,
        "gripper_xyz": gripper_xyz,
        "gripper_euler": gripper_euler,
        "cube_pos": cube_pos,
    }
    out = []
    for name, n in layout.fields:
        v = parts[name]
        if v is None:
            raise LowDimLayoutError(f"{name} is required by this checkpoint but not available")
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.shape[0] != n:
            raise LowDimLayoutError(f"{name} has {v.shape[0]} values, expected {n}")
        out.append(v)
    vec = np.concatenate(out)
    if not np.all(np.isfinite(vec)):
        raise ValueError("low-dim state has NaN/Inf values")
    return vec
