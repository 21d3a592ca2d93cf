"""The actor, ROS-free: everything between sensor/operator messages and an arm command.

One :class:`Actor` owns the input checks (every value range-checked before use, refusals
counted per reason), image -> frames, joints -> low-dim state in the checkpoint's recorded
layout (forward kinematics for the gripper pose, the simulator's cube position only where the
layout needs it and the loop allows it), the control loop (freshness, frame stacking,
episodes, the choice between operator and policy), the policy runner with its exploration,
and the checkpoint contract every new policy must meet before it acts. The policy node only
turns messages into arrays, calls it, and publishes what it returns.

Thread model: inputs and ``tick`` run on the control thread; ``install`` (after a hot-swap
load or a learner push prepared elsewhere) may run on any thread: the swap takes effect at
the next tick boundary. Work that runs in the actor's process beside the control thread
(building and checking a new runner: ~30 ms of mostly Python, holding the GIL) first waits
for :meth:`Actor.wait_for_tick`, so it fills the gap after a tick instead of competing with
the next one (each GIL hand-over inside a forward pass can cost a switch interval).
"""

from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np

from drqv2_ros.acting.contract import ActorContract, IncompatibleCheckpoint
from drqv2_ros.acting.control_loop import ControlLoop, Event, LoopConfig, TickResult
from drqv2_ros.acting.input_checks import InputChecks, InputLimits, InputRejected
from drqv2_ros.acting.policy_runner import PolicyRunner
from drqv2_ros.acting.weights import WeightsError, WeightsPacket
from drqv2_ros.observation.low_dim import build_low_dim
from drqv2_ros.robot.kinematics import Kinematics, rotation_to_euler


class TickClock:
    """Control ticks against the timer's grid. ROS timers keep their phase: a late callback
    does not shift the later ones, and the slots it overran get no callback. So each tick is
    placed in its slot from the grid's origin: a tick up to a period late is only late
    (``late``: more than half a period), a slot without a tick is missed (``missed``: a 4.8 s
    stall at 10 Hz misses 47). The origin is the earliest phase seen (the first tick may
    itself have been late)."""

    def __init__(self, rate_hz: float):
        self.period = 1.0 / rate_hz
        self.origin: float | None = None
        self.slot = 0
        self.last = 0.0
        self.missed = 0
        self.late = 0
        self.max_gap = 0.0

    def tick(self, t: float) -> None:
        if self.origin is None:
            self.origin, self.last = t, t
            return
        self.max_gap = max(self.max_gap, t - self.last)
        self.last = t
        k = math.floor((t - self.origin) / self.period)
        if k <= self.slot:  # earlier than the grid says: the origin was a late tick
            k = self.slot + 1
            self.origin = t - k * self.period
        self.missed += k - self.slot - 1
        self.late += int(t - self.origin - k * self.period > 0.5 * self.period)
        self.slot = k


