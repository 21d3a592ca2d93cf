"""Multi-process ROS 2 test harness: real DDS, one ROS_DOMAIN_ID per test, node processes
started as users start them (``python -m drqv2_ros.nodes.X --ros-args ...``), and an
in-process probe node to publish, subscribe and call services."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_domain_counter = itertools.count()


def allocate_domain_id() -> int:
    """Domain ids 1..100 (higher ids map into the ephemeral port range), spread by pid so
    concurrent test runs on one machine rarely collide."""
    return 1 + (os.getpid() * 7 + next(_domain_counter)) % 100


def ros_environment(domain_id: int, log_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(log_dir),
        HOME=env.get("HOME", str(log_dir)),
        AMENT_PREFIX_PATH=sys.prefix,
        FASTDDS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_profile.xml"),
        FASTRTPS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_profile.xml"),
        MUJOCO_GL=env.get("MUJOCO_GL", "egl"),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class NodeProcess:
    """A node in its own process; stdout+stderr go to a log file shown on failure."""

    def __init__(self, module: str, env: dict[str, str], log_dir: Path, *,
                 params: dict | None = None, params_file: str | Path | None = None,
                 name: str | None = None, args: list[str] | None = None):
        self.name = name or module.rsplit(".", 1)[-1]
        self.log_path = log_dir / f"{self.name}.log"
        cmd = [sys.executable, "-m", module, *(args or []), "--ros-args"]
        if params_file:
            cmd += ["--params-file", str(params_file)]
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, list | tuple):
                v = "[" + ",".join(str(x) for x in v) + "]"
            cmd += ["-p", f"{k}:={v}"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT), start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class Probe:
    """An rclpy node spun in a background thread inside the test process, in its own
    context, for publishing test inputs and collecting outputs."""

    def __init__(self, env: dict[str, str], name: str = "probe"):
        for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR",
                  "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                  "AMENT_PREFIX_PATH"):
            os.environ[k] = env[k]
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe and return a list that fills with (receive_time_ns, msg)."""
        out: list = []

        def cb(msg):
            with self.lock:
                out.append((time.monotonic_ns(), msg))

        self.node.create_subscription(msg_type, topic, cb, qos)
        return out

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def call(self, srv_type, name: str, request, timeout: float = 30.0,
             resend_every: float | None = None):
        """Call a service and wait for its answer. ``resend_every`` (idempotent services
        only) sends the request again when no answer came within that many seconds: with
        Fast DDS, ``wait_for_service`` can report a server whose response writer has not yet
        matched this client's reader, and the first answer is then lost on a loaded machine."""
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available within {timeout}s")
        futures = [client.call_async(request)]
        sent = time.monotonic()
        deadline = sent + timeout
        while not any(f.done() for f in futures):
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"service {name} did not answer within {timeout}s "
                                   f"({len(futures)} request(s) sent)")
            if resend_every is not None and now - sent > resend_every:
                futures.append(client.call_async(request))
                sent = now
            time.sleep(0.01)
        return next(f for f in futures if f.done()).result()

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.shutdown(context=self.context)


def wait_for(pred: Callable[[], bool], timeout: float, what: str,
             procs: list[NodeProcess] = (), interval: float = 0.05) -> None:
    """Wait until pred() is true; on timeout fail with ``what`` and the node logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited ({p.proc.returncode}) while waiting for "
                                     f"{what}:\n{p.log()[-4000:]}")
        time.sleep(interval)
    logs = "\n".join(f"--- {p.name} ---\n{p.log()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
