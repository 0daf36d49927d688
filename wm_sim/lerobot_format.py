"""LeRobot v3.0 datasets in and out: `wm-sim import-lerobot` and `wm-sim export-lerobot`.

The layout both verbs read and write (LeRobot's codebase_version "v3.0"):

    meta/info.json                           fps, features, path templates, totals, splits
    meta/episodes/chunk-000/file-000.parquet one row per episode: its rows' global index range
                                             [dataset_from_index, dataset_to_index), its data file,
                                             and per video key its file and [from, to) timestamps
    meta/tasks.parquet                       task strings (the index) and their task_index
    meta/stats.json                          per feature: min, max, mean, std, count
    data/chunk-000/file-000.parquet          one row per frame: features, timestamp, frame_index,
                                             episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4      several episodes' frames, one after another

Importing maps LeRobot's keys onto the store's (they are the same names), keeps every camera
(square-cropped and resized to `image_size`, as `ros import-bag` does), fps and episode
boundaries, and maps the actions onto [-1, 1] (the world-model env's action space) from their
observed range, as `ros import-bag` does. Columns the dataset lacks (`next.reward`, `next.success`,
`next.terminated`) are filled with zeros and listed in the store's `collection["unlabelled"]`.

Exporting also writes `meta/wm_sim.json` (LeRobot ignores it): the store's task name and action
bounds, so that importing an export gives back the same actions, not re-normalised ones.

Both write beside `out` and rename when complete: `out` is whole or absent, and never replaced.
pyarrow and PyAV are imported inside the functions that need them, through wm_sim.optional.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.config import check_output_path
from wm_sim.data.imports import build_beside, write_imported_store
from wm_sim.data.schema import (
    ACTION_KEY,
    DONE_KEY,
    IMAGE_PREFIX,
    PHYSICS_STATE_KEY,
    REWARD_KEY,
    STATE_KEY,
    SUCCESS_KEY,
    TERMINATED_KEY,
    DatasetInfo,
    episode_bookkeeping,
    frame_features,
    image_key,
)
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.optional import require
from wm_sim.ros.messages import square_frame

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
WM_SIM_PATH = "meta/wm_sim.json"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
LABELS = (REWARD_KEY, DONE_KEY, TERMINATED_KEY, SUCCESS_KEY)  # per-frame scalars the store keeps
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
REPORT_FILE = "import_report.json"
IMAGE_STATS_FRAMES = 100
ARROW_TO_HF = {"float": "float32", "double": "float64", "halffloat": "float16"}  # type names


@dataclass
class ImportLeRobotConfig:
    """Options of `wm-sim import-lerobot`."""

    root: str = field(
        default="", metadata={"help": "the LeRobot v3.0 dataset folder (holding meta/info.json)"}
    )
    out: str = field(
        default="", metadata={"help": "the zarr store to create; '' = datasets/<folder name>.zarr"}
    )
    image_size: int = field(default=64, metadata={"help": "square frame size: centre crop, then resize"})
    task: str = field(
        default="",
        metadata={"help": "the store's task name; '' = the exporting store's, or lerobot:<folder>"},
    )
    action_low: list[float] = field(
        default_factory=list, metadata={"help": "action mapped to -1, per entry; [] = the smallest observed"}
    )
    action_high: list[float] = field(
        default_factory=list, metadata={"help": "action mapped to +1, per entry; [] = the largest observed"}
    )


@dataclass
class ExportLeRobotConfig:
    """Options of `wm-sim export-lerobot`."""

    data: str = field(default="", metadata={"help": "the zarr dataset store to export"})
    out: str = field(default="", metadata={"help": "the LeRobot dataset folder to create (must not exist)"})
    # Store frames are small (64 px) and rendered scenes have sharp coloured edges: yuv420p's
    # half-resolution colour alone costs them ~31 dB PSNR, and crf 10 keeps H.264's own loss below that.
    crf: int = field(default=10, metadata={"help": "H.264 quality, 0-51: lower is closer to the frames"})
    robot_type: str = field(default="", metadata={"help": "info.json's robot_type; '' = null"})


# --- reading a LeRobot folder ------------------------------------------------------------------


@dataclass
class Source:
    """A checked LeRobot v3.0 folder: its info, episodes and which of its features the store takes."""

    root: Path
    info: dict
    episodes: list[dict]  # the episodes table's rows (no stats columns), by episode_index
    cameras: dict[str, str]  # store camera -> LeRobot feature key
    state_names: list[str]
    action_names: list[str]
    labels: list[str]  # the LABELS the data files have
    physics_state_size: int | None
    exported: dict | None  # meta/wm_sim.json of a wm-sim export
    tasks: list[str]

    def feature(self, key: str) -> dict:
        return self.info["features"][key]

    def data_columns(self) -> list[str]:
        """The columns the store takes from the data files (frames of `image` features included)."""
        images = [k for k in self.cameras.values() if self.feature(k)["dtype"] == "image"]
        physics = [PHYSICS_STATE_KEY] if self.physics_state_size is not None else []
        return [*images, STATE_KEY, ACTION_KEY, *self.labels, *physics, "timestamp", "index"]

    def data_file(self, episode: dict) -> Path:
        template = self.info.get("data_path") or DATA_PATH
        return self.root / _fill(template, episode["data/chunk_index"], episode["data/file_index"])

    def video_file(self, key: str, episode: dict) -> Path:
        template = self.info.get("video_path") or VIDEO_PATH
        chunk, file = episode[f"videos/{key}/chunk_index"], episode[f"videos/{key}/file_index"]
        return self.root / _fill(template, chunk, file, video_key=key)


def _fill(template: str, chunk: int, file: int, **names: str) -> str:
    return template.format(chunk_index=int(chunk), file_index=int(file), **names)


def read_parquet(path: Path, columns: list[str] | None = None):
    """A parquet file as a pyarrow Table; a damaged or missing file is one clear error naming it."""
    pq = _pyarrow_parquet()
    if not path.is_file():
        raise WmSimError(f"{path} is missing")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise WmSimError(f"{path} is damaged: it cannot be read as parquet ({_first_line(exc)})") from None


def _pyarrow_parquet():
    require("pyarrow")
    import pyarrow.parquet as pq

    return pq


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
        schema = _read_schema(path)
        table = read_parquet(path, [n for n in schema.names if not n.startswith("stats/")])
        rows += table.to_pylist()
    required = ("episode_index", "length", "dataset_from_index", "dataset_to_index",
                "data/chunk_index", "data/file_index")  # fmt: skip
    for column in required:
        if any(column not in row for row in rows):
            raise WmSimError(f"{files[0].parent.parent} has no column {column!r} in its episodes table")
    rows.sort(key=lambda row: row["episode_index"])
    return rows


def _read_schema(path: Path):
    pq = _pyarrow_parquet()
    try:
        return pq.read_schema(path)
    except (OSError, ValueError) as exc:
        raise WmSimError(f"{path} is damaged: it cannot be read as parquet ({_first_line(exc)})") from None


def _names(feature: dict, count: int, prefix: str) -> list[str]:
    """A vector's entry names from info.json (a list, or a dict of lists), else prefix_0, prefix_1, ..."""
    names = feature.get("names")
    if isinstance(names, dict):  # e.g. {"motors": ["shoulder", ...]}
        names = [n for group in names.values() for n in (group if isinstance(group, list) else [group])]
    if isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{prefix}_{i}" for i in range(count)]


