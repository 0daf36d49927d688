"""The episode store: a zarr v3 group on disk, appended one whole episode at a time.

Layout (diffusion_policy's, with LeRobot's key names):

    <store>/                 attributes: DatasetInfo (schema version, task, fps, cameras, ...)
      data/<key>             (N, ...) every episode's frames, concatenated
      meta/episode_ends      (E,) int64, exclusive end row of each episode
      meta/episode_seed      (E,) int64, the seed each episode was made from
      manifest.json          the committed episodes: their ends and seeds, and the size and crc32c
                             of every chunk file they occupy
      rollback/              only while an episode is being appended: hard links to the committed
                             versions of the chunk files the append rewrites

Crash safety. zarr's LocalStore replaces every file atomically (temp file + rename), and an
episode is committed by replacing `manifest.json` *after* its rows, seed and end are written. So a
kill at any moment leaves every committed episode intact and described: rows past the last end,
or ends past the manifest's, belong to the episode in flight and are invisible to readers. An
append rewrites the chunk file that the previous episode shares with it (a shard holds 256 frames
of several episodes); the link in `rollback/` keeps the bytes the manifest describes until the
commit. Opening for append (`resume`) puts them back and trims the rest.

Integrity. Opening a store checks that every chunk file in the manifest is there with its size
(fast: one stat each) and refuses a damaged store in one line naming the key, the chunk and the
episodes it holds, so nothing reads zarr's fill values for a lost chunk. `check_store(...,
checksums=True)` (`wm-sim check-data`) also compares every file's crc32c. Stores written before the
manifest existed still open, with a warning; the first append to one writes its manifest.
The manifest and the chunk files' geometry are in wm_sim.data.manifest; the checks that find
the damage are in wm_sim.data.integrity.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.errors

from wm_sim.data.integrity import (
    DECODE_ERRORS,
    ChunkDamage,
    damage_message,
    decode_damages,
    episodes_in_rows,
    settled_check,
)
from wm_sim.data.manifest import (
    MANIFEST_FILE,
    META_KEYS,
    ROLLBACK_DIR,
    Manifest,
    array_names,
    build_manifest,
    chunk_files,
    chunk_keys,
    chunk_row_range,
    file_problem,
    files_under,
    rollback_chunk,
    rollback_file,
)
from wm_sim.data.schema import IMAGE_PREFIX, DatasetInfo, frames_of, image_key
from wm_sim.errors import WmSimError, first_line

FRAMES_PER_SHARD = 256  # images: one chunk per frame, one file per 256 frames
ROWS_PER_CHUNK = 4096  # everything else
_BEING_CREATED = (
    "{path} is being written by another process (it is still being created); wait for it to finish"
)
_warned_unverifiable: set[Path] = set()


class EpisodeStore:
    """Reads and appends whole episodes of a zarr dataset store."""

    def __init__(self, root: zarr.Group, info: DatasetInfo, path: Path, lock_fd: int | None = None):
        self._root = root
        self.info = info
        self.path = path
        self.writable = lock_fd is not None
        self._lock_fd = lock_fd
        self._release = None
        self._append_failed = False
        self._arrays: dict[str, zarr.Array] = {}
        self._manifest: Manifest | None = None
        self.refresh()  # a damaged store raises here, and whoever took the lock releases it
        # a forgotten writer still releases its lock when it is garbage-collected
        self._release = weakref.finalize(self, os.close, lock_fd) if lock_fd is not None else None

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, info: DatasetInfo) -> EpisodeStore:
        """Create an empty store at `path`, which must not exist."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            if _being_written(path):
                raise WmSimError(
                    f"{path} is being written by another process; wait for it to finish"
                ) from None
            raise WmSimError(f"{path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise WmSimError(f"cannot create the dataset store {path}: {exc.strerror}") from None
        # locked before anything is in it: a reader or a second writer is told it is being written
        lock_fd = lock_for_writing(path)
        try:
            root = zarr.open_group(str(path), mode="w-", zarr_format=3)
            _create_arrays(root, info)
            Manifest([], [], {name: {} for name in array_names(info)}).save(path)
            # the attributes go last: a store without them is recognisably unfinished, never half-valid
            root.attrs.update(info.to_attrs())
            return cls(root, info, path, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EpisodeStore:
        """Open an existing store read-only (mode "r") or for appending (mode "a", trims debris).

        Refuses, in one line, a store whose committed episodes lack a chunk or have a torn one.
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise WmSimError(f"no dataset store at {path}")
        # a writer locks first: a second one is told so, not that the store looks unfinished
        lock_fd = lock_for_writing(path) if mode == "a" else None
        try:
            root, info = open_root(path, locked=lock_fd is not None)
            store = cls(root, info, path, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
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

    @property
    def has_manifest(self) -> bool:
        """Whether the store's chunks can be checked (stores of older wm-sim versions have no manifest)."""
        return self._manifest is not None

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
        """Rows [start, stop) of `key`; only committed rows can be read, and only from intact chunks."""
        if not 0 <= start <= stop <= self.num_frames:
            raise IndexError(f"rows [{start}, {stop}) outside the {self.num_frames} committed frames")
        arr = self.array(key)
        if self._manifest is not None:  # a chunk lost since the store was opened must not read as zeros
            self._check_present(f"data/{key}", arr, start, stop)
        try:
            return arr[start:stop]
        except DECODE_ERRORS as exc:
            raise WmSimError(self._undecodable(key, arr, start, stop, exc)) from None

    def read_frames(self, cameras: Sequence[str], start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of these cameras' images in the world model's layout (schema.frames_of)."""
        return frames_of({image_key(c): self.read(image_key(c), start, stop) for c in cameras}, cameras)

    def episode(self, episode: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every (or the chosen) per-frame array of one episode."""
        start, stop = self.episode_bounds(episode)
        return {key: self.read(key, start, stop) for key in (keys or self.keys)}

    def episode_seeds(self) -> np.ndarray:
        if self._manifest is not None:
            return np.asarray(self._manifest.episode_seed, dtype=np.int64)
        return self._meta["episode_seed"][: self.num_episodes]

    def close(self) -> None:
        """Release the writer's lock (reading stays possible)."""
        if self._release is not None:
            self._release()  # closes the lock's file descriptor, once
            self._release, self._lock_fd = None, None
        self.writable = False

    def refresh(self) -> None:
        """(Re)read which episodes are committed, including those another process added since.

        Every chunk file they need is checked for presence and size; a damaged store is refused.
        """
        manifest, damages = settled_check(self.path, self._root, self.info, checksums=False)
        if damages:
            raise WmSimError(damage_message(self.path, damages))
        if manifest is None:
            self._ends = _valid_episode_ends(self._root, self.info, self.path)
            _warn_unverifiable(self.path)
        else:
            self._ends = np.asarray(manifest.episode_ends, dtype=np.int64)
        self._manifest = manifest
        self._arrays = {key: self._root["data"][key] for key in self.info.features}
        self._meta = {key: self._root["meta"][key] for key in META_KEYS}

    def _check_present(self, name: str, arr: zarr.Array, start: int, stop: int) -> None:
        listed = self._manifest.chunks.get(name, {})
        for key, _ in chunk_keys(arr, start, stop):
            if key in listed and not (self.path / name / key).is_file() and self._lost(name, key):
                raise WmSimError(damage_message(self.path, [self._damage(name, arr, key, "is missing")]))

    def _lost(self, name: str, key: str) -> bool:
        """Whether a missing chunk file is lost, not emptied by a writer since (all fill values: no file)."""
        if rollback_file(self.path, name, key).is_file():
            return False  # an append in flight emptied it; its committed bytes are kept
        latest = Manifest.load(self.path)
        return latest is not None and key in latest.chunks.get(name, {})

    def _undecodable(self, key: str, arr: zarr.Array, start: int, stop: int, exc: Exception) -> str:
        """The one-line refusal of rows that zarr cannot decode, naming the first bad chunk."""
        name = f"data/{key}"
        for chunk, (lo, hi) in chunk_keys(arr, start, stop):
            try:
                arr[max(lo, start) : min(hi, stop)]
            except DECODE_ERRORS as chunk_exc:
                damage = self._damage(name, arr, chunk, f"cannot be decoded ({first_line(chunk_exc)})")
                return damage_message(self.path, [damage])
        return f"{self.path} is damaged: {name} rows [{start}, {stop}) cannot be read ({first_line(exc)})"

    def _damage(self, name: str, arr: zarr.Array, key: str, problem: str) -> ChunkDamage:
        rows = chunk_row_range(arr, key)
        return ChunkDamage(name, key, problem, episodes_in_rows(name, rows, self._ends))

    # --- appending -------------------------------------------------------------------------

    def append_episode(self, episode: Mapping[str, np.ndarray], seed: int) -> None:
        """Write one whole episode; it becomes visible only once every row is on disk."""
        if not self.writable:
            raise WmSimError(f"{self.path} was opened read-only")
        if self._append_failed:
            raise WmSimError(
                f"an earlier append to {self.path} failed half-way; open it again with mode='a' to undo it first"
            )
        length = _check_episode(episode, self.info)
        try:
            self._append(episode, length, seed)
        except BaseException:
            self._append_failed = True  # rollback/ holds what the next open (mode "a") puts back
            raise

    def _append(self, episode: Mapping[str, np.ndarray], length: int, seed: int) -> None:
        start, count = self.num_frames, self.num_episodes
        touched = self._touched_chunks(start, start + length, count)
        self._keep_committed(touched)
        for key in self.info.features:
            arr = self.array(key)
            arr.resize((start + length, *arr.shape[1:]))
            arr[start : start + length] = episode[key]
        meta = self._meta
        meta["episode_seed"].resize((count + 1,))
        meta["episode_seed"][count] = seed
        ends = meta["episode_ends"]
        ends.resize((count + 1,))
        ends[count] = start + length
        self._manifest = self._manifest.appended(self.path, touched, start + length, seed)
        self._manifest.save(self.path)  # the commit point
        self._ends = np.append(self._ends, start + length)
        _remove_tree(self.path / ROLLBACK_DIR)

    def _touched_chunks(self, start: int, stop: int, count: int) -> dict[str, list[str]]:
        """The chunk files (array name -> keys) that writing rows [start, stop) and entry `count` rewrites."""
        touched = {f"data/{k}": [c for c, _ in chunk_keys(self.array(k), start, stop)] for k in self.keys}
        for key in META_KEYS:
            touched[f"meta/{key}"] = [c for c, _ in chunk_keys(self._meta[key], count, count + 1)]
        return touched

    def _keep_committed(self, touched: dict[str, list[str]]) -> None:
        """Hard-link the committed chunk files an append rewrites into rollback/, until its commit."""
        rollback = self.path / ROLLBACK_DIR
        _remove_tree(rollback)  # left by an append whose commit went through but not its clean-up
        for name, keys in touched.items():
            for key in keys:
                if key in self._manifest.chunks.get(name, {}):
                    _link_or_copy(self.path / name / key, rollback_file(self.path, name, key))

    def _trim_uncommitted(self) -> None:
        """Undo what a crash left of an episode in flight: its rows, meta entries and chunk files."""
        if self._manifest is None:
            self._trim_to_ends()
            self._manifest = build_manifest(self.path, self._root, self.info, self._ends)
            self._manifest.save(self.path)
            return
        rollback = self.path / ROLLBACK_DIR
        for kept in list(files_under(rollback)):
            name, key = rollback_chunk(kept)
            live = self.path / name / key
            size, crc = self._manifest.chunks.get(name, {}).get(key, (None, None))
            # put the committed bytes back unless the append's commit went through (then the live
            # file is the one the manifest describes, and the link is a leftover)
            if size is not None and file_problem(live, size, crc, checksums=True) is not None:
                live.parent.mkdir(parents=True, exist_ok=True)
                os.replace(kept, live)
        _remove_tree(rollback)
        self._trim_to_ends()
        for name, listed in self._manifest.chunks.items():  # chunk files only the append had made
            for key in chunk_files(self.path / name):
                if key not in listed:
                    (self.path / name / key).unlink()

    def _trim_to_ends(self) -> None:
        count, frames = self.num_episodes, self.num_frames
        for key in self.info.features:
            arr = self.array(key)
            if arr.shape[0] != frames:
                arr.resize((frames, *arr.shape[1:]))
        for arr in self._meta.values():
            if arr.shape[0] != count:
                arr.resize((count,))
        for debris in self.path.rglob("*.partial"):  # temp files of a write the kill cut short
            debris.unlink(missing_ok=True)


# --- opening and checking ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoreCheck:
    """What `check_store` found: the committed episodes and the damaged chunks among them."""

    info: DatasetInfo
    episode_ends: np.ndarray
    episode_seed: np.ndarray
    damages: list[ChunkDamage]
    has_manifest: bool
    interrupted_append: bool  # rollback/ holds committed chunk files: an append is in flight or was killed

    @property
    def damaged_episodes(self) -> list[int]:
        return sorted({e for d in self.damages for e in d.episodes})


def open_root(path: Path, locked: bool = False) -> tuple[zarr.Group, DatasetInfo]:
    """The store's zarr group and attributes; a store another process is still creating says so.

    `locked`: this process holds the writer's lock (then no other process can be writing it).
    """
    if not (path / "zarr.json").is_file():
        if not locked and _being_written(path):
            raise WmSimError(_BEING_CREATED.format(path=path))
        raise WmSimError(f"{path} is not a zarr v3 dataset store (no zarr.json)")
    try:
        root = zarr.open_group(str(path), mode="r+" if locked else "r", zarr_format=3)
        attrs = dict(root.attrs)
    except (zarr.errors.NodeTypeValidationError, ValueError, KeyError, OSError) as exc:
        raise WmSimError(f"{path} is corrupt: cannot open it as a zarr group ({exc})") from exc
    if not attrs and not locked and _being_written(path):
        raise WmSimError(_BEING_CREATED.format(path=path))
    return root, DatasetInfo.from_attrs(attrs, str(path))


def check_store(path: str | Path, checksums: bool = True, locked: bool = False) -> StoreCheck:
    """Every damaged chunk of a store's committed episodes (sizes always, crc32c when `checksums`).

    Unlike `EpisodeStore.open`, a damaged store is described, not refused. A store without a
    manifest has nothing to compare against: with `checksums` every chunk of it is decoded instead,
    which finds torn chunks but not lost ones (those read as fill values). `locked`: this process
    holds the store's writer lock.
    """
    path = Path(path)
    if not path.exists():
        raise WmSimError(f"no dataset store at {path}")
    root, info = open_root(path, locked)
    manifest, damages = settled_check(path, root, info, checksums)
    if manifest is None:
        ends = _valid_episode_ends(root, info, path)
        seeds = np.asarray(root["meta"]["episode_seed"][: len(ends)], dtype=np.int64)
        damages = decode_damages(root, info, ends) if checksums else []
    else:
        ends = np.asarray(manifest.episode_ends, dtype=np.int64)
        seeds = np.asarray(manifest.episode_seed, dtype=np.int64)
    rollback = any(True for _ in files_under(path / ROLLBACK_DIR))
    return StoreCheck(info, ends, seeds, damages, manifest is not None, rollback)


def _remove_tree(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # zarr replaces the file, so the link keeps the old bytes for free
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def _warn_unverifiable(path: Path) -> None:
    """Say once per store that its chunks cannot be checked: it predates the manifest."""
    if path.resolve() in _warned_unverifiable:
        return
    _warned_unverifiable.add(path.resolve())
    print(
        f"wm-sim: warning: {path} has no {MANIFEST_FILE} (written by an older wm-sim), so a lost chunk "
        "cannot be told from an empty one; opening it for appending (collect resume=true) writes one",
        file=sys.stderr,
    )


# --- locking, creation, validation -------------------------------------------------------------


def lock_for_writing(path: Path) -> int:
    """Hold an exclusive lock on the store's directory: one writer at a time, readers unaffected."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WmSimError(f"{path} is being written by another process; wait for it to finish") from None
    return fd  # released when the process ends or the store is closed


def _being_written(path: Path) -> bool:
    """Whether another process holds the store's writer lock (without taking it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


def _create_arrays(root: zarr.Group, info: DatasetInfo) -> None:
    data = root.create_group("data")
    for key, feature in info.features.items():
        if key.startswith(IMAGE_PREFIX):
            chunks = (1, *feature.shape)
            shards = (FRAMES_PER_SHARD, *feature.shape)
        else:
            chunks, shards = (ROWS_PER_CHUNK, *feature.shape), None
        data.create_array(
            key, shape=(0, *feature.shape), dtype=feature.dtype, chunks=chunks, shards=shards, fill_value=0
        )
    meta = root.create_group("meta")
    for key in META_KEYS:
        meta.create_array(key, shape=(0,), dtype="int64", chunks=(ROWS_PER_CHUNK,), fill_value=0)


def _valid_episode_ends(root: zarr.Group, info: DatasetInfo, path: Path) -> np.ndarray:
    """The committed episode ends of a store without a manifest: the valid prefix of meta/episode_ends.

    A valid end is strictly greater than the one before and no greater than any data array's
    length; the only invalid entry a crash can leave is the last one.
    """
    try:
        ends = np.asarray(root["meta"]["episode_ends"][:], dtype=np.int64)
        lengths = [root["data"][key].shape[0] for key in info.features]
    except KeyError as exc:
        raise WmSimError(f"{path} is corrupt: missing array {exc}") from exc
    except DECODE_ERRORS as exc:
        raise WmSimError(f"{path} is damaged: meta/episode_ends cannot be read ({first_line(exc)})") from None
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
