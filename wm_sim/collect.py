"""`wm-sim collect`: record episodes of a scripted policy in a MuJoCo task into a zarr store.

Rendering dominates the cost, so `workers` processes each run their own MuJoCo and renderer
while this process alone writes, in episode order: the store is the same whatever the number of
workers, and a resumed run continues exactly where an uninterrupted one would have been.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.config import check_output_path
from wm_sim.data.schema import DatasetInfo
from wm_sim.data.store import EpisodeStore
from wm_sim.envs.catalog import check_task_name, make_task, task_has_expert
from wm_sim.episodes import dataset_info, record_episode
from wm_sim.errors import WmSimError
from wm_sim.policies.scripted import SCRIPTED_POLICIES, make_scripted_policy


@dataclass
class CollectConfig:
    """Options of `wm-sim collect`."""

    task: str = field(
        default="reacher", metadata={"help": "reacher, push, pusher, or gym:<EnvId> (any Gymnasium MuJoCo env)"}
    )
    policy: str = field(
        default="mixed",
        metadata={
            "help": "random, expert, mixed (expert with noise and random segments), or mixed_rest "
            "(mixed, half its random segments followed by 10-60 steps with no action)"
        },
    )
    episodes: int = field(default=200, metadata={"help": "episodes the store should hold when done"})
    image_size: int = field(default=64, metadata={"help": "square frame size in pixels"})
    cameras: list[str] = field(
        default_factory=list,
        metadata={
            "help": "the task's cameras to record, each into observation.images.<camera>, e.g. "
            "[top,side] (empty: the task's first camera)"
        },
    )
    seed: int = field(
        default=0, metadata={"help": "episode i is made from seed (seed, i): reproducible, resumable"}
    )
    workers: int = field(
        default=2, metadata={"help": "processes that simulate and render (1 = in this process)"}
    )
    out: str = field(
        default="datasets/reacher.zarr",
        metadata={"help": "the zarr store to create (or continue with resume=true)"},
    )
    resume: bool = field(
        default=False, metadata={"help": "continue an existing, compatible store up to `episodes`"}
    )


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode `index` of a collection seeded with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def collect(cfg: CollectConfig) -> EpisodeStore:
    """Fill the store `cfg.out` with `cfg.episodes` episodes; returns it open for reading."""
    _check_config(cfg)
    task = make_task(cfg.task, image_size=cfg.image_size, cameras=_cameras(cfg))
    try:
        task.reset(0)  # renders once: a task that cannot render fails here, before any store is touched
        info = dataset_info(task, cfg.task, {"policy": cfg.policy, "seed": cfg.seed})
    finally:
        task.close()
    store = _open_or_create(Path(cfg.out), info, cfg.resume)
    try:
        _fill(store, cfg)
    finally:
        store.close()  # release the writer's lock; reading goes on
    return store


def _fill(store: EpisodeStore, cfg: CollectConfig) -> None:
    todo = list(range(store.num_episodes, cfg.episodes))
    if not todo:
        print(
            f"{cfg.out} already holds {store.num_episodes} episodes (asked for {cfg.episodes}); nothing to do"
        )
        return
    jobs = [(index, episode_seed(cfg.seed, index)) for index in todo]
    with tqdm(total=cfg.episodes, initial=store.num_episodes, unit="ep", desc=f"collect {cfg.task}") as bar:
        start, frames = time.perf_counter(), 0
        for _, seed, episode in _run(cfg, jobs):
            store.append_episode(episode, seed)
            frames += len(episode["action"])
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(frames_per_s=f"{frames / elapsed:.0f}", ret=f"{episode['next.reward'].sum():.2f}")
            bar.update(1)
    print(f"{cfg.out}: {store.num_episodes} episodes, {store.num_frames} frames")


def _check_config(cfg: CollectConfig) -> None:
    check_task_name(cfg.task)
    if cfg.policy not in SCRIPTED_POLICIES:
        raise WmSimError(f"unknown policy {cfg.policy!r}; expected one of: {', '.join(SCRIPTED_POLICIES)}")
    if cfg.policy != "random" and not task_has_expert(cfg.task):
        raise WmSimError(
            f"policy={cfg.policy} needs a scripted expert, which task {cfg.task!r} has not; use policy=random"
        )
    if cfg.episodes <= 0:
        raise WmSimError(f"episodes must be a positive integer, got {cfg.episodes}")
    if cfg.workers < 1:
        raise WmSimError(f"workers must be at least 1, got {cfg.workers}")
    if cfg.seed < 0:  # episode seeds are numpy SeedSequence entropy, which is never negative
        raise WmSimError(f"seed must be a non-negative integer, got {cfg.seed}")
    if cfg.image_size < 1:
        raise WmSimError(f"image_size must be a positive number of pixels, got {cfg.image_size}")
    check_output_path(cfg.out)


def _cameras(cfg: CollectConfig) -> tuple[str, ...] | None:
    """The cameras to record, as make_task takes them (None: the task's first)."""
    return tuple(cfg.cameras) if cfg.cameras else None


def _open_or_create(path: Path, info: DatasetInfo, resume: bool) -> EpisodeStore:
    if not path.exists():
        return EpisodeStore.create(path, info)
    if not resume:
        raise WmSimError(f"{path} already exists; pass resume=true to continue it, or choose another out=")
    # read-only first: an incompatible store is refused before anything in it is changed
    held = EpisodeStore.open(path, mode="r").info
    if held.task == info.task and held.cameras != info.cameras:
        raise WmSimError(
            f"cannot resume {path}: it holds cameras {held.cameras}, this run records {info.cameras}; "
            f"pass cameras=[{','.join(held.cameras)}] to continue it"
        )
    reason = held.incompatibility(info)
    if reason is not None:
        raise WmSimError(f"cannot resume {path}: {reason}")
    return EpisodeStore.open(path, mode="a")


def _run(cfg: CollectConfig, jobs: list[tuple[int, int]]):
    """Yield (index, seed, episode) in index order, from this process or from worker processes."""
    if cfg.workers == 1 or len(jobs) == 1:
        task = make_task(cfg.task, image_size=cfg.image_size, cameras=_cameras(cfg))
        policy = make_scripted_policy(cfg.policy, [task], seed=cfg.seed)
        try:
            for index, seed in jobs:
                yield index, seed, record_episode(task, policy, seed, index)
        finally:
            task.close()
        return
    yield from _run_workers(cfg, jobs)


def _run_workers(cfg: CollectConfig, jobs: list[tuple[int, int]]):
    """Worker k runs jobs k, k+n, k+2n, ... and sends each episode over its own pipe.

    This process reads episode i from the one pipe that owes it: no shared queue, no reorder
    buffer, memory bounded by one episode per worker (a worker's send waits until it is read), a
    dead worker is an immediate error, and a dead parent is a BrokenPipeError in the worker.
    """
    ctx = mp.get_context("spawn")  # MuJoCo's GL contexts and zarr's threads do not survive fork
    count = min(cfg.workers, len(jobs))
    workers, receivers = [], []
    for k in range(count):
        receiver, sender = ctx.Pipe(duplex=False)
        worker = ctx.Process(
            target=_worker,
            args=(cfg.task, cfg.image_size, _cameras(cfg), cfg.policy, cfg.seed, jobs[k::count], sender),
            daemon=True,
        )
        worker.start()
        sender.close()  # this process only reads
        workers.append(worker)
        receivers.append(receiver)
    try:
        for i, (index, seed) in enumerate(jobs):
            k = i % count
            try:
                episode, error = receivers[k].recv()
            except EOFError:
                workers[k].join(timeout=5)
                raise WmSimError(
                    f"collect worker {k} exited (code {workers[k].exitcode}) before finishing episode {index}"
                ) from None
            if error is not None:
                raise WmSimError(f"collect worker {k} failed on episode {index}: {error}")
            yield index, seed, episode
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=5)


def _worker(
    task_name: str,
    image_size: int,
    cameras: tuple[str, ...] | None,
    policy_name: str,
    seed: int,
    jobs: list,
    sender,
) -> None:
    """Simulate and render the given episodes in order, sending each; stop if the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    parent_pid = os.getppid()  # reparenting is how a SIGKILLed parent shows between episodes
    task = None
    try:
        task = make_task(task_name, image_size=image_size, cameras=cameras)
        policy = make_scripted_policy(policy_name, [task], seed=seed)
        for index, episode_seed_ in jobs:
            if os.getppid() != parent_pid:
                return
            sender.send((record_episode(task, policy, episode_seed_, index), None))
    except BrokenPipeError:
        return  # the parent is gone: nothing left to do
    except Exception as exc:  # reported to the parent, which stops the run with this message
        with contextlib.suppress(BrokenPipeError):
            sender.send((None, f"{type(exc).__name__}: {exc}"))
    finally:
        sender.close()
        if task is not None:
            task.close()
