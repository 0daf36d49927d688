"""The ROS 2 bridge: serve any simulator over topics, drive any ROS robot as a Gymnasium env, import rosbags.

- `wm-sim ros serve` (`serve.py`, node in `sim_node.py`): a registered Gymnasium env on ROS 2 topics.
- `RosEnv` (`ros_env.py`, Gymnasium id `wm_sim/Ros-v0`): a robot or `wm-sim ros serve` as an env.
- `wm-sim ros import-bag` (`bag_import.py`): a rosbag2 recording into a zarr dataset.

The topic contract both ends share is `topics.py`. ROS is optional: importing this package needs
none of it, and the first use without it is one error naming the `wm-sim[ros]` extra.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "RosEnv":  # imported on first use: `import wm_sim.ros` stays free of rclpy
        from wm_sim.ros.ros_env import RosEnv

        return RosEnv
    raise AttributeError(f"module 'wm_sim.ros' has no attribute {name!r}")