def _vector_size(info: dict, key: str) -> int:
    feature = info["features"].get(key)
    if feature is None:
        raise WmSimError(
            f"meta/info.json has no feature {key!r}; the store needs {STATE_KEY} and {ACTION_KEY}"
        )
    shape = feature.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0):
        raise WmSimError(f"meta/info.json: feature {key!r} has shape {shape!r}; expected one axis, e.g. [6]")
    return shape[0]


def camera_name(key: str) -> str:
    """The store's camera name for a LeRobot image key: `observation.images.wrist` -> `wrist`."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]


def open_source(root: Path) -> Source:
    """Read and check a LeRobot folder: info, episodes, and that every file they name is there."""
    info = read_info(root)
    features = info["features"]
    keys = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in ("video", "image")]
    if not keys:
        raise WmSimError(f"{root / INFO_PATH} names no camera (no feature of dtype video or image)")
    cameras = {camera_name(k): k for k in keys}
    if len(cameras) != len(keys):
        raise WmSimError(f"{root / INFO_PATH}: cameras {keys} do not have distinct names")
    state_size, action_size = _vector_size(info, STATE_KEY), _vector_size(info, ACTION_KEY)
    physics = features.get(PHYSICS_STATE_KEY)
    source = Source(
        root, info, read_episodes(root), cameras,
        _names(features[STATE_KEY], state_size, "state"), _names(features[ACTION_KEY], action_size, "action"),
        [k for k in LABELS if k in features], _vector_size(info, PHYSICS_STATE_KEY) if physics else None,
        _read_exported(root), _read_tasks(root),
    )  # fmt: skip
    if not source.episodes:
        raise WmSimError(f"{root} holds no episode")
    empty = [e["episode_index"] for e in source.episodes if int(e["length"]) < 1]
    if empty:
        raise WmSimError(f"{root}: meta/episodes gives episodes {empty} no frames; every episode needs one")
    _check_files(source)
    return source


def _read_exported(root: Path) -> dict | None:
    path = root / WM_SIM_PATH
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise WmSimError(f"{path} is not valid JSON ({exc})") from None


def _read_tasks(root: Path) -> list[str]:
    path = root / TASKS_PATH
    if not path.is_file():
        return []
    table = read_parquet(path)
    column = next((n for n in ("task", "__index_level_0__") if n in table.column_names), None)
    return [str(t) for t in table.column(column).to_pylist()] if column else []


def _check_files(source: Source) -> None:
    """Refuse a camera the files lack, or a data or video file an episode names but that is not there."""
    root = source.root
    for camera, key in source.cameras.items():
        if source.feature(key)["dtype"] != "video":
            continue
        if not (root / "videos" / key).is_dir() or any(
            f"videos/{key}/chunk_index" not in e for e in source.episodes
        ):
            raise WmSimError(
                f"camera {key!r} is named in {root / INFO_PATH} but absent: no folder {root / 'videos' / key} "
                f"or no videos/{key}/... columns in meta/episodes"
            )
        for episode in source.episodes:
            path = source.video_file(key, episode)
            if not path.is_file():
                raise WmSimError(
                    f"the video file {path} is missing (episode {episode['episode_index']}, camera {camera})"
                )
    for path in sorted({source.data_file(e) for e in source.episodes}):
        if not path.is_file():
            raise WmSimError(f"the data file {path} is missing (named by meta/episodes)")
        names = _read_schema(path).names
        for column in source.data_columns():
            if column not in names:
                raise WmSimError(f"{path} has no column {column!r}, which {INFO_PATH} names as a feature")


# --- frames ------------------------------------------------------------------------------------


class VideoReader:
    """Decodes one camera's mp4 files forward, so episodes read in order cost one pass per file."""

    def __init__(self, key: str):
        self.key = key
        self.path: Path | None = None
        self._container = None
        self._frames: Iterator | None = None
        self._ahead = None  # (time, frame) decoded but not yet passed

    def frames_at(self, path: Path, times: np.ndarray, tolerance: float, size: int) -> np.ndarray:
        """(T, size, size, 3) uint8: the frame of `path` shown at each time (ascending seconds)."""
        if path != self.path or (self._ahead is not None and self._ahead[0] > times[0] + tolerance):
            self._open(path, float(times[0]))
        try:
            return np.stack([square_frame(self._frame_at(t, tolerance), size) for t in times])
        except self._av_errors() as exc:
            raise WmSimError(f"{path} is damaged: its frames do not decode ({_first_line(exc)})") from None

    def _frame_at(self, time: float, tolerance: float) -> np.ndarray:
        while True:
            if self._ahead is None:
                frame = next(self._frames, None)
                if frame is None:
                    raise WmSimError(f"{self.path} ends before {time:.4f} s, where {self.key} needs a frame")
                if frame.time is None:
                    raise WmSimError(f"{self.path} has a frame without a timestamp (no pts)")
                self._ahead = (float(frame.time), frame)
            at, frame = self._ahead
            if at < time - tolerance:  # a frame before the one wanted: pass it
                self._ahead = None
                continue
            if at > time + tolerance:
                raise WmSimError(
                    f"{self.path} has no frame at {time:.4f} s (the next is at {at:.4f} s): its timestamps "
                    "do not match meta/episodes' from_timestamp plus the data's timestamp"
                )
            return frame.to_ndarray(format="rgb24")

    def _open(self, path: Path, start: float) -> None:
        av = require("av")
        self.close()
        try:
            self._container = av.open(str(path))
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0 and stream.time_base:  # to the keyframe before `start`, then forward
                self._container.seek(int(start / stream.time_base), stream=stream, backward=True)
            self._frames = self._container.decode(stream)
        except (IndexError, *self._av_errors()) as exc:
            raise WmSimError(f"{path} is not a readable video ({_first_line(exc)})") from None
        self.path, self._ahead = path, None

    @staticmethod
    def _av_errors() -> tuple[type[BaseException], ...]:
        return (require("av").error.FFmpegError, OSError, ValueError)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self.path, self._ahead = None, None, None, None


