"""Teleop node: sensor_msgs/Joy (a gamepad through the `joy` package, ``gamepad_joy`` or the
scripted operator) -> ``intervention`` (deadman held = the human drives) and
``episode_event`` (success / failure / re-record buttons).

    python -m drqv2_ros.nodes.teleop_node --ros-args --params-file config/teleop.yaml

The mapping itself is ROS-free: :mod:`drqv2_ros.teleop.joy_mapping`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import Joy

from drqv2_ros.msg import EpisodeEvent, Intervention
from drqv2_ros.nodes.common import SENSOR_QOS, declare_parameters, param, reliable_qos, run_node
from drqv2_ros.teleop.joy_mapping import JoyMapper, JoyMapping, find_mapping_file

EVENT_CODES = {
    "success": EpisodeEvent.SUCCESS,
    "failure": EpisodeEvent.FAILURE,
    "rerecord": EpisodeEvent.RERECORD,
}


@dataclass
class TeleopParams:
    controller: str = param("xbox", "controller mapping: config/joy/<controller>.yaml "
                                    "(package share dir, else the source tree)")
    mapping_file: str = param("", "explicit mapping YAML path (overrides controller)")
    joy_timeout: float = param(0.5, "s without a valid Joy message that ends an intervention")
    publish_rate: float = param(20.0, "Hz of the timer that checks the Joy timeout and "
                                      "re-publishes the intervention state when Joy is quiet")
    event_source: str = param("joy", "EpisodeEvent.source of button events")


class TeleopNode(Node):
    def __init__(self, **kw):
        super().__init__("teleop", **kw)
        self.p = declare_parameters(self, TeleopParams)
        if self.p.joy_timeout <= 0 or self.p.publish_rate <= 0:
            raise ValueError("joy_timeout and publish_rate must be > 0")
        path = find_mapping_file(self.p.controller, self.p.mapping_file)
        self.mapper = JoyMapper(JoyMapping.load(path), timeout=self.p.joy_timeout)
        self.intervention_pub = self.create_publisher(Intervention, "intervention",
                                                      reliable_qos(1))
        self.event_pub = self.create_publisher(EpisodeEvent, "episode_event", reliable_qos(10))
        self.create_subscription(Joy, "joy", self._on_joy, SENSOR_QOS)
        self._last_pub = 0.0
        self._last_malformed = 0
        self._input_stamp = None  # ROS time of the last valid Joy message
        self.create_timer(1.0 / self.p.publish_rate, self._on_timer)
        m = self.mapper.mapping
        self.get_logger().info(
            f"mapping {m.name!r} from {path}: deadman button {m.deadman}, buttons "
            f"{m.buttons}, joy_timeout {self.p.joy_timeout}s")

    def _publish_intervention(self) -> None:
        msg = Intervention()
        # the time of the human input this reflects, not of the publish: a heartbeat while
        # Joy is quiet does not make the last human action look fresh
        msg.header.stamp = (self._input_stamp or self.get_clock().now()).to_msg()
        self._check_timeout()  # never claim an intervention past its Joy timeout
        msg.active = bool(self.mapper.intervening)
        msg.action = [float(a) for a in self.mapper.action]
        self.intervention_pub.publish(msg)
        self._last_pub = time.monotonic()

    def _on_joy(self, msg: Joy) -> None:
        was = self.mapper.intervening
        malformed = self.mapper.malformed
        _, _, events = self.mapper.update(msg.axes, msg.buttons, time.monotonic())
        if self.mapper.malformed == malformed:  # a valid Joy: the human input of now
            self._input_stamp = self.get_clock().now()
        if self.mapper.malformed != self._last_malformed:
            self._last_malformed = self.mapper.malformed
            m = self.mapper.mapping
            self.get_logger().warning(
                f"ignoring malformed Joy ({len(msg.axes)} axes, {len(msg.buttons)} buttons; "
                f"mapping needs {m.min_axes}/{m.min_buttons}, finite values): "
                f"{self.mapper.malformed} so far", throttle_duration_sec=5.0)
            return
        if self.mapper.intervening != was:
            self.get_logger().info("intervention " + ("started" if self.mapper.intervening
                                                      else "ended (deadman released)"))
        self._publish_intervention()
        for e in events:
            ev = EpisodeEvent()
            ev.header.stamp = self.get_clock().now().to_msg()
            ev.event = EVENT_CODES[e]
            ev.source = self.p.event_source
            self.event_pub.publish(ev)
            self.get_logger().info(f"episode event {e.upper()}")

    def _check_timeout(self) -> bool:
        if self.mapper.check_timeout(time.monotonic()):
            self.get_logger().warning(
                f"no Joy for {self.p.joy_timeout}s: intervention ended "
                f"({self.mapper.timeouts} timeouts so far)")
            return True
        return False

    def _on_timer(self) -> None:
        if self._check_timeout():
            self._publish_intervention()
        elif time.monotonic() - self._last_pub >= 1.0 / self.p.publish_rate:
            self._publish_intervention()  # heartbeat while Joy is quiet


def main(args: list[str] | None = None) -> int:
    return run_node(TeleopNode, args)


if __name__ == "__main__":
    sys.exit(main())
