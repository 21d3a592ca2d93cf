"""`drqv2-ros`: the project's command line (no ROS 2 CLI needed).

    drqv2-ros convert SNAPSHOT.pt OUT_DIR     RoboBase snapshot -> LeRobot-style checkpoint
    drqv2-ros record  [--out BAG] ...         record the demo topic set into a rosbag2 bag
    drqv2-ros ingest  BAG... --buffer DIR     seed a replay buffer from bags
    drqv2-ros export  BAG... OUT_DIR          bags -> LeRobot dataset (where lerobot is installed)
    drqv2-ros launch  [--sim|--real] ...      start the fine-tuning node graph without `ros2 launch`
    drqv2-ros sim-finetune [--minutes N]      the embedded default: the whole loop in simulation
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "convert": ("drqv2_ros.convert.cli", "convert_main", "convert a RoboBase snapshot"),
    "record": ("drqv2_ros.nodes.recorder_node", "record_main",
               "record topics into a rosbag2 bag"),
    "ingest": ("drqv2_ros.bags.cli", "ingest_main", "seed a replay buffer from bags"),
    "export": ("drqv2_ros.bags.cli", "export_main", "export bags to a LeRobot dataset"),
    "launch": ("drqv2_ros.bringup.launcher", "launcher_main", "start the node graph"),
    "sim-finetune": ("drqv2_ros.demo.sim_finetune", "sim_finetune_main",
                     "run the HIL fine-tuning loop in simulation"),
    "pretrain": ("drqv2_ros.demo.pretrain", "pretrain_main",
                 "a start policy from demonstration bags (BC + TD)"),
    "sim-train": ("drqv2_ros.demo.sim_train", "sim_train_main",
                  "the fine-tuning loop in one process, faster than real time, with "
                  "policy-only evaluation"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: drqv2-ros COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`drqv2-ros COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"drqv2-ros: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
