"""Camera node: OpenCV capture -> ``camera/image_raw`` (rgb8, camera resolution) and
``camera/image_policy`` (pick-101 crop + INTER_AREA resize, same stamp), sensor-data QoS,
plus a JSON health report on ``camera/status``.

    python -m drqv2_ros.nodes.camera_node --ros-args --params-file config/camera.yaml

A background thread (``camera/grabber.py``, ROS-free) grabs frames and stamps each one the
moment ``grab()`` returns; the publishing timer sends only frames it has not sent before, so
a camera that stops delivering produces no new stamps downstream (never an old frame
re-stamped as new), and ``camera/status`` says ``stalled``. This node only wires parameters
and topics to it. ``device`` may be an index (``"0"``), a device path
(``/dev/video2``) or a video file (played once at ``fps``: handy for tests and replays).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from drqv2_ros.camera.grabber import (
    CameraHealth,
    CaptureFactory,
    FrameGrabber,
    is_video_file,
    opencv_capture_factory,
)
from drqv2_ros.nodes.common import (
    SENSOR_QOS,
    declare_parameters,
    numpy_to_image,
    param,
    reliable_qos,
    run_node,
)
from drqv2_ros.observation.preprocessing import CropResize


@dataclass
class CameraParams:
    device: str = param("0", "camera index ('0'), device path (/dev/video0) or video file")
    width: int = param(640, "requested capture width (px); the camera may pick another")
    height: int = param(480, "requested capture height (px)")
    fps: float = param(30.0, "requested capture rate (Hz); video files are paced to it")
    fourcc: str = param("", "requested pixel format, e.g. MJPG (empty: driver default)")
    frame_id: str = param("camera", "header.frame_id of both images")
    policy_size: int = param(84, "side of the square policy image (px)")
    crop_box: list = param([0, 0, 0, 0], "crop (x, y, width, height) in camera pixels before "
                                         "the resize; width or height 0: centre square")
    publish_raw: bool = param(True, "publish camera/image_raw (camera resolution)")
    poll_rate: float = param(100.0, "Hz of the timer that publishes new frames")
    stall_timeout: float = param(1.0, "s without a new frame before status says 'stalled'")
    reconnect_interval: float = param(2.0, "s between re-open attempts of a stalled camera "
                                           "device (0: never; video files are never re-opened)")
    status_rate: float = param(1.0, "Hz of camera/status (also sent on every state change)")


class CameraNode(Node):
    def __init__(self, capture_factory: CaptureFactory | None = None, **kw):
        super().__init__("camera", **kw)
        self.p = p = declare_parameters(self, CameraParams)
        if len(p.crop_box) != 4:
            raise ValueError(f"crop_box needs 4 integers (x, y, w, h), got {p.crop_box}")
        box = tuple(int(v) for v in p.crop_box)
        self.preprocess = CropResize(size=p.policy_size,
                                     box=box if box[2] > 0 and box[3] > 0 else None)
        self.raw_pub = (self.create_publisher(Image, "camera/image_raw", SENSOR_QOS)
                        if p.publish_raw else None)
        self.policy_pub = self.create_publisher(Image, "camera/image_policy", SENSOR_QOS)
        self.status_pub = self.create_publisher(String, "camera/status", reliable_qos(10))
        video = is_video_file(p.device)
        self.grabber = FrameGrabber(
            capture_factory or opencv_capture_factory(p.device, p.width, p.height, p.fps,
                                                      p.fourcc),
            lambda: self.get_clock().now().nanoseconds,
            pace_hz=p.fps if video else 0.0,
            reconnect_interval=0.0 if video else p.reconnect_interval).start()
        self.health = CameraHealth(self.grabber, p.device, p.stall_timeout, 1.0 / p.status_rate)
        self.create_timer(1.0 / p.poll_rate, self._on_timer)
        self.get_logger().info(
            f"device {p.device!r} ({'video file' if video else 'camera'}), requested "
            f"{p.width}x{p.height}@{p.fps}, policy {p.policy_size}px, crop "
            f"{self.preprocess.box or 'centre square'}")

    @property
    def published(self) -> int:
        return self.health.published

    def status_dict(self) -> dict:
        return self.health.status(time.monotonic())

    def _on_timer(self) -> None:
        frame = self.health.take_new()
        if frame is not None:
            _seq, stamp, rgb = frame
            try:
                policy = self.preprocess(rgb)
            except ValueError as exc:  # crop box larger than the camera image
                self.health.error = str(exc)
                self.get_logger().error(f"preprocessing failed: {exc}",
                                        throttle_duration_sec=5.0)
            else:
                self.health.error = ""
                if self.raw_pub is not None:
                    self.raw_pub.publish(numpy_to_image(rgb, stamp, self.p.frame_id))
                self.policy_pub.publish(numpy_to_image(policy, stamp, self.p.frame_id))
                self.health.sent(time.monotonic())
        now = time.monotonic()
        changed, due = self.health.update(now)
        state = self.health.state
        if state in ("stalled", "failed", "error"):
            st = self.health.status(now)
            self.get_logger().error(f"camera {state}: {st['error'] or 'no new frames'} "
                                    f"(last frame {st['last_frame_age_s']} s ago)",
                                    throttle_duration_sec=5.0)
        elif changed:
            self.get_logger().info(f"camera {state}")
        if due:
            self.status_pub.publish(String(data=json.dumps(self.health.status(now))))

    def close(self) -> None:
        self.grabber.stop()


def main(args: list[str] | None = None) -> int:
    return run_node(CameraNode, args)


if __name__ == "__main__":
    sys.exit(main())
