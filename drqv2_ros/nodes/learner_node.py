"""`learner`: replay + DrQ-v2 updates in their own process. Subscribes to the actor's
`step` stream, trains in a background thread (``learning/training_loop.py``), pushes actor
weights on `policy_weights` and publishes `learner/metrics` (also logged to TensorBoard)."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from rclpy.node import Node

from drqv2_ros.convert.robobase import load_checkpoint_any
from drqv2_ros.learning.glibc import keep_freed_memory
from drqv2_ros.learning.training_loop import TrainingConfig, TrainingLoop
from drqv2_ros.msg import PolicyWeights, Step, TrainingMetrics
from drqv2_ros.nodes.common import (
    STEP_QOS,
    WEIGHTS_QOS,
    declare_parameters,
    param,
    publish_quietly,
    reliable_qos,
    run_node,
)
from drqv2_ros.observation.step_record import StepFormatError, from_msg


@dataclass
class LearnerParams(TrainingConfig):
    """The learner's ROS parameters: every TrainingConfig setting plus these."""

    checkpoint: str = param("", "start weights: converted folder or RoboBase .pt "
                                "('' = output_dir/checkpoints/last)")
    demo_bags: list = param([""], "rosbag2 bags to seed the offline buffer")
    torch_threads: int = param(0, "torch intra-op threads (0 = torch default)")
    actor_namespaces: list = param([""], "one actor per namespace: <ns>/step in, weights out "
                                         "on <ns>/policy_weights ('' = this node's namespace)")


class LearnerNode(Node):
    def __init__(self):
        super().__init__("learner")
        p = self.p = declare_parameters(self, LearnerParams)
        if p.torch_threads > 0:
            torch.set_num_threads(p.torch_threads)
        start = p.checkpoint or str(Path(p.output_dir) / "checkpoints" / "last")
        policy = load_checkpoint_any(start)
        cfg = TrainingConfig(**{f.name: getattr(p, f.name) for f in fields(TrainingConfig)})
        self.loop = TrainingLoop(cfg, policy)
        c = self.loop.learner.config
        self._shapes = dict(image_shape=self.loop.spec["image_shape"],
                            low_dim_size=c.low_dim_per_frame, action_size=c.action_dim)
        bags = [b for b in p.demo_bags if b]
        if bags:
            from drqv2_ros.bags.ingest import ingest_into_replay

            summary = ingest_into_replay(bags, self.loop.replay.offline, self.loop.out)
            self.get_logger().info(f"demo bags: {summary}")
        self._drops_logged: dict[str, int] = {}
        self.actors = actor_topics(p.actor_namespaces)
        self.weights_pubs = [self.create_publisher(PolicyWeights, weights, WEIGHTS_QOS)
                             for _key, _step, weights in self.actors]
        self.metrics_pub = self.create_publisher(TrainingMetrics, "learner/metrics",
                                                 reliable_qos(10))
        for key, step_topic, _weights in self.actors:
            self.create_subscription(Step, step_topic,
                                     lambda msg, key=key: self._on_step(msg, key),
                                     STEP_QOS)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.loop.run, args=(self._stop, self._publish_weights, self._publish_metrics),
            name="training", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"learner ready ({'resumed' if self.loop.resumed else 'fresh'} from {start}; "
            f"on {self.loop.describe()}; run {self.loop.run_id}; online "
            f"{len(self.loop.replay.online)} / offline {len(self.loop.replay.offline)} "
            f"transitions on disk; {self.loop.restored_actors} actor stream(s) taken up "
            "where the buffer left them)")

    def _on_step(self, msg: Step, actor: str) -> None:
        try:
            record = from_msg(msg, **self._shapes)
        except StepFormatError as exc:
            self.loop.reject(actor, "malformed Step message")
            self.get_logger().warning(f"dropped malformed step from actor {actor!r}: {exc}",
                                      throttle_duration_sec=5.0)
            return
        self.loop.submit(record, actor)

    def _publish_weights(self, packet) -> None:
        msg = PolicyWeights()
        msg.header.stamp = self.get_clock().now().to_msg()  # works after shutdown too
        msg.version, msg.learner_step = packet.version, packet.learner_step
        msg.run_id, msg.sha256 = packet.run_id, packet.sha256
        msg.data = packet.data
        for pub in self.weights_pubs:  # every actor gets the same weights
            publish_quietly(pub, msg)

    def _publish_metrics(self, m: dict) -> None:
        msg = TrainingMetrics()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.update_step = int(m["update_step"])
        for name in ("critic_loss", "actor_loss", "q_mean", "stddev", "updates_per_second",
                     "intervention_rate"):
            setattr(msg, name, float(m.get(name, float("nan"))))
        msg.online_size, msg.offline_size = int(m["online_size"]), int(m["offline_size"])
        msg.transitions_received = int(m["transitions_received"])
        msg.weights_version = int(m["weights_version"])
        msg.status = self.loop.status()
        counts = self.loop.intake.counts()
        msg.actors = list(counts)
        msg.actor_steps_received = [c.received for c in counts.values()]
        msg.actor_steps_stored = [c.stored for c in counts.values()]
        msg.actor_steps_dropped = [sum(c.dropped.values()) for c in counts.values()]
        msg.actor_steps_staged = [c.staged for c in counts.values()]
        msg.actor_steps_lost = [c.lost for c in counts.values()]
        msg.actor_episodes = [c.episodes for c in counts.values()]
        dropped = dict(self.loop.intake.totals.dropped)
        msg.drop_reasons, msg.drop_counts = list(dropped), list(dropped.values())
        publish_quietly(self.metrics_pub, msg)
        for reason, n in dropped.items():  # one line per reason and period, with counts
            new = n - self._drops_logged.get(reason, 0)
            if new > 0:
                self.get_logger().warning(f"dropped {new} step(s) ({n} in all): {reason}")
        self._drops_logged = dropped

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.loop.close()


def actor_topics(namespaces: list[str]) -> list[tuple[str, str, str]]:
    """(actor key, step topic, weights topic) per actor namespace; duplicates refused."""
    out, seen = [], set()
    for ns in namespaces or [""]:
        key = str(ns).strip().rstrip("/")
        if key in seen:
            raise ValueError(f"actor_namespaces lists {ns!r} twice")
        seen.add(key)
        prefix = f"{key}/" if key else ""
        out.append((key, f"{prefix}step", f"{prefix}policy_weights"))
    return out


def main(args=None) -> int:
    keep_freed_memory()  # glibc: reuse freed update buffers (several times faster updates)
    return run_node(LearnerNode, args)


if __name__ == "__main__":
    sys.exit(main())