def _images_from_column(table, key: str, size: int, path: Path) -> np.ndarray:
    """Frames of an `image` feature: PNG or JPEG bytes in the data file, as the datasets library stores them."""
    from PIL import Image, UnidentifiedImageError

    frames = []
    for cell in table.column(key).to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise WmSimError(f"{path}: column {key!r} holds an image without bytes")
        try:
            with Image.open(io.BytesIO(data)) as image:
                frames.append(square_frame(np.asarray(image.convert("RGB")), size))
        except (UnidentifiedImageError, OSError) as exc:
            raise WmSimError(f"{path}: an image of {key!r} does not decode ({exc})") from None
    return np.stack(frames)


# --- rows of the store -------------------------------------------------------------------------


def _column(table, key: str, width: int | None, dtype: str) -> np.ndarray:
    """A data column as numpy: (N, width) for a vector (fixed-size or plain lists), (N,) for a scalar."""
    pa = require("pyarrow")
    column = table.column(key).combine_chunks()
    if (
        pa.types.is_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False))
        values = values.reshape(len(column), -1)
        if width is None:  # a scalar stored as a one-entry list
            values = values[:, 0]
        elif values.shape[1] != width:
            raise WmSimError(f"column {key!r} has {values.shape[1]} entries per row; info.json says {width}")
    else:
        values = np.asarray(column.to_numpy(zero_copy_only=False))
    return values.astype(dtype)


