"""`train`: how fast `wm-sim train` learns on this machine, on data collected in the same run.

A small reacher dataset is collected (`wm_sim.collect`, mixed policy) into a temporary folder
and the world model is trained on it from scratch with the default recipe, validating and
checkpointing every few steps. Each checkpoint records its step and validation loss; its file's
time gives when it was reached. Figures: training samples/s (windows per second between the first
and the last checkpoint, validation included, as a user experiences it) and the time from the
start of `train` to the first validation at or below `train_target_loss`.
"""

from __future__ import annotations

import tempfile
import time
from importlib.resources import files
from pathlib import Path

from omegaconf import OmegaConf
from wm_sim.benchmarks.context import Bench

from wm_sim.checkpoint import read_json


def model_size(name: str):
    """The ModelArchitecture of configs/model/<name>.yaml."""
    from wm_sim.train import ModelArchitecture

    source = files("wm_sim.configs") / "model" / f"{name}.yaml"
    return ModelArchitecture(**OmegaConf.to_container(OmegaConf.create(source.read_text())))


def checkpoint_times(run_dir: Path, started: float) -> list[dict]:
    """(step, validation loss, seconds since `started`) of every checkpoint of a run after its first
    training step, by step (step 0 ends the up-front fits: no step taken, nothing validated)."""
    rows = []
    for directory in sorted(run_dir.glob("step-*")):
        meta = read_json(directory / "meta.json")
        if int(meta["step"]) == 0:
            continue
        rows.append(
            {
                "step": int(meta["step"]),
                "val_loss": float(meta.get("val", {}).get("total", float("nan"))),
                "seconds": round((directory / "meta.json").stat().st_mtime - started, 2),
            }
        )
    return sorted(rows, key=lambda r: r["step"])


def learning_figures(rows: list[dict], batch: int, target_loss: float) -> dict:
    """Samples/s between the first and last checkpoint, and when `target_loss` was first reached."""
    first, last = rows[0], rows[-1]
    elapsed = last["seconds"] - first["seconds"]
    rate = (last["step"] - first["step"]) * batch / elapsed if elapsed > 0 else None
    reached = next((r for r in rows if r["val_loss"] <= target_loss), None)
    return {
        "samples_per_s": None if rate is None else round(rate, 2),
        "target_val_loss": target_loss,
        "time_to_target_s": None if reached is None else reached["seconds"],
        "step_at_target": None if reached is None else reached["step"],
        "best_val_loss": round(min(r["val_loss"] for r in rows), 5),
        "curve": rows,
    }


def run(bench: Bench) -> dict:
    from wm_sim.collect import CollectConfig, collect
    from wm_sim.tracking import WandbConfig
    from wm_sim.train import TrainConfig, TrainingRecipe, train

    sizes = bench.sizes
    with tempfile.TemporaryDirectory(prefix="wm-sim-bench-train-") as tmp:
        data = Path(tmp) / "data.zarr"
        t0 = time.perf_counter()
        collect(
            CollectConfig(
                task=bench.task, policy="mixed", episodes=sizes.train_episodes, image_size=bench.image_size,
                workers=min(2, bench.cores), seed=0, out=str(data),
            )
        )  # fmt: skip
        collect_s = time.perf_counter() - t0
        every = sizes.train_val_every
        started = time.time()
        run_dir = train(
            TrainConfig(
                data=str(data), model=model_size(sizes.train_model), out=str(Path(tmp) / "run"),
                steps=sizes.train_steps, val_fraction=0.25, device=bench.device.type,
                training=TrainingRecipe(
                    batch_size=sizes.train_batch, val_every=every, checkpoint_every=every, decoder_steps=0
                ),  # the learning curve of the steps; no decoder phase after
                wandb=WandbConfig(mode="disabled"),
            )
        )  # fmt: skip
        total_s = time.time() - started
        figures = learning_figures(
            checkpoint_times(run_dir, started), sizes.train_batch, sizes.train_target_loss
        )
    figures |= {
        "model": sizes.train_model,
        "batch": sizes.train_batch,
        "episodes": sizes.train_episodes,
        "collect_s": round(collect_s, 1),
        "train_s": round(total_s, 1),
    }
    reached = (
        f"{figures['time_to_target_s']:.0f} s (step {figures['step_at_target']})"
        if figures["time_to_target_s"] is not None
        else f"not reached in {sizes.train_steps} steps (best {figures['best_val_loss']:.4f})"
    )
    return {
        "figures": figures,
        "targets": [],
        "table": [
            [
                f"training samples/s (model={sizes.train_model}, batch {sizes.train_batch})",
                f"{figures['samples_per_s']}",
            ],
            [f"time to validation loss {sizes.train_target_loss:g}", reached],
        ],
    }
