# Source me (bash): the environment the project's nodes need in the venv built by
# tools/setup.sh. On a real ROS 2 install, source /opt/ros/<distro>/setup.bash and your
# colcon workspace's install/setup.bash instead.
_DRQV2_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="${DRQV2_VENV:-$_DRQV2_ROOT/.venv}"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-${HOME:-/tmp}/.ros/log}"
export HOME="${HOME:-/tmp}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Fast DDS 2.x (Humble, Jazzy) reads FASTRTPS_..., 3.x (Kilted) FASTDDS_...: set both, to
# the user's own profile if either names one.
_DRQV2_PROFILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-${FASTDDS_DEFAULT_PROFILES_FILE:-$_DRQV2_ROOT/config/fastdds_profile.xml}}"
export FASTRTPS_DEFAULT_PROFILES_FILE="$_DRQV2_PROFILE" FASTDDS_DEFAULT_PROFILES_FILE="$_DRQV2_PROFILE"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
