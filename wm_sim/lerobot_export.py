"""`wm-sim export-lerobot`: a dataset store written as a new LeRobot v3.0 folder (wm_sim.lerobot_format).

Exporting also writes `meta/wm_sim.json` (LeRobot ignores it): the store's task name and action
bounds, so that importing an export gives back the same actions, not re-normalised ones.

It writes beside `out` and renames when complete: `out` is whole or absent, and never replaced.
pyarrow and PyAV are imported inside the functions that need them, through wm_sim.optional.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.config import check_output_path
from wm_sim.data.imports import build_beside
from wm_sim.data.schema import ACTION_KEY, IMAGE_PREFIX, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.lerobot_format import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    INDEX_KEYS,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    WM_SIM_PATH,
    fill_path,
    pyarrow_parquet,
)
from wm_sim.optional import require

IMAGE_STATS_FRAMES = 100
ARROW_TO_HF = {"float": "float32", "double": "float64", "halffloat": "float16"}  # type names


@dataclass
class ExportLeRobotConfig:
    """Options of `wm-sim export-lerobot`."""

    data: str = field(default="", metadata={"help": "the zarr dataset store to export"})
    out: str = field(default="", metadata={"help": "the LeRobot dataset folder to create (must not exist)"})
    # Store frames are small (64 px) and rendered scenes have sharp coloured edges: yuv420p's
    # half-resolution colour alone costs them ~31 dB PSNR, and crf 10 keeps H.264's own loss below that.
    crf: int = field(default=10, metadata={"help": "H.264 quality, 0-51: lower is closer to the frames"})
    robot_type: str = field(default="", metadata={"help": "info.json's robot_type; '' = null"})


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
    pq = pyarrow_parquet()
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
            k: VideoWriter(root / fill_path(VIDEO_PATH, 0, 0, video_key=k), size, fps, crf)
            for k in self.cameras
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
            path = self.root / fill_path(DATA_PATH, 0, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pyarrow_parquet().ParquetWriter(path, table.schema)
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
