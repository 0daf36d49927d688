"""Shared fixtures: small real datasets made by the project's own collector."""

from __future__ import annotations

from pathlib import Path

import pytest

import wm_sim  # noqa: F401  (registers the Gymnasium ids, selects offscreen rendering)
from wm_sim.collect import CollectConfig, collect


@pytest.fixture(scope="session")
def reacher_store_path(tmp_path_factory) -> Path:
    """Four mixed-policy reacher episodes, collected in this process."""
    out = tmp_path_factory.mktemp("data") / "reacher.zarr"
    collect(CollectConfig(task="reacher", policy="mixed", episodes=4, workers=1, seed=7, out=str(out)))
    return out
