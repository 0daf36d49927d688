"""Counting an object's pixels by its hue: what the task tests read off rendered frames."""

from __future__ import annotations

import numpy as np


def count_colour(frame: np.ndarray, colour: str) -> int:
    """Pixels of a clearly saturated hue (orange, blue, red) or near-white."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    masks = {
        "orange": (r > 120) & (r - b > 80) & (g - b > 30),
        "blue": (b > 120) & (b - r > 60),
        "red": (r > 120) & (r - g > 80) & (r - b > 80) & (g - b < 30),
        "white": (r > 170) & (g > 170) & (b > 170),
    }
    return int(masks[colour].sum())
