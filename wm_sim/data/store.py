"""The episode store: a zarr v3 group on disk, appended one whole episode at a time.

Layout (diffusion_policy's, with LeRobot's key names):

    <store>/                 attributes: DatasetInfo (schema version, task, fps, cameras, ...)
      data/<key>             (N, ...) every episode's frames, concatenated
      meta/episode_ends      (E,) int64, exclusive end row of each episode
      meta/episode_seed      (E,) int64, the seed each episode was made from

Crash safety. zarr's LocalStore replaces every file atomically (temp file + rename), and an
episode is committed by growing `meta/episode_ends` *after* its rows are written. So a kill at
any moment leaves every committed episode intact: rows past the last end, or an end that reads as
the fill value 0, belong to the episode in flight and are invisible to readers. Opening for
append (`resume`) trims them.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
import zarr.errors

from wm_sim.data.schema import IMAGE_PREFIX, DatasetInfo
from wm_sim.errors import WmSimError

FRAMES_PER_SHARD = 256  # images: one chunk per frame, one file per 256 frames
ROWS_PER_CHUNK = 4096  # everything else


class EpisodeStore:
    """Reads and appends whole episodes of a zarr dataset store."""

    def __init__(self, root: zarr.Group, info: DatasetInfo, path: Path, writable: bool):
        self._root = root
        self.info = info
        self.path = path
        self.writable = writable
        self._lock_fd = _lock_for_writing(path) if writable else None
        # a forgotten writer still releases its lock when it is garbage-collected
        self._release = weakref.finalize(self, os.close, self._lock_fd) if writable else None
        self._arrays: dict[str, zarr.Array] = {}
        self.refresh()

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, info: DatasetInfo) -> EpisodeStore:
        """Create an empty store at `path`, which must not exist."""
        path = Path(path)
        if path.exists():
            raise WmSimError(f"{path} already exists; refusing to overwrite it")
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        data = root.create_group("data")
        for key, feature in info.features.items():
            if key.startswith(IMAGE_PREFIX):
                chunks = (1, *feature.shape)
                shards = (FRAMES_PER_SHARD, *feature.shape)
            else:
                chunks, shards = (ROWS_PER_CHUNK, *feature.shape), None
            data.create_array(
                key,
                shape=(0, *feature.shape),
                dtype=feature.dtype,
                chunks=chunks,
                shards=shards,
                fill_value=0,
            )
        meta = root.create_group("meta")
        for key in ("episode_ends", "episode_seed"):
            meta.create_array(key, shape=(0,), dtype="int64", chunks=(ROWS_PER_CHUNK,), fill_value=0)
        # the attributes go last: a store without them is recognisably unfinished, never half-valid
        root.attrs.update(info.to_attrs())
        return cls(root, info, path, writable=True)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EpisodeStore:
        """Open an existing store read-only (mode "r") or for appending (mode "a", trims debris)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise WmSimError(f"no dataset store at {path}")
        if not (path / "zarr.json").is_file():
            raise WmSimError(f"{path} is not a zarr v3 dataset store (no zarr.json)")
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+", zarr_format=3)
            attrs = dict(root.attrs)
        except (zarr.errors.NodeTypeValidationError, ValueError, KeyError, OSError) as exc:
            raise WmSimError(f"{path} is corrupt: cannot open it as a zarr group ({exc})") from exc
        info = DatasetInfo.from_attrs(attrs, str(path))
        store = cls(root, info, path, writable=mode == "a")
        if mode == "a":
            store._trim_uncommitted()
        return store

    # --- reading ---------------------------------------------------------------------------

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def num_episodes(self) -> int:
        return len(self._ends)

    @property
    def num_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        return list(self.info.features)

    def episode_bounds(self, episode: int) -> tuple[int, int]:
        if not 0 <= episode < self.num_episodes:
            raise IndexError(f"episode {episode} out of range: the store holds {self.num_episodes}")
        start = int(self._ends[episode - 1]) if episode else 0
        return start, int(self._ends[episode])

    def array(self, key: str) -> zarr.Array:
        if key not in self._arrays:
            raise KeyError(f"no key {key!r} in {self.path}; keys: {self.keys}")
        return self._arrays[key]

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of `key`; only committed rows can be read."""
        if not 0 <= start <= stop <= self.num_frames:
            raise IndexError(f"rows [{start}, {stop}) outside the {self.num_frames} committed frames")
        return self.array(key)[start:stop]

    def episode(self, episode: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every (or the chosen) per-frame array of one episode."""
        start, stop = self.episode_bounds(episode)
        return {key: self.read(key, start, stop) for key in (keys or self.keys)}

    def episode_seeds(self) -> np.ndarray:
        return self._root["meta"]["episode_seed"][: self.num_episodes]

    def close(self) -> None:
        """Release the writer's lock (reading stays possible)."""
        if self._release is not None:
            self._release()  # closes the lock's file descriptor, once
            self._release, self._lock_fd = None, None
        self.writable = False

    def refresh(self) -> None:
        """(Re)read which episodes are committed, including those another process added since."""
        # the ends first: every row they cover was on disk before they were written
        self._ends = _valid_episode_ends(self._root, self.info, self.path)
        self._arrays = {key: self._root["data"][key] for key in self.info.features}

    # --- appending -------------------------------------------------------------------------

    def append_episode(self, episode: Mapping[str, np.ndarray], seed: int) -> None:
        """Write one whole episode; it becomes visible only once every row is on disk."""
        if not self.writable:
            raise WmSimError(f"{self.path} was opened read-only")
        length = _check_episode(episode, self.info)
        start = self.num_frames
        for key in self.info.features:
            arr = self.array(key)
            arr.resize((start + length, *arr.shape[1:]))
            arr[start : start + length] = episode[key]
        count = self.num_episodes
        meta = self._root["meta"]
        meta["episode_seed"].resize((count + 1,))
        meta["episode_seed"][count] = seed
        ends = meta["episode_ends"]
        ends.resize((count + 1,))
        ends[count] = start + length  # the commit point
        self._ends = np.append(self._ends, start + length)

    def _trim_uncommitted(self) -> None:
        """Drop the rows and meta entries of an episode a crash left half-written."""
        count, frames = self.num_episodes, self.num_frames
        for key in self.info.features:
            arr = self.array(key)
            if arr.shape[0] != frames:
                arr.resize((frames, *arr.shape[1:]))
        for key in ("episode_ends", "episode_seed"):
            arr = self._root["meta"][key]
            if arr.shape[0] != count:
                arr.resize((count,))
        for debris in self.path.rglob("*.partial"):  # temp files of a write the kill cut short
            debris.unlink(missing_ok=True)


