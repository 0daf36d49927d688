"""The physics reference: MuJoCo stepping the same task, with and without its offscreen camera.

Measured in this process, between the world model's measurements, so each repeat's ratio compares
two figures taken under the same load. `all_cores_frames_per_s` also measures one simulator per
core in parallel processes: the most physics this machine makes, the fair rival of a batched
model that uses every core.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import gymnasium
import numpy as np

# The Gymnasium env whose physics each task runs: stepping it is the task without its camera.
PHYSICS_ONLY_IDS = {"reacher": "Reacher-v5", "pusher": "Pusher-v5"}


class PhysicsReference:
    """One MuJoCo task, stepped under random actions, restarted at the task's episode length."""

    def __init__(self, task: str = "reacher", image_size: int = 64, seed: int = 0):
        from wm_sim.envs.catalog import make_task

        self.task = make_task(task, image_size=image_size)
        self.episode_steps = self.task.episode_steps
        self._rng = np.random.default_rng(seed)
        self._episode = 0
        self._restart()
        for _ in range(10):  # warm-up: the first render creates the GL context
            self.task.step(self._action())
        env_id = task.removeprefix("gym:") if task.startswith("gym:") else PHYSICS_ONLY_IDS.get(task)
        self._physics_only = gymnasium.make(env_id).unwrapped if env_id else None
        if self._physics_only is not None:
            self._physics_only.reset(seed=seed)

    def _action(self) -> np.ndarray:
        return self._rng.uniform(-1, 1, self.task.action_dim)

    def _restart(self) -> None:
        self.task.reset(seed=self._episode)
        self._episode += 1

    def render_frames_per_s(self, seconds: float) -> float:
        """Frames/s of step + offscreen render, what a dataset or an RL pixel policy needs."""
        return self._rate(seconds, lambda: self.task.step(self._action()))

    def step_frames_per_s(self, seconds: float) -> float | None:
        """Steps/s of the physics alone (no camera); None for a task that cannot step without it."""
        physics = self._physics_only
        if physics is None:
            return None
        space = physics.action_space

        def restart() -> None:
            physics.reset(seed=self._episode)
            self._episode += 1

        def step() -> None:  # the same normalised action, mapped onto the actuators' range
            a = self._action()
            physics.step((space.low + (a + 1) * 0.5 * (space.high - space.low)).astype(np.float32))

        return self._rate(seconds, step, restart)

    def _rate(self, seconds: float, step, restart=None) -> float:
        restart = restart or self._restart
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            if n and n % self.episode_steps == 0:
                restart()
            step()
            n += 1
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.task.close()
        if self._physics_only is not None:
            self._physics_only.close()


def _worker(task: str, image_size: int, seconds: float, seed: int, queue) -> None:
    reference = PhysicsReference(task, image_size, seed)
    queue.put(reference.render_frames_per_s(seconds))
    reference.close()


def all_cores_frames_per_s(task: str, image_size: int, processes: int, seconds: float) -> float:
    """Frames/s of step + render summed over `processes` simulators running in parallel."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(task, image_size, seconds, i, queue)) for i in range(processes)
    ]
    for w in workers:
        w.start()
    rates = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return float(sum(rates))
