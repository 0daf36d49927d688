"""A store's manifest: the committed episodes and every chunk file they occupy, and where those files are.

    <store>/manifest.json    {"format": 1, "checksum": "crc32c", "episode_ends": [...],
                              "episode_seed": [...], "chunks": {array: {chunk key: [size, crc32c]}}}
    <store>/rollback/        while an episode is being appended: the committed chunk files it rewrites,
                             one flat folder of hard links ("data%action%c%0%0")

An episode is committed by replacing manifest.json after its rows, seed and end are written
(wm_sim.data.store); wm_sim.data.integrity compares the files on disk with it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
import zarr

from wm_sim.data.schema import DatasetInfo
from wm_sim.errors import WmSimError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
ROLLBACK_DIR = "rollback"
META_KEYS = ("episode_ends", "episode_seed")


@dataclass
class Manifest:
    """What the committed episodes need on disk: their ends and seeds, and each chunk file's size and crc32c.

    `chunks` maps an array ("data/<key>", "meta/episode_ends") to its chunk files ("c/0/0/0/0") and
    their [size, crc32c hex]. A chunk zarr never wrote (all fill values) is not listed: it reads as
    fill values rightly.
    """

    episode_ends: list[int]
    episode_seed: list[int]
    chunks: dict[str, dict[str, list]] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Path) -> Manifest | None:
        """The store's manifest, or None for a store written before manifests existed."""
        try:
            text = (store / MANIFEST_FILE).read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            if data.get("format") != MANIFEST_FORMAT:
                raise WmSimError(
                    f"{store}/{MANIFEST_FILE} has format {data.get('format')!r}; this wm-sim reads {MANIFEST_FORMAT}"
                )
            manifest = cls([int(e) for e in data["episode_ends"]], [int(s) for s in data["episode_seed"]], {
                name: {key: [int(size), str(crc)] for key, (size, crc) in files.items()}
                for name, files in data["chunks"].items()
            })  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WmSimError(
                f"{store}/{MANIFEST_FILE} is corrupt ({exc!r}); without it (delete it) the store opens "
                "unchecked and `wm-sim check-data` can only decode its chunks"
            ) from None
        if len(manifest.episode_ends) != len(manifest.episode_seed):
            raise WmSimError(f"{store}/{MANIFEST_FILE} is corrupt: it has more ends than seeds or fewer")
        return manifest

    def save(self, store: Path) -> None:
        """Replace the store's manifest atomically (temp file + rename, like zarr's own writes)."""
        data = {"format": MANIFEST_FORMAT, "checksum": "crc32c", "episode_ends": self.episode_ends,
                "episode_seed": self.episode_seed, "chunks": self.chunks}  # fmt: skip
        temp = store / f"{MANIFEST_FILE}.{uuid.uuid4().hex}.partial"
        temp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        os.replace(temp, store / MANIFEST_FILE)

    def appended(self, store: Path, touched: dict[str, list[str]], end: int, seed: int) -> Manifest:
        """This manifest with one more episode, whose writes rewrote the `touched` chunk files."""
        chunks = {name: dict(files) for name, files in self.chunks.items()}
        for name, keys in touched.items():
            files = chunks.setdefault(name, {})
            for key in keys:
                entry = _file_entry(store / name / key)
                if entry is None:  # all fill values: zarr wrote (or kept) no file
                    files.pop(key, None)
                else:
                    files[key] = entry
        return Manifest([*self.episode_ends, end], [*self.episode_seed, int(seed)], chunks)


def build_manifest(path: Path, root: zarr.Group, info: DatasetInfo, ends: np.ndarray) -> Manifest:
    """A manifest of a store as it is now (for a store written before manifests existed)."""
    frames, count = (int(ends[-1]) if len(ends) else 0), len(ends)
    chunks = {}
    for name in array_names(info):
        arr = array_node(root, name)
        needed = count if name.startswith("meta/") else frames
        chunks[name] = {
            key: _file_entry(path / name / key)
            for key in chunk_files(path / name)
            if chunk_row_range(arr, key)[0] < needed
        }
    seeds = np.asarray(root["meta"]["episode_seed"][:count], dtype=np.int64)
    return Manifest([int(e) for e in ends], [int(s) for s in seeds], chunks)


