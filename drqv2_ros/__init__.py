"""drqv2_ros: DrQ-v2 human-in-the-loop fine-tuning on the SO-101 arm, as ROS 2 nodes.

Layout: ``policy`` (DrQ-v2 networks and agent, LeRobot-style config/checkpoints),
``convert`` (safe RoboBase snapshot conversion), ``learning`` (replay buffer, learner),
``acting`` (the actor's control loop and hot-swappable policy runner), ``observation``
(preprocessing, frame stacks, low-dim layout, the Step codec),
``robot`` (kinematics, safety, sim/feetech backends, image preprocessing), ``teleop``
(joystick mapping, scripted operator), ``bags`` (rosbag2 record/ingest/export) are plain
Python with no ROS imports; ``nodes`` wires them to ROS 2 topics, parameters and services.
"""

from pkgutil import extend_path

# The generated interfaces (drqv2_ros.msg, drqv2_ros.srv) may live in another site dir
# (CMake install) than this source tree (editable install): find both.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
