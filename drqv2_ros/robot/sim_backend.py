"""``ArmBackend`` over the MuJoCo SO-101 pick-cube world, stepped in real time. ROS-free.

The driver calls ``advance(now_s)`` once per control tick: the world is stepped by whole
physics steps (2 ms) until its clock catches up with wall time since ``connect()``; at a
50 Hz tick that is 10 substeps, the same 0.02 s per step as pick-101's env. If the host
falls behind by more than ``max_catch_up_s`` the backlog is dropped (and counted in
``dropped_s``) rather than stalling the node.

Rendering 640x480 costs ~55 ms a frame on CPU (EGL/Mesa), longer than a 20 ms control tick,
so ``CameraWorker`` renders in its own thread (own EGL context, own ``MjData`` filled from a
snapshot of the live state taken under ``SimBackend.lock``); MuJoCo releases the GIL while
it renders, so the control tick keeps its rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import mujoco
import numpy as np

from drqv2_ros.robot.backend import BackendError
from drqv2_ros.robot.sim_world import WRIST_CAMERA, SimConfig, SimWorld, TaskState


class SimBackend:
    name = "sim"
    resets_scene = True

    def __init__(self, cfg: SimConfig | None = None, max_catch_up_s: float = 0.1,
                 cameras: tuple[str, ...] = (WRIST_CAMERA,)):
        self.cfg = cfg or SimConfig()
        self.cfg_cameras = cameras
        self.max_catch_up_s = max_catch_up_s
        self.world: SimWorld | None = None
        self._t0: float | None = None     # wall time matching world time 0 of this episode
        self.dropped_s = 0.0
        #: Held while the physics state changes; camera snapshots take it too.
        self.lock = threading.Lock()

    # -- ArmBackend ------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            self.world = SimWorld(self.cfg)
        except (FileNotFoundError, ValueError) as exc:
            raise BackendError(f"cannot build the SO-101 sim: {exc}") from exc

    def _w(self) -> SimWorld:
        if self.world is None:
            raise BackendError("sim backend not connected: call connect() first")
        return self.world

    def read_joints(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self._w().joints()

    def write_joint_targets(self, targets: np.ndarray) -> None:
        with self.lock:
            self._w().set_targets(targets)

    def close(self) -> None:
        if self.world is not None:
            self.world.close()
            self.world = None

    # -- sim extras ------------------------------------------------------------------------
    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.cfg_cameras)

    def advance(self, now_s: float) -> int:
        """Step physics up to wall time ``now_s``; returns the number of physics steps."""
        w = self._w()
        if self._t0 is None:
            self._t0 = now_s - w.time
        lag = (now_s - self._t0) - w.time
        if lag > self.max_catch_up_s:
            self.dropped_s += lag - self.max_catch_up_s
            self._t0 += lag - self.max_catch_up_s
            lag = self.max_catch_up_s
        n = int(lag / w.timestep + 1e-9)
        if n > 0:
            with self.lock:
                w.step(n)
                w.update_task()
        return n

    def reset_episode(self, seed: int | None = None, *, placement_seed: int | None = None
                      ) -> str:
        with self.lock:
            self._w().reset(seed, placement_seed=placement_seed)
        self._t0 = None
        return f"episode {self._w().episode} started"

    def snapshot(self, dst: mujoco.MjData) -> None:
        """Copy the live state into ``dst`` (same model) and compute its kinematics."""
        w = self._w()
        with self.lock:
            mujoco.mj_copyData(dst, w.model, w.data)
        mujoco.mj_kinematics(w.model, dst)
        mujoco.mj_camlight(w.model, dst)

    def render(self, camera: str = WRIST_CAMERA) -> np.ndarray:
        return self._w().render(camera)

    def task_state(self) -> TaskState:
        return self._w().task_state()


class CameraWorker:
    """Renders ``cameras`` at ``rate_hz`` in a background thread and hands each set of
    frames to ``on_frames(frames: dict[name, (H, W, 3) uint8], stamp_ns)``, called in that
    thread (rclpy publishers are thread-safe). ``stamp_ns`` comes from ``clock_ns()`` at
    the snapshot. ``render_ms`` holds the mean render time per frame."""

    def __init__(self, backend: SimBackend, rate_hz: float, cameras: tuple[str, ...],
                 on_frames: Callable[[dict[str, np.ndarray], int], None],
                 clock_ns: Callable[[], int] = time.time_ns):
        self.backend, self.period = backend, 1.0 / rate_hz
        self.cameras, self.on_frames, self.clock_ns = cameras, on_frames, clock_ns
        self.frames = 0
        self.render_ms = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-camera", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the renderer exists (its GL set-up holds the GIL)."""
        self._thread.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise BackendError(f"sim camera failed to start: {self.error}")

    def _run(self) -> None:
        w = self.backend._w()
        cfg = w.cfg
        try:
            renderer = mujoco.Renderer(w.model, cfg.render_height, cfg.render_width)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        except Exception as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        data = mujoco.MjData(w.model)
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                stamp = self.clock_ns()
                t0 = time.perf_counter()
                self.backend.snapshot(data)
                frames = {}
                for cam in self.cameras:
                    renderer.update_scene(data, camera=cam)
                    frames[cam] = renderer.render()
                dt_ms = (time.perf_counter() - t0) * 1e3 / max(len(self.cameras), 1)
                self.frames += 1
                self.render_ms += (dt_ms - self.render_ms) / min(self.frames, 50)
                self.on_frames(frames, stamp)
                next_t += self.period
                delay = next_t - time.monotonic()
                if delay < 0:            # late: skip ahead instead of bursting
                    next_t = time.monotonic()
                    delay = 0.0
                self._stop.wait(delay)
        except Exception as exc:
            self.error = exc
        finally:
            renderer.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
