"""A probe node for tests whose graph runs in other network namespaces: subscribes to a few
topics and rewrites a JSON summary file every 0.25 s (the test reads the file).

    python test/netns_probe.py OUT.json actor|learner
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(out: str, side: str) -> int:
    import rclpy
    from std_msgs.msg import String

    from drqv2_ros.msg import EndEffectorCommand, TrainingMetrics
    from drqv2_ros.nodes.common import reliable_qos

    rclpy.init()
    node = rclpy.create_node(f"netns_probe_{side}")
    state: dict = {"commands": [], "status": None, "metrics": None}
    if side == "actor":
        node.create_subscription(
            EndEffectorCommand, "ee_command",
            lambda m: state["commands"].append(time.monotonic()), reliable_qos(10))
        node.create_subscription(String, "policy/status",
                                 lambda m: state.__setitem__("status", json.loads(m.data)),
                                 reliable_qos(10))
    else:
        def on_metrics(m):
            state["metrics"] = {
                "update_step": m.update_step, "weights_version": m.weights_version,
                "actors": list(m.actors), "received": list(m.actor_steps_received),
                "stored": list(m.actor_steps_stored), "dropped": list(m.actor_steps_dropped),
                "lost": list(m.actor_steps_lost), "staged": list(m.actor_steps_staged)}
        node.create_subscription(TrainingMetrics, "learner/metrics", on_metrics,
                                 reliable_qos(10))
    next_write = 0.0
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)
            now = time.monotonic()
            if now >= next_write:
                tmp = out + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(dict(state, now=now), f)
                os.replace(tmp, out)
                next_write = now + 0.25
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
