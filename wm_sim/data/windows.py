"""Fixed-length training windows (context + horizon frames) from an episode store.

A map-style dataset: `len()` and integer indexing returning dicts of numpy arrays, so it plugs
into `torch.utils.data.DataLoader` unchanged without this module importing torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError

SPLITS = ("train", "val", "all")


def is_validation_episode(episode: int, val_fraction: float) -> bool:
    """Whether `episode` belongs to the validation split.

    Every (1 / val_fraction)-th episode, spread evenly: the split depends only on the episode's
    index, so it never changes as a store grows, and it is the same on every machine.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise WmSimError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return int((episode + 1) * val_fraction) > int(episode * val_fraction)


def split_episodes(num_episodes: int, split: str, val_fraction: float) -> list[int]:
    """Indices of the episodes of `split` ("train", "val" or "all") among `num_episodes`."""
    if split not in SPLITS:
        raise WmSimError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return list(range(num_episodes))
    want_val = split == "val"
    return [e for e in range(num_episodes) if is_validation_episode(e, val_fraction) == want_val]


def episodes_with_frames(store: EpisodeStore, split: str, val_fraction: float, frames: int) -> list[int]:
    """The episodes of `split` that hold at least `frames` frames."""
    chosen = []
    for e in split_episodes(store.num_episodes, split, val_fraction):
        start, stop = store.episode_bounds(e)
        if stop - start >= frames:
            chosen.append(e)
    return chosen


class EpisodeWindows:
    """Every window of `context + horizon` consecutive frames lying inside one episode of a split."""

    def __init__(
        self,
        store: EpisodeStore | str | Path,
        context: int,
        horizon: int,
        split: str = "train",
        val_fraction: float = 0.1,
        keys: list[str] | None = None,
        stride: int = 1,
        in_memory: bool = False,
        pad_end: bool = False,
        progress: bool = True,
    ):
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store, mode="r")
        if context < 1 or horizon < 0:
            raise WmSimError(f"need context >= 1 and horizon >= 0, got context={context}, horizon={horizon}")
        if stride < 1:
            raise WmSimError(f"stride must be >= 1, got {stride}")
        self.context, self.horizon, self.split = context, horizon, split
        self.length = context + horizon
        self.val_fraction = val_fraction
        self.keys = keys or self.store.keys
        unknown = set(self.keys) - set(self.store.keys)
        if unknown:
            raise WmSimError(f"unknown keys {sorted(unknown)}; the store has {self.store.keys}")
        self.pad_end = pad_end
        self.episodes = split_episodes(self.store.num_episodes, split, val_fraction)
        self._starts, self._stops = self._window_starts(stride)
        # Training draws windows at random: one read of every committed row beats a shard read per window.
        self._memory = self._load_all(progress) if in_memory else None

    def _load_all(self, progress: bool, block: int = 4096) -> dict[str, np.ndarray]:
        """Every committed row of every key, read in blocks under a progress bar (minutes for 100k frames)."""
        from tqdm import tqdm

        n = self.store.num_frames
        memory = {}
        bar = tqdm(
            total=n * len(self.keys),
            desc="loading dataset",
            unit="row",
            unit_scale=True,
            disable=not progress,
        )
        with bar:
            for key in self.keys:
                head = self.store.read(key, 0, 0)  # dtype and row shape, no data
                memory[key] = np.empty((n, *head.shape[1:]), dtype=head.dtype)
                for start in range(0, n, block):
                    stop = min(start + block, n)
                    memory[key][start:stop] = self.store.read(key, start, stop)
                    bar.update(stop - start)
        return memory

    def _window_starts(self, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """Each window's first row and its episode's end row."""
        starts, stops = [], []
        # With pad_end, one more window per episode runs a row past its end: the last transition's
        # reward and termination are then a window's inputs, which they never are otherwise.
        extra = 1 if self.pad_end else 0
        for episode in self.episodes:
            first, stop = self.store.episode_bounds(episode)
            begun = range(first, stop - self.length + 1 + extra, stride)
            starts.extend(begun)
            stops.extend([stop] * len(begun))
        return np.asarray(starts, dtype=np.int64), np.asarray(stops, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start, stop = int(self._starts[index]), int(self._stops[index])
        end = min(start + self.length, stop)
        if self._memory is not None:
            window = {key: self._memory[key][start:end] for key in self.keys}
        else:
            window = {key: self.store.read(key, start, end) for key in self.keys}
        if self.pad_end:
            missing = start + self.length - end  # rows past the episode's end: copies of its last row
            window = {k: np.concatenate([v, np.repeat(v[-1:], missing, axis=0)]) for k, v in window.items()}
            window["valid"] = np.arange(self.length) < self.length - missing
        return window
