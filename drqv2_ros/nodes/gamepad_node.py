"""gamepad_joy: a small sensor_msgs/Joy publisher for a local gamepad, for machines without
the ROS `joy` package. Reads the pad with pygame or evdev (imported only when the node
starts; neither is a dependency of drqv2_ros) and publishes ``joy`` at ``rate`` Hz with
the `joy` package's conventions, so the same mapping files apply:

* axes in [-1, 1], stick up / left positive (the raw device reports down / right
  positive: every axis is negated), triggers +1 released .. -1 pressed;
* d-pad hats as two extra axes each (x: left +1, y: up +1);
* buttons 0/1 in the device's order (evdev: ascending key codes, as the kernel joystick
  interface orders them).

Not started by the bring-up unless asked for. The device reading and conversions live in
``teleop/gamepad.py`` (ROS-free); this node only publishes them.

    python -m drqv2_ros.nodes.gamepad_node --ros-args -p backend:=evdev
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import Joy

from drqv2_ros.nodes.common import SENSOR_QOS, declare_parameters, param, run_node
from drqv2_ros.teleop.gamepad import open_reader


@dataclass
class GamepadParams:
    backend: str = param("auto", "pygame, evdev or auto (pygame if importable, else evdev)")
    device_index: int = param(0, "pygame joystick index")
    device_path: str = param("", "evdev device (/dev/input/eventN); empty: first gamepad")
    rate: float = param(20.0, "Joy publish rate (Hz), like joy_node's autorepeat_rate")
    deadzone: float = param(0.05, "axis values within +-deadzone are published as 0")
    frame_id: str = param("gamepad", "header.frame_id of Joy")


class GamepadNode(Node):
    def __init__(self, **kw):
        super().__init__("gamepad_joy", **kw)
        self.p = declare_parameters(self, GamepadParams)
        if self.p.rate <= 0:
            raise ValueError("rate must be > 0")
        self.reader = open_reader(self.p.backend, device_index=self.p.device_index,
                                  device_path=self.p.device_path, deadzone=self.p.deadzone)
        self.pub = self.create_publisher(Joy, "joy", SENSOR_QOS)
        self.create_timer(1.0 / self.p.rate, self._on_timer)
        self.get_logger().info(f"gamepad {self.reader.name!r}, Joy at {self.p.rate} Hz")

    def _on_timer(self) -> None:
        try:
            axes, buttons = self.reader.read()
        except OSError as exc:  # unplugged
            self.get_logger().error(f"gamepad read failed: {exc}", throttle_duration_sec=5.0)
            return  # no Joy: the teleop node's timeout ends any intervention
        msg = Joy()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p.frame_id
        msg.axes = [float(a) for a in axes]
        msg.buttons = [int(b) for b in buttons]
        self.pub.publish(msg)

    def close(self) -> None:
        self.reader.close()


def main(args: list[str] | None = None) -> int:
    return run_node(GamepadNode, args)


if __name__ == "__main__":
    sys.exit(main())
