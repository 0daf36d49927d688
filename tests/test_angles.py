"""Wrapped angles in the data (wm_sim.data.angles): which state entries turn freely across pi."""

from __future__ import annotations

import numpy as np

from wm_sim.data.angles import wrapped_entries


def test_wrapped_entries_are_angles_that_jump_across_pi():
    t = np.linspace(0, 12, 200)
    turning = (t + np.pi) % (2 * np.pi) - np.pi  # a joint turning freely, wrapped
    limited = 3.0 * np.sin(t)  # a limited joint: inside [-pi, pi], never jumps
    speed = 8.0 * np.cos(t)  # a velocity: leaves the interval
    jumpy_speed = np.where(np.arange(200) % 2, 5.0, -5.0)  # jumps, but is no angle
    states = np.stack([turning, limited, speed, jumpy_speed], axis=1)
    assert wrapped_entries([states[:100], states[100:]]) == (0,)
    assert wrapped_entries([states[:20]]) == ()  # not yet crossed pi: nothing to tell
    assert wrapped_entries([]) == ()
