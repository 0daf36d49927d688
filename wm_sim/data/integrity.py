"""Checking a store against its manifest: which chunk files are missing, torn or changed, and whose episodes.

`wm_sim.data.store` refuses a damaged store in one line (`damage_message`); `check_store`
(`wm-sim check-data`) lists every damage instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from wm_sim.data.manifest import (
    Manifest,
    array_names,
    array_node,
    chunk_key,
    chunk_keys,
    chunk_row_range,
    file_problem,
    rollback_file,
    rows_per_file,
)
from wm_sim.data.schema import DatasetInfo
from wm_sim.errors import WmSimError, first_line

# What zarr raises for a chunk whose bytes do not decode: a shard index's crc32c mismatch
# (ValueError), a torn zstd frame (RuntimeError), an unreadable file (OSError).
DECODE_ERRORS = (ValueError, RuntimeError, OSError)


@dataclass(frozen=True)
class ChunkDamage:
    """One chunk file that is not as its episode's commit left it."""

    array: str  # "data/observation.state", "meta/episode_ends"
    chunk: str  # "c/1/0/0/0", or "zarr.json" for an array's metadata
    problem: str  # "is missing", "is truncated: ...", ...
    episodes: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.array} chunk {self.chunk} {self.problem} (it holds {describe_episodes(self.episodes)})"


def decode_damages(root: zarr.Group, info: DatasetInfo, ends: np.ndarray) -> list[ChunkDamage]:
    """Every chunk file of the committed rows that zarr cannot decode (a torn shard, a garbled chunk)."""
    frames = int(ends[-1]) if len(ends) else 0
    damages = []
    for key in info.features:
        arr = root["data"][key]
        for chunk, (lo, hi) in chunk_keys(arr, 0, frames):
            try:
                arr[lo : min(hi, frames)]
            except DECODE_ERRORS as exc:
                problem = f"cannot be decoded ({first_line(exc)})"
                damages.append(
                    ChunkDamage(
                        f"data/{key}", chunk, problem, episodes_in_rows(f"data/{key}", (lo, hi), ends)
                    )
                )
    return damages


def damage_message(path: Path, damages: list[ChunkDamage]) -> str:
    """The one line that refuses a damaged store."""
    more = f"; and {len(damages) - 1} more damaged chunks" if len(damages) > 1 else ""
    return (
        f"{path} is damaged: {damages[0]}{more}; `wm-sim check-data data={path}` lists the damaged "
        "episodes and `repair=true` drops them, after copying the store"
    )


def describe_episodes(episodes: tuple[int, ...] | list[int]) -> str:
    """'episode 3', 'episodes 0-2, 7': runs of consecutive episodes written as ranges."""
    if not episodes:
        return "no committed episode"
    runs: list[list[int]] = []
    for e in sorted(episodes):
        if runs and e == runs[-1][1] + 1:
            runs[-1][1] = e
        else:
            runs.append([e, e])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"episode {text}" if len(episodes) == 1 else f"episodes {text}"


def settled_check(
    path: Path, root: zarr.Group, info: DatasetInfo, checksums: bool, attempts: int = 5
) -> tuple[Manifest | None, list[ChunkDamage]]:
    """The manifest and the damages found against it, checked again while a writer moves it on.

    A writer in another process replaces chunk files and then the manifest; a check that raced it
    sees a chunk that changed under an old manifest. Only a damage that persists under the same
    manifest is real.
    """
    for _ in range(attempts):
        manifest = Manifest.load(path)
        if manifest is None:
            return None, []
        damages = _damages(path, root, info, manifest, checksums)
        if not damages or Manifest.load(path) == manifest:
            return manifest, damages
        time.sleep(0.05)
    raise WmSimError(f"{path} is being written by another process faster than it can be checked; try again")


def _damages(
    path: Path, root: zarr.Group, info: DatasetInfo, manifest: Manifest, checksums: bool
) -> list[ChunkDamage]:
    ends = np.asarray(manifest.episode_ends, dtype=np.int64)
    damages = []
    for name in array_names(info):
        try:
            arr = array_node(root, name)
        except (KeyError, ValueError) as exc:
            raise WmSimError(f"{path} is corrupt: cannot open array {name} ({first_line(exc)})") from None
        for key, (size, crc) in sorted(manifest.chunks.get(name, {}).items()):
            problem = file_problem(path / name / key, size, crc, checksums)
            if problem is not None and (
                file_problem(rollback_file(path, name, key), size, crc, checksums) is None
                # ...or a resuming writer moved those bytes back between the two looks
                or file_problem(path / name / key, size, crc, checksums) is None
            ):
                problem = None  # an append in flight rewrote it; the committed bytes are in rollback/
            if problem is not None:
                rows = chunk_row_range(arr, key)
                damages.append(ChunkDamage(name, key, problem, episodes_in_rows(name, rows, ends)))
        damages += _shape_damages(name, arr, ends)
    if not any(d.array.startswith("meta/") for d in damages):
        damages += _meta_damages(root, manifest)
    return damages


def _shape_damages(name: str, arr: zarr.Array, ends: np.ndarray) -> list[ChunkDamage]:
    """An array whose metadata says it is shorter than the committed episodes need."""
    needed = len(ends) if name.startswith("meta/") else (int(ends[-1]) if len(ends) else 0)
    if arr.shape[0] >= needed:
        return []
    problem = f"says it holds {arr.shape[0]} rows; the committed episodes need {needed}"
    return [ChunkDamage(name, "zarr.json", problem, episodes_in_rows(name, (arr.shape[0], needed), ends))]


def _meta_damages(root: zarr.Group, manifest: Manifest) -> list[ChunkDamage]:
    """meta/episode_ends and meta/episode_seed must begin with the manifest's (a writer may have added one)."""
    damages = []
    for key, expected in (("episode_ends", manifest.episode_ends), ("episode_seed", manifest.episode_seed)):
        arr = root["meta"][key]
        try:
            stored = np.asarray(arr[: len(expected)], dtype=np.int64)
        except DECODE_ERRORS as exc:
            problem = f"cannot be decoded ({first_line(exc)})"
            damages.append(
                ChunkDamage(f"meta/{key}", chunk_key(arr, 0), problem, tuple(range(len(expected))))
            )
            continue
        if len(stored) < len(expected):
            continue  # reported by _shape_damages
        wrong = np.flatnonzero(stored != np.asarray(expected, dtype=np.int64))
        if len(wrong):
            unit = rows_per_file(arr)
            damages.append(ChunkDamage(
                f"meta/{key}", chunk_key(arr, int(wrong[0]) // unit),
                f"disagrees with the manifest at entry {int(wrong[0])}", tuple(int(e) for e in wrong),
            ))  # fmt: skip
    return damages


def episodes_in_rows(name: str, rows: tuple[int, int], ends: np.ndarray) -> tuple[int, ...]:
    """The committed episodes with a row (or, for meta arrays, an entry) in `rows`."""
    lo, hi = rows
    if name.startswith("meta/"):
        return tuple(range(lo, min(hi, len(ends))))
    frames = int(ends[-1]) if len(ends) else 0
    if lo >= min(hi, frames):
        return ()
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends, min(hi, frames) - 1, side="right"))
    return tuple(range(first, last + 1))

