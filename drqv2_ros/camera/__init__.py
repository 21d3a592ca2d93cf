"""Camera capture and stream health (ROS-free)."""