def _lock_for_writing(path: Path) -> int:
    """Hold an exclusive lock on the store's directory: one writer at a time, readers unaffected."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WmSimError(f"{path} is being written by another process; wait for it to finish") from None
    return fd  # released when the process ends or the store is closed


def _valid_episode_ends(root: zarr.Group, info: DatasetInfo, path: Path) -> np.ndarray:
    """The committed episode ends: the valid prefix of meta/episode_ends.

    A valid end is strictly greater than the one before and no greater than any data array's
    length; the only invalid entry a crash can leave is the last one.
    """
    try:
        ends = np.asarray(root["meta"]["episode_ends"][:], dtype=np.int64)
        lengths = [root["data"][key].shape[0] for key in info.features]
    except KeyError as exc:
        raise WmSimError(f"{path} is corrupt: missing array {exc}") from exc
    limit = min(lengths) if lengths else 0
    valid = 0
    previous = 0
    for end in ends:
        if not previous < end <= limit:
            break
        previous = int(end)
        valid += 1
    if valid < len(ends) - 1:
        raise WmSimError(
            f"{path} is corrupt: meta/episode_ends is invalid at entry {valid} of {len(ends)} "
            "(only the last entry can be unfinished)"
        )
    return ends[:valid]


def _check_episode(episode: Mapping[str, np.ndarray], info: DatasetInfo) -> int:
    missing = set(info.features) - set(episode)
    extra = set(episode) - set(info.features)
    if missing or extra:
        raise WmSimError(
            f"episode keys do not match the store: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    lengths = {key: len(value) for key, value in episode.items()}
    if len(set(lengths.values())) != 1:
        raise WmSimError(f"episode arrays differ in length: {lengths}")
    length = next(iter(lengths.values()))
    if length == 0:
        raise WmSimError("an episode must have at least one frame")
    for key, feature in info.features.items():
        value = np.asarray(episode[key])
        if value.shape[1:] != feature.shape or value.dtype != np.dtype(feature.dtype):
            raise WmSimError(
                f"episode key {key!r} has shape {value.shape[1:]} and dtype {value.dtype}; "
                f"the store expects {feature.shape} and {feature.dtype}"
            )
    return length
