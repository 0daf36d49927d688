"""What every suite shares: the sizes of one run, the device, the model and the physics reference.

A suite is a function `run(bench: Bench) -> dict` in its own module; it asks `Bench` for what it
needs, so the model is loaded once and MuJoCo is started once however many suites run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from wm_sim.envs.acceleration import Acceleration, accelerate

from wm_sim import compiled_kernels
from wm_sim.checkpoint import load_checkpoint
from wm_sim.errors import WmSimError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Sizes:
    """How much each suite measures. FULL is the issue's; SMOKE proves the computation in seconds."""

    seconds: float = 2.0  # per timed measurement
    num_envs: tuple[int, ...] = (1, 8, 64, 256, 1024)  # throughput: vector env sizes
    batches: tuple[int, ...] = (1, 16, 64, 256, 1024)  # roofline: engine batch sizes (more on a GPU)
    latency_steps: int = 500  # per repeat
    realtime_seconds: float = 10.0  # ros: frames counted per realtime scenario
    realtime_warm_up: float = 2.0  # ros: seconds from the first frame not counted
    memory_steps: int = 20_000
    memory_every: int = 100  # steps between resident-memory samples
    memory_reset_every: int = 200  # steps between resets (sooner when an episode ends)
    stability_steps: int = 12_000  # 4 minutes of reacher at 50 fps
    stability_window: int = 500  # steps judged together (10 s)
    reference_episodes: int = 10  # MuJoCo episodes per policy for the real ranges
    reference_steps: int = 200  # steps per reference episode
    train_episodes: int = 24
    train_steps: int = 120
    train_batch: int = 8
    train_val_every: int = 20
    train_model: str = "small"  # configs/model/<name>.yaml
    train_target_loss: float = 0.1  # the validation loss whose time is reported (reached near step 80)
    all_cores: bool = True  # also measure one MuJoCo process per core

    def override(self, **values: Any) -> Sizes:
        """These sizes with the non-None `values` replaced (lists become tuples)."""
        known = {f.name for f in fields(self)}
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
        unknown = set(changes) - known
        if unknown:
            raise WmSimError(f"unknown sizes {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)


FULL = Sizes()
SMOKE = Sizes(
    seconds=0.05,
    num_envs=(1, 4),
    batches=(1, 4),
    latency_steps=20,
    realtime_seconds=2.0,
    realtime_warm_up=1.0,
    memory_steps=60,
    memory_every=10,
    memory_reset_every=25,
    stability_steps=40,
    stability_window=10,
    reference_episodes=1,
    reference_steps=20,
    train_episodes=4,
    train_steps=4,
    train_batch=2,
    train_val_every=2,
    train_model="tiny",
    train_target_loss=1e9,
    all_cores=False,
)


def pick_device(name: str) -> torch.device:
    """auto: CUDA when torch sees a GPU, else CPU; cuda without one is an error."""
    if name not in DEVICES:
        raise WmSimError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise WmSimError("device=cuda, but torch sees no CUDA device")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda") if use_cuda else torch.device("cpu")


class Bench:
    """One benchmark run: its sizes, device, repeats, checkpoint, and the parts suites share."""

    def __init__(
        self,
        checkpoint: str,
        device: torch.device,
        sizes: Sizes,
        repeats: int,
        acceleration: Acceleration,
        smoke: bool = False,
        policies: tuple[str, ...] = ("random", "expert"),
        artifact_prefix: Path | None = None,
    ):
        if repeats < 1:
            raise WmSimError(f"repeats must be at least 1, got {repeats}")
        self.checkpoint, self.device, self.sizes = checkpoint, device, sizes
        self.repeats, self.acceleration, self.smoke = repeats, acceleration, smoke
        self.policies, self.artifact_prefix = tuple(policies), artifact_prefix
        self._physics = None

    def artifact(self, suffix: str) -> Path | None:
        """Where a suite's extra file goes (`<results>/<machine>-<date>-<suffix>`); None: nowhere."""
        if self.artifact_prefix is None:
            return None
        return self.artifact_prefix.with_name(f"{self.artifact_prefix.name}-{suffix}")

    @cached_property
    def loaded(self) -> tuple[Any, dict]:
        model, meta = load_checkpoint(self.checkpoint, map_location=self.device)
        return model.eval(), meta

    @property
    def model(self):
        return self.loaded[0]

    @property
    def task(self) -> str:
        return self.loaded[1].get("dataset", {}).get("task", "reacher")

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    def physics(self):
        """The MuJoCo reference of the model's task, started on first use and kept."""
        if self._physics is None:
            from wm_sim.benchmarks.physics import PhysicsReference

            self._physics = PhysicsReference(self.task, self.image_size)
        return self._physics

    def make_env(self):
        """`gym.make` of the model's imagined env, with this run's accelerations installed."""
        import gymnasium as gym

        env = gym.make("wm_sim/WorldModel-v0", checkpoint=self.checkpoint, device=str(self.device))
        accelerate(env.unwrapped.sim.engine, self.acceleration)
        return env

    def make_vec(self, num_envs: int):
        """`gym.make_vec` of the model's imagined env (one batched pass per step), accelerated."""
        import gymnasium as gym

        envs = gym.make_vec(
            "wm_sim/WorldModel-v0", num_envs=num_envs, checkpoint=self.checkpoint, device=str(self.device)
        )
        accelerate(envs.unwrapped.sim.engine, self.acceleration)
        return envs

    def make_engine(self, batch: int, episode_steps: int = 10**9):
        """A bare batch of imagined streams (no env around it), accelerated; never truncates."""
        from wm_sim.envs.imagination import ImaginationEngine

        return accelerate(ImaginationEngine(self.model, batch, episode_steps, self.device), self.acceleration)

    def eager(self) -> Bench:
        """The same run without accelerations (for the stage split of a fused step)."""
        return Bench(self.checkpoint, self.device, self.sizes, self.repeats, Acceleration(), self.smoke)

    def close(self) -> None:
        if self._physics is not None:
            self._physics.close()
            self._physics = None

    def runs_compiled_kernels(self) -> bool:
        """Whether this run's step runs a compiled kernel (wm_sim.compiled_kernels): a bf16 CPU step
        where one is built (the decoder's last pass only for a decoder with anchor detail)."""
        if self.acceleration.precision != "bfloat16" or self.device.type != "cpu":
            return False
        blend = self.model.decoder.anchor_detail and compiled_kernels.available("anchored_blend")
        return blend or compiled_kernels.available("attention")
