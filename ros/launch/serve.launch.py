"""`ros2 launch` file for teams with a full ROS 2 install (the `launch` package is not on PyPI).

    ros2 launch $(python -c "import wm_sim.ros, os; print(os.path.dirname(wm_sim.ros.__file__))")/launch/serve.launch.py \
        env:=wm_sim/Reacher-MuJoCo-v0 mode:=realtime rate:=50

It runs `wm-sim ros serve` with the packaged params/serve.yaml; the launch arguments override it.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

PARAMS = Path(__file__).resolve().parent.parent / "params/serve.yaml"


def generate_launch_description() -> LaunchDescription:
    arguments = {
        "env": "wm_sim/Reacher-v0",
        "mode": "lockstep",
        "rate": "0.0",
        "namespace": "/wm_sim",
        "params": str(PARAMS),
    }
    command = ["wm-sim", "ros", "serve"]
    for name in arguments:
        command.append([f"{name}=", LaunchConfiguration(name)])
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=value) for name, value in arguments.items()]
        + [ExecuteProcess(cmd=command, output="screen", sigterm_timeout="10")]
    )
