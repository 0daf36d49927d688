"""`ros2 launch` file for teams with a full ROS 2 install (the `launch` package is not on PyPI).

    ros2 launch $(python -c "import wm_sim.ros, os; print(os.path.dirname(wm_sim.ros.__file__))")/launch/serve.launch.py \
        env:=wm_sim/Reacher-MuJoCo-v0 mode:=realtime rate:=50

It runs `wm-sim ros serve` with the packaged params/serve.yaml (or `params:=your.yaml`); the
launch arguments you give override the file, the ones you leave out do not.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

PARAMS = Path(__file__).resolve().parent.parent / "params/serve.yaml"
OPTIONS = ("env", "mode", "rate", "namespace", "node_name", "seed")  # "" = as the params file says


def _serve(context, *args, **kwargs):
    command = ["wm-sim", "ros", "serve", f"params={LaunchConfiguration('params').perform(context)}"]
    for name in OPTIONS:
        value = LaunchConfiguration(name).perform(context)
        if value:
            command.append(f"{name}={value}")
    return [ExecuteProcess(cmd=command, output="screen", sigterm_timeout="10")]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument("params", default_value=str(PARAMS))]
        + [DeclareLaunchArgument(name, default_value="") for name in OPTIONS]
        + [OpaqueFunction(function=_serve)]
    )
