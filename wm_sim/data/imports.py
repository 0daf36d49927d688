"""Writing a store an import builds (rosbag, LeRobot): complete at `out`, or absent.

An import builds its whole output beside `out`, in a folder named after the importing process,
and renames it into place at the end; a killed import leaves only that folder, which the next
import into the same `out` removes once its process is gone.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.data.schema import DatasetInfo
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError


def partial_path(out: Path) -> Path:
    """Where this process builds what becomes `out`."""
    return out.parent / f".{out.name}.importing-{os.getpid()}"


def remove_stale_partials(out: Path) -> None:
    """Delete what imports into `out` that were killed left behind (their process is gone)."""
    for debris in out.parent.glob(f".{glob.escape(out.name)}.importing-*"):
        pid = debris.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(debris, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_beside(out: Path, build: Callable[[Path], None], doing: str = "importing") -> None:
    """Let `build` fill a folder beside `out`, then rename it to `out`: `out` is complete or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    partial = partial_path(out)
    try:
        build(partial)
        if out.exists():  # created by someone else meanwhile
            raise WmSimError(f"{out} appeared while {doing}; refusing to overwrite it")
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_imported_store(
    out: Path, info: DatasetInfo, episodes: list[dict[str, np.ndarray]], report: dict, report_file: str
) -> None:
    """Build the whole store (with its import report) beside `out`, then rename it into place."""

    def build(partial: Path) -> None:
        store = EpisodeStore.create(partial, info)
        try:
            for index, rows in enumerate(tqdm(episodes, unit="ep", desc="write store")):
                store.append_episode(rows, seed=index)
        finally:
            store.close()
        (partial / report_file).write_text(json.dumps(report, indent=2) + "\n")

    build_beside(out, build)