class DataFiles:
    """The data parquet files, read whole and kept one at a time (episodes share them in order)."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.path: Path | None = None
        self.table = None
        self.index: np.ndarray | None = None

    def rows(self, path: Path, episode: dict):
        if path != self.path:
            self.table = read_parquet(path, self.columns)
            self.index, self.path = _column(self.table, "index", None, "int64"), path
        lo, hi = int(episode["dataset_from_index"]), int(episode["dataset_to_index"])
        picks = np.flatnonzero((self.index >= lo) & (self.index < hi))
        length = int(episode["length"])
        if len(picks) != length or (length and picks[-1] - picks[0] + 1 != length):
            raise WmSimError(
                f"{path} holds {len(picks)} rows of episode {episode['episode_index']} (index {lo} to {hi}); "
                f"meta/episodes says {length}"
            )
        return self.table.slice(int(picks[0]), length)


@dataclass(frozen=True)
class ActionMap:
    """How recorded actions map onto the store's [-1, 1]: `low` to -1 and `high` to +1, per entry."""

    low: np.ndarray
    high: np.ndarray
    kept: bool  # actions stored as recorded (a wm-sim export, or low = -1 and high = +1)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        if self.kept:
            return actions.astype(np.float32)
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        mapped = np.where(self.high > self.low, 2.0 * (actions - self.low) / span - 1.0, 0.0)
        return np.clip(mapped, -1.0, 1.0).astype(np.float32)


def _action_map(cfg: ImportLeRobotConfig, source: Source) -> ActionMap:
    """The given range, a wm-sim export's own bounds, or the range the recorded actions use."""
    dim = len(source.action_names)
    if cfg.action_low:
        low, high = np.asarray(cfg.action_low, np.float64), np.asarray(cfg.action_high, np.float64)
        if low.shape != (dim,) or high.shape != (dim,) or not (low < high).all():
            raise WmSimError(
                f"action_low and action_high need {dim} entries each (the action's length), each low below "
                f"its high; got {cfg.action_low} and {cfg.action_high}"
            )
    elif source.exported is not None:
        low = np.asarray(source.exported.get("action_low", [-1.0] * dim), np.float64)
        high = np.asarray(source.exported.get("action_high", [1.0] * dim), np.float64)
    else:
        files = sorted({source.data_file(e) for e in source.episodes})
        actions = np.concatenate(
            [_column(read_parquet(f, [ACTION_KEY]), ACTION_KEY, dim, "float64") for f in files]
        )
        low, high = actions.min(0), actions.max(0)
    kept = bool((low == -1.0).all() and (high == 1.0).all())
    return ActionMap(low, high, kept)


