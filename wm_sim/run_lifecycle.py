"""What every trainer's run does the same way: `wm-sim train`, `tune-decoder` and `train-policy`.

A run lives in one directory of checkpoints (`step-N/`, `last` pointing at the newest). It starts
fresh only where no run is (`resume=false`), or continues the one there exactly (`resume=auto`):
the optimiser's state, the batch generator and torch's RNG come back with the weights, so a
resumed run computes what the uninterrupted one would have, bit for bit. The learning rate warms
up, then decays on a cosine; a loss that stops being finite ends the run with the last good
checkpoint named; checkpoints are written every `checkpoint_every` steps and at the last.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm_sim.checkpoint import LAST, save_checkpoint
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel


def resume_auto(resume: Any) -> bool:
    """Whether `resume=` asks to continue a run: false or auto (Hydra reads `resume=false` as a bool)."""
    mode = str(resume).lower()
    if mode not in ("false", "auto"):
        raise WmSimError(f"resume must be false or auto, got {resume!r}")
    return mode == "auto"


def resumes(resume: Any, run_dir: Path) -> bool:
    """Whether this run continues the one in `run_dir` (`resume=auto` and a checkpoint there); a
    directory that already holds a run is refused unless it is continued."""
    resuming = resume_auto(resume) and (run_dir / LAST).exists()
    if holds_a_run(run_dir) and not resuming:
        raise WmSimError(
            f"{run_dir} already holds a run; pass resume=auto to continue it, or choose another out="
        )
    return resuming


def holds_a_run(run_dir: Path) -> bool:
    """Whether a directory holds checkpoints (not just debris of a cut-short write, or logs)."""
    if not run_dir.exists():
        return False
    return any(not p.name.startswith(".") and p.name not in ("wandb", "media") for p in run_dir.iterdir())


def checkpoint_due(step: int, every: int, total: int) -> bool:
    """Whether step `step` (1-based, just taken) ends with a checkpoint."""
    return step % every == 0 or step == total


def set_lr(optimiser: torch.optim.Optimizer, step: int, total: int) -> None:
    """Each group's `peak_lr` scaled by a linear warm-up (5% of the run, at most 500 steps), then a
    cosine decay to 5% of it."""
    warmup = max(1, min(500, total // 20))
    scale = (
        (step + 1) / warmup
        if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    )
    for group in optimiser.param_groups:
        group["lr"] = group["peak_lr"] * max(scale, 0.05)


def check_finite(loss: torch.Tensor, step: int, run_dir: Path) -> None:
    """Stop a run whose loss is NaN or infinite, naming the checkpoint to go back to."""
    if not torch.isfinite(loss):
        raise WmSimError(
            f"loss became {loss.item()} at step {step}; the last good checkpoint is {run_dir / LAST}"
        )


def training_state(
    optimiser: torch.optim.Optimizer,
    rng: np.random.Generator,
    generators: dict[str, torch.Generator] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What a checkpoint keeps to resume bit for bit: tensors (optimiser state, torch's RNG and
    named generators) and JSON (the optimiser's skeleton, the batch generator's state)."""
    skeleton, tensors = flatten_state(optimiser.state_dict())
    tensors["torch_rng"] = torch.get_rng_state()
    for name, generator in (generators or {}).items():
        tensors[name] = generator.get_state()
    return tensors, {"optimiser": skeleton, "rng": rng.bit_generator.state}


def restore_training_state(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimiser: torch.optim.Optimizer,
    rng: np.random.Generator,
    generators: dict[str, torch.Generator] | None = None,
) -> None:
    """Put back what `training_state` saved (the optimiser must hold the same parameters)."""
    optimiser.load_state_dict(unflatten_state(meta["optimiser"], tensors))
    rng.bit_generator.state = meta["rng"]
    torch.set_rng_state(tensors["torch_rng"])
    for name, generator in (generators or {}).items():
        generator.set_state(tensors[name])


def save_model_checkpoint(
    run_dir: Path,
    step: int,
    model: WorldModel,
    optimiser,
    rng: np.random.Generator,
    meta: dict,
    contexts: dict[str, torch.Tensor] | None,
) -> None:
    """A world model's `step-N` checkpoint of a run (and `last`), with what resuming needs and the
    start contexts every checkpoint carries (so it resets as an env without `wm-sim package`)."""
    tensors, state = training_state(optimiser, rng)
    save_checkpoint(
        run_dir,
        f"step-{step:07d}",
        model,
        {**meta, "step": step},
        train_tensors=tensors,
        train_meta={"step": step, **state},
        contexts=contexts,
    )


def flatten_state(obj, prefix: str = "t", tensors: dict | None = None):
    """Split a nested state (dicts, lists, tensors, numbers) into named tensors and a JSON skeleton."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}, tensors
    if isinstance(obj, dict):  # keys keep their type (optimiser state is keyed by int)
        return {
            "__dict__": [
                [k, flatten_state(v, f"{prefix}.{i}", tensors)[0]] for i, (k, v) in enumerate(obj.items())
            ]
        }, tensors
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors)[0] for i, v in enumerate(obj)], tensors
    return obj, tensors


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    """The nested state `flatten_state` split."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton
