"""wm-sim: a learned simulator for robotics.

`import wm_sim` is deliberately light: it registers the Gymnasium ids by string entry point and
selects offscreen rendering, but imports neither MuJoCo, torch, rclpy, wandb nor flash-attn.
"""

import os

# MuJoCo picks its OpenGL backend when it is first imported; headless EGL (Mesa on a CPU-only
# machine) is the one that works everywhere this project runs. A user's own choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from wm_sim.errors import WmSimError
from wm_sim.registration import register_envs

__version__ = "0.1.0"
__all__ = ["WmSimError", "__version__", "register_envs"]

register_envs()