def _store_info(cfg: ImportLeRobotConfig, source: Source, actions: ActionMap) -> DatasetInfo:
    cameras = list(source.cameras)
    exported = source.exported or {}
    dim = len(source.action_names)
    return DatasetInfo(
        task=cfg.task or exported.get("task") or f"lerobot:{source.root.resolve().name}",
        fps=float(source.info["fps"]),
        image_size=cfg.image_size,
        cameras=cameras,
        action_low=[-1.0] * dim,
        action_high=[1.0] * dim,
        features=frame_features(
            cameras, cfg.image_size, source.state_names, source.action_names, source.physics_state_size
        ),
        episode_steps=max(int(e["length"]) for e in source.episodes),
        collection={
            "source": "lerobot",
            "root": str(source.root.resolve()),
            "codebase_version": source.info["codebase_version"],
            "robot_type": source.info.get("robot_type"),
            "tasks": source.tasks,
            # the store's label columns this dataset has none of: filled with zeros (done: the last row)
            "unlabelled": [k for k in LABELS if k not in source.labels],
            "command_low": actions.low.tolist(),
            "command_high": actions.high.tolist(),
            "report": REPORT_FILE,
        },
    )


def _episode_rows(
    source: Source, info: DatasetInfo, episode: dict, index: int, data: DataFiles,
    videos: dict[str, VideoReader], actions: ActionMap,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The store rows of one LeRobot episode."""
    path = source.data_file(episode)
    table = data.rows(path, episode)
    length = table.num_rows
    timestamps = _column(table, "timestamp", None, "float64")
    rows = {
        STATE_KEY: _column(table, STATE_KEY, len(source.state_names), "float32"),
        ACTION_KEY: actions(_column(table, ACTION_KEY, len(source.action_names), "float64")),
        REWARD_KEY: np.zeros(length, np.float32),
        TERMINATED_KEY: np.zeros(length, bool),
        SUCCESS_KEY: np.zeros(length, bool),
    } | episode_bookkeeping(index, timestamps)
    for key in source.labels:
        rows[key] = _column(table, key, None, info.features[key].dtype)
    if source.physics_state_size is not None:
        rows[PHYSICS_STATE_KEY] = _column(table, PHYSICS_STATE_KEY, source.physics_state_size, "float64")
    tolerance = 0.4 / float(source.info["fps"])  # under half a frame: the nearest frame, never its neighbour
    for camera, key in source.cameras.items():
        if source.feature(key)["dtype"] == "image":
            rows[image_key(camera)] = _images_from_column(table, key, info.image_size, path)
            continue
        start = float(episode[f"videos/{key}/from_timestamp"])
        rows[image_key(camera)] = videos[key].frames_at(
            source.video_file(key, episode), start + timestamps, tolerance, info.image_size
        )
    return rows


def _store_episodes(source: Source, info: DatasetInfo, actions: ActionMap) -> Iterator[dict[str, np.ndarray]]:
    """The store rows of every episode, one at a time (frames are decoded as they are written)."""
    data = DataFiles(source.data_columns())
    videos = {key: VideoReader(key) for key in source.cameras.values()}
    try:
        for index, episode in enumerate(source.episodes):
            yield _episode_rows(source, info, episode, index, data, videos, actions)
    finally:
        for reader in videos.values():
            reader.close()


def import_lerobot(cfg: ImportLeRobotConfig) -> Path:
    """Convert the LeRobot v3.0 folder `cfg.root` into the new dataset store `cfg.out`; returns its path."""
    if not cfg.root:
        raise WmSimError("root= is required: the LeRobot dataset folder (holding meta/info.json)")
    if not 16 <= cfg.image_size <= 512:
        raise WmSimError(f"image_size must be an integer in [16, 512], got {cfg.image_size}")
    if bool(cfg.action_low) != bool(cfg.action_high):
        raise WmSimError("give both action_low and action_high, or neither (the observed range)")
    root = Path(cfg.root)
    out = Path(cfg.out or f"datasets/{root.resolve().name}.zarr")
    if out.exists():
        raise WmSimError(f"{out} already exists; refusing to overwrite it: choose another out= or delete it")
    check_output_path(out)
    source = open_source(root)
    actions = _action_map(cfg, source)
    info = _store_info(cfg, source, actions)
    report = {
        "root": str(root.resolve()), "out": str(out), "fps": info.fps, "episodes": len(source.episodes),
        "rows": int(sum(int(e["length"]) for e in source.episodes)), "cameras": source.cameras,
        "unlabelled": info.collection["unlabelled"], "actions": "kept as recorded" if actions.kept else
        "mapped linearly from command_low .. command_high onto [-1, 1]",
        "left_out": [k for k in source.info["features"] if k not in _imported_keys(source)],
    }  # fmt: skip
    write_imported_store(out, info, _store_episodes(source, info, actions), report, REPORT_FILE)
    print(
        f"{root} -> {out}: {report['episodes']} episodes, {report['rows']} rows at {info.fps:g} fps, "
        f"cameras {', '.join(info.cameras)}; actions {report['actions']}; "
        f"unlabelled: {', '.join(report['unlabelled']) or 'none'}; left out: {', '.join(report['left_out']) or 'none'}"
    )
    return out


def _imported_keys(source: Source) -> set[str]:
    return {*source.cameras.values(), STATE_KEY, ACTION_KEY, *source.labels, PHYSICS_STATE_KEY, *INDEX_KEYS}


# --- writing a LeRobot folder ------------------------------------------------------------------


def _lerobot_features(store: EpisodeStore, fps: float) -> dict[str, dict]:
    """info.json's features: one video per camera, then the store's per-frame arrays."""
    size = store.info.image_size
    features = {
        image_key(camera): {
            "dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": size, "video.width": size, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False},
        }
        for camera in store.info.cameras
    }  # fmt: skip
    for key, feature in store.info.features.items():
        if key.startswith(IMAGE_PREFIX) or key in INDEX_KEYS:
            continue
        features[key] = {"dtype": feature.dtype, "shape": list(feature.shape) or [1], "names": feature.names}
    for key, dtype in zip(INDEX_KEYS, ("float32", "int64", "int64", "int64", "int64"), strict=True):
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    return features


class VideoWriter:
    """One camera's mp4: every episode's frames one after another, H.264 in yuv420p (LeRobot's reader decodes it)."""

    def __init__(self, path: Path, size: int, fps: float, crf: int):
        av = require("av")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width = self._stream.height = size
        self._stream.pix_fmt = "yuv420p"
        # a keyframe every 2 frames, as LeRobot encodes: its reader seeks to any frame cheaply
        self._stream.options = {"crf": str(crf), "g": "2"}
        self._av, self.frames = av, 0  # frame k has pts k in the codec's time base, 1 / rate

    def write(self, frames: np.ndarray) -> None:
        for image in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            # each chroma sample the mean of its 2x2 pixels (swscale's default filter keeps less colour)
            frame = frame.reformat(format="yuv420p", interpolation="AREA")
            frame.pts = self.frames
            self._container.mux(self._stream.encode(frame))
            self.frames += 1

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))  # the frames the encoder still holds
        self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError, ValueError, self._av.error.FFmpegError):
            self._container.close()


