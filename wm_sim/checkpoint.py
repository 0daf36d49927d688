"""Checkpoints: safetensors tensors plus JSON metadata, written atomically, loaded without executing code.

A checkpoint is a directory:

    model.safetensors     the world model's weights (and its state normalisation buffers)
    meta.json             schema version, model config, what the data was (task, fps, image size,
                          action bounds, feature names), training step
    train_state.safetensors / train_state.json   optimiser and RNG state, for resume (optional)
    contexts.safetensors  real start contexts, in packaged models (`wm-sim package`)

`save_checkpoint` writes a new directory under a temporary name and renames it into place, then
points the `last` symlink at it by an atomic rename: a kill at any moment leaves the previous
checkpoint whole. A run holds `lock_run_directory` while it writes, which also clears what killed
saves left behind. Loading checks the metadata against what the model and the envs read, and
every tensor for NaN and inf: a damaged or diverged checkpoint is one error naming the bad key or
tensor, never a model that steps with NaN. A checkpoint of an older schema version is migrated
as it loads (wm_sim.checkpoint_migration). `shipped:<task>` names the checkpoints packaged with
wm-sim.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import uuid
import weakref
from collections.abc import Callable, Collection
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wm_sim.checkpoint_migration import (
    CHECKPOINT_SCHEMA_VERSION,
    migrated_meta,
    migrated_option_names,
    migrated_weights,
)
from wm_sim.data.schema import ACTION_KEY, STATE_KEY
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import episodes_with_frames
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel, WorldModelConfig

WEIGHTS, META = "model.safetensors", "meta.json"
TRAIN_TENSORS, TRAIN_META = "train_state.safetensors", "train_state.json"
CONTEXTS = "contexts.safetensors"  # real start contexts: every checkpoint's, so each resets as an env
CONTEXT_FRAMES = 4  # frames per start context
RUN_CONTEXTS = 32  # start contexts in each training checkpoint (`wm-sim package` bundles 256)
SHIPPED_PREFIX = "shipped:"
LAST = "last"
# What a save killed mid-way leaves in a run directory: commit_directory's staging folder, and the
# new `last` link not yet renamed over the old one.
_STAGING = re.compile(r"\..+\.[0-9a-f]{32}\.partial")
_PENDING_LINK = re.compile(rf"\.{LAST}\.[0-9a-f]{{32}}")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a path, a run directory's `last`, or `shipped:<task>`."""
    text = str(path)
    if text.startswith(SHIPPED_PREFIX):
        name = text[len(SHIPPED_PREFIX) :]
        shipped = Path(str(resources.files("wm_sim") / "checkpoints" / name))
        if not (shipped / META).is_file():
            available = sorted(
                p.name
                for p in Path(str(resources.files("wm_sim") / "checkpoints")).glob("*")
                if (p / META).is_file()
            )
            raise WmSimError(f"no shipped checkpoint {name!r}; shipped: {available or 'none yet'}")
        return shipped
    directory = Path(text)
    if (directory / LAST).exists() and not (directory / META).exists():
        directory = directory / LAST
    if not directory.exists():
        raise WmSimError(f"no checkpoint at {directory}")
    if not (directory / META).is_file():
        raise WmSimError(f"{directory} is not a checkpoint: it has no {META}")
    return directory.resolve()


def save_checkpoint(
    run_dir: str | Path,
    name: str,
    model: WorldModel,
    meta: dict[str, Any],
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_meta: dict[str, Any] | None = None,
    contexts: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `run_dir/name` atomically and point `run_dir/last` at it; with `contexts`
    (`start_contexts`), an env resets from it as from a package."""

    def write(staging: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS))
        if contexts is not None:
            save_file(contexts, str(staging / CONTEXTS))
        full_meta = {"schema_version": CHECKPOINT_SCHEMA_VERSION, "model": model.config.to_dict(), **meta}
        write_json(staging / META, full_meta)
        write_train_state(staging, train_tensors, train_meta)

    return commit_directory(run_dir, name, write, META)


def write_train_state(
    directory: Path, tensors: dict[str, torch.Tensor] | None, meta: dict[str, Any] | None
) -> None:
    """Optimiser and RNG state beside a checkpoint's weights (nothing when `tensors` is None)."""
    if tensors is None:
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / TRAIN_TENSORS))
    write_json(directory / TRAIN_META, meta or {})


def commit_directory(
    run_dir: str | Path, name: str, write: Callable[[Path], None], meta_name: str, link_last: bool = True
) -> Path:
    """Let `write` fill a staging directory, rename it to `run_dir/name`, point `run_dir/last` at it.

    A kill at any moment leaves the previous checkpoint whole and `last` pointing at a whole one;
    an existing `name` is never overwritten, except an orphan a killed save left behind.
    """
    run_dir = Path(run_dir)
    final = run_dir / name
    if final.exists():
        last = run_dir / LAST
        if (
            last.exists()
            and last.resolve() != final.resolve()
            and _is_newer(final, last.resolve(), meta_name)
        ):
            # A kill between the rename and the `last` update left this step unreferenced; the
            # resumed run is writing the same step again, so the orphan is replaced, not kept.
            shutil.rmtree(final)
        else:
            raise WmSimError(f"checkpoint {final} already exists; refusing to overwrite it")
    staging = run_dir / f".{name}.{uuid.uuid4().hex}.partial"
    staging.mkdir(parents=True)
    try:
        write(staging)
        fsync_dir(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not link_last:
        fsync_dir(run_dir)
        return final
    link = run_dir / f".{LAST}.{uuid.uuid4().hex}"
    os.symlink(name, link)
    os.replace(link, run_dir / LAST)  # atomic: `last` is always a whole checkpoint
    fsync_dir(run_dir)
    return final


def _is_newer(candidate: Path, last: Path, meta_name: str = META) -> bool:
    try:
        step = int(read_json(candidate / meta_name).get("step", -1))
        return step > int(read_json(last / meta_name).get("step", -1))
    except WmSimError:
        return True  # unreadable leftovers of a cut-short save are never what `last` holds


class RunDirectoryLock:
    """The exclusive lock a run holds on its directory while it writes there (as a store's writer).

    Released by `release()`, on leaving a `with` block, when the process ends, or when the lock
    is garbage-collected. A directory the lock created and nothing was written into is removed
    again on release, so a run refused after taking it leaves nothing behind.
    """

    def __init__(self, path: Path, fd: int, created: bool):
        self.path = path
        self._created = created
        self._release = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        if not self._release.alive:
            return
        self._release()  # closes the descriptor, which drops the lock; once
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __enter__(self) -> RunDirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_directory(path: str | Path) -> RunDirectoryLock:
    """Lock run directory `path` (creating it) for this process, then remove killed saves' leftovers.

    A second writer is refused with one WmSimError ("being written by another process") before it
    changes anything; once the lock is held no other save can be in flight, so every staging
    folder there is a dead writer's.
    """
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise WmSimError(f"run directory {path} cannot be created: {exc.filename} is a file") from exc
    except PermissionError as exc:
        raise WmSimError(f"run directory {path} cannot be created: {exc.strerror}") from exc
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WmSimError(
            f"{path} is being written by another process; wait for it to finish, or choose another out="
        ) from None
    lock = RunDirectoryLock(path, fd, created)
    remove_partial_saves(path)
    return lock


def remove_partial_saves(run_dir: str | Path) -> list[Path]:
    """Remove what killed saves left in `run_dir` (staging folders, `last` links never renamed).

    Only while holding the directory's lock (`lock_run_directory` calls it): a live writer's
    staging folder looks the same. Returns what was removed.
    """
    removed = []
    for entry in sorted(Path(run_dir).iterdir()):
        if _PENDING_LINK.fullmatch(entry.name) and entry.is_symlink():
            entry.unlink()
        elif _STAGING.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            continue
        removed.append(entry)
    return removed


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[WorldModel, dict[str, Any]]:
    """The world model and metadata of a checkpoint; a bad file is one WmSimError naming it."""
    directory = resolve_checkpoint(path)
    meta = read_json(directory / META)
    version = meta.get("schema_version")
    if version not in range(1, CHECKPOINT_SCHEMA_VERSION + 1) or isinstance(version, bool):
        raise WmSimError(
            f"{directory / META}: checkpoint schema version {version!r}; this wm-sim reads versions 1 "
            f"to {CHECKPOINT_SCHEMA_VERSION}"
        )
    meta = migrated_option_names(meta)
    check_meta(meta, directory / META)
    meta, dropped = migrated_meta(meta, directory)
    try:
        model = WorldModel(WorldModelConfig(**meta["model"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WmSimError(f"{directory / META}: invalid model config ({exc})") from exc
    # Bounds a model starts unset (+-inf, e.g. the frame reward's before it is fitted) may stay so.
    unset = {k for k, v in model.state_dict().items() if v.is_floating_point() and torch.isinf(v).any()}
    state = read_tensors(directory / WEIGHTS, map_location, may_be_infinite=unset)
    state = migrated_weights(state, version, dropped)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise WmSimError(f"{directory / WEIGHTS}: weights do not match the model config ({detail})") from exc
    return model.to(map_location), meta


def check_meta(meta: dict[str, Any], file: Path) -> None:
    """One WmSimError naming the first key of a checkpoint's metadata that is not what readers expect.

    `model` must hold WorldModelConfig's options with their types (sizes positive integers);
    `dataset`, `train` and `contexts`, where present, objects, and the `dataset` entries the envs,
    ROS and evaluation read of the right type and length. Missing entries keep their defaults, as
    in checkpoints from before they existed.
    """
    model = meta.get("model")
    if not isinstance(model, dict):
        raise WmSimError(
            f"{file}: invalid model config (model must be an object of the model's sizes, got {_shown(model)})"
        )
    fields = {f.name: f for f in dataclasses.fields(WorldModelConfig)}
    for key, value in model.items():
        if key not in fields:
            raise WmSimError(
                f"{file}: invalid model config (unknown option {key!r}; expected some of {sorted(fields)})"
            )
        default = fields[key].default
        if isinstance(default, bool):
            _expect(isinstance(value, bool), file, f"model.{key}", "true or false", value)
        elif isinstance(default, int):
            _expect(_is_int(value) and value > 0, file, f"model.{key}", "a positive integer", value)
        else:  # periodic_state: indices into the state
            _expect(
                isinstance(value, list) and all(_is_int(i) and i >= 0 for i in value),
                file,
                f"model.{key}",
                "a list of non-negative integers",
                value,
            )
    for key in ("dataset", "train", "contexts"):
        if key in meta:
            _expect(isinstance(meta[key], dict), file, key, "an object", meta[key])
    if "step" in meta:
        _expect(
            _is_int(meta["step"]) and meta["step"] >= 0, file, "step", "a non-negative integer", meta["step"]
        )
    dataset = meta.get("dataset", {})
    defaults = WorldModelConfig()
    sizes = {
        "state": model.get("state_dim", defaults.state_dim),
        "action": model.get("action_dim", defaults.action_dim),
    }
    for key, value in dataset.items():
        if key in ("task", "camera", "path"):
            _expect(isinstance(value, str), file, f"dataset.{key}", "a string", value)
        elif key == "cameras":
            n = model.get("cameras", defaults.cameras)
            ok = isinstance(value, list) and len(value) == n and all(isinstance(v, str) and v for v in value)
            _expect(ok, file, "dataset.cameras", f"a list of {n} camera names (model.cameras)", value)
        elif key == "fps":
            _expect(_is_number(value) and value > 0, file, "dataset.fps", "a positive number", value)
        elif key == "image_size":
            _expect(_is_int(value) and value > 0, file, "dataset.image_size", "a positive integer", value)
        elif key == "episode_steps":
            ok = value is None or (_is_int(value) and value > 0)
            _expect(ok, file, "dataset.episode_steps", "a positive integer or null", value)
        elif key in ("num_episodes", "num_frames"):
            _expect(_is_int(value) and value >= 0, file, f"dataset.{key}", "a non-negative integer", value)
        elif key in ("state_names", "action_names"):
            n = sizes[key.split("_")[0]]
            ok = value is None or (
                isinstance(value, list) and len(value) == n and all(isinstance(v, str) for v in value)
            )
            _expect(ok, file, f"dataset.{key}", f"a list of {n} strings (or null)", value)
        elif key in ("action_low", "action_high"):
            n = sizes["action"]
            ok = value is None or (
                isinstance(value, list) and len(value) == n and all(_is_number(v) for v in value)
            )
            _expect(ok, file, f"dataset.{key}", f"a list of {n} numbers (or null)", value)


def _expect(ok: bool, file: Path, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise WmSimError(f"{file}: {key} must be {expected}, got {_shown(value)}")


def _shown(value: Any) -> str:
    text = json.dumps(value) if value is not None else "nothing"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def load_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser/RNG tensors and JSON of a checkpoint saved with training state."""
    return read_train_state(resolve_checkpoint(path))


def read_train_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training state beside any checkpoint's weights (world model or policy)."""
    if not (directory / TRAIN_TENSORS).is_file():
        raise WmSimError(f"{directory} holds no training state ({TRAIN_TENSORS}); it cannot be resumed")
    return read_tensors(directory / TRAIN_TENSORS), read_json(directory / TRAIN_META)


def checkpoint_cameras(meta: dict, default: list[str]) -> list[str]:
    """The cameras a checkpoint's model sees, in its token order: `dataset.cameras`, or the one
    `dataset.camera` of a checkpoint from before several cameras (else `default`)."""
    dataset = meta.get("dataset", {})
    if dataset.get("cameras"):
        return list(dataset["cameras"])
    return [dataset["camera"]] if dataset.get("camera") else list(default)


def start_contexts(
    store: EpisodeStore, cameras: list[str], val_fraction: float, count: int, frames: int
) -> dict[str, torch.Tensor]:
    """`count` runs of `frames` consecutive rows, spread evenly over the held-out episodes.

    Each holds frames (K, *frame_shape) uint8 of `cameras` (store.read_frames), agent state (K, D)
    and the actions taken at those frames (K, A); a reset streams the frames and all but the last
    action, the policy supplies the rest.
    """
    episodes = episodes_with_frames(store, "val", val_fraction, frames)
    if not episodes:
        raise WmSimError(
            f"{store.path} has no held-out episode of at least {frames} frames to take contexts from"
        )
    per_episode = -(-count // len(episodes))
    picks: list[tuple[int, int]] = []
    for e in episodes:
        first, stop = store.episode_bounds(e)
        offsets = np.linspace(0, stop - first - frames, per_episode).round().astype(int)
        picks += [(e, first + int(o)) for o in offsets]
    picks = [picks[i] for i in np.linspace(0, len(picks) - 1, count).round().astype(int)]
    out = {
        name: np.stack([store.read(key, row, row + frames) for _, row in picks])
        for name, key in (("state", STATE_KEY), ("action", ACTION_KEY))
    }
    out["frames"] = np.stack([store.read_frames(cameras, row, row + frames) for _, row in picks])
    out["episode"] = np.array([e for e, _ in picks], dtype=np.int64)
    out["start_row"] = np.array([row for _, row in picks], dtype=np.int64)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def run_contexts(
    store: EpisodeStore, cameras: list[str], val_fraction: float, window: int
) -> dict[str, torch.Tensor] | None:
    """Start contexts from held-out episodes for every checkpoint of a run, so any checkpoint
    resets as an env without `wm-sim package`; None when no episode is held out."""
    frames = min(CONTEXT_FRAMES, window)
    if not episodes_with_frames(store, "val", val_fraction, frames):
        return None
    return start_contexts(store, cameras, val_fraction, RUN_CONTEXTS, frames)


def load_start_contexts(path: str | Path) -> dict[str, torch.Tensor]:
    """The bundled start contexts of a packaged checkpoint: frames, state, action (N, K, ...).

    Their shapes are checked against the checkpoint's model: contexts of another image size,
    state or action size are one clear error here, not a failure deep inside a reset.
    """
    directory = resolve_checkpoint(path)
    if not (directory / CONTEXTS).is_file():
        raise WmSimError(
            f"{directory} bundles no start contexts ({CONTEXTS}); make one with `wm-sim package`, "
            "or pass the start frames to reset"
        )
    contexts = read_tensors(directory / CONTEXTS)
    missing = {"frames", "state", "action"} - set(contexts)
    if missing:
        raise WmSimError(f"{directory / CONTEXTS} lacks {sorted(missing)}")
    model = read_json(directory / META).get("model")
    model = model if isinstance(model, dict) else {}
    defaults = WorldModelConfig()
    size, cameras = model.get("image_size", defaults.image_size), model.get("cameras", defaults.cameras)
    frame_shape = (size, size, 3) if cameras == 1 else (cameras, size, size, 3)
    frames, state, action = contexts["frames"], contexts["state"], contexts["action"]
    n, k = tuple(frames.shape[:2]) if frames.ndim >= 2 else (0, 0)
    expected = {
        "frames": (frames, (n, k, *frame_shape), "uint8"),
        "state": (state, (n, k, model.get("state_dim", defaults.state_dim)), "float"),
        "action": (action, (n, k, model.get("action_dim", defaults.action_dim)), "float"),
    }
    for name, (tensor, shape, kind) in expected.items():
        dtype_ok = tensor.dtype == torch.uint8 if kind == "uint8" else tensor.is_floating_point()
        if tuple(tensor.shape) != shape or not dtype_ok or n < 1 or k < 1:
            raise WmSimError(
                f"{directory / CONTEXTS}: {name} are {str(tensor.dtype).removeprefix('torch.')} of shape "
                f"{tuple(tensor.shape)}; the model expects {kind} of shape (N>=1, K>=1, "
                f"{', '.join(str(s) for s in shape[2:])})"
            )
    return contexts


def read_tensors(
    file: Path, map_location: str | torch.device = "cpu", may_be_infinite: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file. Nothing in it is executed: safetensors holds no code.

    Every floating tensor must be finite (those named in `may_be_infinite` may hold +-inf, never
    NaN): a diverged or damaged save is refused here, naming the first bad tensor, for world
    models, policies and training state alike.
    """
    if not file.is_file():
        raise WmSimError(f"{file} is missing")
    try:
        # load_file maps the file and reads a page when it is first touched: a process's memory
        # then grows for as long as it keeps touching new pages (an env's bundled start
        # contexts, 12.6 MB for reacher, faulted in reset by reset: +2.2% over 20,000 steps), and
        # a file cut short under it kills it with SIGBUS. Copies own their memory from the start.
        tensors = {name: t.clone() for name, t in load_file(str(file), device=str(map_location)).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WmSimError(
            f"{file} is not a valid safetensors file (truncated, tampered or another format): {exc}"
        ) from exc
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        bad = torch.isnan(tensor) if name in may_be_infinite else ~torch.isfinite(tensor)
        if bad.any():
            count, what = int(bad.sum()), "NaN" if torch.isnan(tensor).any() else "inf"
            raise WmSimError(
                f"{file}: tensor {name!r} holds {count} non-finite value(s) ({what}) of {tensor.numel()}; "
                "the file is damaged or was saved from a diverged run"
            )
    return tensors


def read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise WmSimError(f"{file} is missing")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WmSimError(f"{file} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise WmSimError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


def write_json(file: Path, data: dict[str, Any]) -> None:
    with open(file, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    """Flush every file in `directory` and the directory itself: a rename after this is durable."""
    for file in directory.iterdir():
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_dataset_fits(config: WorldModelConfig, meta: dict[str, Any], info, data: str | Path) -> None:
    """One clear error when a dataset (its DatasetInfo) is not what a checkpoint was trained on."""
    from wm_sim.data.schema import ACTION_KEY, STATE_KEY

    trained = meta.get("dataset", {})
    found = {
        "task": info.task,
        "image_size": info.image_size,
        "action size": info.features[ACTION_KEY].shape[0],
        "state size": info.features[STATE_KEY].shape[0],
    }
    expected = {
        "task": trained.get("task", info.task),
        "image_size": config.image_size,
        "action size": config.action_dim,
        "state size": config.state_dim,
    }
    for key, want in expected.items():
        if found[key] != want:
            raise WmSimError(f"{data} has {key} {found[key]!r}, but the model expects {want!r}")
    cameras = checkpoint_cameras(meta, info.cameras[:1])
    missing = [c for c in cameras if c not in info.cameras]
    if missing or len(cameras) != config.cameras:
        raise WmSimError(
            f"{data} has cameras {info.cameras}, but the model sees {cameras} ({config.cameras} in its config)"
        )
