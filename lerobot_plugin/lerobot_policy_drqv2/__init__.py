"""DrQ-v2 (RoboBase's architecture and update) as a LeRobot 0.4.x policy plugin.

LeRobot's ``register_third_party_plugins()`` imports this distribution (its name starts with
``lerobot_policy_``); importing it registers the ``drqv2`` policy type, whose factory pieces
are ``DrQV2Config`` (``configuration_drqv2``), ``DrQV2Policy`` (``modeling_drqv2``) and
``make_drqv2_pre_post_processors`` (``processor_drqv2``). The networks and the update math
are drqv2_ros's own (``drqv2_ros.policy.modeling_drqv2``, ``drqv2_ros.learning.learner``):
this package only adapts them to LeRobot's interfaces.
"""

from lerobot_policy_drqv2.configuration_drqv2 import DrQV2Config
from lerobot_policy_drqv2.processor_drqv2 import DrQV2ImageProcessorStep  # registers the step

__all__ = ["DrQV2Config", "DrQV2ImageProcessorStep"]