def _stats(values: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """min, max, mean, std, count of one feature, as LeRobot keeps them (images: per channel in [0, 1]).

    Images are sampled, at most IMAGE_STATS_FRAMES evenly spread frames per episode (as LeRobot does):
    all frames of a long, large episode in float64 would take gigabytes.
    """
    if image:
        values = values[np.unique(np.linspace(0, len(values) - 1, IMAGE_STATS_FRAMES).round().astype(int))]
    frames = len(values)
    if image:
        values = values.reshape(-1, values.shape[-1]) / np.float32(255.0)
        shape = (values.shape[-1], 1, 1)
    else:
        values = values.reshape(len(values), -1).astype(np.float64)
        shape = (values.shape[-1],)
    reduced = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
    return {k: v.reshape(shape) for k, v in reduced.items()} | {"count": np.array([frames])}


def _aggregate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The stats of all episodes from each episode's: counts weigh means and variances."""
    counts = np.array([p["count"][0] for p in parts], np.float64)
    weights = (counts / counts.sum()).reshape(-1, *([1] * parts[0]["mean"].ndim))
    means = np.stack([p["mean"] for p in parts])
    mean = (weights * means).sum(0)
    variance = (weights * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(0)
    return {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0),
            "mean": mean, "std": np.sqrt(variance), "count": np.array([int(counts.sum())])}  # fmt: skip


def _episode_stats(rows: dict[str, np.ndarray], features: dict[str, dict]) -> dict[str, dict]:
    return {key: _stats(rows[key], feature["dtype"] == "video") for key, feature in features.items()}


def _data_rows(rows: dict[str, np.ndarray], episode: int, first: int, fps: float) -> dict[str, np.ndarray]:
    """One episode's LeRobot data columns: the store's arrays, then LeRobot's bookkeeping."""
    length = len(rows[ACTION_KEY])
    out = {k: v for k, v in rows.items() if not k.startswith(IMAGE_PREFIX) and k not in INDEX_KEYS}
    # LeRobot finds a frame in the video at from_timestamp + timestamp: frame_index / fps, exactly
    out["timestamp"] = (np.arange(length) / fps).astype(np.float32)
    out["frame_index"] = np.arange(length, dtype=np.int64)
    out["episode_index"] = np.full(length, episode, np.int64)
    out["index"] = np.arange(first, first + length, dtype=np.int64)
    out["task_index"] = np.zeros(length, np.int64)
    return out


def _arrow_table(columns: dict[str, np.ndarray]):
    """Vectors as fixed-size lists, scalars as plain columns (what LeRobot's datasets writer makes)."""
    pa = require("pyarrow")
    arrays = {}
    for key, values in columns.items():
        if values.ndim == 1:
            arrays[key] = pa.array(values)
        else:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            arrays[key] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    return pa.table(arrays)


def _hf_metadata(table) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata with which the datasets library reads the columns' types back."""
    pa = require("pyarrow")

    def feature(kind) -> dict:
        if pa.types.is_fixed_size_list(kind):
            return {"feature": feature(kind.value_type), "length": kind.list_size, "_type": "List"}
        return {"dtype": ARROW_TO_HF.get(str(kind), str(kind)), "_type": "Value"}

    features = {f.name: feature(f.type) for f in table.schema}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _write_parquet(table, path: Path, metadata: dict[bytes, bytes] | None = None) -> None:
    pq = _pyarrow_parquet()
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path)


