"""`wm-sim package`: make a self-contained model directory, such as the shipped `shipped:reacher`.

A packaged model needs no dataset: beside the weights and metadata it holds a few hundred real
start contexts (short runs of frames, states and actions from held-out episodes) that environment
resets draw from, and its own evaluation (metrics.json, errors.png, strip.png, rollouts.mp4), so
its fidelity travels with it. The directory is assembled under a temporary name and renamed into
place; an existing one is never overwritten.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from wm_sim.checkpoint import (
    CONTEXT_FRAMES,
    CONTEXTS,
    META,
    WEIGHTS,
    check_dataset_fits,
    checkpoint_cameras,
    fsync_dir,
    load_checkpoint,
    read_json,
    start_contexts,
    write_json,
)
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.evaluate import EvaluateConfig, evaluate
from wm_sim.model_card import write_model_card

MAX_PACKAGE_MB = 25.0


@dataclass
class PackageConfig:
    """Options of `wm-sim package`."""

    checkpoint: str = field(default="outputs/reacher-small", metadata={"help": "checkpoint or run dir"})
    data: str = field(default="datasets/reacher.zarr", metadata={"help": "its dataset (held-out episodes)"})
    out: str = field(default="wm_sim/checkpoints/reacher", metadata={"help": "the directory to create"})
    contexts: int = field(default=256, metadata={"help": "start contexts to bundle"})
    context_frames: int = field(default=CONTEXT_FRAMES, metadata={"help": "frames per start context"})
    evaluate: bool = field(default=True, metadata={"help": "run wm-sim evaluate into the package"})


def package(cfg: PackageConfig) -> Path:
    if cfg.contexts < 1 or cfg.context_frames < 1:
        raise WmSimError(
            f"need contexts >= 1 and context_frames >= 1, got {cfg.contexts}, {cfg.context_frames}"
        )
    out = Path(cfg.out)
    if out.exists():
        raise WmSimError(f"{out} already exists; remove it first to replace the packaged model")
    model, meta = load_checkpoint(cfg.checkpoint)
    store = EpisodeStore.open(cfg.data)
    check_dataset_fits(model.config, meta, store.info, cfg.data)
    val_fraction = float(meta.get("train", {}).get("val_fraction", 0.1))
    cameras = checkpoint_cameras(meta, store.info.cameras[:1])
    contexts = start_contexts(store, cameras, val_fraction, cfg.contexts, cfg.context_frames)

    staging = out.parent / f".{out.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir(parents=True)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(staging / WEIGHTS)
        )
        save_file(contexts, str(staging / CONTEXTS))
        kept = {k: v for k, v in meta.items() if k not in ("wandb", "wandb_run_id")}
        kept["contexts"] = {
            "count": int(contexts["frames"].shape[0]),
            "frames": cfg.context_frames,
            "split": "val",
            "val_fraction": val_fraction,
        }
        kept["packaged_from"] = {"checkpoint": str(cfg.checkpoint), "data": str(cfg.data)}
        write_json(staging / META, kept)
        metrics = None
        if cfg.evaluate:
            evaluate(EvaluateConfig(checkpoint=str(staging), data=cfg.data, out=str(staging)))
            metrics = {**read_json(staging / "metrics.json"), "checkpoint": str(out)}  # the package's name
            write_json(staging / "metrics.json", metrics)
        write_model_card(staging, kept, metrics, out.name)
        size_mb = sum(p.stat().st_size for p in staging.iterdir()) / 2**20
        if size_mb > MAX_PACKAGE_MB:
            raise WmSimError(
                f"the package would be {size_mb:.1f} MB, over {MAX_PACKAGE_MB:.0f} MB: bundle fewer contexts"
            )
        for file in staging.iterdir():
            file.chmod(0o644)  # package data: readable by whoever installs it
        fsync_dir(staging)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"wrote {out} ({size_mb:.1f} MB)")
    return out
