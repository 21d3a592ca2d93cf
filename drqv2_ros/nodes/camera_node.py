"""Camera node: OpenCV capture -> ``camera/image_raw`` (rgb8, camera resolution) and
``camera/image_policy`` (pick-101 crop + INTER_AREA resize, same stamp), sensor-data QoS,
plus a JSON health report on ``camera/status``.

    python -m drqv2_ros.nodes.camera_node --ros-args --params-file config/camera.yaml

A background thread grabs frames and stamps each one the moment ``grab()`` returns; the
publishing timer sends only frames it has not sent before, so a camera that stops
delivering produces no new stamps downstream (never an old frame re-stamped as new), and
``camera/status`` says ``stalled``. ``device`` may be an index (``"0"``), a device path
(``/dev/video2``) or a video file (played once at ``fps``: handy for tests and replays).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

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


CaptureFactory = Callable[[], "cv2.VideoCapture"]


def parse_device(device: str) -> int | str:
    d = device.strip()
    return int(d) if d.isdigit() else d


def opencv_capture_factory(p: CameraParams) -> CaptureFactory:
    def open_capture():
        cap = cv2.VideoCapture(parse_device(p.device))
        if cap.isOpened() and not is_video_file(p.device):
            if p.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*p.fourcc[:4]))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, p.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, p.height)
            cap.set(cv2.CAP_PROP_FPS, p.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # latest frame, not a stale queue
        return cap
    return open_capture


def is_video_file(device: str) -> bool:
    d = device.strip()
    return not d.isdigit() and not d.startswith("/dev/") and os.path.isfile(d)


class FrameGrabber:
    """Capture thread: keeps the latest frame (RGB, capture stamp, sequence number).

    ``clock_ns`` stamps frames (the node's ROS clock); ``pace_hz`` > 0 paces a source that
    does not block (a video file)."""

    def __init__(self, factory: CaptureFactory, clock_ns: Callable[[], int], *,
                 pace_hz: float = 0.0, reconnect_interval: float = 0.0):
        self._factory = factory
        self._clock_ns = clock_ns
        self._pace = 1.0 / pace_hz if pace_hz > 0 else 0.0
        self._reconnect = reconnect_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._frame: tuple[int, int, np.ndarray] | None = None  # (seq, stamp_ns, rgb)
        self.seq = 0
        self.read_failures = 0
        self.reopens = 0
        self.opened = False
        self.last_error = ""
        self.last_frame_mono: float | None = None
        self.shape: tuple[int, ...] | None = None
        self._thread = threading.Thread(target=self._run, name="camera-capture", daemon=True)

    def start(self) -> FrameGrabber:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def latest(self) -> tuple[int, int, np.ndarray] | None:
        with self._lock:
            return self._frame

    def _open(self):
        try:
            cap = self._factory()
        except Exception as exc:
            self.last_error = f"open failed: {type(exc).__name__}: {exc}"
            return None
        if cap is None or not cap.isOpened():
            self.last_error = "could not open the capture device"
            return None
        self.opened = True
        return cap

    def _run(self) -> None:
        cap = self._open()
        last_ok = time.monotonic()
        next_t = time.monotonic()
        while not self._stop.is_set():
            if cap is None:
                if self._reconnect <= 0:
                    self._stop.wait(0.5)
                    continue
                if self._stop.wait(self._reconnect):
                    break
                self.reopens += 1
                cap = self._open()
                last_ok = time.monotonic()
                continue
            if self._pace:
                delay = next_t - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_t = max(next_t + self._pace, time.monotonic() - self._pace)
            ok = cap.grab()
            stamp = self._clock_ns()  # capture time: right after the frame is available
            frame = None
            if ok:
                ok, frame = cap.retrieve()
            if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3:
                self.read_failures += 1
                self.last_error = "read failed (camera unplugged, end of file or busy)"
                if (self._reconnect > 0
                        and time.monotonic() - last_ok > self._reconnect):
                    cap.release()
                    cap = None
                    self.opened = False
                    continue
                self._stop.wait(self._pace or 0.01)
                continue
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            last_ok = time.monotonic()
            with self._lock:
                self.seq += 1
                self._frame = (self.seq, stamp, rgb)
                self.last_frame_mono = last_ok
                self.shape = rgb.shape
        if cap is not None:
            cap.release()


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
            capture_factory or opencv_capture_factory(p),
            lambda: self.get_clock().now().nanoseconds,
            pace_hz=p.fps if video else 0.0,
            reconnect_interval=0.0 if video else p.reconnect_interval).start()
        self._published_seq = 0
        self.published = 0
        self.dropped = 0  # captured frames never published (the timer was too slow)
        self._pub_times: list[float] = []
        self._state = "opening"
        self._last_status = 0.0
        self._crop_error = ""
        self.create_timer(1.0 / p.poll_rate, self._on_timer)
        self.get_logger().info(
            f"device {p.device!r} ({'video file' if video else 'camera'}), requested "
            f"{p.width}x{p.height}@{p.fps}, policy {p.policy_size}px, crop "
            f"{self.preprocess.box or 'centre square'}")

    # -- publishing ---------------------------------------------------------------------------

    def _on_timer(self) -> None:
        latest = self.grabber.latest()
        if latest is not None and latest[0] != self._published_seq:
            seq, stamp, rgb = latest
            self.dropped += max(0, seq - self._published_seq - 1)
            self._published_seq = seq
            try:
                policy = self.preprocess(rgb)
            except ValueError as exc:  # crop box larger than the camera image
                self._crop_error = str(exc)
                self.get_logger().error(f"preprocessing failed: {exc}",
                                        throttle_duration_sec=5.0)
            else:
                self._crop_error = ""
                if self.raw_pub is not None:
                    self.raw_pub.publish(numpy_to_image(rgb, stamp, self.p.frame_id))
                self.policy_pub.publish(numpy_to_image(policy, stamp, self.p.frame_id))
                self.published += 1
                now = time.monotonic()
                self._pub_times.append(now)
                while self._pub_times and now - self._pub_times[0] > 2.0:
                    self._pub_times.pop(0)
        self._update_status()

    # -- health -------------------------------------------------------------------------------

    def _compute_state(self) -> str:
        g = self.grabber
        if self._crop_error:
            return "error"
        if g.last_frame_mono is None:
            return "opening" if g.opened or not g.last_error else "failed"
        if time.monotonic() - g.last_frame_mono > self.p.stall_timeout:
            return "stalled"
        return "streaming"

    def status_dict(self) -> dict:
        g = self.grabber
        age = None if g.last_frame_mono is None else time.monotonic() - g.last_frame_mono
        rate = 0.0
        if len(self._pub_times) > 1:
            rate = (len(self._pub_times) - 1) / max(self._pub_times[-1] - self._pub_times[0],
                                                     1e-9)
        return {
            "state": self._state,
            "device": self.p.device,
            "resolution": list(g.shape[1::-1]) if g.shape else None,
            "frames_captured": g.seq,
            "frames_published": self.published,
            "frames_dropped": self.dropped,
            "publish_rate_hz": round(rate, 2),
            "last_frame_age_s": None if age is None else round(age, 3),
            "read_failures": g.read_failures,
            "reopens": g.reopens,
            "error": self._crop_error or (g.last_error if self._state != "streaming" else ""),
        }

    def _update_status(self) -> None:
        state = self._compute_state()
        now = time.monotonic()
        changed = state != self._state
        self._state = state
        if state in ("stalled", "failed", "error"):
            self.get_logger().error(
                f"camera {state}: {self.status_dict()['error'] or 'no new frames'} "
                f"(last frame {self.status_dict()['last_frame_age_s']} s ago)",
                throttle_duration_sec=5.0)
        elif changed:
            self.get_logger().info(f"camera {state}")
        if changed or now - self._last_status >= 1.0 / self.p.status_rate:
            self._last_status = now
            self.status_pub.publish(String(data=json.dumps(self.status_dict())))

    def close(self) -> None:
        self.grabber.stop()


def main(args: list[str] | None = None) -> int:
    return run_node(CameraNode, args)


if __name__ == "__main__":
    sys.exit(main())
