"""The registry of tasks: names, rates and episode lengths, resolved to classes only on demand."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wm_sim.errors import WmSimError

if TYPE_CHECKING:
    from wm_sim.envs.task import MujocoTask

GYM_PREFIX = "gym:"


@dataclass(frozen=True)
class TaskSpec:
    """What is known about a task without building it."""

    name: str
    entry_point: str  # "module:Class", imported by make_task
    fps: float
    episode_steps: int
    has_expert: bool
    description: str
    # the task object's colour in rendered frames (0-255): `wm-sim evaluate` reads its pixels to
    # measure whether imagined frames keep it (None: not measured)
    object_rgb: tuple[int, int, int] | None = None
    # keyword options its class takes beyond image_size and cameras (make_task(..., **options))
    options: tuple[str, ...] = ()
    # "module:function": the task's reward as its observations show it (frames, agent_pos, the
    # start's goal), for a planner to score imagined frames by (None: the task has none), and the
    # camera whose frames it reads
    observed_reward: str | None = None
    observed_camera: str = "top"


TASK_SPECS: dict[str, TaskSpec] = {
    "reacher": TaskSpec(
        name="reacher",
        entry_point="wm_sim.envs.reacher:ReacherTask",
        fps=50.0,  # timestep 0.01 s x frame_skip 2, as Gymnasium's Reacher-v5
        # 4 s rather than Reacher-v5's 1 s: a world model's drift only shows past tens of frames, and an
        # episode must outlast the evaluation's 64-frame horizon.
        episode_steps=200,
        has_expert=True,
        description="two-link arm touches a target on a table (Gymnasium Reacher-v5)",
        object_rgb=(248, 34, 34),  # the red target, as the top camera renders it
    ),
    "pusher": TaskSpec(
        name="pusher",
        entry_point="wm_sim.envs.pusher:PusherTask",
        fps=20.0,  # timestep 0.01 s x frame_skip 5, as Gymnasium's Pusher-v5
        episode_steps=100,
        has_expert=True,
        description="seven-joint arm pushes a puck onto a goal (Gymnasium Pusher-v5)",
    ),
    "push": TaskSpec(
        name="push",
        entry_point="wm_sim.envs.push:PushTask",
        fps=50.0,  # timestep 0.005 s x 4
        episode_steps=200,
        has_expert=True,
        description="two-link planar arm pushes a free puck onto a goal disc on a table",
        object_rgb=(83, 255, 108),  # the green puck, as the top camera renders it (median pixel)
        options=("puck_mass", "goal_radius"),
        observed_reward="wm_sim.envs.push:observed_reward",
    ),
}


def task_names() -> list[str]:
    """Valid task names, for help texts and error messages."""
    return [*TASK_SPECS, f"{GYM_PREFIX}<EnvId> (any Gymnasium MuJoCo env id, e.g. gym:Hopper-v5)"]


def check_task_name(name: str) -> None:
    """Raise a WmSimError listing the valid tasks unless `name` is one of them."""
    if name in TASK_SPECS:
        return
    if name.startswith(GYM_PREFIX) and len(name) > len(GYM_PREFIX):
        return
    raise WmSimError(f"unknown task {name!r}; expected one of: {', '.join(task_names())}")


def task_has_expert(name: str) -> bool:
    """Whether task `name` has a scripted expert (Gymnasium ids passed through `gym:` have none)."""
    check_task_name(name)
    return name in TASK_SPECS and TASK_SPECS[name].has_expert


def observed_reward(name: str) -> Callable:
    """Task `name`'s reward read off observations (TaskSpec.observed_reward; it reads the frames of
    TaskSpec.observed_camera), or one clear error."""
    check_task_name(name)
    entry = TASK_SPECS[name].observed_reward if name in TASK_SPECS else None
    if entry is None:
        having = [n for n, spec in TASK_SPECS.items() if spec.observed_reward]
        raise WmSimError(
            f"task {name!r} has no reward read off observations; tasks with one: {', '.join(having)}"
        )
    module_name, function_name = entry.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def make_task(
    name: str, image_size: int = 64, cameras: Sequence[str] | None = None, **options: Any
) -> MujocoTask:
    """Build the physics task `name` rendering square frames of `image_size` pixels.

    `cameras`: the task's cameras its observations carry, in this order (None: its first alone).
    `options`: the task's own (TaskSpec.options), e.g. push's puck_mass and goal_radius.
    """
    check_task_name(name)
    if not isinstance(image_size, int) or not 16 <= image_size <= 512:
        raise WmSimError(f"image_size must be an integer in [16, 512], got {image_size!r}")
    known = TASK_SPECS[name].options if name in TASK_SPECS else ()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise WmSimError(
            f"task {name!r} has no option {unknown[0]!r}; its options: {', '.join(known) if known else 'none'}"
        )
    if name.startswith(GYM_PREFIX):
        from wm_sim.envs.gym_task import GymTask

        return GymTask(name[len(GYM_PREFIX) :], image_size=image_size, cameras=cameras)
    module_name, class_name = TASK_SPECS[name].entry_point.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(image_size=image_size, cameras=cameras, **options)
