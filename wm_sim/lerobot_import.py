"""`wm-sim import-lerobot`: a LeRobot v3.0 folder (wm_sim.lerobot_format) into a new dataset store.

Importing maps LeRobot's keys onto the store's (they are the same names), keeps every camera
(square-cropped and resized to `image_size`, as `ros import-bag` does), fps and episode
boundaries, and maps the actions onto [-1, 1] (the world-model env's action space) from their
observed range, as `ros import-bag` does. Columns the dataset lacks (`next.reward`, `next.success`,
`next.terminated`) are filled with zeros and listed in the store's `collection["unlabelled"]`.
A folder written by `wm-sim export-lerobot` has `meta/wm_sim.json`: its task name and action
bounds give back the same actions, not re-normalised ones.

The store is built beside `out` and renamed into place once complete, so `out` is whole or absent
and never replaced; pyarrow and PyAV are imported (through wm_sim.optional) only where used.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wm_sim.config import check_output_path
from wm_sim.data.imports import write_imported_store
from wm_sim.data.schema import (
    ACTION_KEY,
    DONE_KEY,
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
from wm_sim.errors import WmSimError, first_line
from wm_sim.lerobot_format import (
    DATA_PATH,
    INDEX_KEYS,
    INFO_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    WM_SIM_PATH,
    camera_name,
    fill_path,
    read_episodes,
    read_info,
    read_parquet,
    read_schema,
)
from wm_sim.optional import require
from wm_sim.ros.messages import square_frame

LABELS = (REWARD_KEY, DONE_KEY, TERMINATED_KEY, SUCCESS_KEY)  # per-frame scalars the store keeps
REPORT_FILE = "import_report.json"


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
        return self.root / fill_path(template, episode["data/chunk_index"], episode["data/file_index"])

    def video_file(self, key: str, episode: dict) -> Path:
        template = self.info.get("video_path") or VIDEO_PATH
        chunk, file = episode[f"videos/{key}/chunk_index"], episode[f"videos/{key}/file_index"]
        return self.root / fill_path(template, chunk, file, video_key=key)


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
        names = read_schema(path).names
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
            raise WmSimError(f"{path} is damaged: its frames do not decode ({first_line(exc)})") from None

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
            raise WmSimError(f"{path} is not a readable video ({first_line(exc)})") from None
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
