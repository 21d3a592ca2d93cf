"""Scripted operator node (simulation only): PRIVILEGED ``sim/state`` -> the same
sensor_msgs/Joy a human with a gamepad would publish on ``joy`` (deadman held while it
takes over, sticks for the pick motion, success button on success). The teleop node turns
it into ``intervention`` / ``episode_event`` exactly as for a human.

    python -m drqv2_ros.nodes.scripted_operator_node --ros-args \
        --params-file config/scripted_operator.yaml

Episodes: any ``episode_event`` ends the current one (the operator lets go); the next one
starts at the first ``sim/state`` at least ``reset_wait_s`` later that shows neither
success nor a grasp (the driver has reset the scene).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Joy

from drqv2_ros.msg import EpisodeEvent, SimState
from drqv2_ros.nodes.common import SENSOR_QOS, declare_parameters, param, reliable_qos, run_node
from drqv2_ros.teleop.joy_mapping import (
    GRIPPER_OPEN,
    JoyEncoder,
    JoyMapping,
    find_mapping_file,
)
from drqv2_ros.teleop.scripted_operator import OperatorConfig, ScriptedOperator, SimStateData


@dataclass
class ScriptedOperatorParams(OperatorConfig):
    """The node's parameters: every ``OperatorConfig`` field, plus the Joy side."""

    controller: str = param("xbox", "mapping the teleop node uses: config/joy/<name>.yaml")
    mapping_file: str = param("", "explicit mapping YAML path (overrides controller)")
    rate: float = param(20.0, "Joy publish rate (Hz), like joy_node's autorepeat_rate")
    press_ticks: int = param(3, "Joy messages a button is held for (best-effort Joy)")
    reset_wait_s: float = param(1.0, "s after an episode event before a new episode may start")
    state_timeout: float = param(0.5, "s without sim/state after which the deadman is released")


def state_from_msg(msg: SimState) -> SimStateData:
    c, g = msg.cube_position, msg.gripper_position
    return SimStateData(cube_position=np.array([c.x, c.y, c.z]),
                        gripper_position=np.array([g.x, g.y, g.z]),
                        gripper_opening=float(msg.gripper_opening),
                        cube_grasped=bool(msg.cube_grasped), success=bool(msg.success))


class ScriptedOperatorNode(Node):
    def __init__(self, **kw):
        super().__init__("scripted_operator", **kw)
        self.p = p = declare_parameters(self, ScriptedOperatorParams)
        if p.rate <= 0:
            raise ValueError("rate must be > 0")
        cfg_names = {f.name for f in fields(OperatorConfig)}
        self.op = ScriptedOperator(OperatorConfig(
            **{k: getattr(p, k) for k in cfg_names}))
        path = find_mapping_file(p.controller, p.mapping_file)
        self.encoder = JoyEncoder(JoyMapping.load(path))
        self.joy_pub = self.create_publisher(Joy, "joy", SENSOR_QOS)
        self.create_subscription(SimState, "sim/state", self._on_state, reliable_qos(10))
        self.create_subscription(EpisodeEvent, "episode_event", self._on_event,
                                 reliable_qos(10))
        self.state: SimStateData | None = None
        self._state_t = 0.0
        self._event_t: float | None = None
        self._pressing: dict[str, int] = {}
        self._phase = ""
        self.create_timer(1.0 / p.rate, self._on_timer)
        self.get_logger().info(f"mapping {self.encoder.mapping.name!r} from {path}; "
                               f"takeover every {p.intervene_every_n_episodes} episode(s), "
                               f"p={p.intervene_probability}")

    def _on_state(self, msg: SimState) -> None:
        now = time.monotonic()
        self.state = state_from_msg(msg)
        self._state_t = now
        first = self.op.episode < 0
        reset_done = (self._event_t is not None and now - self._event_t >= self.p.reset_wait_s
                      and not self.state.success and not self.state.cube_grasped)
        if first or reset_done:
            self._event_t = None
            self._pressing.clear()
            self.op.new_episode(now)
            self.get_logger().info(f"episode {self.op.episode}: "
                                   + ("takeover" if self.op.takeover else "policy only"))

    def _on_event(self, msg: EpisodeEvent) -> None:
        if self.op.episode >= 0 and not self.op.ended:
            self.op.end_episode()
            self._event_t = time.monotonic()
            self.get_logger().info(f"episode {self.op.episode} ended (event {msg.event} "
                                   f"from {msg.source!r})")

    def _on_timer(self) -> None:
        now = time.monotonic()
        intervene, action = False, np.array([0, 0, 0, GRIPPER_OPEN], np.float32)
        if self.state is not None and now - self._state_t <= self.p.state_timeout:
            out = self.op.tick(self.state, now)
            intervene, action = out.intervene, out.action
            for e in out.press:
                self._pressing[e] = self.p.press_ticks
                self.get_logger().info(f"pressing {e}")
            if intervene and out.phase != self._phase:
                self._phase = out.phase
                self.get_logger().info(f"phase {out.phase}")
        press = [e for e, n in self._pressing.items() if n > 0]
        for e in press:
            self._pressing[e] -= 1
        axes, buttons = self.encoder.encode(intervene, action, press)
        msg = Joy()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = "scripted_operator"
        msg.axes = [float(a) for a in axes]
        msg.buttons = [int(b) for b in buttons]
        self.joy_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    return run_node(ScriptedOperatorNode, args)


if __name__ == "__main__":
    sys.exit(main())
