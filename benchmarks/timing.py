"""Timing the imagined step: frames per second of a stepping loop, and where a step's time goes.

A host timer sees GPU work only after a synchronize, so every timed region ends with one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from wm_sim.benchmarks.machine import synchronize

# The stages of an imagined step: the model methods ImaginationEngine.step calls, by what they do.
STAGES = {"dynamics": "stream_step", "decode": "decode_levels", "uncertainty": "encode_scaled"}


def frames_per_s(step: Callable[[int], object], frames_per_call: int, seconds: float, device) -> float:
    """Frames/s of calling `step(i)` for `seconds` (at least 3 calls), `frames_per_call` each."""
    synchronize(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step(n)
        n += 1
    synchronize(device)
    return frames_per_call * n / (time.perf_counter() - t0)


class StageTimer:
    """Times the model's stages inside whatever calls them (an env's step), while active.

    It shadows the model's methods with timed ones on the instance and removes them on exit, so it
    measures the eager step only: a compiled step has fused its stages into one graph.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def _timed(self, stage: str, method: Callable) -> Callable:
        def timed(*args, **kwargs):
            synchronize(self.device)
            t0 = time.perf_counter()
            result = method(*args, **kwargs)
            synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - t0
            return result

        return timed

    def __enter__(self) -> StageTimer:
        for stage, name in STAGES.items():
            setattr(self.model, name, self._timed(stage, getattr(self.model, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name in STAGES.values():
            delattr(self.model, name)  # the class's method shows through again

    def split(self, total_seconds: float) -> dict[str, float]:
        """Fractions of `total_seconds` per stage; what is left is conversion (checks, copies, numpy)."""
        fractions = {stage: s / total_seconds for stage, s in self.seconds.items()}
        fractions["conversion"] = max(0.0, 1.0 - sum(fractions.values()))
        return fractions
