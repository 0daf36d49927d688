"""Figures from repeated measurements: median and spread, ratios, percentiles, targets.

The machines these run on are shared, so one timing means little: every figure is the median of
several repeats with its spread beside it, and every speed is compared with a reference measured
in the same run (a ratio per repeat, then summarised).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Median of repeats, with the interquartile range and the extremes as the spread."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {k: _round(v) for k, v in asdict(self).items()}

    def text(self, fmt: str = "{:.3g}", scale: float = 1.0) -> str:
        """`median [min-max]` (each times `scale`): the one-line form the README table shows."""
        median, low, high = (fmt.format(v * scale) for v in (self.median, self.min, self.max))
        return median if self.n == 1 else f"{median} [{low}-{high}]"


def summarize(values: Sequence[float]) -> Summary:
    """Median, quartiles and extremes of repeated measurements (at least one)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("summarize needs at least one value")
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return Summary(
        float(median), float(q1), float(q3), float(array.min()), float(array.max()), int(array.size)
    )


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Repeat-by-repeat ratios: each measurement against its reference taken beside it."""
    if len(numerators) != len(denominators):
        raise ValueError(f"ratios of {len(numerators)} values over {len(denominators)} references")
    return [float(n) / float(d) for n, d in zip(numerators, denominators, strict=True)]


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    """{"p50": ..., "p99": ...} of a sample (linear interpolation, as numpy)."""
    values = np.percentile(np.asarray(samples, dtype=np.float64), list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, values, strict=True)}


def target(measure: str, value: float | None, op: str, bound: float, unit: str = "") -> dict:
    """A target of the issue and whether this run met it (None: not measured in this run)."""
    if op not in (">=", "<="):
        raise ValueError(f"op must be '>=' or '<=', got {op!r}")
    held = None if value is None else bool(value >= bound if op == ">=" else value <= bound)
    return {"measure": measure, "value": _round(value), "op": op, "bound": bound, "unit": unit, "held": held}


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")
