"""`policy`: the actor. Acts on the robot at a fixed rate with the DrQ-v2 policy (or
forwards the operator's action while they intervene), streams every executed step to the
learner, applies learner weight pushes and `/load_checkpoint` hot-swaps at tick boundaries.

All logic lives in ``acting/actor.py`` (input checks, observation building, the control
loop, the checkpoint contract) and ``acting/loader.py`` (checkpoint loading in a child
process); this node only wires topics, parameters and services to them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, String
from std_srvs.srv import Trigger

from drqv2_ros.acting.actor_setup import PolicyParams, make_actor
from drqv2_ros.acting.contract import IncompatibleCheckpoint
from drqv2_ros.acting.loader import CheckpointLoader
from drqv2_ros.acting.policy_runner import PolicyRunner, describe
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
    reliable_qos,
    run_node,
    stamp_to_ns,
)
from drqv2_ros.observation.step_record import to_msg
from drqv2_ros.policy.file_limits import CheckpointError, LoadLimits
from drqv2_ros.robot.kinematics import Kinematics
from drqv2_ros.srv import LoadCheckpoint


class PolicyNode(Node):
    def __init__(self):
        super().__init__("policy")
        p = self.p = declare_parameters(self, PolicyParams)
        if not p.checkpoint:
            raise ValueError("parameter `checkpoint` is required (converted folder or .pt)")
        kin = Kinematics()
        # one loader child for the node's life (torch imported once); a stuck load is killed
        self.loader = CheckpointLoader(
            limits=LoadLimits(max_file_bytes=int(p.max_checkpoint_mb * (1 << 20))),
            timeout_s=p.load_timeout_s)
        runner = self.loader.load(p.checkpoint)
        self.actor = make_actor(p, runner, kin)
        if self.actor.needs_cube:
            self.get_logger().warning(
                "checkpoint needs cube_pos: filling it from PRIVILEGED sim/state "
                "(simulation only; this policy cannot run on the real robot)")
        self.latencies_ms: list[float] = []
        self._reset_future = None
        self._reset_deadline = 0.0
        self._last_weights_time = time.monotonic()
        self._weights_warned = False
        self.last_hot_swap = ""
        self.steps_published = 0

        self.cmd_pub = self.create_publisher(EndEffectorCommand, "ee_command", reliable_qos(1))
        self.step_pub = self.create_publisher(Step, "step", STEP_QOS)
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
        if self.actor.needs_cube:
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
        # Learner pushes are decoded in their own thread; hot-swap loads run in a child
        # process (acting.loader) waited on by the service thread, so a slow or stuck load
        # never delays a push, a tick or the next load. What either does in this process
        # (build + check the new runner) starts right after a tick (Actor.wait_for_tick).
        # No lowered thread priority: a descheduled thread holding the GIL would stall the
        # control thread that waits for it.
        self._push_loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights")
        self.timer = self.create_timer(1.0 / p.control_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_status)
        self.get_logger().info(f"policy ready: {describe(runner)}")

    # -- inputs: messages -> arrays -> the actor -------------------------------------------
    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _warn_drop(self) -> None:
        self.get_logger().warning(f"dropped {self.actor.last_drop}", throttle_duration_sec=5.0)

    def _on_image(self, msg: Image) -> None:
        try:
            hwc = image_to_numpy(msg)
        except ImageFormatError as exc:
            self.actor.drop("image", exc)
            return self._warn_drop()
        if not self.actor.on_image(hwc, stamp_to_ns(msg.header.stamp), self._now()):
            self._warn_drop()

    def _on_joints(self, msg: JointState) -> None:
        if not self.actor.on_joints(msg.name, msg.position, msg.velocity,
                                    stamp_to_ns(msg.header.stamp), self._now()):
            self._warn_drop()

    def _on_sim_state(self, msg: SimState) -> None:
        c = msg.cube_position
        self.actor.on_cube((c.x, c.y, c.z))

    def _on_intervention(self, msg: Intervention) -> None:
        if not self.actor.on_operator(bool(msg.active), list(msg.action),
                                      stamp_to_ns(msg.header.stamp), self._now()):
            self._warn_drop()

    def _on_event(self, msg: EpisodeEvent) -> None:
        self.actor.on_event(int(msg.event), stamp_to_ns(msg.header.stamp) or self._now())

    def _on_reward(self, msg: Float32) -> None:
        self.actor.on_reward(float(msg.data))

    def _on_weights(self, msg: PolicyWeights) -> None:
        if not self.p.follow_learner:
            return
        packet = WeightsPacket(int(msg.version), int(msg.learner_step), msg.run_id, msg.sha256,
                               bytes(msg.data))
        cur = self.actor.runner
        if packet.run_id == cur.run_id and packet.version <= cur.weights_version:
            return  # an older or repeated push
        self._push_loader.submit(self._apply_weights, cur, packet)

    def _apply_weights(self, cur: PolicyRunner, packet: WeightsPacket) -> None:
        try:
            self.actor.wait_for_tick()
            runner = self.actor.runner_from_weights(packet)
        except WeightsError as exc:
            self.actor.drop("policy_weights", exc)
            return self._warn_drop()
        if not self.actor.install(runner, replaces=cur):
            self.get_logger().info(f"learner weights v{packet.version} not applied: a "
                                   "hot-swap replaced the policy meanwhile")
            return
        self._last_weights_time = time.monotonic()
        self._weights_warned = False
        self.get_logger().info(f"applied learner weights v{packet.version} "
                               f"(step {packet.learner_step})", throttle_duration_sec=10.0)

    # -- hot-swap: loaded in a child process, checked against the loop --------------------
    def _on_load_checkpoint(self, request, response):
        t0 = time.monotonic()
        try:
            config, blob, source = self.loader.fetch(request.path,
                                                     root=self.p.checkpoint_root)
            self.actor.wait_for_tick()
            runner = PolicyRunner.from_actor_bytes(config, blob, source=source)
            self.actor.install(runner, hot_swap=True)
        except (CheckpointError, IncompatibleCheckpoint, WeightsError, OSError) as exc:
            response.success = False
            response.message = f"refused {request.path}: {type(exc).__name__}: {exc}"
            response.loaded = ""
            self.get_logger().error(response.message)
            return response
        self.last_hot_swap = request.path
        response.success = True
        response.loaded = describe(runner)
        response.message = (f"loaded {request.path} in {time.monotonic() - t0:.2f} s; "
                            "active from the next control tick")
        self.get_logger().info(response.message)
        return response

    # -- the control tick ------------------------------------------------------------------
    def _tick(self) -> None:
        now = self._now()
        self._service_reset(now)
        try:
            res = self.actor.tick(now, time.monotonic())
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
            lat = (self._now() - self.actor.loop._image.stamp_ns) / 1e6
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
        loop = self.actor.loop
        if loop.running:
            return
        if self._reset_future is None:
            self._request_reset(now_ns)
            return
        if self._reset_future.done():
            result = self._reset_future.result()
            self._reset_future = None
            if result is not None and result.success:
                loop.start_episode(self._now())
                self.get_logger().info(f"episode {loop.episode} started")
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
        self._push_loader.shutdown(wait=True, cancel_futures=True)
        self.loader.close()
        if not self._svc_thread.is_alive():
            self._svc_exec.shutdown()
            self._svc_node.destroy_node()

    def _publish_status(self) -> None:
        lat = np.array(self.latencies_ms[-200:]) if self.latencies_ms else np.zeros(1)
        status = self.actor.status()
        status.update({
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "pid": os.getpid(), "last_hot_swap": self.last_hot_swap,
            "steps_published": self.steps_published,
            "max_tick_gap_ms": 1000.0 * self.actor.clock.max_gap,
        })
        self.actor.clock.max_gap = 0.0
        self.status_pub.publish(String(data=json.dumps(status)))
        runner = self.actor.runner
        if (self.p.policy_enabled and not self._weights_warned and
                time.monotonic() - self._last_weights_time > self.p.weights_timeout_s):
            self._weights_warned = True
            self.get_logger().warning(
                f"no learner weights for {self.p.weights_timeout_s:.0f} s: acting with the "
                f"last ones ({runner.source}, v{runner.weights_version})")


def main(args=None) -> int:
    torch.set_num_threads(1)  # batch-1 inference: more threads only fight the other nodes
    # The control thread takes the GIL back within 1 ms (not 5) when a helper thread holds
    # it: a batch-1 forward pass releases and retakes it at every op.
    sys.setswitchinterval(0.001)
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
