"""A task's own reward read off observations the physics never made: imagined frames.

A world model's frame reward is a learned head, and on push it reads a frame's reward too high for
some policies (docs/policies.md#push). Where the task can compute its reward from what a camera
shows (push: the puck by its colour, the finger from agent_pos, the goal known at the start;
TaskSpec.observed_reward), a planner or a ranking can score imagined frames with the task's own
function instead. One reader serves both (`cem_stream:reward=task`, `wm-sim rank reward=task`).
"""

from __future__ import annotations

import numpy as np
from wm_sim.envs.catalog import TASK_SPECS, observed_reward

from wm_sim.errors import WmSimError


class ObservedReward:
    """Task `task`'s reward of observations from the camera it reads, among a model's `cameras`.

    Where a frame hides the task object (the arm passes over it), the last place it was seen
    stands in: callers carry that `last` (rows, 2) array from step to step (NaN: never seen), so a
    planner can branch it per candidate.
    """

    def __init__(self, task: str, cameras: list[str], goals: np.ndarray | None, rows: int):
        self._read = observed_reward(task)  # one clear error for a task without one
        wanted = TASK_SPECS[task].observed_camera
        if wanted not in cameras:
            raise WmSimError(
                f"the reward read off observations needs {task}'s {wanted!r} camera; this model's: {cameras}"
            )
        self._view = cameras.index(wanted)
        if goals is None or np.shape(goals) != (rows, 2):
            got = "none" if goals is None else str(np.shape(goals))
            raise WmSimError(
                f"the reward read off observations needs each row's goal, shape ({rows}, 2); got {got}"
            )
        self.goals = np.asarray(goals, dtype=np.float64)

    def unseen(self) -> np.ndarray:
        """A `last` for rows whose object no frame has shown yet."""
        return np.full((len(self.goals), 2), np.nan)

    def __call__(
        self, pixels: np.ndarray, agent_pos: np.ndarray, actions: np.ndarray, last: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rewards (rows,) of observations `pixels` (rows, [K,] S, S, 3) uint8 and `agent_pos`
        after `actions` (rows, A), and where each frame shows the object (rows, 2)."""
        pixels = np.asarray(pixels)
        frames = pixels[:, self._view] if pixels.ndim == 5 else pixels
        return self._read(frames, np.asarray(agent_pos), self.goals, np.asarray(actions), last)
