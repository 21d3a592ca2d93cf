"""The fine-tuning node graph, in one place.

``launch/finetune.launch.py`` turns these specs into ``launch_ros`` Node actions for a real
ROS 2 install; ``drqv2-ros launch`` (``bringup/launcher.py``) starts the same processes on
machines without the ``ros2`` CLI. Both read the same parameter files from ``config/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class GraphOptions:
    """What the launch arguments select."""

    mode: str = "sim"                 # "sim" (MuJoCo SO-101) or "real" (Feetech arm + camera)
    checkpoint: str = ""              # converted folder or RoboBase .pt for the policy node
    namespace: str = ""
    use_sim_time: bool = False
    log_level: str = "info"
    record: bool = False              # record the demo topic set into a rosbag2 bag
    bag_path: str = ""                # where to record ("" = recorder's default)
    demo_mode: bool = False           # policy off: the operator drives (demonstrations)
    learner: bool = True              # start the learner
    operator: str = "auto"            # "joy" (standard joy node), "gamepad" (pygame/evdev),
    #                                   "scripted" (sim only), "none", "auto" (see
    #                                   resolve_operator)
    output_dir: str = ""              # learner output (checkpoints, buffer, TensorBoard)
    extra_params_file: str = ""       # a user YAML applied after the defaults
    learner_device: str = ""          # learner's torch device ("" = config/learner.yaml's,
    #                                   auto: CUDA when available; cpu; cuda; cuda:N)
    nodes: tuple[str, ...] = ()       # start only these (e.g. ("learner",) on a GPU host)
    peer: str = ""                    # the other host of a two-host graph (IP or name)


@dataclass(frozen=True)
class NodeSpec:
    name: str                          # ROS node name
    executable: str                    # entry point in drqv2_ros/executables.py
    params_files: tuple[str, ...]      # relative to the package's config/ directory
    parameters: dict = field(default_factory=dict)  # overrides from launch arguments
    package: str = "drqv2_ros"


def build_graph(opt: GraphOptions) -> list[NodeSpec]:
    """The node list for these options (the single source of truth); with ``opt.nodes``
    only those (each must be a node of the full graph)."""
    nodes = _full_graph(opt)
    if not opt.nodes:
        return nodes
    names = [n.name for n in nodes]
    unknown = [n for n in opt.nodes if n not in names]
    if unknown:
        raise ValueError(f"nodes {unknown} are not in this graph (it has {names})")
    return [n for n in nodes if n.name in opt.nodes]


OPERATORS = ("auto", "joy", "gamepad", "scripted", "none")


def module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve_operator(opt: GraphOptions, package_available: Callable[[str], bool]) -> str:
    """``auto``: the scripted operator in simulation; on the real arm the ROS ``joy`` driver
    when installed, else this package's ``gamepad_joy``."""
    if opt.operator != "auto":
        return opt.operator
    if opt.mode == "sim":
        return "scripted"
    return "joy" if package_available("joy") else "gamepad"


def prepare(opt: GraphOptions, *, package_available: Callable[[str], bool],
            path_exists: Callable[[str], bool] = os.path.exists) -> GraphOptions:
    """Check the launch arguments before any node starts, and resolve ``operator:=auto``;
    ValueError with what to do otherwise (both launchers call this)."""
    if opt.mode not in ("sim", "real"):
        raise ValueError(f"mode must be 'sim' or 'real', got {opt.mode!r}")
    if opt.operator not in OPERATORS:
        raise ValueError(f"operator must be one of {', '.join(OPERATORS)}, got {opt.operator!r}")
    opt = dataclasses.replace(opt, operator=resolve_operator(opt, package_available))
    nodes = {n.name for n in build_graph(opt)}
    if nodes & {"policy", "learner"}:
        if not opt.checkpoint:
            raise ValueError(
                "checkpoint:=<path> is required: a converted checkpoint folder or a RoboBase "
                ".pt snapshot (`drqv2-ros convert latest_snapshot.pt ckpt/` makes one; the "
                "embedded sim run `drqv2-ros sim-finetune` makes its own)")
        if not path_exists(os.path.expanduser(opt.checkpoint)):
            raise ValueError(f"checkpoint {opt.checkpoint} does not exist")
    if "joy_node" in nodes and not package_available("joy"):
        raise ValueError("operator:=joy needs the ROS 2 joy package "
                         "(sudo apt install ros-$ROS_DISTRO-joy); or use operator:=gamepad "
                         "(pygame or evdev), scripted (sim) or none")
    if "gamepad_joy" in nodes and not (module_available("pygame") or
                                       module_available("evdev")):
        raise ValueError("operator:=gamepad reads the pad with pygame or evdev: pip install "
                         "pygame (or evdev); or use operator:=joy, scripted (sim) or none")
    return opt


