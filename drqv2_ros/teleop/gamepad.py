"""A local gamepad as `joy`-package Joy arrays, ROS-free: pygame or evdev readers (imported
only when opened; neither is a dependency of drqv2_ros) and the conversions to the `joy`
package's conventions (axes in [-1, 1], stick up / left positive, triggers +1 released ..
-1 pressed, d-pad hats as two extra axes each, buttons 0/1 in the device's order).
"""

from __future__ import annotations

from collections.abc import Sequence

# -- conversion (ROS-free, unit-tested) -------------------------------------------------------

def joy_axis(value: float, lo: float = -1.0, hi: float = 1.0, deadzone: float = 0.0) -> float:
    """Raw device value in [lo, hi] -> Joy convention (negated, [-1, 1], deadzone)."""
    if hi == lo:
        return 0.0
    v = 2.0 * (float(value) - lo) / (hi - lo) - 1.0
    v = -max(-1.0, min(1.0, v))
    return 0.0 if abs(v) < deadzone else v + 0.0  # + 0.0: no -0.0


def joy_from_pygame(axes: Sequence[float], buttons: Sequence[int],
                    hats: Sequence[tuple[int, int]], deadzone: float = 0.0
                    ) -> tuple[list[float], list[int]]:
    """pygame joystick state -> (Joy.axes, Joy.buttons). pygame axes are in [-1, 1] with
    down/right positive; hats are (x, y) with right and up positive."""
    out_axes = [joy_axis(a, deadzone=deadzone) for a in axes]
    for hx, hy in hats:
        out_axes += [float(-hx) + 0.0, float(hy) + 0.0]
    return out_axes, [1 if b else 0 for b in buttons]


class EvdevState:
    """Joy arrays from evdev events. ``abs_info``: {code: (min, max)} of the device's
    absolute axes; ``keys``: its button key codes. Axis and button order: ascending codes
    (the kernel joystick interface's order, which `joy_node` shows)."""

    HAT_CODES = range(0x10, 0x18)  # ABS_HAT0X .. ABS_HAT3Y

    def __init__(self, abs_info: dict[int, tuple[int, ...]], keys: Sequence[int],
                 deadzone: float = 0.0):
        self.abs_codes = sorted(abs_info)
        self.abs_info = {c: tuple(v[:2]) for c, v in abs_info.items()}
        self.keys = sorted(keys)
        self.deadzone = deadzone
        # (min, max, value): the device's current value at open; (min, max): centre
        self.raw = {c: (v[2] if len(v) > 2 else None) for c, v in abs_info.items()}
        self.pressed = dict.fromkeys(self.keys, 0)

    def event(self, ev_type: int, code: int, value: int) -> None:
        """Feed one input event (EV_KEY = 1, EV_ABS = 3; others ignored)."""
        if ev_type == 1 and code in self.pressed:
            self.pressed[code] = 1 if value else 0
        elif ev_type == 3 and code in self.raw:
            self.raw[code] = value

    def joy(self) -> tuple[list[float], list[int]]:
        axes = []
        for c in self.abs_codes:
            lo, hi = self.abs_info[c]
            v = self.raw[c]
            if v is None:  # value unknown until the first event: centre
                axes.append(0.0)
                continue
            dz = 0.0 if c in self.HAT_CODES else self.deadzone
            axes.append(joy_axis(v, lo, hi, dz))
        return axes, [self.pressed[k] for k in self.keys]


# -- backends ---------------------------------------------------------------------------------

class _PygameReader:
    def __init__(self, index: int, deadzone: float):
        import os

        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        import pygame

        self.pg = pygame
        pygame.init()
        pygame.joystick.init()
        n = pygame.joystick.get_count()
        if index >= n:
            raise RuntimeError(f"pygame sees {n} joystick(s); device_index {index} absent")
        self.js = pygame.joystick.Joystick(index)
        self.js.init()
        self.deadzone = deadzone
        self.name = self.js.get_name()

    def read(self):
        self.pg.event.pump()
        js = self.js
        return joy_from_pygame([js.get_axis(i) for i in range(js.get_numaxes())],
                               [js.get_button(i) for i in range(js.get_numbuttons())],
                               [js.get_hat(i) for i in range(js.get_numhats())], self.deadzone)

    def close(self):
        self.pg.quit()


class _EvdevReader:
    def __init__(self, path: str, deadzone: float):
        import evdev

        self.evdev = evdev
        if not path:
            for p in evdev.list_devices():
                d = evdev.InputDevice(p)
                caps = d.capabilities()
                if evdev.ecodes.EV_ABS in caps and evdev.ecodes.BTN_GAMEPAD in caps.get(
                        evdev.ecodes.EV_KEY, []):
                    path = p
                    break
                d.close()
            if not path:
                raise RuntimeError("evdev found no gamepad in /dev/input (permissions?)")
        self.dev = evdev.InputDevice(path)
        caps = self.dev.capabilities()
        abs_info = {code: (info.min, info.max, info.value)
                    for code, info in caps.get(evdev.ecodes.EV_ABS, [])}
        keys = [k for k in caps.get(evdev.ecodes.EV_KEY, []) if k >= 0x120]  # BTN_JOYSTICK+
        self.state = EvdevState(abs_info, keys, deadzone)
        self.name = self.dev.name

    def read(self):
        try:
            for ev in self.dev.read():
                self.state.event(ev.type, ev.code, ev.value)
        except BlockingIOError:
            pass
        return self.state.joy()

    def close(self):
        self.dev.close()


def open_reader(backend: str, *, device_index: int = 0, device_path: str = "",
                deadzone: float = 0.0):
    """A reader (``read() -> (axes, buttons)``, ``close()``, ``name``) of the first backend
    that imports: pygame or evdev (``auto``: pygame, then evdev)."""
    errors = []
    for b in (["pygame", "evdev"] if backend == "auto" else [backend]):
        try:
            if b == "pygame":
                return _PygameReader(device_index, deadzone)
            if b == "evdev":
                return _EvdevReader(device_path, deadzone)
            raise ValueError(f"unknown backend {b!r} (pygame, evdev, auto)")
        except ImportError as exc:
            errors.append(f"{b}: not installed ({exc}); pip install {b}")
    raise RuntimeError("no gamepad backend: " + "; ".join(errors))
