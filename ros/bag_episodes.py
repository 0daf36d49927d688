"""Episodes from a bag's streams: where the bag is cut, and the fixed-rate clock each episode is
resampled on (zero-order hold: at each tick every topic gives its latest message at or before it).

The rules are spelled out in `bag_import.py`'s docstring; the streams come from `bag_streams.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from wm_sim.ros.bag_streams import REQUIRED, Stream, image_roles, role_kind

from wm_sim.errors import WmSimError

NEVER, FOREVER = np.iinfo(np.int64).min, np.iinfo(np.int64).max
START, GAP, MARKER = "the bag's start", "a gap", "a marker"  # what began an episode


@dataclass
class Segment:
    """A stretch of the bag that makes one episode: messages timed in [lo, hi)."""

    lo: int
    hi: int
    starts_at: str  # START, GAP or MARKER


def cut_segments(streams: dict[str, Stream], gap_ns: int) -> list[Segment]:
    """The bag cut at every silence longer than gap on an image or the command topic, and at markers."""
    silences = []
    for role in (*image_roles(streams), "command"):
        times = streams[role].times
        for i in np.flatnonzero(np.diff(times) > gap_ns):
            silences.append((int(times[i]) + 1, int(times[i + 1])))
    merged: list[list[int]] = []
    for lo, hi in sorted(silences):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    segments, lo, why = [], NEVER, START
    for silence_lo, silence_hi in merged:
        segments.append(Segment(lo, silence_lo, why))
        lo, why = silence_hi, GAP
    segments.append(Segment(lo, FOREVER, why))
    markers = streams["marker"].times if "marker" in streams else np.zeros(0, np.int64)
    for marker in markers:
        for i, seg in enumerate(segments):
            if seg.lo < marker < seg.hi:  # a marker in a silence, or at a start already, cuts nothing
                segments[i : i + 1] = [
                    Segment(seg.lo, int(marker), seg.starts_at),
                    Segment(int(marker), seg.hi, MARKER),
                ]
                break
    return segments


@dataclass
class Episode:
    """One episode's kept ticks and, per role, the index of the message in force at each."""

    segment: Segment
    ticks: np.ndarray  # (T,) int64 ns
    picks: dict[str, np.ndarray]  # role -> (T,) message index into the role's Stream
    waiting: dict[str, int]  # role -> ticks skipped before its first message
    reward_missing: int = 0  # rows before the first reward message (reward 0)


def resample_episode(streams: dict[str, Stream], segment: Segment, period_ns: float) -> Episode | None:
    """The ticks of one segment and the message each topic holds at each; None when it has none."""
    bounds = {role: s.between(segment.lo, segment.hi) for role, s in streams.items()}
    required = [r for r in streams if role_kind(r) in REQUIRED]
    if any(bounds[r][0] == bounds[r][1] for r in required):
        return None
    clock = image_roles(streams)[0]
    t0 = int(streams[clock].times[bounds[clock][0]])
    end = min(int(streams[r].times[bounds[r][1] - 1]) for r in required)
    if end < t0:
        return None
    count = int((end - t0) // period_ns) + 1
    ticks = t0 + np.round(np.arange(count) * period_ns).astype(np.int64)
    ticks = ticks[ticks <= end]
    picks, waiting = {}, {}
    for role in required:
        start, stop = bounds[role]
        local = np.searchsorted(streams[role].times[start:stop], ticks, side="right") - 1
        picks[role] = start + local
        waiting[role] = int((local < 0).sum())
    skipped = max(waiting.values())
    if skipped == len(ticks):
        return None
    episode = Episode(segment, ticks[skipped:], {r: p[skipped:] for r, p in picks.items()}, waiting)
    if "reward" in streams:  # the reward that followed each row's command: in force at the next tick
        start, stop = bounds["reward"]
        local = (
            np.searchsorted(
                streams["reward"].times[start:stop], episode.ticks + round(period_ns), side="right"
            )
            - 1
        )
        episode.picks["reward"] = np.where(local >= 0, start + local, -1)
        episode.reward_missing = int((local < 0).sum())
    return episode


def estimate_fps(images: Stream, gap_ns: int) -> tuple[float, str]:
    periods = np.diff(images.times)
    periods = periods[(periods > 0) & (periods <= gap_ns)]
    if len(periods) == 0:
        raise WmSimError(
            f"cannot estimate fps from {images.topic}: it has no two messages less than gap apart; pass fps="
        )
    median = float(np.median(periods))
    fps = round(1e9 / median, 1)
    if fps <= 0:
        raise WmSimError(
            f"{images.topic}'s median period is {median / 1e9:.1f} s, too long to estimate fps; pass fps="
        )
    return fps, f"estimated from {images.topic}: median period {median / 1e6:.1f} ms"
