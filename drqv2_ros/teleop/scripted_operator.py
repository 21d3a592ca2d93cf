"""A scripted "human" for simulation runs, without ROS: it reads PRIVILEGED sim state
(cube and gripper positions, gripper opening, grasp and success flags) and decides, like an
operator holding a gamepad, when to take over (deadman), which action to command
(pick-101 space: dx, dy, dz in [-1, 1] x ``step_m`` metres, REP 103 base frame; gripper
``GRIPPER_OPEN`` = +1 .. ``GRIPPER_CLOSED`` = -1, see joy_mapping) and when to press the
success button.

The node (``nodes/scripted_operator_node.py``) encodes these decisions as sensor_msgs/Joy
with :class:`~drqv2_ros.teleop.joy_mapping.JoyEncoder`, so interventions go through the
same teleop node and mapping as a human's.

Pick demonstration, a proportional controller on the gripper site position. The phase is
read off the STATE at every tick (an expert for any state, as relabelling the states a
learning policy visits needs), with memory only for a grasp attempt in progress and a
blocked descent; a demonstration from the start pose passes through the phases in order:

    APPROACH  towards the point ``hover_height`` above the cube, gripper open; from a low
              gripper NEXT to the cube (within ``clear_xy_m``) it rises first so as not to
              hit it, from a low gripper away from it it moves and rises at once
    DESCEND   over the cube (within ``xy_tolerance``) and below the hover height: down
              to the cube centre + the grasp offsets, gripper open
              (a closed gripper opens there first)
    CLOSE     at the grasp height, or where the descent is blocked for ``stall_ticks``:
              hold position, close until grasped, or closed (3 ticks), or ``close_ticks``
    LIFT      whenever the cube is grasped: up to ``lift_z``, gripper closed
    HOLD      grasped at the lift height: stay, gripper closed, until the episode ends

When to take over (``takeover``):

    schedule  per episode, by ``intervene_every_n_episodes`` / ``intervene_probability``,
              from ``intervene_start_s`` for ``intervene_duration_s``
    assist    like a person watching the policy: when over the last ``assist_window_s`` the
              gripper got no closer to the cube than ``assist_progress_m`` (stalled) or went
              ``assist_away_m`` further away (heading off), and the cube is not held, take
              over for ``assist_duration_s``, within ``assist_budget_s`` per episode, then
              hand control back (the next takeover needs a new window of evidence)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from drqv2_ros.settings import param
from drqv2_ros.teleop.joy_mapping import GRIPPER_CLOSED, GRIPPER_OPEN

APPROACH, DESCEND, CLOSE, LIFT, HOLD = "approach", "descend", "close", "lift", "hold"
TAKEOVERS = ("schedule", "assist")


@dataclass
class SimStateData:
    """The fields of drqv2_ros/SimState the operator uses (m, base frame)."""

    cube_position: np.ndarray
    gripper_position: np.ndarray
    gripper_opening: float = 1.0    # 0 closed .. 1 open
    cube_grasped: bool = False
    success: bool = False


@dataclass
class OperatorConfig:
    """The operator's settings; the node declares each as a ROS parameter with its help
    text (``ScriptedOperatorParams`` derives from this class)."""

    intervene_probability: float = param(0.0, "chance that an episode gets a takeover")
    intervene_every_n_episodes: int = param(1, "every n-th episode gets a takeover (0: never)")
    intervene_start_s: float = param(0.0, "takeover starts this long into the episode (s)")
    intervene_duration_s: float = param(0.0, "takeover length (s; 0: until the episode ends)")
    press_success: bool = param(True, "press the success button when sim/state says success")
    step_m: float = param(0.02, "metres per action unit (the driver's ee_step_m)")
    kp: float = param(0.6, "proportional gain: fraction of the position error per tick")
    max_action: float = param(1.0, "limit of |dx|, |dy|, |dz| in action units")
    hover_height: float = param(0.06, "approach height above the cube centre (m)")
    grasp_offset: float = param(0.0, "gripper site z relative to the cube centre at grasp (m)")
    grasp_x_offset: float = param(0.0, "gripper site x relative to the cube centre (m)")
    grasp_y_offset: float = param(-0.022, "gripper site y relative to the cube centre (m); "
                                  "-0.022: the fixed jaw beside the cube's -y face")
    stall_ticks: int = param(8, "ticks without descent progress (jaws blocked) before closing")
    lift_z: float = param(0.15, "lift target height (m)")
    xy_tolerance: float = param(0.012, "xy alignment tolerance (m): over the cube within it")
    z_tolerance: float = param(0.008, "z tolerance (m)")
    close_ticks: int = param(15, "ticks of closing before lifting anyway")
    clear_xy_m: float = param(0.04, "a low gripper this close to the cube (xy, m) rises "
                                    "before moving sideways")
    open_opening: float = param(0.8, "gripper_opening above which the gripper is open")
    closed_opening: float = param(0.35, "gripper_opening below which the gripper is closed")
    seed: int = param(0, "random seed of intervene_probability")
    takeover: str = param("schedule", "when to take over: 'schedule' (intervene_* above) or "
                                      "'assist' (when the policy stalls or heads away)")
    assist_window_s: float = param(1.5, "assist: evidence window (s)")
    assist_progress_m: float = param(0.01, "assist: less approach to the cube than this over "
                                           "the window is a stall (m)")
    assist_away_m: float = param(0.03, "assist: more retreat than this over the window is "
                                       "heading away (m)")
    assist_duration_s: float = param(2.0, "assist: one takeover's length (s)")
    assist_budget_s: float = param(4.0, "assist: takeover time per episode, at most (s)")

    def __post_init__(self) -> None:
        if self.takeover not in TAKEOVERS:
            raise ValueError(f"takeover must be one of {TAKEOVERS}, got {self.takeover!r}")
        for name in ("assist_window_s", "assist_duration_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not self.assist_budget_s >= 0:
            raise ValueError("assist_budget_s must be >= 0")


@dataclass
class OperatorOutput:
    intervene: bool
    action: np.ndarray                     # float32[4]
    press: list[str] = field(default_factory=list)
    phase: str = ""


class ScriptedOperator:
    """Episode-level takeover decisions + the pick state machine. Call
    :meth:`new_episode` at each episode start, :meth:`tick` at the Joy rate with the
    latest state and a monotonic time in seconds."""

    def __init__(self, cfg: OperatorConfig | None = None):
        self.cfg = cfg or OperatorConfig()
        self._rng = random.Random(self.cfg.seed)
        self.episode = -1
        self.episodes_intervened = 0
        # Before the first new_episode(): no takeover, nothing pressed.
        self.t0 = 0.0
        self.takeover = False
        self.phase = APPROACH
        self._close_ticks = 0
        self._lowest_z: float | None = None
        self._stalled = 0
        self.success_pressed = False
        self.ended = True
        self.assists = 0                  # assist takeovers, all episodes
        self.assist_reasons: dict[str, int] = {}
        self._reset_assist()

    def _reset_assist(self) -> None:
        self._history: list[tuple[float, float]] = []   # (t, gripper-cube distance)
        self._assist_until: float | None = None
        self._assist_used = 0.0

    # -- episode level ---------------------------------------------------------------------

    def decide(self, episode: int) -> bool:
        c = self.cfg
        every = c.intervene_every_n_episodes > 0 and episode % c.intervene_every_n_episodes == 0
        return every or self._rng.random() < c.intervene_probability

    def new_episode(self, t: float) -> None:
        self.episode += 1
        self.t0 = t
        self.takeover = self.decide(self.episode)
        self.episodes_intervened += int(self.takeover)
        self.phase = APPROACH
        self._close_ticks = 0
        self._lowest_z: float | None = None
        self._stalled = 0
        self.success_pressed = False
        self.ended = False
        self._reset_assist()

    def end_episode(self) -> None:
        """An episode event arrived (success, failure, timeout, re-record): let go."""
        self.ended = True

    def intervening_at(self, t: float) -> bool:
        c = self.cfg
        if not self.takeover or self.ended:
            return False
        dt = t - self.t0
        if dt < c.intervene_start_s:
            return False
        return c.intervene_duration_s <= 0 or dt < c.intervene_start_s + c.intervene_duration_s

    # -- tick ------------------------------------------------------------------------------

    def tick(self, s: SimStateData, t: float) -> OperatorOutput:
        press = []
        if s.success and self.cfg.press_success and not self.success_pressed and not self.ended:
            press.append("success")
            self.success_pressed = True
        intervene = (self._assist(s, t) if self.cfg.takeover == "assist"
                     else self.intervening_at(t))
        action = (self.pick_action(s) if intervene
                  else np.array([0, 0, 0, GRIPPER_OPEN], np.float32))
        return OperatorOutput(intervene, action, press, self.phase)

    def _assist(self, s: SimStateData, t: float) -> bool:
        """The ``assist`` takeover decision at time ``t`` (see the module text)."""
        c = self.cfg
        if self.ended:
            return False
        if self._assist_until is not None:
            if t < self._assist_until:
                return True
            self._assist_until = None     # hand back; gather new evidence
            self._history.clear()
        dist = float(np.linalg.norm(np.asarray(s.gripper_position, np.float64)
                                    - np.asarray(s.cube_position, np.float64)))
        self._history.append((t, dist))
        while len(self._history) > 1 and self._history[1][0] <= t - c.assist_window_s:
            self._history.pop(0)
        left = c.assist_budget_s - self._assist_used
        t0, d0 = self._history[0]
        if s.cube_grasped or left <= 1e-9 or t - t0 < c.assist_window_s - 1e-9:
            return False
        if dist > d0 + c.assist_away_m:
            reason = "heading away"
        elif d0 - dist < c.assist_progress_m:
            reason = "stalled"
        else:
            return False
        take = min(c.assist_duration_s, left)
        self._assist_used += take
        self._assist_until = t + take
        self.assists += 1
        self.assist_reasons[reason] = self.assist_reasons.get(reason, 0) + 1
        self.phase = APPROACH
        return True

    def _toward(self, target: np.ndarray, pos: np.ndarray) -> np.ndarray:
        c = self.cfg
        return np.clip(c.kp * (target - pos) / c.step_m, -c.max_action, c.max_action)

    def pick_action(self, s: SimStateData) -> np.ndarray:
        """One step of the pick expert: the phase from the state (see the module text),
        then its action. Advances ``phase``."""
        c = self.cfg
        cube = np.asarray(s.cube_position, np.float64)
        grip = np.asarray(s.gripper_position, np.float64)
        offset = np.array([c.grasp_x_offset, c.grasp_y_offset, 0.0])
        hover = cube + offset + np.array([0.0, 0.0, c.hover_height])
        grasp = cube + offset + np.array([0.0, 0.0, c.grasp_offset])
        xy_err = float(np.linalg.norm(hover[:2] - grip[:2]))
        self.phase = self._phase(s, grip, hover, grasp, xy_err)

        xyz = np.zeros(3)
        gripper = GRIPPER_OPEN
        if self.phase == APPROACH:
            xyz = self._toward(hover, grip)
            near = float(np.linalg.norm(cube[:2] - grip[:2])) < c.clear_xy_m
            if near and grip[2] < cube[2] + 0.5 * c.hover_height:
                xyz[:2] = 0.0  # low beside the cube: rise before moving sideways
        elif self.phase == DESCEND:
            xyz = self._toward(grasp, grip)
        elif self.phase == CLOSE:
            xyz = self._toward(grasp, grip) * 0.5
            gripper = GRIPPER_CLOSED
        elif self.phase in (LIFT, HOLD):
            target = np.array([grip[0], grip[1], c.lift_z])
            xyz = self._toward(target, grip)
            gripper = GRIPPER_CLOSED
        return np.array([*xyz, gripper], np.float32)

    def _phase(self, s: SimStateData, grip: np.ndarray, hover: np.ndarray,
               grasp: np.ndarray, xy_err: float) -> str:
        c = self.cfg
        if s.cube_grasped:
            self._lowest_z, self._stalled = None, 0
            return HOLD if grip[2] >= c.lift_z - c.z_tolerance else LIFT
        if self.phase == CLOSE:  # a grasp attempt in progress runs to its end
            self._close_ticks += 1
            closed = s.gripper_opening < c.closed_opening
            if not ((closed and self._close_ticks >= 3) or self._close_ticks >= c.close_ticks):
                return CLOSE
            self.phase = LIFT      # attempt over, nothing grasped: judged afresh below
        if xy_err >= c.xy_tolerance or grip[2] > hover[2] + c.z_tolerance:
            self._lowest_z, self._stalled = None, 0
            return APPROACH
        # over the cube, at most at the hover height: descend; close at the grasp height or
        # where the descent is blocked (z not decreasing), with the gripper open first
        if self._lowest_z is None or grip[2] < self._lowest_z - 0.001:
            self._lowest_z, self._stalled = grip[2], 0
        else:
            self._stalled += 1
        at_grasp = abs(grasp[2] - grip[2]) < c.z_tolerance or self._stalled >= c.stall_ticks
        if at_grasp and s.gripper_opening > c.open_opening:
            self._close_ticks = 0
            self._lowest_z, self._stalled = None, 0
            return CLOSE
        return DESCEND
