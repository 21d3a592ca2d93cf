"""`drqv2-ros launch`: start the node graph as plain processes (no `ros2` CLI needed),
supervise them, and shut every one down cleanly on Ctrl-C/SIGTERM or when one fails.

The node list comes from ``bringup/graph.py``, exactly as ``launch/finetune.launch.py``
uses it; each node runs as ``python -m <module> --ros-args -r __node:=<name> --params-file
config/<file>.yaml -p <override>...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from drqv2_ros.bringup.dds import graph_environment
from drqv2_ros.bringup.graph import (
    OPERATORS,
    GraphOptions,
    NodeSpec,
    build_graph,
    parse_nodes,
    prepare,
    rendering_environment,
)
from drqv2_ros.executables import EXECUTABLES
from drqv2_ros.package_files import config_file


def _param_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_param_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v if v else "''"
    return str(v)


def node_command(spec: NodeSpec, opt: GraphOptions) -> list[str]:
    if spec.package != "drqv2_ros":
        raise LookupError(f"{spec.package}/{spec.executable} is not part of drqv2_ros")
    module = EXECUTABLES[spec.executable].split(":")[0]
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__node:={spec.name}"]
    if opt.namespace:
        cmd += ["-r", f"__ns:=/{opt.namespace.strip('/')}"]
    for f in spec.params_files:
        cmd += ["--params-file", str(config_file(f))]
    if opt.extra_params_file:
        cmd += ["--params-file", opt.extra_params_file]
    for k, v in spec.parameters.items():
        cmd += ["-p", f"{k}:={_param_value(v)}"]
    cmd += ["--log-level", opt.log_level]
    return cmd


@dataclass
class Running:
    spec: NodeSpec
    proc: subprocess.Popen
    log_path: Path | None


class GraphProcesses:
    """Start, watch and stop the processes of a node graph."""

    def __init__(self, opt: GraphOptions, *, log_dir: Path | None = None,
                 env: dict[str, str] | None = None, skip_unavailable: bool = True):
        self.opt = opt
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        self.env.update(graph_environment(self.env, peer=opt.peer,
                                          default_profile=config_file("fastdds_profile.xml")))
        self.env.update(rendering_environment(self.env))
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.running: list[Running] = []
        self.skipped: list[str] = []
        self.skip_unavailable = skip_unavailable

    def start(self) -> None:
        for spec in build_graph(self.opt):
            try:
                cmd = node_command(spec, self.opt)
            except LookupError as exc:
                if not self.skip_unavailable:
                    raise
                self.skipped.append(f"{spec.name}: {exc}")
                continue
            log_path = None
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                log_path = self.log_dir / f"{spec.name}.log"
                out = open(log_path, "w")
            proc = subprocess.Popen(cmd, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True)
            if out is not None:
                out.close()
            self.running.append(Running(spec, proc, log_path))

    def failed(self) -> list[Running]:
        return [r for r in self.running if r.proc.poll() not in (None, 0)]

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGINT every node (clean rclpy shutdown, DDS shared memory released), then
        SIGTERM and SIGKILL what is left. Returns the exit codes."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0),
                          (signal.SIGKILL, 3.0)):
            alive = [r for r in self.running if r.proc.poll() is None]
            if not alive:
                break
            for r in alive:
                try:
                    os.killpg(r.proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(r.proc.poll() is None for r in alive):
                time.sleep(0.05)
        return {r.spec.name: r.proc.poll() for r in self.running}


def package_available(name: str) -> bool:
    """A ROS 2 package in the ament index (False where there is no ROS install)."""
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )
    except ImportError:
        return False
    try:
        get_package_share_directory(name)
    except (PackageNotFoundError, ValueError, KeyError, LookupError):
        return False
    return True


def add_graph_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--mode", choices=("sim", "real"), default="sim")
    ap.add_argument("--checkpoint", default="", help="converted folder or RoboBase .pt")
    ap.add_argument("--namespace", default="")
    ap.add_argument("--use-sim-time", action="store_true")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--record", action="store_true", help="record the demo topic set")
    ap.add_argument("--bag", default="", help="bag output path when recording")
    ap.add_argument("--demo-mode", action="store_true",
                    help="policy off, the operator drives (for demonstrations)")
    ap.add_argument("--no-learner", action="store_true")
    ap.add_argument("--operator", choices=OPERATORS, default="auto",
                    help="auto: scripted in sim; on the real arm joy when the ROS joy package "
                         "is installed, else gamepad")
    ap.add_argument("--output-dir", default="", help="learner output directory")
    ap.add_argument("--params-file", default="", help="extra parameters YAML (applied last)")
    ap.add_argument("--nodes", default="",
                    help="start only these nodes, comma-separated (e.g. 'learner' on the GPU "
                         "host, 'so101_driver,camera,policy,teleop,joy_node' on the robot)")
    ap.add_argument("--peer", default="",
                    help="the other host of a two-host graph (IP or name): loads a DDS "
                         "profile for it (unicast discovery, 1400-byte UDP datagrams)")
    ap.add_argument("--learner-device", default="",
                    help="learner device: auto (CUDA when available), cpu, cuda, cuda:N "
                         "(default: config/learner.yaml's, auto)")


def options_from_args(a: argparse.Namespace) -> GraphOptions:
    return GraphOptions(mode=a.mode, checkpoint=a.checkpoint, namespace=a.namespace,
                        use_sim_time=a.use_sim_time, log_level=a.log_level, record=a.record,
                        bag_path=a.bag, demo_mode=a.demo_mode, learner=not a.no_learner,
                        operator=a.operator, output_dir=a.output_dir,
                        extra_params_file=a.params_file, learner_device=a.learner_device,
                        nodes=parse_nodes(a.nodes), peer=a.peer)


def launcher_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drqv2-ros launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_graph_arguments(ap)
    ap.add_argument("--log-dir", default="", help="write each node's output to DIR/<node>.log")
    a = ap.parse_args(argv)
    try:
        opt = prepare(options_from_args(a), package_available=package_available)
        graph = GraphProcesses(opt, log_dir=Path(a.log_dir) if a.log_dir else None)
    except ValueError as exc:
        print(f"drqv2-ros launch: {exc}", file=sys.stderr)
        return 2
    stop = {"flag": False}

    def _stop(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if a.peer:
        print(f"two-host DDS profile for peer {a.peer}: "
              f"{graph.env['FASTRTPS_DEFAULT_PROFILES_FILE']}")
    graph.start()
    for s in graph.skipped:
        print(f"drqv2-ros launch: not started ({s}); install it or pick another --operator",
              file=sys.stderr)
    print("started: " + ", ".join(f"{r.spec.name} (pid {r.proc.pid})" for r in graph.running))
    code = 0
    try:
        while not stop["flag"]:
            bad = graph.failed()
            if bad:
                print("stopping: " + ", ".join(f"{r.spec.name} exited {r.proc.returncode}"
                                               for r in bad), file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    finally:  # no node process outlives the launcher
        codes = graph.stop()
    print("stopped: " + ", ".join(f"{k}={v}" for k, v in codes.items()))
    return code