def _tasks_table(task: str):
    """meta/tasks.parquet as pandas writes it: LeRobot reads it with pandas, the task string as the index."""
    pa = require("pyarrow")
    pandas = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0",
    }  # fmt: skip
    table = pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": pa.array([task])})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()})


def _episode_record(
    index: int, first: int, length: int, fps: float, start_frame: int, cameras: list[str], stats: dict
) -> dict:
    """One row of meta/episodes: where the episode's rows and frames are, and its stats."""
    record = {
        "episode_index": index, "tasks": None, "length": length,
        "data/chunk_index": 0, "data/file_index": 0,
        "dataset_from_index": first, "dataset_to_index": first + length,
    }  # fmt: skip
    for key in cameras:
        record |= {
            f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
            f"videos/{key}/from_timestamp": start_frame / fps, f"videos/{key}/to_timestamp": (start_frame + length) / fps,
        }  # fmt: skip
    for key, stat in stats.items():
        record |= {f"stats/{key}/{name}": value.tolist() for name, value in stat.items()}
    record |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
    return record


class EpisodeWriter:
    """Appends episodes to the data parquet and one mp4 per camera, keeping what meta/ will say of them."""

    def __init__(self, store: EpisodeStore, root: Path, fps: float, crf: int):
        self.store, self.root, self.fps = store, root, fps
        self.features = _lerobot_features(store, fps)
        self.cameras = [image_key(c) for c in store.info.cameras]
        size = store.info.image_size
        self.videos = {
            k: VideoWriter(root / _fill(VIDEO_PATH, 0, 0, video_key=k), size, fps, crf) for k in self.cameras
        }
        self.records: list[dict] = []
        self.stats: list[dict] = []
        self.rows = 0
        self._data = None

    def append(self, index: int) -> None:
        rows = self.store.episode(index)
        start_frame = self.videos[self.cameras[0]].frames
        for key in self.cameras:
            self.videos[key].write(rows[key])
        columns = _data_rows(rows, index, self.rows, self.fps)
        table = _arrow_table(columns)
        table = table.replace_schema_metadata(_hf_metadata(table))
        if self._data is None:
            path = self.root / _fill(DATA_PATH, 0, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = _pyarrow_parquet().ParquetWriter(path, table.schema)
        self._data.write_table(table)
        stats = _episode_stats(rows | columns, self.features)
        self.stats.append(stats)
        record = _episode_record(index, self.rows, len(table), self.fps, start_frame, self.cameras, stats)
        self.records.append(record | {"tasks": [self.store.info.task]})
        self.rows += len(table)

    def close(self) -> None:
        for video in self.videos.values():
            video.close()
        if self._data is not None:
            self._data.close()

    def abort(self) -> None:
        """Close the files without finishing them: the folder is being deleted."""
        for video in self.videos.values():
            video.abort()
        if self._data is not None:
            with contextlib.suppress(OSError, ValueError):
                self._data.close()


def _write_meta(writer: EpisodeWriter, robot_type: str | None) -> None:
    """meta/: episodes, tasks, stats, wm_sim.json, and info.json last (the folder is a dataset from then on)."""
    store, root, features = writer.store, writer.root, writer.features
    pa = require("pyarrow")
    _write_parquet(pa.Table.from_pylist(writer.records), root / EPISODES_PATH)
    _write_parquet(_tasks_table(store.info.task), root / TASKS_PATH)
    stats = {key: _aggregate([s[key] for s in writer.stats]) for key in features}
    _write_json(
        root / STATS_PATH, {key: {k: v.tolist() for k, v in stat.items()} for key, stat in stats.items()}
    )
    _write_json(root / WM_SIM_PATH, {
        "format": 1, "task": store.info.task, "action_low": store.info.action_low,
        "action_high": store.info.action_high, "collection": store.info.collection,
    })  # fmt: skip
    _write_json(root / INFO_PATH, {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type or None,
        "total_episodes": store.num_episodes, "total_frames": store.num_frames, "total_tasks": 1,
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": writer.fps,
        "splits": {"train": f"0:{store.num_episodes}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
        "features": features,
    })  # fmt: skip


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4) + "\n")


