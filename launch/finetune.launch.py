"""HIL fine-tuning of a DrQ-v2 policy on the SO-101: the node graph of drqv2_ros.

    ros2 launch drqv2_ros finetune.launch.py checkpoint:=/path/to/ckpt      # sim, scripted
    ros2 launch drqv2_ros finetune.launch.py mode:=real checkpoint:=... operator:=joy

The node list lives in drqv2_ros.bringup.graph (also used by `drqv2-ros launch`).
"""

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from drqv2_ros.bringup.dds import graph_environment
from drqv2_ros.bringup.graph import (
    GraphOptions,
    build_graph,
    parse_nodes,
    prepare,
    rendering_environment,
)
from drqv2_ros.package_files import share_dir

ARGUMENTS = (
    ("mode", "sim", "sim (MuJoCo SO-101) or real (Feetech arm + camera)"),
    ("checkpoint", "", "converted checkpoint folder or RoboBase .pt snapshot"),
    ("params_file", "", "extra parameters YAML applied after config/*.yaml"),
    ("namespace", "", "namespace for every node"),
    ("use_sim_time", "false", "use /clock"),
    ("log_level", "info", "log level of every node"),
    ("record", "false", "record the demo topic set into a rosbag2 bag"),
    ("bag", "", "bag output path when recording"),
    ("demo_mode", "false", "policy off, the operator drives (demonstrations)"),
    ("learner", "true", "start the learner"),
    ("operator", "auto", "auto | joy | gamepad | scripted (sim only) | none; auto: scripted "
                         "in sim, on the real arm joy if installed else gamepad"),
    ("output_dir", "", "learner output directory"),
    ("learner_device", "", "learner device: auto (CUDA when available), cpu, cuda, cuda:N "
                           "('' = config/learner.yaml)"),
    ("nodes", "", "start only these nodes, comma-separated ('' = all), e.g. learner"),
    ("peer", "", "the other host of a two-host graph (IP or name): DDS profile for it"),
)


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _package_available(name: str) -> bool:
    try:
        get_package_share_directory(name)
    except PackageNotFoundError:
        return False
    return True


def _nodes(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    opt = GraphOptions(
        mode=get("mode"), checkpoint=get("checkpoint"), namespace=get("namespace"),
        use_sim_time=_truthy(get("use_sim_time")), log_level=get("log_level"),
        record=_truthy(get("record")), bag_path=get("bag"),
        demo_mode=_truthy(get("demo_mode")), learner=_truthy(get("learner")),
        operator=get("operator"), output_dir=get("output_dir"),
        extra_params_file=get("params_file"), learner_device=get("learner_device"),
        nodes=parse_nodes(get("nodes")), peer=get("peer"))
    # Refused here, before any node starts, with what to do (missing checkpoint, an
    # operator whose package is not installed, ...).
    opt = prepare(opt, package_available=_package_available)
    config_dir = str(share_dir() / "config")  # drqv2_ros.package_files' one order
    # Both Fast DDS profile variables (2.x and 3.x read different ones): the shipped
    # one-machine profile unless the user set their own; with a peer, a two-host profile.
    env = graph_environment(os.environ, peer=opt.peer,
                            default_profile=os.path.join(config_dir, "fastdds_profile.xml"))
    env.update(rendering_environment(os.environ))  # headless: MuJoCo renders with EGL
    actions = []
    for spec in build_graph(opt):
        params = [os.path.join(config_dir, f) for f in spec.params_files]
        if opt.extra_params_file:
            params.append(opt.extra_params_file)
        params.append(dict(spec.parameters))
        actions.append(Node(
            package=spec.package, executable=spec.executable, name=spec.name,
            namespace=opt.namespace, parameters=params, output="screen", emulate_tty=True,
            ros_arguments=["--log-level", opt.log_level], additional_env=env))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, d, h in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