def file_problem(file: Path, size: int, crc: str, checksums: bool) -> str | None:
    """What is wrong with a chunk file against its manifest entry, or None."""
    try:
        actual = file.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if actual < size:
        return f"is truncated: {actual:,} of its {size:,} bytes"
    if actual != size:
        return f"has {actual:,} bytes, not the {size:,} it was written with"
    if checksums and _crc32c(file) != crc:
        return "does not match its crc32c checksum (its bytes changed)"
    return None


def _file_entry(file: Path) -> list | None:
    """[size, crc32c hex] of a chunk file, or None when there is none."""
    try:
        return [file.stat().st_size, _crc32c(file)]
    except FileNotFoundError:
        return None


def _crc32c(file: Path, block: int = 1 << 22) -> str:
    crc = 0
    with file.open("rb") as f:
        while data := f.read(block):
            crc = google_crc32c.extend(crc, data)
    return f"{crc:08x}"


# --- chunk geometry ----------------------------------------------------------------------------


def array_names(info: DatasetInfo) -> list[str]:
    """Every array of a store, as the manifest names them: "data/<key>", then "meta/<key>"."""
    return [f"data/{key}" for key in info.features] + [f"meta/{key}" for key in META_KEYS]


def array_node(root: zarr.Group, name: str) -> zarr.Array:
    """The zarr array a manifest name ("data/action") stands for."""
    group, key = name.split("/", 1)
    return root[group][key]


def rows_per_file(arr: zarr.Array) -> int:
    """Rows one chunk file holds: a shard's when the array is sharded, else a chunk's."""
    return (arr.shards or arr.chunks)[0]


def chunk_key(arr: zarr.Array, index: int) -> str:
    """The key of the `index`-th chunk file along the rows ("c/1/0/0/0")."""
    return arr.metadata.chunk_key_encoding.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))


def chunk_keys(arr: zarr.Array, start: int, stop: int) -> Iterator[tuple[str, tuple[int, int]]]:
    """(chunk file key, its row range) of every chunk file holding a row of [start, stop)."""
    unit = rows_per_file(arr)
    for index in range(start // unit, (stop - 1) // unit + 1 if stop > start else start // unit):
        yield chunk_key(arr, index), (index * unit, (index + 1) * unit)


def chunk_row_range(arr: zarr.Array, key: str) -> tuple[int, int]:
    """The rows a chunk file (e.g. "c/1/0/0/0") holds."""
    encoding = arr.metadata.chunk_key_encoding
    parts = key.split(encoding.separator)
    if parts[0] != "c" or len(parts) < 2 or not parts[1].isdigit():
        raise WmSimError(f"unexpected chunk file {key!r} in {arr.path}: expected c/<index>/...")
    unit = rows_per_file(arr)
    return int(parts[1]) * unit, (int(parts[1]) + 1) * unit


def chunk_files(array_dir: Path) -> list[str]:
    """The chunk file keys on disk under an array's folder (not its zarr.json or temp files)."""
    return sorted(
        p.relative_to(array_dir).as_posix()
        for p in files_under(array_dir)
        if p.name != "zarr.json" and not p.name.endswith(".partial")
    )


def files_under(folder: Path) -> Iterator[Path]:
    """Every file below `folder` (none when it does not exist)."""
    return (p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else iter(())


def rollback_file(store: Path, name: str, key: str) -> Path:
    """Where an append keeps the committed bytes of chunk `key` of array `name`.

    One flat folder ("data%action%c%0%0"): it is made and removed once per episode, and a tree
    of nested chunk folders costs tens of milliseconds each time.
    """
    return store / ROLLBACK_DIR / f"{name}/{key}".replace("/", "%")


def rollback_chunk(file: Path) -> tuple[str, str]:
    """(array name, chunk key) of a file in rollback/."""
    parts = file.name.split("%")
    return "/".join(parts[:2]), "/".join(parts[2:])