def write_lerobot(store: EpisodeStore, root: Path, crf: int = 10, robot_type: str | None = None) -> None:
    """Write the whole store as a LeRobot v3.0 folder at `root` (which must not exist yet)."""
    fps = (
        int(store.info.fps) if float(store.info.fps).is_integer() else store.info.fps
    )  # LeRobot's fps is an int
    writer = EpisodeWriter(store, root, fps, crf)
    try:
        for index in tqdm(range(store.num_episodes), unit="ep", desc="export"):
            writer.append(index)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    _write_meta(writer, robot_type)


def export_lerobot(cfg: ExportLeRobotConfig) -> Path:
    """Write the store `cfg.data` as the new LeRobot v3.0 folder `cfg.out`; returns its path."""
    if not cfg.data or not cfg.out:
        raise WmSimError("data= and out= are required: the store to export and the LeRobot folder to create")
    if not 0 <= cfg.crf <= 51:
        raise WmSimError(f"crf must be an integer in [0, 51], got {cfg.crf}")
    out = Path(cfg.out)
    if out.exists():
        raise WmSimError(f"{out} already exists; refusing to overwrite it: choose another out= or delete it")
    check_output_path(out)
    require("pyarrow")
    require("av")
    store = EpisodeStore.open(cfg.data)
    if store.num_episodes == 0:
        raise WmSimError(f"{cfg.data} holds no episode; there is nothing to export")
    if store.info.image_size % 2:
        raise WmSimError(
            f"{cfg.data} has frames of {store.info.image_size} pixels; H.264 in yuv420p needs an even size"
        )
    build_beside(out, lambda partial: write_lerobot(store, partial, cfg.crf, cfg.robot_type), "exporting")
    print(
        f"{cfg.data} -> {out}: {store.num_episodes} episodes, {store.num_frames} frames, LeRobot {CODEBASE_VERSION}"
    )
    return out
