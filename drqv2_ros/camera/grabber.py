"""Camera capture, ROS-free: a thread that grabs frames from OpenCV, stamps each one the
moment ``grab()`` returns and keeps only the newest (with a sequence number, so a consumer
sends each frame once and a stalled camera produces no new stamps), re-opening a device that
stops delivering; and :class:`CameraHealth`, the stream's state and counters.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

CaptureFactory = Callable[[], "cv2.VideoCapture"]


def parse_device(device: str) -> int | str:
    d = device.strip()
    return int(d) if d.isdigit() else d


def opencv_capture_factory(device: str, width: int, height: int, fps: float,
                           fourcc: str = "") -> CaptureFactory:
    def open_capture():
        cap = cv2.VideoCapture(parse_device(device))
        if cap.isOpened() and not is_video_file(device):
            if fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc[:4]))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            cap.set(cv2.CAP_PROP_FPS, fps)
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


class CameraHealth:
    """What ``camera/status`` reports: which captured frames are new, how many were
    published or skipped, the publish rate over 2 s, and the stream state (``opening``,
    ``streaming``, ``stalled`` after ``stall_timeout`` s without a frame, ``failed``,
    ``error`` when preprocessing fails)."""

    def __init__(self, grabber: FrameGrabber, device: str, stall_timeout: float,
                 status_period: float):
        self.grabber, self.device = grabber, device
        self.stall_timeout, self.status_period = stall_timeout, status_period
        self.published_seq = 0
        self.published = 0
        self.dropped = 0  # captured frames never published (the consumer was too slow)
        self.state = "opening"
        self.error = ""   # preprocessing error, "" when fine
        self._pub_times: list[float] = []
        self._last_status = float("-inf")

    def take_new(self) -> tuple[int, int, np.ndarray] | None:
        """The newest frame if it was not taken before, else None."""
        latest = self.grabber.latest()
        if latest is None or latest[0] == self.published_seq:
            return None
        self.dropped += max(0, latest[0] - self.published_seq - 1)
        self.published_seq = latest[0]
        return latest

    def sent(self, now: float) -> None:
        self.published += 1
        self._pub_times.append(now)
        while self._pub_times and now - self._pub_times[0] > 2.0:
            self._pub_times.pop(0)

    def compute_state(self, now: float) -> str:
        g = self.grabber
        if self.error:
            return "error"
        if g.last_frame_mono is None:
            return "opening" if g.opened or not g.last_error else "failed"
        if now - g.last_frame_mono > self.stall_timeout:
            return "stalled"
        return "streaming"

    def update(self, now: float) -> tuple[bool, bool]:
        """(state changed, status due) at ``now`` (monotonic s)."""
        state = self.compute_state(now)
        changed, self.state = state != self.state, state
        due = changed or now - self._last_status >= self.status_period
        if due:
            self._last_status = now
        return changed, due

    def status(self, now: float) -> dict:
        g = self.grabber
        age = None if g.last_frame_mono is None else now - g.last_frame_mono
        t = self._pub_times
        rate = (len(t) - 1) / max(t[-1] - t[0], 1e-9) if len(t) > 1 else 0.0
        return {
            "state": self.state,
            "device": self.device,
            "resolution": list(g.shape[1::-1]) if g.shape else None,
            "frames_captured": g.seq,
            "frames_published": self.published,
            "frames_dropped": self.dropped,
            "publish_rate_hz": round(rate, 2),
            "last_frame_age_s": None if age is None else round(age, 3),
            "read_failures": g.read_failures,
            "reopens": g.reopens,
            "error": self.error or (g.last_error if self.state != "streaming" else ""),
        }
