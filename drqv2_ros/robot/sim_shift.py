"""A visual and dynamic shift of the MuJoCo SO-101 world: the sim-to-real proxy (ROS-free).

A policy trained in the nominal scene meets, on the real arm, other light, other colours, a
camera mounted a few millimetres and degrees off, weaker servos and a heavier, more slippery
cube. :class:`SimShift` holds each of these as a change to the compiled model; ``SHIFTS``
names the presets (``none``: the nominal scene, untouched; ``real_proxy``: all of them at
once). ``SimConfig(shift="real_proxy")`` applies one; every report names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np


@dataclass(frozen=True)
class SimShift:
    light_scale: float = 1.0                          # lights and headlight brightness
    light_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)   # colour of the lights
    floor_rgba: tuple[float, float, float, float] | None = None  # table/floor tint
    cube_rgba: tuple[float, float, float, float] | None = None
    camera_fovy_delta_deg: float = 0.0                # wrist camera field of view change
    camera_offset_m: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in the gripper frame
    actuator_kp_scale: float = 1.0                    # servo stiffness (kv unchanged)
    cube_mass_scale: float = 1.0                      # mass and inertia
    cube_friction_scale: float = 1.0                  # sliding friction

    def __post_init__(self) -> None:
        for name in ("light_scale", "actuator_kp_scale", "cube_mass_scale",
                     "cube_friction_scale"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        if not (np.isfinite(self.camera_fovy_delta_deg)
                and -60 < self.camera_fovy_delta_deg < 60):
            raise ValueError("camera_fovy_delta_deg must be in (-60, 60)")
        if not all(np.isfinite(x) and abs(x) <= 0.1 for x in self.camera_offset_m):
            raise ValueError("camera_offset_m must be within 0.1 m")


SHIFTS: dict[str, SimShift] = {
    "none": SimShift(),
    "real_proxy": SimShift(
        light_scale=0.55, light_tint=(1.0, 0.88, 0.7), floor_rgba=(0.85, 0.75, 0.6, 1.0),
        cube_rgba=(0.85, 0.3, 0.1, 1.0), camera_fovy_delta_deg=-7.0,
        camera_offset_m=(0.004, -0.006, 0.003), actuator_kp_scale=0.6, cube_mass_scale=1.5,
        cube_friction_scale=0.7),
}


#: a shift file larger than this is refused before it is read
MAX_SHIFT_FILE_BYTES = 64 * 1024


def load_shift(path: str | Path) -> SimShift:
    """A shift from a YAML file: a mapping of :class:`SimShift` fields (any subset; the rest
    keep the nominal value), e.g. ``light_scale: 0.5`` / ``camera_offset_m: [0, -0.01, 0]``,
    optionally ``base: real_proxy`` to start from a preset. Refused with the reason: a
    missing or oversized file, YAML that is not a mapping, unknown fields, wrong lengths,
    non-numbers, values out of range."""
    import dataclasses

    import yaml

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ValueError(f"shift file {p}: {exc.strerror or exc}") from None
    if size > MAX_SHIFT_FILE_BYTES:
        raise ValueError(f"shift file {p}: {size} bytes (at most {MAX_SHIFT_FILE_BYTES})")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"shift file {p}: not readable YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"shift file {p}: must hold a mapping of SimShift fields")
    base = data.pop("base", "none")
    if base not in SHIFTS:
        raise ValueError(f"shift file {p}: base {base!r} is not one of {sorted(SHIFTS)}")
    fields = {f.name: f for f in dataclasses.fields(SimShift)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"shift file {p}: unknown fields {unknown} (known: {sorted(fields)})")
    start = SHIFTS[base]
    values = {}
    for name, v in data.items():
        default = getattr(SimShift(), name)
        width = len(default) if isinstance(default, tuple) else (
            4 if name.endswith("rgba") else 0)
        try:
            if width:
                if v is None and default is None:
                    values[name] = None
                    continue
                vals = tuple(float(x) for x in v)
                if len(vals) != width:
                    raise ValueError(f"needs {width} numbers")
                if not all(np.isfinite(vals)):
                    raise ValueError("non-finite")
                values[name] = vals
            else:
                if isinstance(v, bool):
                    raise ValueError("a boolean")
                values[name] = float(v)
                if not np.isfinite(values[name]):
                    raise ValueError("non-finite")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"shift file {p}: {name}: {v!r} ({exc})") from None
    try:  # SimShift checks the ranges, whatever made it
        return dataclasses.replace(start, **values)
    except ValueError as exc:
        raise ValueError(f"shift file {p}: {exc}") from None


def shift_named(name: str) -> SimShift:
    """A preset by name (``SHIFTS``), or a YAML file of one (``load_shift``)."""
    if name in SHIFTS:
        return SHIFTS[name]
    if str(name).endswith((".yaml", ".yml")):
        return load_shift(name)
    raise ValueError(f"unknown shift {name!r}: one of {sorted(SHIFTS)} or a .yaml file")


def apply_shift(m: mujoco.MjModel, s: SimShift, *, camera: str, cube_geom: str,
                actuators: np.ndarray) -> None:
    """Change the compiled model ``m`` in place (render and physics parameters only)."""
    if s == SimShift():
        return
    tint = np.asarray(s.light_tint, dtype=np.float64) * s.light_scale
    m.light_diffuse[:] = m.light_diffuse * tint
    m.light_ambient[:] = m.light_ambient * tint
    m.vis.headlight.diffuse[:] = np.asarray(m.vis.headlight.diffuse) * tint
    m.vis.headlight.ambient[:] = np.asarray(m.vis.headlight.ambient) * tint
    floor = m.geom("floor")
    if s.floor_rgba is not None:
        mat = int(floor.matid[0])
        if mat >= 0:
            m.mat_rgba[mat] = s.floor_rgba
        else:
            floor.rgba[:] = s.floor_rgba
    cube = m.geom(cube_geom)
    if s.cube_rgba is not None:
        cube.rgba[:] = s.cube_rgba
    cam = m.camera(camera)
    cam.fovy[:] = cam.fovy + s.camera_fovy_delta_deg
    cam.pos[:] = cam.pos + np.asarray(s.camera_offset_m)
    m.actuator_gainprm[actuators, 0] *= s.actuator_kp_scale
    m.actuator_biasprm[actuators, 1] *= s.actuator_kp_scale
    body = int(cube.bodyid[0])
    m.body_mass[body] *= s.cube_mass_scale
    m.body_inertia[body] *= s.cube_mass_scale
    cube.friction[0] *= s.cube_friction_scale
