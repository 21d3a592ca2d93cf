"""Safe conversion of RoboBase DrQ-v2 snapshots into LeRobot-style policy folders
(``robobase``), and the reverse, a RoboBase-layout snapshot writer (``robobase_writer``)."""

from drqv2_ros.convert.robobase import (
    CheckpointError,
    ConversionReport,
    UnsafePickleError,
    convert_snapshot,
    load_checkpoint_any,
    policy_from_snapshot,
)
from drqv2_ros.convert.robobase_writer import make_robobase_snapshot
from drqv2_ros.convert.safe_pickle import safe_torch_load, to_plain

__all__ = [
    "CheckpointError",
    "ConversionReport",
    "UnsafePickleError",
    "convert_snapshot",
    "load_checkpoint_any",
    "make_robobase_snapshot",
    "policy_from_snapshot",
    "safe_torch_load",
    "to_plain",
]