def rendering_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """MuJoCo's offscreen renderer without a display: EGL, unless the user chose one."""
    if environ.get("MUJOCO_GL") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return {}
    return {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}


def parse_nodes(text: str) -> tuple[str, ...]:
    """``"learner"`` / ``"so101_driver,policy"`` -> node names ('' = all)."""
    return tuple(n.strip() for n in str(text).replace(" ", ",").split(",") if n.strip())


def _full_graph(opt: GraphOptions) -> list[NodeSpec]:
    if opt.mode not in ("sim", "real"):
        raise ValueError(f"mode must be 'sim' or 'real', got {opt.mode!r}")
    common = {"use_sim_time": opt.use_sim_time}
    nodes = [
        NodeSpec("so101_driver", "so101_driver", ("so101_driver.yaml",),
                 {**common, "backend": "sim" if opt.mode == "sim" else "feetech"}),
    ]
    if opt.mode == "real":
        nodes.append(NodeSpec("camera", "camera", ("camera.yaml",), dict(common)))
    policy_params = {**common, "policy_enabled": not opt.demo_mode, "demo": opt.demo_mode}
    if opt.checkpoint:
        policy_params["checkpoint"] = opt.checkpoint
    nodes.append(NodeSpec("policy", "policy", ("policy.yaml",), policy_params))
    if opt.learner and not opt.demo_mode:
        lp = dict(common)
        if opt.output_dir:
            lp["output_dir"] = opt.output_dir
        if opt.checkpoint:
            lp["checkpoint"] = opt.checkpoint
        if opt.learner_device:
            if not _DEVICE.fullmatch(opt.learner_device.strip().lower()):
                raise ValueError(f"learner device must be auto, cpu, cuda or cuda:N, got "
                                 f"{opt.learner_device!r}")
            lp["device"] = opt.learner_device.strip().lower()
        nodes.append(NodeSpec("learner", "learner", ("learner.yaml",), lp))
    if opt.operator != "none":
        controller_params = dict(common)
        nodes.append(NodeSpec("teleop", "teleop", ("teleop.yaml",), controller_params))
        if opt.operator == "scripted":
            if opt.mode != "sim":
                raise ValueError("the scripted operator needs privileged sim state: sim only")
            nodes.append(NodeSpec("scripted_operator", "scripted_operator",
                                  ("scripted_operator.yaml",), dict(common)))
        elif opt.operator == "gamepad":
            nodes.append(NodeSpec("gamepad_joy", "gamepad_joy", (), dict(common)))
        elif opt.operator == "joy":
            # The standard ROS 2 joy driver (ros-<distro>-joy), not part of this package.
            nodes.append(NodeSpec("joy_node", "joy_node", (), dict(common), package="joy"))
        else:
            raise ValueError(f"unknown operator {opt.operator!r}")
    if opt.record:
        rp = dict(common)
        if opt.bag_path:
            rp["output"] = opt.bag_path
        nodes.append(NodeSpec("recorder", "recorder", ("recorder.yaml",), rp))
    return nodes
