"""MuJoCo tasks with verifiable rewards, and the Gymnasium environments built on them.

This package's own import stays light (no MuJoCo): the catalog lists the tasks, and `make_task`
imports a task's module only when one is built.
"""

from wm_sim.envs.catalog import TASK_SPECS, TaskSpec, make_task, task_names

__all__ = ["TASK_SPECS", "TaskSpec", "make_task", "task_names"]