class Actor:
    def __init__(self, runner: PolicyRunner, loop_config: LoopConfig, *,
                 kinematics: Kinematics, control_rate_hz: float,
                 input_limits: InputLimits | None = None, privileged_low_dim: str = ""):
        self.contract = ActorContract.from_config(runner.config, privileged_low_dim)
        if self.contract.num_views != 1:
            raise IncompatibleCheckpoint(f"checkpoint has {self.contract.num_views} camera "
                                         "views; the actor feeds one (camera/image_policy)")
        self.layout = self.contract.check_runner(runner)
        self.kin = kinematics
        self.checks = InputChecks(input_limits or InputLimits(kinematics.lower, kinematics.upper))
        self.runner = runner
        self.loop = ControlLoop(loop_config, runner.config.frame_stack,
                                runner.config.action_dim, self._low_dim, runner)
        self.clock = TickClock(control_rate_hz)
        self.dropped: Counter[str] = Counter()   # "<input>: <reason>" -> count
        self.last_drop = ""
        self.hot_swaps = 0
        self.refused_swaps = 0
        self._cube_pos: np.ndarray | None = None
        self._lock = threading.Lock()
        self._ticked = threading.Condition()
        self._ticks_done = 0

    # -- inputs ----------------------------------------------------------------------------
    def drop(self, what: str, exc: Exception) -> bool:
        reason = exc.reason if isinstance(exc, InputRejected) else "malformed"
        self.dropped[f"{what}: {reason}"] += 1
        self.last_drop = f"{what}: {exc}"
        return False

    def on_image(self, hwc: np.ndarray, stamp_ns: int, now_ns: int) -> bool:
        """One RGB frame (H, W, 3) uint8 of the loop's single view."""
        try:
            chw = np.ascontiguousarray(np.asarray(hwc).transpose(2, 0, 1))
            v, c, h, w = self.contract.frame_shape
            self.checks.image(chw, (c, h, w), stamp_ns, now_ns)
        except (InputRejected, ValueError) as exc:
            return self.drop("image", exc)
        self.loop.on_image(chw[None], stamp_ns)
        return True

    def on_joints(self, names, position, velocity, stamp_ns: int, now_ns: int) -> bool:
        try:
            pos, vel = self.checks.joints(names, position, velocity, stamp_ns, now_ns)
        except InputRejected as exc:
            return self.drop("joint_states", exc)
        self.loop.on_joints(pos, vel, stamp_ns)
        return True

    def on_operator(self, active: bool, action, stamp_ns: int, now_ns: int | None = None
                    ) -> bool:
        """The operator's intervention: ``action`` is what they command while active (an
        empty one is allowed only when not active). ``stamp_ns``: when the human input it
        reflects was read (the teleop node stamps the last valid Joy message's time, its
        heartbeats too), so a human action is used only while that input is younger than
        ``intervention_timeout_s``, however late the messages arrive; with ``now_ns`` the
        stamp is checked like every sensor stamp (zero or from the future: refused)."""
        if now_ns is not None:
            try:
                stamp_ns = min(self.checks.stamp(stamp_ns, now_ns), now_ns)
            except InputRejected as exc:
                return self.drop("intervention", exc)
        a = None
        if active or (action is not None and len(action)):
            try:
                a = self.checks.action(action if action is not None else [],
                                       self.runner.config.action_dim)
            except InputRejected as exc:
                return self.drop("intervention", exc)
        self.loop.on_operator(bool(active), a, stamp_ns)
        return True

    def on_cube(self, xyz) -> bool:
        c = np.asarray(xyz, np.float32).reshape(-1)
        if c.shape != (3,) or not np.all(np.isfinite(c)) or np.any(np.abs(c) > 10.0):
            return self.drop("sim/state", InputRejected("out of range", f"cube at {c}"))
        self._cube_pos = c
        return True

    def on_event(self, event: int, stamp_ns: int) -> bool:
        try:
            self.loop.on_event(Event(event), stamp_ns)
        except ValueError as exc:
            return self.drop("episode_event", exc)
        return True

    def on_reward(self, value: float) -> bool:
        if not np.isfinite(value):
            return self.drop("reward", InputRejected("non-finite", f"{value}"))
        self.loop.on_reward(float(value))
        return True

    @property
    def needs_cube(self) -> bool:
        return self.layout.needs_privileged

    def _low_dim(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        xyz, rot = self.kin.fk_pose(pos)
        return build_low_dim(self.layout, pos, vel, xyz, rotation_to_euler(rot), self._cube_pos)

    # -- policies --------------------------------------------------------------------------
    def check(self, runner: PolicyRunner) -> None:
        """Raise :class:`IncompatibleCheckpoint` unless ``runner`` may act in this loop."""
        self.contract.check_runner(runner)

    def install(self, runner: PolicyRunner, *, replaces: PolicyRunner | None = None,
                hot_swap: bool = False) -> bool:
        """Check ``runner`` and make it act from the next tick. ``replaces``: only if the
        running policy is still that one (a learner push prepared from a policy that a
        hot-swap has since replaced is dropped). Returns whether it was installed."""
        try:
            self.check(runner)
        except IncompatibleCheckpoint:
            if hot_swap:
                self.refused_swaps += 1
            raise
        with self._lock:
            if replaces is not None and self.runner is not replaces:
                return False
            self.runner = runner
            self.loop.swap_policy(runner)
            self.hot_swaps += int(hot_swap)
        return True

    def runner_from_weights(self, packet: WeightsPacket) -> PolicyRunner:
        """A runner with a learner push's weights, checked (WeightsError otherwise)."""
        runner = self.runner.with_weights(packet)
        try:
            self.check(runner)
        except IncompatibleCheckpoint as exc:
            raise WeightsError(str(exc)) from None
        return runner

    # -- control ---------------------------------------------------------------------------
    def tick(self, now_ns: int, mono_s: float) -> TickResult:
        self.clock.tick(mono_s)
        try:
            return self.loop.tick(now_ns)
        finally:
            with self._ticked:
                self._ticks_done += 1
                self._ticked.notify_all()

    def wait_for_tick(self, timeout_s: float | None = None) -> bool:
        """Block until the next control tick has run (at most ``timeout_s``, default two
        periods: a loop that is not ticking holds nothing up). True if a tick ran."""
        timeout = 2.0 * self.clock.period if timeout_s is None else timeout_s
        with self._ticked:
            n = self._ticks_done
            return self._ticked.wait_for(lambda: self._ticks_done != n, timeout)

    def status(self) -> dict:
        st = self.loop.stats
        per_input: Counter[str] = Counter()
        for key, n in self.dropped.items():
            per_input[key.split(":", 1)[0]] += n
        return {
            "malformed": dict(per_input),
            "episode": self.loop.episode, "running": self.loop.running,
            "ticks": st.ticks, "commanded": st.commanded, "skipped": dict(st.skipped),
            "interventions": st.interventions, "dropped": dict(self.dropped),
            "last_drop": self.last_drop, "missed_ticks": self.clock.missed,
            "late_ticks": self.clock.late,
            "weights_version": self.runner.weights_version, "source": self.runner.source,
            "schedule_step": self.runner.schedule_step, "hot_swaps": self.hot_swaps,
            "refused_swaps": self.refused_swaps,
        }
