"""`policy`: the actor. Acts on the robot at a fixed rate with the DrQ-v2 policy (or
forwards the operator's action while they intervene), streams every executed step to the
learner, applies learner weight pushes and `/load_checkpoint` hot-swaps at tick boundaries.

All logic lives in ``acting/control_loop.py`` and ``acting/policy_runner.py``; this node
only wires topics, parameters and services to it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, String
from std_srvs.srv import Trigger

from drqv2_ros.acting.control_loop import ControlLoop, Event, LoopConfig
from drqv2_ros.acting.policy_runner import PolicyRunner, describe, load_runner
from drqv2_ros.acting.weights import WeightsError, WeightsPacket
from drqv2_ros.msg import (
    EndEffectorCommand,
    EpisodeEvent,
    Intervention,
    PolicyWeights,
    SimState,
    Step,
)
from drqv2_ros.nodes.common import (
    SENSOR_QOS,
    STEP_QOS,
    WEIGHTS_QOS,
    ImageFormatError,
    declare_parameters,
    image_to_numpy,
    ns_to_stamp,
    param,
    reliable_qos,
    run_node,
    stamp_to_ns,
)
from drqv2_ros.observation.low_dim import build_low_dim
from drqv2_ros.observation.step_record import to_msg
from drqv2_ros.robot.backend import JOINT_NAMES
from drqv2_ros.robot.kinematics import Kinematics, rotation_to_euler
from drqv2_ros.srv import LoadCheckpoint


@dataclass
class PolicyParams:
    checkpoint: str = param("", "converted checkpoint folder or RoboBase .pt (required)")
    checkpoint_root: str = param("", "if set, /load_checkpoint only accepts paths under it")
    control_rate_hz: float = param(10.0, "control rate, Hz")
    max_obs_age_s: float = param(0.25, "image and joint state must be younger than this, s")
    intervention_timeout_s: float = param(0.5, "operator messages older than this are ignored, s")
    max_episode_steps: int = param(100, "episode length before truncation (0 = unlimited)")
    policy_enabled: bool = param(True, "false = demo mode: only the operator moves the arm")
    explore: bool = param(True, "sample with the scheduled std (false: mean action)")
    demo: bool = param(False, "flag recorded steps as demonstrations")
    reward_success_threshold: float = param(1.0, "a `reward` message >= this ends the episode")
    success_reward: float = param(1.0, "reward of the step a success event lands on")
    privileged_low_dim: str = param(
        "", "'' refuses checkpoints that need cube_pos; 'sim_state' fills it from sim/state")
    reset_timeout_s: float = param(10.0, "how long to wait for the driver's reset_episode, s")
    weights_timeout_s: float = param(30.0, "warn when no learner weights arrived for this long, s")
    seed: int = param(0, "exploration noise seed")
    follow_learner: bool = param(True, "apply learner weight pushes (false: keep the loaded "
                                       "checkpoint, e.g. for evaluation)")


class PolicyNode(Node):
    def __init__(self):
        super().__init__("policy")
        p = self.p = declare_parameters(self, PolicyParams)
        if not p.checkpoint:
            raise ValueError("parameter `checkpoint` is required (converted folder or .pt)")
        self.kin = Kinematics()
        runner = load_runner(p.checkpoint)  # validated: finite weights, dry-run forward
        self.runner = runner
        if runner.layout.needs_privileged and p.privileged_low_dim != "sim_state":
            raise ValueError(
                f"checkpoint {p.checkpoint} expects a {runner.config.low_dim_size}-dim state "
                "with the PRIVILEGED cube position, which a real robot does not have; set "
                "privileged_low_dim:=sim_state to run it in simulation")
        if runner.layout.needs_privileged:
            self.get_logger().warning(
                "checkpoint needs cube_pos: filling it from PRIVILEGED sim/state "
                "(simulation only; this policy cannot run on the real robot)")
        self._cube_pos: np.ndarray | None = None
        self.loop = ControlLoop(
            LoopConfig(max_obs_age_s=p.max_obs_age_s,
                       intervention_timeout_s=p.intervention_timeout_s,
                       max_episode_steps=p.max_episode_steps, success_reward=p.success_reward,
                       reward_success_threshold=p.reward_success_threshold,
                       policy_enabled=p.policy_enabled, explore=p.explore, demo=p.demo),
            frame_stack=runner.config.frame_stack, action_dim=runner.config.action_dim,
            low_dim_fn=self._low_dim, act=runner)
        self.malformed: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self._image_shape = None
        self._swap_lock = threading.Lock()
        self._reset_future = None
        self._reset_deadline = 0.0
        self._last_weights_time = time.monotonic()
        self._weights_warned = False
        self._last_tick_t: float | None = None
        self._max_gap = 0.0
        self.missed_ticks = 0  # timer periods in which no tick ran (gap > 1.5 periods)
        self.hot_swaps = 0     # checkpoints applied through /load_checkpoint
        self.last_hot_swap = ""

        self.cmd_pub = self.create_publisher(EndEffectorCommand, "ee_command", reliable_qos(1))
        self.step_pub = self.create_publisher(Step, "step", STEP_QOS)
        self.steps_published = 0
        self.status_pub = self.create_publisher(String, "policy/status", reliable_qos(10))
        # Episodes that end by truncation are announced like the operator's events, so every
        # node (scripted operator, recorder, monitors) sees the same episode boundaries.
        self.event_pub = self.create_publisher(EpisodeEvent, "episode_event", reliable_qos(10))
        self.create_subscription(Image, "camera/image_policy", self._on_image, SENSOR_QOS)
        self.create_subscription(JointState, "joint_states", self._on_joints, SENSOR_QOS)
        self.create_subscription(Intervention, "intervention", self._on_intervention,
                                 reliable_qos(1))
        self.create_subscription(EpisodeEvent, "episode_event", self._on_event, reliable_qos(10))
        self.create_subscription(Float32, "reward", self._on_reward, reliable_qos(10))
        self.create_subscription(PolicyWeights, "policy_weights", self._on_weights, WEIGHTS_QOS)
        if runner.layout.needs_privileged:
            self.create_subscription(SimState, "sim/state", self._on_sim_state, reliable_qos(1))
        self.reset_client = self.create_client(Trigger, "reset_episode")
        # The hot-swap service lives on a helper node spun by its own executor thread: its
        # callback waits for the loader without ever holding up this node's control tick.
        self._svc_node = rclpy.create_node(
            f"{self.get_name()}_hot_swap", namespace=self.get_namespace(),
            context=self.context, use_global_arguments=False)
        self._svc_node.create_service(LoadCheckpoint, "load_checkpoint",
                                      self._on_load_checkpoint)
        self._svc_exec = SingleThreadedExecutor(context=self.context)
        self._svc_exec.add_node(self._svc_node)
        self._svc_stop = threading.Event()
        self._svc_thread = threading.Thread(target=self._spin_service,
                                            name="hot_swap_service", daemon=True)
        self._svc_thread.start()
        # Loading runs in one long-lived thread at a lower CPU priority than the control loop.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt_loader",
                                          initializer=_lower_thread_priority)
        self.timer = self.create_timer(1.0 / p.control_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_status)
        self.get_logger().info(f"policy ready: {describe(runner)}")

    # -- inputs ----------------------------------------------------------------------------
    def _bad(self, what: str, exc: Exception) -> None:
        self.malformed[what] = self.malformed.get(what, 0) + 1
        self.get_logger().warning(f"dropped malformed {what}: {exc}", throttle_duration_sec=5.0)

    def _on_image(self, msg: Image) -> None:
        try:
            hwc = image_to_numpy(msg)
        except ImageFormatError as exc:
            return self._bad("image", exc)
        frames = np.ascontiguousarray(hwc.transpose(2, 0, 1))[None]  # (V=1, 3, H, W)
        self._image_shape = frames.shape
        c = self.runner.config
        if frames.shape[1:] != (c.channels_per_frame, c.image_height, c.image_width):
            return self._bad("image", ValueError(
                f"policy expects {c.image_height}x{c.image_width}, got {hwc.shape[:2]}"))
        self.loop.on_image(frames, stamp_to_ns(msg.header.stamp))

    def _on_joints(self, msg: JointState) -> None:
        try:
            index = [list(msg.name).index(n) for n in JOINT_NAMES]
            pos = np.asarray(msg.position, np.float64)[index]
            vel = (np.asarray(msg.velocity, np.float64)[index] if len(msg.velocity)
                   else np.zeros(len(JOINT_NAMES)))
        except (ValueError, IndexError) as exc:
            return self._bad("joint_states", exc)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))):
            return self._bad("joint_states", ValueError("NaN/Inf"))
        self.loop.on_joints(pos, vel, stamp_to_ns(msg.header.stamp))

    def _low_dim(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        xyz, rot = self.kin.fk_pose(pos)
        return build_low_dim(self.runner.layout, pos, vel, xyz, rotation_to_euler(rot),
                             self._cube_pos)

    def _on_sim_state(self, msg: SimState) -> None:
        c = msg.cube_position
        self._cube_pos = np.array([c.x, c.y, c.z], np.float32)

    def _on_intervention(self, msg: Intervention) -> None:
        action = np.asarray(msg.action, np.float32) if len(msg.action) else None
        self.loop.on_operator(bool(msg.active), action, self.get_clock().now().nanoseconds)

    def _on_event(self, msg: EpisodeEvent) -> None:
        try:
            stamp = stamp_to_ns(msg.header.stamp) or self.get_clock().now().nanoseconds
            self.loop.on_event(Event(msg.event), stamp)
        except ValueError as exc:
            self._bad("episode_event", exc)

    def _on_reward(self, msg: Float32) -> None:
        self.loop.on_reward(float(msg.data))

    def _on_weights(self, msg: PolicyWeights) -> None:
        if not self.p.follow_learner:
            return
        packet = WeightsPacket(int(msg.version), int(msg.learner_step), msg.run_id, msg.sha256,
                               bytes(msg.data))
        cur = self.runner
        if packet.run_id == cur.run_id and packet.version <= cur.weights_version:
            return  # an older or repeated push
        # Verify, decode and copy in the loader thread: the control tick never waits on it.
        self._loader.submit(self._apply_weights, cur, packet)

    def _apply_weights(self, cur: PolicyRunner, packet: WeightsPacket) -> None:
        try:
            runner = cur.with_weights(packet)
        except WeightsError as exc:
            return self._bad("policy_weights", exc)
        with self._swap_lock:
            if self.runner is not cur:  # a hot-swap happened meanwhile: it wins
                self.get_logger().info(f"learner weights v{packet.version} not applied: a "
                                       "hot-swap replaced the policy meanwhile")
                return
            self.runner = runner
            self.loop.swap_policy(runner)
        self._last_weights_time = time.monotonic()
        self._weights_warned = False
        self.get_logger().info(f"applied learner weights v{packet.version} "
                               f"(step {packet.learner_step})", throttle_duration_sec=10.0)

    # -- hot-swap (validation off the control thread) -------------------------------------
    def _on_load_checkpoint(self, request, response):
        t0 = time.monotonic()
        try:
            result = self._loader.submit(load_runner, request.path, image_shape=self._image_shape,
                                         root=self.p.checkpoint_root).result()
            if result.layout.needs_privileged and self.p.privileged_low_dim != "sim_state":
                raise ValueError("checkpoint needs the privileged cube position")
        except Exception as exc:  # every refusal becomes a clear answer
            result = exc
        if isinstance(result, Exception):
            response.success = False
            response.message = f"refused {request.path}: {type(result).__name__}: {result}"
            response.loaded = ""
            self.get_logger().error(response.message)
            return response
        with self._swap_lock:
            self.runner = result
            self.loop.swap_policy(result)
            self.hot_swaps += 1
            self.last_hot_swap = request.path
        response.success = True
        response.loaded = describe(result)
        response.message = (f"loaded {request.path} in {time.monotonic() - t0:.2f} s; "
                            "active from the next control tick")
        self.get_logger().info(response.message)
        return response

    # -- the control tick ------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds
        t = time.monotonic()
        if self._last_tick_t is not None:
            gap = t - self._last_tick_t
            self._max_gap = max(self._max_gap, gap)
            if gap > 1.5 / self.p.control_rate_hz:
                self.missed_ticks += 1
        self._last_tick_t = t
        self._service_reset(now)
        try:
            res = self.loop.tick(now)
        except Exception as exc:  # a policy failure commands nothing, and says so
            self.get_logger().error(f"tick failed, nothing commanded: {exc}",
                                    throttle_duration_sec=2.0)
            return
        if res.command is not None:
            msg = EndEffectorCommand()
            ns_to_stamp(now, msg.header.stamp)
            msg.delta = [float(x) for x in res.command[:3]]
            msg.gripper = float(res.command[3]) if res.command.shape[0] > 3 else 0.0
            self.cmd_pub.publish(msg)
            lat = (self.get_clock().now().nanoseconds - self.loop._image.stamp_ns) / 1e6
            self.latencies_ms.append(lat)
            del self.latencies_ms[:-1000]
        if res.step is not None:
            self.step_pub.publish(to_msg(res.step, Step, Image))
            self.steps_published += 1
        if res.request_reset:
            if res.end_reason == "timeout":
                ev = EpisodeEvent(event=EpisodeEvent.TIMEOUT, source="policy")
                ns_to_stamp(now, ev.header.stamp)
                self.event_pub.publish(ev)
            self._request_reset(now)
        elif res.command is None and res.skipped:
            self.get_logger().warning(f"nothing commanded: {res.skipped}",
                                      throttle_duration_sec=2.0)

    def _request_reset(self, now_ns: int) -> None:
        if self._reset_future is not None:
            return
        if not self.reset_client.service_is_ready():
            self.get_logger().warning("waiting for the driver's reset_episode service",
                                      throttle_duration_sec=5.0)
            return
        self._reset_future = self.reset_client.call_async(Trigger.Request())
        self._reset_deadline = time.monotonic() + self.p.reset_timeout_s

    def _service_reset(self, now_ns: int) -> None:
        if self.loop.running:
            return
        if self._reset_future is None:
            self._request_reset(now_ns)
            return
        if self._reset_future.done():
            result = self._reset_future.result()
            self._reset_future = None
            if result is not None and result.success:
                self.loop.start_episode(self.get_clock().now().nanoseconds)
                self.get_logger().info(f"episode {self.loop.episode} started")
            else:
                self.get_logger().error(f"reset_episode failed: "
                                        f"{getattr(result, 'message', 'no answer')}")
        elif time.monotonic() > self._reset_deadline:
            self.get_logger().error("reset_episode timed out; asking again")
            self._reset_future = None

    def _spin_service(self) -> None:
        # Short waits and a stop flag: the thread ends by itself and its executor is shut
        # down only after the join (Jazzy's Executor.shutdown() destroys the executor's guard
        # conditions without waiting for a spin in progress in another thread).
        try:
            while not self._svc_stop.is_set() and self.context.ok():
                self._svc_exec.spin_once(timeout_sec=0.1)
        except Exception:  # the context went away at shutdown
            pass

    def close(self) -> None:
        # Orderly: no thread may still be inside rcl/DDS code when the process exits or an
        # entity it waits on is destroyed; the service thread stops first, then its executor.
        self._svc_stop.set()
        self._svc_thread.join(timeout=5.0)
        self._loader.shutdown(wait=True, cancel_futures=True)
        if not self._svc_thread.is_alive():
            self._svc_exec.shutdown()
            self._svc_node.destroy_node()

    def _publish_status(self) -> None:
        lat = np.array(self.latencies_ms[-200:]) if self.latencies_ms else np.zeros(1)
        st = self.loop.stats
        status = {
            "episode": self.loop.episode, "running": self.loop.running,
            "ticks": st.ticks, "commanded": st.commanded, "skipped": st.skipped,
            "interventions": st.interventions, "malformed": self.malformed,
            "weights_version": self.runner.weights_version, "source": self.runner.source,
            "schedule_step": self.runner.schedule_step,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "pid": os.getpid(), "missed_ticks": self.missed_ticks,
            "hot_swaps": self.hot_swaps, "last_hot_swap": self.last_hot_swap,
            "steps_published": self.steps_published,
            "max_tick_gap_ms": 1000.0 * self._max_gap,
        }
        self._max_gap = 0.0
        self.status_pub.publish(String(data=json.dumps(status)))
        if (self.p.policy_enabled and not self._weights_warned and
                time.monotonic() - self._last_weights_time > self.p.weights_timeout_s):
            self._weights_warned = True
            self.get_logger().warning(
                f"no learner weights for {self.p.weights_timeout_s:.0f} s: acting with the "
                f"last ones ({self.runner.source}, v{self.runner.weights_version})")


def _lower_thread_priority() -> None:
    """Linux: niceness is per thread; the loader yields the CPU to the control loop."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (OSError, AttributeError):
        pass


def main(args=None) -> int:
    torch.set_num_threads(1)  # batch-1 inference: more threads only fight the other nodes
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
