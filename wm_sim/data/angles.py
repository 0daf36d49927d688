"""Which proprioceptive entries are angles wrapped into [-pi, pi): found in the data, not declared.

A joint that turns freely is recorded wrapped, so its raw difference jumps by a full turn when it
crosses pi. The state transition reads such entries as sine and cosine, and every state error
(training, evaluation) takes them the short way round: a turn is no error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from wm_sim.data.schema import STATE_KEY
from wm_sim.data.store import EpisodeStore


def wrapped_entries(episodes: Iterable[np.ndarray]) -> tuple[int, ...]:
    """The state entries that are angles wrapped into [-pi, pi), from episodes' states (T, D): they
    stay inside it and, somewhere, jump by more than pi from one frame to the next (a joint turning
    past pi). A velocity leaves the interval; a limited joint never jumps."""
    wrapped, inside = None, None
    for states in episodes:
        states = np.asarray(states, dtype=np.float64)
        if wrapped is None:
            wrapped, inside = np.zeros(states.shape[1], dtype=bool), np.ones(states.shape[1], dtype=bool)
        inside &= (np.abs(states) <= np.pi + 1e-4).all(axis=0)
        wrapped |= (np.abs(np.diff(states, axis=0)) > np.pi).any(axis=0)
    return () if wrapped is None else tuple(int(i) for i in np.flatnonzero(wrapped & inside))


def episode_states(store: EpisodeStore) -> Iterator[np.ndarray]:
    """Each episode's proprioceptive states (T, D), in order."""
    for e in range(store.num_episodes):
        yield store.read(STATE_KEY, *store.episode_bounds(e))
