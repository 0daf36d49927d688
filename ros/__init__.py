"""The ROS 2 bridge (issue 6): serve any simulator over topics, drive ROS robots, import rosbags.

Nothing here yet. rclpy is optional: `wm_sim.optional.require("rclpy")` names the pip extra.
"""
