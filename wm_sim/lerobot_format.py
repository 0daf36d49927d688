"""The LeRobot v3.0 format: its layout, path templates and meta files, read and checked.

The layout `wm-sim import-lerobot` (wm_sim.lerobot_import) reads and `wm-sim export-lerobot`
(wm_sim.lerobot_export) writes (LeRobot's codebase_version "v3.0"):

    meta/info.json                           fps, features, path templates, totals, splits
    meta/episodes/chunk-000/file-000.parquet one row per episode: its rows' global index range
                                             [dataset_from_index, dataset_to_index), its data file,
                                             and per video key its file and [from, to) timestamps
    meta/tasks.parquet                       task strings (the index) and their task_index
    meta/stats.json                          per feature: min, max, mean, std, count
    data/chunk-000/file-000.parquet          one row per frame: features, timestamp, frame_index,
                                             episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4      several episodes' frames, one after another

A wm-sim export also writes `meta/wm_sim.json` (LeRobot ignores it): the store's task name and
action bounds. pyarrow is imported inside the functions that need it, through wm_sim.optional.
"""

from __future__ import annotations

import json
from pathlib import Path

from wm_sim.data.schema import IMAGE_PREFIX
from wm_sim.errors import WmSimError, first_line
from wm_sim.optional import require

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
WM_SIM_PATH = "meta/wm_sim.json"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def fill_path(template: str, chunk: int, file: int, **names: str) -> str:
    """A path template of info.json (DATA_PATH, VIDEO_PATH) with its chunk and file indices."""
    return template.format(chunk_index=int(chunk), file_index=int(file), **names)


def read_parquet(path: Path, columns: list[str] | None = None):
    """A parquet file as a pyarrow Table; a damaged or missing file is one clear error naming it."""
    pq = pyarrow_parquet()
    if not path.is_file():
        raise WmSimError(f"{path} is missing")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise WmSimError(f"{path} is damaged: it cannot be read as parquet ({first_line(exc)})") from None


def pyarrow_parquet():
    """pyarrow.parquet, or the one error naming the pip extra that installs it."""
    require("pyarrow")
    import pyarrow.parquet as pq

    return pq



def read_info(root: Path) -> dict:
    """meta/info.json of a LeRobot v3.0 folder; refuses anything else, saying what it found."""
    if not root.is_dir():
        raise WmSimError(f"no LeRobot dataset at {root}: it is not a folder")
    path = root / INFO_PATH
    if not path.is_file():
        raise WmSimError(
            f"{root} is not a LeRobot dataset: it has no {INFO_PATH} (expected meta/info.json, "
            "meta/episodes/, data/ and videos/)"
        )
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise WmSimError(f"{path} is not valid JSON ({exc})") from None
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version != CODEBASE_VERSION:
        raise WmSimError(
            f"{path} has codebase_version {version!r}; wm-sim reads LeRobot {CODEBASE_VERSION} only"
            + (" (v2.x keeps one file per episode; LeRobot's convert_dataset_v21_to_v30 converts it)"
               if isinstance(version, str) and version.startswith("v2") else "")
        )  # fmt: skip
    for key, kind in (("fps", (int, float)), ("features", dict)):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise WmSimError(f"{path}: {key!r} is missing or malformed, got {info.get(key)!r}")
    return info


def read_episodes(root: Path) -> list[dict]:
    """Every row of meta/episodes/*/*.parquet without the stats columns, by episode_index."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise WmSimError(f"{root} is not a LeRobot v3.0 dataset: no meta/episodes/chunk-*/file-*.parquet")
    rows = []
    for path in files:
        schema = read_schema(path)
        table = read_parquet(path, [n for n in schema.names if not n.startswith("stats/")])
        rows += table.to_pylist()
    required = ("episode_index", "length", "dataset_from_index", "dataset_to_index",
                "data/chunk_index", "data/file_index")  # fmt: skip
    for column in required:
        if any(column not in row for row in rows):
            raise WmSimError(f"{files[0].parent.parent} has no column {column!r} in its episodes table")
    rows.sort(key=lambda row: row["episode_index"])
    return rows


def read_schema(path: Path):
    """A parquet file's pyarrow schema, without reading its rows; a damaged file is one clear error."""
    pq = pyarrow_parquet()
    try:
        return pq.read_schema(path)
    except (OSError, ValueError) as exc:
        raise WmSimError(f"{path} is damaged: it cannot be read as parquet ({first_line(exc)})") from None


def camera_name(key: str) -> str:
    """The store's camera name for a LeRobot image key: `observation.images.wrist` -> `wrist`."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]
