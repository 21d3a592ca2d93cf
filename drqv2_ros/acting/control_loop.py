"""The actor's control loop, ROS-free: freshness gate, observation building, episode
bookkeeping, the choice between policy and human action, and the transition stream.

The policy node calls :meth:`ControlLoop.tick` from a fixed-rate timer and publishes what it
returns; sensor, operator and episode callbacks only store their newest value. Every tick
either commands the robot from fresh, finite data or commands nothing and says why.

Step layout (dm_env, also ``msg/Step.msg``): step k carries observation o_k and, for k > 0,
the action a_{k-1} that was *executed* (human or policy) and the reward r_k that followed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drqv2_ros.observation.frame_stack import FrameStacker
from drqv2_ros.observation.step_record import StepRecord

#: act(rgb (V, T*C, H, W) uint8, low_dim (T*D,) float32, explore) -> action (A,) in [-1, 1]
ActFn = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


class Event(enum.IntEnum):
    """Same values as msg/EpisodeEvent.msg."""

    SUCCESS = 1
    FAILURE = 2
    RERECORD = 3
    TIMEOUT = 4


@dataclass
class LoopConfig:
    """Control-loop settings (the policy node exposes them as parameters)."""

    max_obs_age_s: float = 0.25          # newest image and joint state must be younger
    intervention_timeout_s: float = 0.45  # a human input older than this is not acted on
    max_episode_steps: int = 100         # truncation (bootstrapped), 0 = never
    success_reward: float = 1.0          # reward of the step on which success is signalled
    reward_success_threshold: float = 1.0  # a `reward` message >= this ends the episode
    policy_enabled: bool = True          # False: demo mode, only the operator moves the arm
    explore: bool = True                 # sample from the scheduled std (False: mean action)
    demo: bool = False                   # flag recorded steps as demonstrations


@dataclass
class TickResult:
    command: np.ndarray | None = None    # action to send to the driver, None = send nothing
    step: StepRecord | None = None       # transition data to publish
    skipped: str | None = None           # why nothing was commanded this tick
    request_reset: bool = False          # the episode ended: reset the robot/scene
    end_reason: str = ""                 # why it ended: success, failure, reward, rerecord,
    #                                      timeout (max_episode_steps)
    is_intervention: bool = False
    evaluation: bool = False             # a step of an evaluation episode: never train on it


@dataclass
class _Latest:
    value: object = None
    stamp_ns: int = -1


@dataclass
class LoopStats:
    ticks: int = 0
    commanded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    episodes: int = 0
    interventions: int = 0


class ControlLoop:
    def __init__(self, config: LoopConfig, frame_stack: int, action_dim: int,
                 low_dim_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], act: ActFn | None):
        self.cfg = config
        self.action_dim = action_dim
        self.low_dim_fn = low_dim_fn
        self.stacker = FrameStacker(frame_stack)
        self.stats = LoopStats()
        self._act = act
        self._pending_act: ActFn | None = None
        self._image = _Latest()
        self._joints = _Latest()
        self._operator = _Latest()
        self._events: list[Event] = []
        self._reward: float | None = None
        self.episode = -1        # training episodes: the learner's stream, gapless
        self.evaluations = 0     # evaluation episodes, numbered apart
        self.index = 0
        self.running = False
        self._prev_action: np.ndarray | None = None
        self._prev_intervention = False
        self._last_gripper = 0.0
        self._episode_start_ns = 0
        self.evaluating = False

    # -- inputs (newest value wins) ------------------------------------------------------
    def on_image(self, frames: np.ndarray, stamp_ns: int) -> None:
        self._image = _Latest(frames, stamp_ns)

    def on_joints(self, position: np.ndarray, velocity: np.ndarray, stamp_ns: int) -> None:
        self._joints = _Latest((position, velocity), stamp_ns)

    def on_operator(self, active: bool, action: np.ndarray | None, stamp_ns: int) -> None:
        self._operator = _Latest((bool(active), action), stamp_ns)

    def on_event(self, event: Event, stamp_ns: int | None = None) -> None:
        """An episode event; one stamped before the current episode started (e.g. a second
        SUCCESS for the previous episode from another source) is ignored."""
        if self.running and (stamp_ns is None or stamp_ns >= self._episode_start_ns):
            self._events.append(Event(event))

    def on_reward(self, value: float) -> None:
        if self.running and np.isfinite(value):
            self._reward = float(value)

    def swap_policy(self, act: ActFn) -> None:
        """Install a new policy; it takes effect at the start of the next tick."""
        self._pending_act = act

    def start_episode(self, now_ns: int = 0, *, evaluate: bool = False) -> None:
        """Called once the robot/scene reset has completed. ``evaluate``: the policy alone
        acts, with its mean action (no exploration, the operator ignored); its steps say
        ``evaluation`` so that nobody trains on them, and carry the evaluation's own number
        (the training episodes' numbers stay gapless: the learner counts gaps as lost)."""
        self.evaluating = bool(evaluate)
        self._episode_start_ns = now_ns
        if evaluate:
            self.evaluations += 1
        else:
            self.episode += 1
        self.index = 0
        self.running = True
        self.stacker.reset()
        self._events.clear()
        self._reward = None
        self._prev_action = None
        self._prev_intervention = False
        self.stats.episodes += 1

    # -- the tick ------------------------------------------------------------------------
    def tick(self, now_ns: int) -> TickResult:
        self.stats.ticks += 1
        if self._pending_act is not None:  # swap at a tick boundary, never mid-inference
            self._act, self._pending_act = self._pending_act, None
        if not self.running:
            return self._skip("waiting for episode reset")
        max_age = int(self.cfg.max_obs_age_s * 1e9)
        if self._image.stamp_ns < 0:
            return self._skip("no image yet")
        if self._joints.stamp_ns < 0:
            return self._skip("no joint state yet")
        if now_ns - self._image.stamp_ns > max_age:
            return self._skip("stale image")
        if now_ns - self._joints.stamp_ns > max_age:
            return self._skip("stale joint state")
        try:
            pos, vel = self._joints.value
            low_dim = self.low_dim_fn(pos, vel)
        except ValueError as exc:
            return self._skip(f"bad joint state: {exc}")
        frames = self._image.value

        terminated, truncated, reward, reason = self._episode_outcome()
        is_last = terminated or truncated
        record = StepRecord(
            episode=self.evaluations - 1 if self.evaluating else self.episode,
            index=self.index, stamp_ns=self._image.stamp_ns,
            is_first=self.index == 0, is_last=is_last, terminated=terminated,
            images=frames, low_dim=low_dim,
            action=(self._prev_action if self._prev_action is not None
                    else np.zeros(self.action_dim, np.float32)),
            reward=reward, is_intervention=self._prev_intervention, is_demo=self.cfg.demo)
        rgb, low = self.stacker.push(frames, low_dim)
        self.index += 1
        if is_last:
            self.running = False
            return TickResult(step=record, request_reset=True, skipped="episode ended",
                              end_reason=reason, evaluation=self.evaluating)

        action, human = self._choose_action(rgb, low, now_ns)
        if action is None:
            # No policy and no operator: the arm holds (zero delta, gripper unchanged).
            action = np.zeros(self.action_dim, np.float32)
            if self.action_dim >= 4:
                action[3] = self._last_gripper
        if self.action_dim >= 4:
            self._last_gripper = float(action[3])
        self._prev_action = action
        self._prev_intervention = human
        self.stats.commanded += 1
        self.stats.interventions += int(human)
        return TickResult(command=action, step=record, is_intervention=human,
                          evaluation=self.evaluating)

    def _episode_outcome(self) -> tuple[bool, bool, float, str]:
        """(terminated, truncated, reward, reason) for the observation about to be recorded."""
        if self.index == 0:
            self._events.clear()
            self._reward = None
            return False, False, 0.0, ""
        reward = self._reward if self._reward is not None else 0.0
        terminated = truncated = False
        reason = ""
        if self._reward is not None and self._reward >= self.cfg.reward_success_threshold:
            terminated, reason = True, "reward"
        for ev in self._events:
            if ev == Event.SUCCESS:
                terminated, reward = True, max(reward, self.cfg.success_reward)
                reason = "success"
            elif ev == Event.FAILURE:
                terminated, reason = True, reason or "failure"
            elif ev in (Event.RERECORD, Event.TIMEOUT):
                truncated, reason = True, reason or ev.name.lower()
        self._events.clear()
        self._reward = None
        if self.cfg.max_episode_steps and self.index >= self.cfg.max_episode_steps \
                and not (terminated or truncated):
            truncated, reason = True, "timeout"
        return terminated, truncated, float(reward), reason

    def _choose_action(self, rgb, low, now_ns) -> tuple[np.ndarray | None, bool]:
        op = self._operator
        age = now_ns - op.stamp_ns
        if not self.evaluating and op.stamp_ns >= 0 and \
                age <= self.cfg.intervention_timeout_s * 1e9:
            active, action = op.value
            if active and action is not None:
                a = np.asarray(action, np.float32).reshape(-1)
                if a.shape == (self.action_dim,) and np.all(np.isfinite(a)):
                    return np.clip(a, -1.0, 1.0), True
        if not (self.cfg.policy_enabled or self.evaluating) or self._act is None:
            return None, False
        explore = self.cfg.explore and not self.evaluating
        a = np.asarray(self._act(rgb, low, explore), np.float32).reshape(-1)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)):
            raise RuntimeError(f"policy returned an invalid action {a!r}")
        return np.clip(a, -1.0, 1.0), False

    def _skip(self, reason: str) -> TickResult:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        return TickResult(skipped=reason)
