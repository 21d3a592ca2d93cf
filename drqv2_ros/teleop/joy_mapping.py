"""Gamepad (sensor_msgs/Joy) -> human intervention, without ROS.

A per-controller YAML file (``config/joy/<controller>.yaml``, format in README.md (teleop))
says which Joy axes drive the end-effector deltas, which axis or buttons drive the gripper,
and which buttons are the deadman (intervention while held, HIL-SERL's RB) and the episode
buttons (success, failure, re-record).

:class:`JoyMapper` turns Joy arrays into ``(intervening, action, events)``:

* ``intervening`` only while the deadman is held and Joy keeps arriving: a Joy stream that
  stops for longer than ``timeout`` ends it (:meth:`JoyMapper.check_timeout`);
* ``action``: float32[4] = (dx, dy, dz, gripper) in [-1, 1], the pick-101 action space
  (REP 103 base frame: x forward, y left, z up; gripper :data:`GRIPPER_OPEN` = +1 open,
  :data:`GRIPPER_CLOSED` = -1 closed, as pick-101 and the driver's kinematics use it);
* ``events``: episode buttons, edge-triggered (one event per press);
* malformed Joy (too few axes/buttons for the mapping, NaN/Inf) is counted and ignored.

:class:`JoyEncoder` is the inverse: it builds the Joy arrays that a mapper decodes into a
wanted action, so a scripted operator can drive the same teleop path as a human.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

EVENT_BUTTONS = ("success", "failure", "rerecord")
#: pick-101's gripper convention (its IK maps (a + 1) / 2 onto the gripper actuator range,
#: whose upper end is open); the driver (robot/kinematics.py) applies the same. The one
#: place to flip should the project's convention ever change.
GRIPPER_OPEN = 1.0
GRIPPER_CLOSED = -1.0
AXIS_NAMES = ("x", "y", "z")


class MappingError(ValueError):
    """A mapping file that cannot drive the action space (missing key, bad index, ...)."""


@dataclass(frozen=True)
class AxisMap:
    """One Joy axis -> one action component: ``sign * rescale(deadzone(value)) * scale``."""

    axis: int
    sign: float = 1.0
    scale: float = 1.0
    deadzone: float = 0.1

    def apply(self, value: float) -> float:
        v = self.sign * float(value)
        mag = abs(v)
        if mag <= self.deadzone:
            return 0.0
        # Rescale so the output starts at 0 just outside the deadzone and reaches 1 at the
        # stick's end stop (no jump at the deadzone edge).
        out = math.copysign((min(mag, 1.0) - self.deadzone) / (1.0 - self.deadzone), v)
        return float(np.clip(out * self.scale, -1.0, 1.0))

    def invert(self, action: float) -> float:
        """The axis value that :meth:`apply` maps to ``action`` (saturating)."""
        a = float(np.clip(action, -1.0, 1.0)) / self.scale
        if a == 0.0:
            return 0.0
        mag = min(abs(a), 1.0)
        raw = self.deadzone + mag * (1.0 - self.deadzone)
        return float(np.clip(math.copysign(raw, a) * self.sign, -1.0, 1.0))


@dataclass(frozen=True)
class GripperMap:
    """``mode: axis``: an analog axis (a trigger) from ``released`` (-> open) to
    ``pressed`` (-> closed), an absolute command: hold the trigger to keep it closed.
    ``mode: buttons``: ``close`` and ``open`` buttons latch the gripper state.
    ``mode: none``: the gripper stays open."""

    mode: str = "axis"
    axis: int = -1
    released: float = 1.0
    pressed: float = -1.0
    close: int = -1
    open: int = -1


@dataclass(frozen=True)
class JoyMapping:
    name: str
    axes: dict[str, AxisMap]
    gripper: GripperMap
    deadman: int
    buttons: dict[str, int] = field(default_factory=dict)  # event name -> button index

    @property
    def min_axes(self) -> int:
        idx = [a.axis for a in self.axes.values()]
        if self.gripper.mode == "axis":
            idx.append(self.gripper.axis)
        return max(idx) + 1 if idx else 0

    @property
    def min_buttons(self) -> int:
        idx = [self.deadman, *self.buttons.values()]
        if self.gripper.mode == "buttons":
            idx += [self.gripper.close, self.gripper.open]
        return max(idx) + 1

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, name: str = "") -> JoyMapping:
        if not isinstance(d, dict):
            raise MappingError("mapping must be a YAML mapping")
        try:
            axes = {}
            for k in AXIS_NAMES:
                a = d["axes"][k]
                axes[k] = AxisMap(axis=int(a["axis"]), sign=float(a.get("sign", 1.0)),
                                  scale=float(a.get("scale", 1.0)),
                                  deadzone=float(a.get("deadzone", 0.1)))
            g = d.get("gripper") or {"mode": "none"}
            gripper = GripperMap(mode=str(g.get("mode", "axis")), axis=int(g.get("axis", -1)),
                                 released=float(g.get("released", 1.0)),
                                 pressed=float(g.get("pressed", -1.0)),
                                 close=int(g.get("close", -1)), open=int(g.get("open", -1)))
            b = d["buttons"]
            deadman = int(b["deadman"])
            buttons = {e: int(b[e]) for e in EVENT_BUTTONS if b.get(e) is not None}
        except (KeyError, TypeError) as exc:
            raise MappingError(f"mapping {name!r}: missing or bad key {exc}") from exc
        m = cls(name=str(d.get("name", name)), axes=axes, gripper=gripper, deadman=deadman,
                buttons=buttons)
        m.validate()
        return m

    @classmethod
    def load(cls, path: str | Path) -> JoyMapping:
        path = Path(path)
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f), name=path.stem)

    def validate(self) -> None:
        for k, a in self.axes.items():
            if a.axis < 0:
                raise MappingError(f"axes.{k}.axis must be >= 0, got {a.axis}")
            if a.sign not in (1.0, -1.0):
                raise MappingError(f"axes.{k}.sign must be 1 or -1, got {a.sign}")
            if not 0.0 < a.scale <= 1.0:
                raise MappingError(f"axes.{k}.scale must be in (0, 1], got {a.scale}")
            if not 0.0 <= a.deadzone < 1.0:
                raise MappingError(f"axes.{k}.deadzone must be in [0, 1), got {a.deadzone}")
        g = self.gripper
        if g.mode not in ("axis", "buttons", "none"):
            raise MappingError(f"gripper.mode must be axis, buttons or none, got {g.mode!r}")
        used_axes = [a.axis for a in self.axes.values()]
        if g.mode == "axis":
            if g.axis < 0 or g.released == g.pressed:
                raise MappingError("gripper axis mode needs axis >= 0 and released != pressed")
            used_axes.append(g.axis)
        if len(set(used_axes)) != len(used_axes):
            raise MappingError(f"an axis is mapped twice: {used_axes}")
        if g.mode == "buttons" and (g.close < 0 or g.open < 0 or g.close == g.open):
            raise MappingError("gripper buttons mode needs distinct close and open buttons")
        used = [self.deadman, *self.buttons.values()]
        if g.mode == "buttons":
            used += [g.close, g.open]
        if min(used) < 0 or len(set(used)) != len(used):
            raise MappingError(f"buttons must be distinct and >= 0: {used}")


def find_mapping_file(controller: str, mapping_file: str = "") -> Path:
    """``mapping_file`` if given, else ``config/joy/<controller>.yaml`` from the package's
    data files (``drqv2_ros.package_files``: the source checkout, else the ament index)."""
    from drqv2_ros.package_files import config_file

    if mapping_file:
        p = Path(mapping_file).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"mapping_file {p} does not exist")
        return p
    d = config_file("joy")
    p = d / f"{controller}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"no mapping for controller {controller!r} in {d}")
    return p


class JoyMapper:
    """Stateful Joy decoder (deadman, edge-triggered buttons, timeout, gripper latch)."""

    def __init__(self, mapping: JoyMapping, timeout: float = 0.5):
        self.mapping = mapping
        self.timeout = float(timeout)
        self.malformed = 0          # Joy messages ignored (too short, NaN/Inf)
        self.timeouts = 0           # interventions ended by a Joy timeout
        self.reset()

    def reset(self) -> None:
        self.intervening = False
        self.action = self._idle_action()
        self.last_valid_t: float | None = None
        self._prev_buttons: dict[int, bool] = {}
        self._gripper_latch = GRIPPER_OPEN
        self._trigger_moved = False

    def _button(self, buttons: Sequence[int], i: int) -> bool:
        return bool(buttons[i])

    def _gripper(self, axes: Sequence[float], buttons: Sequence[int], edges: set[int]) -> float:
        g = self.mapping.gripper
        if g.mode == "axis":
            v = float(axes[g.axis])
            # Some drivers report a trigger as 0.0 until it is first touched (its rest value
            # is +-1): read that as released.
            if not self._trigger_moved:
                if v == 0.0 and g.released != 0.0:
                    v = g.released
                else:
                    self._trigger_moved = True
            frac = float(np.clip((v - g.released) / (g.pressed - g.released), 0.0, 1.0))
            return GRIPPER_OPEN + frac * (GRIPPER_CLOSED - GRIPPER_OPEN)
        if g.mode == "buttons":
            if g.close in edges:
                self._gripper_latch = GRIPPER_CLOSED
            elif g.open in edges:
                self._gripper_latch = GRIPPER_OPEN
            return self._gripper_latch
        return GRIPPER_OPEN

    def update(self, axes: Sequence[float], buttons: Sequence[int], t: float
               ) -> tuple[bool, np.ndarray, list[str]]:
        """Decode one Joy message received at time ``t`` (seconds, any monotonic clock).
        Returns (intervening, action float32[4], events)."""
        m = self.mapping
        if len(axes) < m.min_axes or len(buttons) < m.min_buttons or not all(
                math.isfinite(float(a)) for a in axes):
            self.malformed += 1
            return self.intervening, self.action.copy(), []
        self.last_valid_t = t
        pressed = {i: self._button(buttons, i) for i in range(m.min_buttons)}
        edges = {i for i, p in pressed.items() if p and not self._prev_buttons.get(i, False)}
        self._prev_buttons = pressed
        events = [e for e, i in m.buttons.items() if i in edges]
        action = np.zeros(4, np.float32)
        for k, name in enumerate(AXIS_NAMES):
            a = m.axes[name]
            action[k] = a.apply(axes[a.axis])
        action[3] = self._gripper(axes, buttons, edges)
        self.intervening = pressed[m.deadman]
        self.action = action if self.intervening else self._idle_action()
        return self.intervening, self.action.copy(), events

    @staticmethod
    def _idle_action() -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, GRIPPER_OPEN], np.float32)

    def check_timeout(self, now: float) -> bool:
        """End an intervention whose Joy stream stopped ``timeout`` s ago. True if this
        call ended it (publish the change)."""
        if self.intervening and (self.last_valid_t is None
                                 or now - self.last_valid_t > self.timeout):
            self.intervening = False
            self.action = self._idle_action()
            self.timeouts += 1
            return True
        return False


class JoyEncoder:
    """The inverse of :class:`JoyMapper` for one mapping: (intervene, action, pressed
    event buttons) -> (axes, buttons) lists that the mapper decodes to that action."""

    def __init__(self, mapping: JoyMapping, n_axes: int | None = None,
                 n_buttons: int | None = None):
        self.mapping = mapping
        self.n_axes = max(n_axes or 0, mapping.min_axes)
        self.n_buttons = max(n_buttons or 0, mapping.min_buttons)

    def encode(self, intervene: bool, action: Sequence[float], press: Sequence[str] = ()
               ) -> tuple[list[float], list[int]]:
        m = self.mapping
        axes = [0.0] * self.n_axes
        buttons = [0] * self.n_buttons
        g = m.gripper
        if g.mode == "axis":
            axes[g.axis] = g.released  # resting trigger
        for k, name in enumerate(AXIS_NAMES):
            a = m.axes[name]
            axes[a.axis] = a.invert(float(action[k]))
        grip = float(np.clip(action[3], -1.0, 1.0))
        closing = (grip - GRIPPER_OPEN) / (GRIPPER_CLOSED - GRIPPER_OPEN)  # 0 open .. 1 closed
        if g.mode == "axis":
            axes[g.axis] = g.released + closing * (g.pressed - g.released)
        elif g.mode == "buttons":
            # Hold the button of the wanted state: the latch follows on the first press.
            buttons[g.close if closing > 0.5 else g.open] = 1
        buttons[m.deadman] = int(bool(intervene))
        for e in press:
            if e not in m.buttons:
                raise MappingError(f"mapping {m.name!r} has no {e!r} button")
            buttons[m.buttons[e]] = 1
        return axes, buttons
