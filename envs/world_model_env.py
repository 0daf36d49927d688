"""Gymnasium environments whose physics is the world model: single, and natively batched.

`wm_sim/Reacher-v0` loads the shipped reacher model; `wm_sim/WorldModel-v0` takes
`checkpoint=PATH`. Both have the spaces of the physics twin of the model's task, so a policy moves
between imagination and MuJoCo unchanged. Reward and termination come from the model's heads,
truncation from the task's episode length (`episode_steps=N` sets another; `stream=True` never
truncates: a stream runs until reset); `info["uncertainty"]` says how far each prediction sits
off what the tokenizer can produce. `precision="bfloat16"` steps under bf16 autocast (1.55x the
frames/s at 1,024 envs on a CPU with AVX512-BF16, slower below 64; agent_pos identical, frames
within a few grey levels);
`"auto"` picks it where the CPU or GPU multiplies bf16 natively (wm_sim.envs.acceleration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from wm_sim.envs.acceleration import Acceleration, accelerate, resolve_precision
from wm_sim.envs.catalog import TASK_SPECS, make_task
from wm_sim.envs.imagination import ImaginationEngine, StepOutput, stack_contexts
from wm_sim.envs.start_frames import as_frames, camera_images, observed_cameras

from wm_sim.checkpoint import checkpoint_cameras, load_checkpoint, load_start_contexts
from wm_sim.errors import WmSimError

DEFAULT_CHECKPOINT = "shipped:reacher"


# --- shared by the single and the vector env ---------------------------------------------------


class _Simulator:
    """A loaded model, its spaces, its bundled start contexts and a batch of imagined episodes."""

    def __init__(
        self,
        checkpoint: str,
        batch: int,
        device: str,
        stream: bool = False,
        episode_steps: int | None = None,
        cameras: Sequence[str] | None = None,
        task: str | None = None,
        precision: str = "float32",
    ):
        if stream and episode_steps is not None:
            raise ValueError(
                f"stream=True never truncates, so it takes no episode_steps (got {episode_steps}); "
                "pass one or the other"
            )
        if episode_steps is not None and (
            isinstance(episode_steps, bool) or int(episode_steps) != episode_steps or episode_steps < 1
        ):
            raise ValueError(f"episode_steps must be a positive integer, got {episode_steps!r}")
        self.precision = resolve_precision(precision, device)  # refused before any loading
        model, meta = load_checkpoint(checkpoint, map_location=device)
        dataset = meta.get("dataset", {})
        self.task = dataset.get("task", "reacher")
        if task is not None and self.task != task:  # a task's own id (wm_sim/Reacher-v0) took another's model
            raise ValueError(
                f"{checkpoint} simulates the {self.task!r} task, not {task!r}: make this id with a "
                f"{task} checkpoint, or any checkpoint with gym.make('wm_sim/WorldModel-v0', checkpoint=...)"
            )
        self.fps = float(dataset.get("fps", 50.0))
        spec = TASK_SPECS.get(self.task)
        if not stream and episode_steps is None:  # the recorded episodes' length
            episode_steps = int(dataset.get("episode_steps") or (spec.episode_steps if spec else 1000))
        self.config = model.config
        self.engine = ImaginationEngine(model, batch, None if stream else int(episode_steps), device)
        accelerate(self.engine, Acceleration(precision=self.precision))
        self._checkpoint = checkpoint
        self._contexts: dict[str, torch.Tensor] | None = None  # read on the first bundled reset
        # the names of agent_pos's entries (joint names on ROS), as the dataset recorded them
        names = dataset.get("state_names") or [f"state_{i}" for i in range(model.config.state_dim)]
        self.state_names: list[str] = list(names)
        # the cameras the model sees, in its token order (every one is needed to start it), and
        # those observed: one image each in "pixels" when several
        self.model_cameras: tuple[str, ...] = tuple(checkpoint_cameras(meta, ["top"]))
        self.cameras = observed_cameras(cameras, self.model_cameras, checkpoint)
        self._observed = [self.model_cameras.index(c) for c in self.cameras]
        low, high = _state_bounds(self.task, model.config.state_dim)
        self.engine.bound_state(low, high)
        size = model.config.image_size
        image = spaces.Box(0, 255, (size, size, 3), np.uint8)
        pixels = image if len(self.cameras) == 1 else spaces.Dict({c: image for c in self.cameras})
        self.observation_space = spaces.Dict(
            {"pixels": pixels, "agent_pos": spaces.Box(low, high, dtype=np.float32)}
        )
        self.action_space = spaces.Box(-1.0, 1.0, (model.config.action_dim,), np.float32)

    @property
    def contexts(self) -> dict[str, torch.Tensor]:
        if self._contexts is None:
            self._contexts = load_start_contexts(self._checkpoint)
        return self._contexts

    def bundled(self, picks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return stack_contexts(self.contexts, picks)

    @property
    def num_contexts(self) -> int:
        return int(self.contexts["frames"].shape[0])

    def context_from_options(
        self, options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A user's start context: frames (required), agent_pos and actions (optional)."""
        unknown = set(options) - {"frames", "agent_pos", "actions", "reset_mask"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected frames, agent_pos, actions")
        if "frames" not in options:
            raise ValueError(
                "reset options agent_pos and actions need frames: the camera images to start from"
            )
        frames = self.frames(options["frames"])  # (K, *frame_shape)
        k = frames.shape[0]
        d, a = self.config.state_dim, self.config.action_dim
        if options.get("agent_pos") is None:  # unknown: the training data's mean state
            state = self.engine.model.state_mean.cpu().expand(k, d).clone()
        else:
            state = torch.as_tensor(np.asarray(options["agent_pos"], dtype=np.float32))
            state = state.expand(k, d).clone() if state.shape == (d,) else state
            if state.shape != (k, d):
                raise ValueError(
                    f"agent_pos must have shape ({d},) or ({k}, {d}) for {k} frames, got {tuple(state.shape)}"
                )
        if options.get("actions") is None:
            actions = torch.zeros(k - 1, a)
        else:
            given = np.asarray(options["actions"], dtype=np.float64)
            if given.shape != (k - 1, a):
                raise ValueError(
                    f"actions must have shape ({k - 1}, {a}): one per frame before the last, got {given.shape}"
                )
            if np.isnan(given).any():
                raise ValueError("reset actions must be numbers, got NaN")
            actions = torch.from_numpy(_clip_actions(given))
        if not torch.isfinite(state).all():
            raise ValueError("agent_pos must be finite")
        return frames[None], state[None], actions[None]

    def frames(self, frames: Any) -> torch.Tensor:
        """A user's start frames as the model takes them, (K, *frame_shape) uint8: for one camera
        an image (H, W, 3) or several (K, H, W, 3); for several cameras a dict of those per camera."""
        size, cameras = self.config.image_size, self.model_cameras
        if len(cameras) == 1:
            if isinstance(frames, dict):
                frames = camera_images(frames, cameras)[0]
            return as_frames(frames, size)
        if not isinstance(frames, dict):
            raise ValueError(
                f"this model sees cameras {list(cameras)}: reset frames must be a dict of images "
                f"per camera, {{camera: (H, W, 3) or (K, H, W, 3)}}, got {type(frames).__name__}"
            )
        per_camera = [as_frames(images, size) for images in camera_images(frames, cameras)]
        if len({len(f) for f in per_camera}) != 1:
            raise ValueError(
                "reset frames must hold as many frames for every camera, got "
                + ", ".join(f"{c}: {len(f)}" for c, f in zip(cameras, per_camera, strict=True))
            )
        return torch.stack(per_camera, dim=1)

    def observe(self, pixels: np.ndarray | torch.Tensor) -> Any:
        """The observation's pixels from the engine's (..., *frame_shape): a one-camera model's as
        they are; else the observed cameras', one as (..., S, S, 3), several as a dict of those
        (LeRobot's gym-env layout)."""
        if len(self.model_cameras) == 1:
            return pixels
        if len(self.cameras) == 1:
            return pixels[..., self._observed[0], :, :, :]
        return {
            camera: pixels[..., i, :, :, :] for camera, i in zip(self.cameras, self._observed, strict=True)
        }

    def observation(self, rows: int | slice = slice(None), as_torch: bool = False) -> dict[str, Any]:
        """The observation of the engine's rows `rows` (one row, or a batch), copied: the engine's
        buffers change in place on later steps and resets."""
        pixels, agent_pos = self.engine.pixels[rows], self.engine.agent_pos[rows]
        if as_torch:
            return {"pixels": self.observe(pixels.clone()), "agent_pos": agent_pos.clone()}
        return {
            "pixels": self.observe(pixels.cpu().numpy().copy()),
            "agent_pos": agent_pos.cpu().numpy().astype(np.float32, copy=True),
        }

    def snapshot(self, generator: np.random.Generator, **flags: Any) -> dict[str, Any]:
        """An env's get_state: the engine's state, the env's random generator and its own flags."""
        return {"engine": self.engine.get_state(), "np_random": generator.bit_generator.state, **flags}

    def check_snapshot(self, state: Any, generator: np.random.Generator, flags: dict[str, type]) -> None:
        """One ValueError unless `state` is a `snapshot` of this simulator with flags of these types."""
        _check_env_state(state, {"engine": dict, "np_random": dict, **flags})
        self.engine.check_state(state["engine"])
        _check_generator_state(generator, state["np_random"])

    def restore(self, state: dict[str, Any], generator: np.random.Generator) -> None:
        """Put back a checked `snapshot`'s engine and generator (the env restores its flags)."""
        self.engine.set_state(state["engine"])
        generator.bit_generator.state = state["np_random"]

    def shown(self, pixels: torch.Tensor) -> torch.Tensor:
        """What render() shows of the engine's pixels (..., *frame_shape): the first observed camera."""
        return pixels if len(self.model_cameras) == 1 else pixels[..., self._observed[0], :, :, :]

    def check_actions(self, actions: Any, batch: int) -> tuple[torch.Tensor, np.ndarray]:
        """(B, A) float32 actions clipped to the space, and which rows were clipped."""
        a = self.config.action_dim
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        array = np.asarray(actions)
        if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"actions must be numbers (float32), got dtype {array.dtype}")
        expected = (a,) if batch == 0 else (batch, a)
        if array.shape != expected:
            raise ValueError(f"action must have shape {expected}, got {array.shape}")
        # float64 first: 1e300 is an out-of-range action to clip, not an inf a float32 cast made
        array = array.astype(np.float64).reshape(-1, a)
        if np.isnan(array).any():
            raise ValueError(f"actions must be numbers, got NaN in {array.tolist()}")
        outside = ((array < -1.0) | (array > 1.0)).any(axis=1)
        return torch.from_numpy(_clip_actions(array)), outside


