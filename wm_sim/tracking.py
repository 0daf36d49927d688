"""Experiment tracking with Weights & Biases: losses, validation and rollout videos.

Offline by default: runs are written under the run directory and can be uploaded later with
`wandb sync`; nothing goes over the network unless `wandb.mode=online` is asked for. The wandb
run id is kept in the checkpoint metadata, so `resume=auto` continues the same wandb run. Only
the process that writes checkpoints (rank 0) tracks; the others get a tracker that does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wm_sim.errors import WmSimError

MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    """Options of the wandb logging of `wm-sim train` (set as `wandb.mode=disabled` etc.)."""

    mode: str = field(default="offline", metadata={"help": "online | offline | disabled"})
    project: str = field(default="wm-sim", metadata={"help": "wandb project"})
    entity: str = field(default="", metadata={"help": "wandb entity (team); empty: your default"})
    videos: bool = field(default=True, metadata={"help": "log a rollout video at each validation"})


def new_run_id() -> str:
    """A fresh wandb-style run id (8 lowercase letters and digits), without importing wandb."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class Tracker:
    """A wandb run, or nothing (mode=disabled, or a rank other than 0)."""

    def __init__(
        self, cfg: WandbConfig, run_dir: Path, run_id: str, config: dict[str, Any], active: bool = True
    ):
        if cfg.mode not in MODES:
            raise WmSimError(f"wandb.mode must be one of {MODES}, got {cfg.mode!r}")
        self.cfg = cfg
        self.run = None
        if not active or cfg.mode == "disabled":
            return
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=cfg.mode,
            config=config,
            name=run_dir.name,
        )

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def video(self, name: str, path: Path, step: int) -> None:
        if self.run is not None and self.cfg.videos:
            import wandb

            self.run.log({name: wandb.Video(str(path), format="mp4")}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
