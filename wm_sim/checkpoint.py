"""Checkpoints: safetensors tensors plus JSON metadata, written atomically, loaded without executing code.

A checkpoint is a directory:

    model.safetensors     the world model's weights (and its state normalisation buffers)
    meta.json             schema version, model config, what the data was (task, fps, image size,
                          action bounds, feature names), training step
    train_state.safetensors / train_state.json   optimiser and RNG state, for resume (optional)
    contexts.safetensors  real start contexts, in packaged models (`wm-sim package`)

`save_checkpoint` writes a new directory under a temporary name and renames it into place, then
points the `last` symlink at it by an atomic rename: a kill at any moment leaves the previous
checkpoint whole. `shipped:<task>` names the checkpoints packaged with wm-sim.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel, WorldModelConfig

CHECKPOINT_SCHEMA_VERSION = 1
WEIGHTS, META = "model.safetensors", "meta.json"
TRAIN_TENSORS, TRAIN_META = "train_state.safetensors", "train_state.json"
CONTEXTS = "contexts.safetensors"  # real start contexts of a packaged model (wm-sim package)
SHIPPED_PREFIX = "shipped:"
LAST = "last"


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
) -> Path:
    """Write checkpoint `run_dir/name` atomically and point `run_dir/last` at it."""

    def write(staging: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS))
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


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[WorldModel, dict[str, Any]]:
    """The world model and metadata of a checkpoint; a bad file is one WmSimError naming it."""
    directory = resolve_checkpoint(path)
    meta = read_json(directory / META)
    version = meta.get("schema_version")
    if version != CHECKPOINT_SCHEMA_VERSION:
        raise WmSimError(
            f"{directory / META}: checkpoint schema version {version!r}; this wm-sim reads version {CHECKPOINT_SCHEMA_VERSION}"
        )
    try:
        model = WorldModel(WorldModelConfig(**meta["model"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WmSimError(f"{directory / META}: invalid model config ({exc})") from exc
    state = read_tensors(directory / WEIGHTS, map_location)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise WmSimError(f"{directory / WEIGHTS}: weights do not match the model config ({detail})") from exc
    return model.to(map_location), meta


def load_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser/RNG tensors and JSON of a checkpoint saved with training state."""
    return read_train_state(resolve_checkpoint(path))


def read_train_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training state beside any checkpoint's weights (world model or policy)."""
    if not (directory / TRAIN_TENSORS).is_file():
        raise WmSimError(f"{directory} holds no training state ({TRAIN_TENSORS}); it cannot be resumed")
    return read_tensors(directory / TRAIN_TENSORS), read_json(directory / TRAIN_META)


def load_start_contexts(path: str | Path) -> dict[str, torch.Tensor]:
    """The bundled start contexts of a packaged checkpoint: frames, state, action (N, K, ...)."""
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
    return contexts


def read_tensors(file: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file. Nothing in it is executed: safetensors holds no code."""
    if not file.is_file():
        raise WmSimError(f"{file} is missing")
    try:
        return load_file(str(file), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WmSimError(
            f"{file} is not a valid safetensors file (truncated, tampered or another format): {exc}"
        ) from exc


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
