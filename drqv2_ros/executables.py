"""The package's executables in one table.

Used by ``setup.py`` (console scripts for pip installs), by ``CMakeLists.txt`` (launchers in
``lib/drqv2_ros`` for ``ros2 run``/``ros2 launch``) and by the plain process launcher.
"""

EXECUTABLES = {
    "drqv2-ros": "drqv2_ros.cli:main",
    "so101_driver": "drqv2_ros.nodes.driver_node:main",
    "camera": "drqv2_ros.nodes.camera_node:main",
    "policy": "drqv2_ros.nodes.policy_node:main",
    "learner": "drqv2_ros.nodes.learner_node:main",
    "teleop": "drqv2_ros.nodes.teleop_node:main",
    "gamepad_joy": "drqv2_ros.nodes.gamepad_node:main",
    "scripted_operator": "drqv2_ros.nodes.scripted_operator_node:main",
    "recorder": "drqv2_ros.nodes.recorder_node:main",
}
