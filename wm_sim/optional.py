"""Every optional dependency is checked here, and only here.

A missing package raises one error that names the exact pip extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from wm_sim.errors import WmSimError

# import name -> (pip extra, what it is for)
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "rclpy": ("ros", "the ROS 2 bridge"),
    "sensor_msgs": ("ros", "the ROS 2 bridge"),
    "std_msgs": ("ros", "the ROS 2 bridge"),
    "std_srvs": ("ros", "the ROS 2 bridge"),
    "geometry_msgs": ("ros", "the ROS 2 bridge"),
    "rosgraph_msgs": ("ros", "the ROS 2 bridge"),
    "diagnostic_msgs": ("ros", "the ROS 2 bridge"),
    "rcl_interfaces": ("ros", "the ROS 2 bridge"),
    "rosbags": ("ros", "importing rosbags"),
    "pyarrow": ("lerobot", "LeRobot datasets (parquet files)"),
    "av": ("lerobot", "LeRobot datasets (mp4 videos)"),
    "flash_attn": ("gpu", "flash attention on CUDA"),
    "pytest": ("test", "the test suite"),
}


class MissingDependencyError(WmSimError, ImportError):
    """An optional package is not installed."""


def is_available(name: str) -> bool:
    """True when the import name `name` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(name: str) -> ModuleType:
    """Import optional package `name`, or raise an error naming the pip extra that provides it."""
    if name not in OPTIONAL_PACKAGES:
        raise ValueError(f"{name!r} is not a known optional dependency; known: {sorted(OPTIONAL_PACKAGES)}")
    extra, purpose = OPTIONAL_PACKAGES[name]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(
            f'{purpose} needs the package {name!r}, which is not installed: pip install "wm-sim[{extra}]"'
        ) from exc
