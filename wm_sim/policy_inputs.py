"""What every `wm-sim train-policy` algorithm starts from: the world model, the dataset, the run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from wm_sim.checkpoint import load_checkpoint
from wm_sim.errors import WmSimError


def run_directory(cfg) -> Path:
    """Where a TrainPolicyConfig's run writes: out=, or outputs/policies/<task>-<algo>."""
    return Path(cfg.out or f"outputs/policies/{cfg.task}-{cfg.algo}")


def policy_inputs(cfg, device: torch.device | str = "cpu"):
    """(checkpoint, data, run_dir, model, meta) of a TrainPolicyConfig, defaults filled in; a world
    model of another task or a missing dataset is one clear error."""
    checkpoint = cfg.checkpoint or f"shipped:{cfg.task}"
    data = cfg.data or f"datasets/{cfg.task}.zarr"
    run_dir = run_directory(cfg)
    model, meta = load_checkpoint(checkpoint, map_location=device)
    modelled = meta.get("dataset", {}).get("task", cfg.task)
    if modelled != cfg.task:
        raise WmSimError(f"task={cfg.task} but the world model {checkpoint} simulates {modelled!r}")
    if not Path(data).exists():
        raise WmSimError(
            f"no dataset at {data}; record one with `wm-sim collect task={cfg.task}` or pass data="
        )
    return checkpoint, data, run_dir, model, meta
