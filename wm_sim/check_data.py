"""`wm-sim check-data`: verify a dataset store chunk by chunk; `repair=true` drops the damaged episodes.

Opening a store (train, evaluate, import, collect resume) already refuses one whose chunks are
missing or of the wrong size; this verb also compares every chunk file's crc32c with the manifest
written when its episodes were committed, and lists every damaged episode instead of the first.
A repair never touches the only copy: it copies the store to `<data>.bak-<time>` first, writes the
intact episodes (bit for bit) into a new store beside it, and swaps that into place.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from wm_sim.data.integrity import describe_episodes
from wm_sim.data.manifest import MANIFEST_FILE
from wm_sim.data.store import EpisodeStore, StoreCheck, check_store, lock_for_writing
from wm_sim.errors import WmSimError


@dataclass
class CheckDataConfig:
    """Options of `wm-sim check-data`."""

    data: str = field(default="", metadata={"help": "the dataset store to check"})
    checksums: bool = field(
        default=True,
        metadata={
            "help": "compare every chunk file's crc32c (false: presence and sizes only, as opening does)"
        },
    )
    repair: bool = field(
        default=False,
        metadata={
            "help": "copy the store to <data>.bak-<time>, then rewrite it without the damaged episodes"
        },
    )


def check_data(cfg: CheckDataConfig) -> dict:
    """Check `cfg.data`; refuse (exit 2) when an episode is damaged, unless `cfg.repair` drops them."""
    if not cfg.data:
        raise WmSimError("data= is required: the dataset store to check")
    path = Path(cfg.data)
    if not path.exists():
        raise WmSimError(f"no dataset store at {path}")
    # a repair holds the writer's lock from the check on: nothing is appended between the two
    lock = lock_for_writing(path) if cfg.repair else None
    try:
        found = check_store(path, checksums=cfg.checksums, locked=lock is not None)
        print(_summary(path, found, cfg.checksums))
        for damage in found.damages:
            print(f"  {damage}")
        damaged = _lost_episodes(found)
        report = {"data": str(path), "episodes": len(found.episode_ends), "damaged_episodes": damaged}
        report["damages"] = [str(d) for d in found.damages]
        if not found.damages:
            print("no damage found")
            return report
        if not cfg.repair:
            what = "its episode bookkeeping is damaged (the manifest still has it)"
            if damaged:
                count = len(found.episode_ends)
                what = f"{len(damaged)} of {count} episodes are damaged ({describe_episodes(damaged)})"
            raise WmSimError(
                f"{path}: {what}; repair=true drops them after copying the store to {path}.bak-<time>"
            )
        return report | repair_store(path, found, damaged)
    finally:
        if lock is not None:
            os.close(lock)


def repair_store(path: Path, found: StoreCheck, drop: list[int]) -> dict:
    """Copy the store aside, rewrite it without the episodes `drop`, and swap the rewrite into place.

    The caller holds the store's writer lock.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    partial = path.with_name(f"{path.name}.repair-{stamp}.partial")
    retired = path.with_name(f"{path.name}.repair-{stamp}.old")
    for taken in (backup, partial, retired):
        if taken.exists():
            raise WmSimError(f"{taken} already exists; refusing to overwrite it (try again in a second)")
    _copy_store(path, backup)
    print(f"copied {path} to {backup}")
    keep = [e for e in range(len(found.episode_ends)) if e not in set(drop)]
    try:
        _write_kept(path, partial, found, keep, drop, backup.name)
    except BaseException:
        if partial.exists():
            shutil.rmtree(partial)
        raise
    os.rename(path, retired)
    try:
        os.rename(partial, path)
    except OSError as exc:
        raise WmSimError(
            f"cannot move the repaired store {partial} to {path} ({exc.strerror}); the original is {retired}"
        ) from None
    shutil.rmtree(retired)  # its bytes are in the backup
    kept_frames = int(sum(_lengths(found.episode_ends)[e] for e in keep))
    print(
        f"dropped {describe_episodes(drop) if drop else 'no episode'}; kept {len(keep)} episodes "
        f"({kept_frames:,} frames), each as it was. Episodes after a dropped one moved up: "
        "their train/val split can differ from before"
    )
    return {"backup": str(backup), "dropped_episodes": drop, "kept_episodes": len(keep)}


def _write_kept(
    source: Path, target: Path, found: StoreCheck, keep: list[int], drop: list[int], backup: str
) -> None:
    """Write the episodes `keep` of `source` into a new store `target` and check it."""
    repairs = [*found.info.collection.get("repairs", []), {"dropped_episodes": drop, "backup": backup}]
    info = dataclasses.replace(found.info, collection={**found.info.collection, "repairs": repairs})
    data = zarr.open_group(str(source), mode="r")["data"]
    starts = np.concatenate([[0], found.episode_ends[:-1]]).astype(np.int64)
    store = EpisodeStore.create(target, info)
    try:
        for e in keep:
            start, stop = int(starts[e]), int(found.episode_ends[e])
            store.append_episode(
                {key: data[key][start:stop] for key in info.features}, int(found.episode_seed[e])
            )
    finally:
        store.close()
    for extra in source.iterdir():  # e.g. a rosbag import's report, beside the zarr hierarchy
        if (
            extra.is_file()
            and extra.name not in ("zarr.json", MANIFEST_FILE)
            and not extra.name.endswith(".partial")
        ):
            shutil.copy2(extra, target / extra.name)
    rewritten = check_store(target, checksums=True)
    if rewritten.damages:
        raise WmSimError(f"the repaired store {target} does not check out: {rewritten.damages[0]}")


def _copy_store(path: Path, backup: Path) -> None:
    try:
        shutil.copytree(path, backup, symlinks=True)
    except FileExistsError:
        raise WmSimError(f"{backup} already exists; refusing to overwrite it") from None
    except OSError as exc:
        if backup.exists():
            shutil.rmtree(backup)
        raise WmSimError(f"cannot copy {path} to {backup} before repairing it: {exc}") from None


def _lost_episodes(found: StoreCheck) -> list[int]:
    """Episodes whose rows are damaged; damaged episode bookkeeping is rebuilt from the manifest instead."""
    if not found.has_manifest:
        return found.damaged_episodes
    return sorted({e for d in found.damages if d.array.startswith("data/") for e in d.episodes})


def _lengths(ends: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0], ends])).astype(np.int64)


def _summary(path: Path, found: StoreCheck, checksums: bool) -> str:
    frames = int(found.episode_ends[-1]) if len(found.episode_ends) else 0
    if found.has_manifest:
        how = "chunk sizes and crc32c checksums" if checksums else "chunk sizes"
        how += f" against its {MANIFEST_FILE}"
    else:
        how = (
            f"no {MANIFEST_FILE} (an older wm-sim wrote it): every chunk decoded; a lost chunk cannot be "
            "told from an empty one"
            if checksums
            else f"no {MANIFEST_FILE} (an older wm-sim wrote it): nothing to compare against"
        )
    line = f"{path}: {len(found.episode_ends)} episodes, {frames:,} frames; checked {how}"
    if found.interrupted_append:
        line += "; an append is in progress or was interrupted (the next collect resume=true finishes the clean-up)"
    return line
