"""What a dataset store holds: key names, feature shapes, and the attributes that describe it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from wm_sim.errors import WmSimError

SCHEMA_VERSION = 1
IMAGE_PREFIX = "observation.images."

# LeRobot's key names, plus what this project needs to replay and to train termination heads.
STATE_KEY = "observation.state"
ACTION_KEY = "action"
REWARD_KEY = "next.reward"
DONE_KEY = "next.done"  # the episode ended here: terminated or truncated (LeRobot's meaning)
TERMINATED_KEY = "next.terminated"  # the task itself ended the episode (what a continue head learns)
SUCCESS_KEY = "next.success"
TIMESTAMP_KEY = "timestamp"
FRAME_INDEX_KEY = "frame_index"
EPISODE_INDEX_KEY = "episode_index"
PHYSICS_STATE_KEY = "physics_state"


def image_key(camera: str) -> str:
    return f"{IMAGE_PREFIX}{camera}"


def frames_of(arrays: Mapping[str, np.ndarray], cameras: Sequence[str]) -> np.ndarray:
    """The world model's frames from a store's per-camera image arrays (..., S, S, 3): one
    camera's as they are, several stacked (..., K, S, S, 3) in `cameras` order."""
    if len(cameras) == 1:
        return arrays[image_key(cameras[0])]
    return np.stack([arrays[image_key(c)] for c in cameras], axis=-4)


def observed_frames(pixels: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    """An env observation's pixels as the world model takes them: an image (batch) as it is, a
    dict of images per camera (several cameras) stacked (..., K, S, S, 3) in the dict's order,
    which is the env's `cameras` order."""
    if isinstance(pixels, Mapping):
        return np.stack([np.asarray(v) for v in pixels.values()], axis=-4)
    return np.asarray(pixels)


@dataclass(frozen=True)
class Feature:
    """One per-frame array: its shape after the frame axis, dtype and (optional) entry names."""

    shape: tuple[int, ...]
    dtype: str
    names: list[str] | None = None


def frame_features(
    cameras: list[str],
    image_size: int,
    state_names: list[str],
    action_names: list[str],
    physics_state_size: int | None = None,
) -> dict[str, Feature]:
    """Every per-frame array of a dataset; `physics_state` only where the episodes can be replayed."""
    features = {image_key(cam): Feature((image_size, image_size, 3), "uint8") for cam in cameras}
    features |= {
        STATE_KEY: Feature((len(state_names),), "float32", list(state_names)),
        ACTION_KEY: Feature((len(action_names),), "float32", list(action_names)),
        REWARD_KEY: Feature((), "float32"),
        DONE_KEY: Feature((), "bool"),
        TERMINATED_KEY: Feature((), "bool"),
        SUCCESS_KEY: Feature((), "bool"),
        TIMESTAMP_KEY: Feature((), "float32"),
        FRAME_INDEX_KEY: Feature((), "int64"),
        EPISODE_INDEX_KEY: Feature((), "int64"),
    }
    if physics_state_size is not None:
        features[PHYSICS_STATE_KEY] = Feature((physics_state_size,), "float64")
    return features


def episode_bookkeeping(episode_index: int, timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """The per-row bookkeeping of one episode: done on its last row, time, frame and episode index."""
    length = len(timestamps)
    done = np.zeros(length, dtype=bool)
    done[-1] = True
    return {
        DONE_KEY: done,
        TIMESTAMP_KEY: np.asarray(timestamps, dtype=np.float32),
        FRAME_INDEX_KEY: np.arange(length, dtype=np.int64),
        EPISODE_INDEX_KEY: np.full(length, episode_index, dtype=np.int64),
    }


@dataclass(frozen=True)
class DatasetInfo:
    """The store's attributes: enough to interpret, replay and train on it without other files."""

    task: str
    fps: float
    image_size: int
    cameras: list[str]
    action_low: list[float]
    action_high: list[float]
    features: dict[str, Feature]
    episode_steps: int
    # how the episodes were made (policy, seed): a resumed collection must match it
    collection: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_attrs(self) -> dict:
        attrs = asdict(self)
        attrs["features"] = {
            k: {"shape": list(f.shape), "dtype": f.dtype, "names": f.names} for k, f in self.features.items()
        }
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict, where: str) -> DatasetInfo:
        version = attrs.get("schema_version")
        if not attrs:
            raise WmSimError(
                f"{where} has no attributes: its creation never finished (killed at the start?); delete it and collect again"
            )
        if version is None:
            raise WmSimError(f"{where} is not a wm-sim dataset: its attributes have no schema_version")
        if version != SCHEMA_VERSION:
            raise WmSimError(
                f"{where} has dataset schema version {version!r}; this wm-sim reads version {SCHEMA_VERSION}"
            )
        try:
            features = {
                k: Feature(tuple(f["shape"]), f["dtype"], f.get("names"))
                for k, f in attrs["features"].items()
            }
            return cls(
                task=attrs["task"],
                fps=float(attrs["fps"]),
                image_size=int(attrs["image_size"]),
                cameras=list(attrs["cameras"]),
                action_low=list(attrs["action_low"]),
                action_high=list(attrs["action_high"]),
                features=features,
                episode_steps=int(attrs["episode_steps"]),
                collection=dict(attrs.get("collection", {})),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WmSimError(
                f"{where} is corrupt: its attributes are incomplete or malformed ({exc!r})"
            ) from exc

    def incompatibility(self, other: DatasetInfo) -> str | None:
        """Why episodes described by `other` cannot join this store, or None when they can."""
        for name in ("task", "image_size", "fps", "cameras", "episode_steps", "action_low", "action_high"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"it holds {name}={mine!r}, this run makes {name}={theirs!r}"
        if self.features != other.features:
            return "its features (keys, shapes or dtypes) differ from this run's"
        if self.collection.get("repairs"):  # set by `wm-sim check-data repair=true`
            dropped = ", later ".join(str(r.get("dropped_episodes")) for r in self.collection["repairs"])
            return (
                f"`wm-sim check-data repair=true` dropped its episodes {dropped}, so its episode i is no "
                "longer the one made from seed (seed, i) and resuming would repeat episodes; collect into a new store"
            )
        for name, value in other.collection.items():
            if self.collection.get(name) != value:
                return (
                    f"it was collected with {name}={self.collection.get(name)!r}, this run asks for {value!r}"
                )
        return None