def _clip_actions(actions: np.ndarray) -> np.ndarray:
    """float64 actions (+-inf included) clipped to the action space [-1, 1], as float32."""
    return np.clip(actions, -1.0, 1.0).astype(np.float32)


def _state_bounds(task: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The physics twin's agent_pos bounds, so both envs share one observation space."""
    try:
        physics = make_task(task)
    except WmSimError:  # a task this install cannot build: unbounded bounds are still valid
        return np.full(dim, -np.inf, np.float32), np.full(dim, np.inf, np.float32)
    low, high = physics.state_bounds
    physics.close()
    return low.astype(np.float32), high.astype(np.float32)


# --- the single env ----------------------------------------------------------------------------


class WorldModelEnv(gymnasium.Env):
    """One imagined episode at a time, stepped by the world model.

    Observation: Dict(pixels=Box(0, 255, (S, S, 3), uint8), agent_pos=Box(float32)), as the
    physics twin; a model of several cameras observes `pixels=Dict({camera: Box(...)})`, of every
    camera or of those in `cameras=[...]`. Action: Box(-1, 1, (A,), float32); out-of-range actions
    are clipped and flagged in `info["action_clipped"]`.
    `reset(options={"frames": ..., "agent_pos": ..., "actions": ...})` starts from your own camera
    images (a dict of them per camera for a model of several); without options it draws a bundled
    real start context.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        checkpoint: str = DEFAULT_CHECKPOINT,
        render_mode: str | None = None,
        device: str = "cpu",
        stream: bool = False,
        episode_steps: int | None = None,
        cameras: Sequence[str] | None = None,
        task: str | None = None,
        precision: str = "float32",
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.sim = _Simulator(checkpoint, 1, device, stream, episode_steps, cameras, task, precision)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.sim.fps}
        self.observation_space = self.sim.observation_space
        self.action_space = self.sim.action_space
        self.state_names = self.sim.state_names  # agent_pos's entries
        self.cameras = self.sim.cameras  # the images in "pixels" (a dict of them when several)
        self._needs_reset = True
        self._closed = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _refuse_if_closed(self._closed, "reset")
        super().reset(seed=seed)
        if options and set(options) - {"reset_mask"}:
            context = self.sim.context_from_options(options)
        else:
            pick = self.np_random.integers(self.sim.num_contexts, size=1)
            context = self.sim.bundled(pick)
        self.sim.engine.reset_rows(torch.zeros(1, dtype=torch.long), *context)
        self._needs_reset = False
        return self._observation(), {"uncertainty": 0.0}

    def step(self, action):
        _refuse_if_closed(self._closed, "step")
        if self._needs_reset:
            raise gymnasium.error.ResetNeeded(
                "call reset() before step(), and again after an episode terminates or truncates"
            )
        actions, clipped = self.sim.check_actions(action, batch=0)
        out: StepOutput = self.sim.engine.step(actions)
        terminated, truncated = bool(out.terminated[0]), bool(out.truncated[0])
        self._needs_reset = terminated or truncated
        info = {"uncertainty": float(out.uncertainty[0]), "action_clipped": bool(clipped[0])}
        return self._observation(), float(out.reward[0]), terminated, truncated, info

    def _observation(self) -> dict[str, np.ndarray]:
        return self.sim.observation(0)

    def render(self) -> np.ndarray | None:
        """The frame shown (the first camera's, with several)."""
        if self.render_mode != "rgb_array":
            return None
        return self.sim.shown(self.sim.engine.pixels[0]).cpu().numpy().copy()

    def get_state(self) -> dict[str, Any]:
        """The full simulator state (context cache, pending frame, step count, random generator)."""
        return self.sim.snapshot(self.np_random, needs_reset=self._needs_reset)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a get_state: the same actions from here give identical frames.

        Anything that is not a get_state of this env is one ValueError, and changes nothing.
        """
        _refuse_if_closed(self._closed, "set_state")
        self.sim.check_snapshot(state, self.np_random, {"needs_reset": bool})
        self.sim.restore(state, self.np_random)
        self._needs_reset = state["needs_reset"]

    def close(self) -> None:
        """After this, reset, step and set_state raise ClosedEnvironmentError (closing again is fine)."""
        self._closed = True
        super().close()


# --- the vector env ----------------------------------------------------------------------------


class WorldModelVectorEnv(VectorEnv):
    """`num_envs` imagined episodes advanced in one batched forward pass per step.

    Autoreset, as Gymnasium's `autoreset_mode` (an AutoresetMode or its value): next-step (the
    default) resets a sub-env on the step after its episode ended and returns its first
    observation, with reward 0 and neither flag set; same-step resets it on the step that ended
    it, returning the new first observation and the last one in `info["final_obs"]` (TorchRL's
    GymWrapper needs this or disabled); disabled never resets on its own, and stepping an ended
    sub-env before resetting it is an error. Partial resets:
    `reset(options={"reset_mask": bool array})`. `array_type="torch"` returns tensors on the
    model's device instead of numpy arrays.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": 50,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        checkpoint: str = DEFAULT_CHECKPOINT,
        render_mode: str | None = None,
        device: str = "cpu",
        array_type: str = "numpy",
        stream: bool = False,
        episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        cameras: Sequence[str] | None = None,
        task: str | None = None,
        precision: str = "float32",
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        # an attribute as on Gymnasium's own vector envs, where wrappers (TorchRL's) read it
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        if array_type not in ("numpy", "torch"):
            raise ValueError(f"array_type must be 'numpy' or 'torch', got {array_type!r}")
        self.sim = _Simulator(checkpoint, num_envs, device, stream, episode_steps, cameras, task, precision)
        self.cameras = self.sim.cameras  # the images in "pixels" (a dict of them when several)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.use_torch = array_type == "torch"
        self.metadata = {**self.metadata, "render_fps": self.sim.fps, "autoreset_mode": self.autoreset_mode}
        self.single_observation_space = self.sim.observation_space
        self.single_action_space = self.sim.action_space
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        _refuse_if_closed(self.closed, "reset")
        if seed is not None:
            self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(
                seed if isinstance(seed, int) else int(seed[0])
            )
        mask = np.ones(self.num_envs, dtype=bool)
        if options and options.get("reset_mask") is not None:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
            if not self._started and not mask.all():
                raise ValueError("the first reset must reset every sub-env")
        if options and set(options) - {"reset_mask"}:
            frames, state, actions = self.sim.context_from_options(options)
            k = int(mask.sum())
            context = (
                frames.expand(k, *frames.shape[1:]),
                state.expand(k, *state.shape[1:]),
                actions.expand(k, *actions.shape[1:]),
            )
        else:
            context = self.sim.bundled(self.np_random.integers(self.sim.num_contexts, size=int(mask.sum())))
        self.sim.engine.reset_rows(torch.from_numpy(np.flatnonzero(mask)), *context)
        self._autoreset[mask] = False
        self._started = True
        return self._observation(), {}

    def reset_to(
        self, frames: Any, agent_pos: Any, actions: Any | None = None, rows: Any | None = None
    ) -> dict[str, Any]:
        """Start sub-envs `rows` (all when None) each from its own real context; returns the observation.

        frames (k, K, S, S, 3) uint8 (several cameras: (k, K, cameras, S, S, 3), or a dict of
        (k, K, S, S, 3) per camera), agent_pos (k, K, D), actions (k, K-1, A) or None (zeros): what
        verification and planners need, where every sub-env starts from another robot's camera.
        """
        _refuse_if_closed(self.closed, "reset_to")
        index = np.arange(self.num_envs) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        c = self.sim.config
        if isinstance(frames, dict) and c.cameras > 1:
            frames = np.stack([np.asarray(f) for f in camera_images(frames, self.sim.model_cameras)], axis=2)
        frames = torch.as_tensor(np.asarray(frames))
        k = len(index)
        length = frames.shape[1] if frames.ndim == 2 + len(c.frame_shape) else 0
        if frames.dtype != torch.uint8 or tuple(frames.shape) != (k, length, *c.frame_shape) or length < 1:
            shape = ", ".join(map(str, c.frame_shape))
            raise ValueError(
                f"frames must be uint8 of shape ({k}, K, {shape}), got {frames.dtype} {tuple(frames.shape)}"
            )
        state = torch.as_tensor(np.asarray(agent_pos, dtype=np.float32))
        if tuple(state.shape) != (k, length, c.state_dim):
            raise ValueError(
                f"agent_pos must have shape ({k}, {length}, {c.state_dim}), got {tuple(state.shape)}"
            )
        if actions is None:
            acts = torch.zeros(k, length - 1, c.action_dim)
        else:
            acts = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        if tuple(acts.shape) != (k, length - 1, c.action_dim):
            raise ValueError(
                f"actions must have shape ({k}, {length - 1}, {c.action_dim}), got {tuple(acts.shape)}"
            )
        if not self._started and len(np.unique(index)) != self.num_envs:
            raise ValueError("the first reset must start every sub-env: pass rows=None")
        self.sim.engine.reset_rows(torch.from_numpy(index), frames, state, acts.clamp(-1, 1))
        self._autoreset[index] = False
        self._started = True
        return self._observation()

    def step(self, actions):
        _refuse_if_closed(self.closed, "step")
        if not self._started:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        acts, clipped = self.sim.check_actions(actions, batch=self.num_envs)
        if self.autoreset_mode == AutoresetMode.DISABLED and self._autoreset.any():
            raise gymnasium.error.ResetNeeded(
                f"sub-envs {np.flatnonzero(self._autoreset).tolist()} ended and autoreset_mode is disabled: "
                "reset them first, reset(options={'reset_mask': ...})"
            )
        out = self.sim.engine.step(acts)
        reward = out.reward.clone()
        terminated, truncated = out.terminated.clone(), out.truncated.clone()
        restart = self._autoreset.copy()
        if restart.any():  # next-step autoreset: these rows begin a new episode instead
            self._restart(restart)
            index = torch.from_numpy(np.flatnonzero(restart)).to(reward.device)
            reward[index], terminated[index], truncated[index] = 0.0, False, False
        ended = (terminated | truncated).cpu().numpy()
        info = {"uncertainty": out.uncertainty, "action_clipped": torch.from_numpy(clipped)}
        info = info if self.use_torch else {k: v.cpu().numpy() for k, v in info.items()}
        obs = self._observation()
        if self.autoreset_mode == AutoresetMode.SAME_STEP and ended.any():
            info |= self._final(obs, info, ended)
            self._restart(ended)
            obs = self._observation()
        self._autoreset = ended if self.autoreset_mode != AutoresetMode.SAME_STEP else np.zeros_like(ended)
        if self.use_torch:
            return obs, reward, terminated, truncated, info
        return obs, reward.cpu().numpy(), terminated.cpu().numpy(), truncated.cpu().numpy(), info

    def _restart(self, rows: np.ndarray) -> None:
        """Begin new episodes in the rows of bool mask `rows`, from bundled start contexts."""
        index = np.flatnonzero(rows)
        contexts = self.np_random.integers(self.sim.num_contexts, size=len(index))
        self.sim.engine.reset_rows(torch.from_numpy(index), *self.sim.bundled(contexts))

    def _final(self, obs: dict, info: dict, ended: np.ndarray) -> dict[str, Any]:
        """Same-step autoreset's info: each ended row's last observation and info, as Gymnasium's
        vector envs give them (`final_obs` an object array of per-row observations, `_`-masks)."""
        final_obs = np.full(self.num_envs, None, dtype=object)
        for row in np.flatnonzero(ended):
            final_obs[row] = _row(obs, row)
        mask = torch.from_numpy(ended) if self.use_torch else ended
        final_info = {**info, **{f"_{key}": mask for key in info}}
        return {
            "final_obs": final_obs,
            "_final_obs": ended.copy(),
            "final_info": final_info,
            "_final_info": ended.copy(),
        }

    def _observation(self):
        return self.sim.observation(as_torch=self.use_torch)

    def render(self):
        """Each sub-env's frame shown (the first camera's, with several)."""
        if self.render_mode != "rgb_array":
            return None
        return tuple(self.sim.shown(self.sim.engine.pixels).cpu().numpy())

    def get_state(self) -> dict[str, Any]:
        return self.sim.snapshot(self.np_random, autoreset=self._autoreset.copy(), started=self._started)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a get_state; anything else is one ValueError, and changes nothing."""
        _refuse_if_closed(self.closed, "set_state")
        self.sim.check_snapshot(state, self.np_random, {"autoreset": np.ndarray, "started": bool})
        if state["autoreset"].shape != (self.num_envs,) or state["autoreset"].dtype != bool:
            raise ValueError(
                f"state['autoreset'] must be a bool array of shape ({self.num_envs},), got "
                f"{state['autoreset'].dtype} {state['autoreset'].shape}"
            )
        self.sim.restore(state, self.np_random)
        self._autoreset = state["autoreset"].copy()
        self._started = state["started"]


def _row(obs: dict, row: int) -> dict:
    """One sub-env's observation out of a batched one (pixels may be a dict per camera)."""
    return {k: _row(v, row) if isinstance(v, dict) else v[row] for k, v in obs.items()}


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """An AutoresetMode from itself, its value ('SameStep') or its name in any case ('same_step')."""
    if isinstance(mode, AutoresetMode):
        return mode
    for member in AutoresetMode:
        if str(mode) in (member.value, member.name, member.name.lower()):
            return member
    names = [m.name.lower() for m in AutoresetMode]
    raise ValueError(f"autoreset_mode must be an AutoresetMode or one of {names}, got {mode!r}")


def _refuse_if_closed(closed: bool, call: str) -> None:
    if closed:
        raise gymnasium.error.ClosedEnvironmentError(f"{call}() on a closed world-model env; make a new one")


def _check_env_state(state: Any, types: dict[str, type]) -> None:
    """A ValueError unless `state` is a dict of exactly these keys, each of its type."""
    if not isinstance(state, dict) or set(state) != set(types):
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not an env state (from get_state): expected keys {sorted(types)}, got {got}")
    for key, kind in types.items():
        if not isinstance(state[key], kind):
            raise ValueError(f"state[{key!r}] must be a {kind.__name__}, got {type(state[key]).__name__}")


def _check_generator_state(generator: np.random.Generator, state: dict[str, Any]) -> None:
    """A ValueError unless `state` restores `generator`'s kind of bit generator (tried on a copy)."""
    probe = type(generator.bit_generator)()
    try:
        probe.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"state['np_random'] is not a {type(probe).__name__} state: {exc}") from exc
