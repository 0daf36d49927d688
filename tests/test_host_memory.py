"""Retaining freed memory: applied where glibc is the allocator, never over the user's own tuning."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from wm_sim.host_memory import OPT_OUT, USER_TUNING, retain_freed_memory

apply = retain_freed_memory.__wrapped__  # the cached call runs once per process; these run it again

# Page faults per imagined step of the shipped model at batch 256 (activations of 4-17 MB, where
# glibc's defaults map and unmap them), after warm-up, in a fresh process
STEP_FAULTS = """
import resource, torch
from wm_sim.checkpoint import load_checkpoint
from wm_sim.envs.imagination import ImaginedBatch
from wm_sim.host_memory import retain_freed_memory
engine = ImaginedBatch(load_checkpoint("shipped:reacher")[0], 256, 10**9)
actions = torch.zeros(256, 2)
for _ in range(5):
    engine.step(actions)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    engine.step(actions)
print(retain_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.fixture
def untuned(monkeypatch):
    for name in (OPT_OUT, *USER_TUNING):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_opt_out_and_the_users_own_malloc_tuning_are_left_alone(untuned):
    untuned.setenv(OPT_OUT, "0")
    assert apply() is False
    untuned.delenv(OPT_OUT)
    untuned.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert apply() is False


def _step_faults(**env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if k not in (OPT_OUT, *USER_TUNING)}
    out = subprocess.run(
        [sys.executable, "-c", STEP_FAULTS], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    retained, faults = out.stdout.split()
    return retained, float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_on_glibc_an_engines_steps_reuse_their_memory_instead_of_faulting_it_in_again():
    retained, kept = _step_faults()
    opted_out, faulted = _step_faults(**{OPT_OUT: "0"})
    assert (retained, opted_out) == ("True", "False")
    # glibc's defaults: 10,000-16,000 per step; kept mapped: 0, with an occasional one-off growth
    # of the heap (a few MB once, 200-600 per step averaged) that does not come back
    assert faulted > 2000 and kept < 0.1 * faulted, (kept, faulted)
