"""DrQ-v2 networks, config and LeRobot-style policy (no ROS, no lerobot needed)."""

from drqv2_ros.policy.configuration_drqv2 import ConfigError, DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import (
    CheckpointError,
    DrQV2Model,
    DrQV2Policy,
    RandomShiftsAug,
    TruncatedNormal,
    weight_init,
)
from drqv2_ros.policy.schedule import ScheduleError, StdSchedule, schedule

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DrQV2Config",
    "DrQV2Model",
    "DrQV2Policy",
    "RandomShiftsAug",
    "TruncatedNormal",
    "ScheduleError",
    "StdSchedule",
    "schedule",
    "weight_init",
]
