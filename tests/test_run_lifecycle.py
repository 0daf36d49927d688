"""The run lifecycle every trainer shares: resume checks, schedule, NaN guard, exact resume state."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from wm_sim.errors import WmSimError
from wm_sim.run_lifecycle import (
    check_finite,
    checkpoint_due,
    flatten_state,
    holds_a_run,
    restore_training_state,
    resumes,
    set_lr,
    training_state,
    unflatten_state,
)


def _optimiser() -> torch.optim.Optimizer:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimiser = torch.optim.AdamW(net.parameters(), lr=1.0)
    for group in optimiser.param_groups:
        group["peak_lr"] = 1e-3
    return optimiser


def test_the_schedule_warms_up_then_decays_on_a_cosine_to_a_floor():
    optimiser, total = _optimiser(), 1000
    lrs = []
    for step in range(total):
        set_lr(optimiser, step, total)
        lrs.append(optimiser.param_groups[0]["lr"])
    warmup = 50  # 5% of the run
    assert lrs[0] == pytest.approx(1e-3 * 0.05) and lrs[warmup - 1] == pytest.approx(1e-3)  # from the floor
    assert all(a <= b for a, b in pairwise(lrs[:warmup]))
    assert all(a >= b for a, b in pairwise(lrs[warmup - 1 :]))
    middle = warmup + (total - warmup) // 2
    assert lrs[middle] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-2)
    assert lrs[-1] == pytest.approx(1e-3 * 0.05)  # never below 5% of the peak


def test_training_state_restores_the_optimiser_and_every_generator_bit_for_bit():
    optimiser = _optimiser()
    params = optimiser.param_groups[0]["params"]
    for _ in range(3):
        optimiser.zero_grad()
        sum(p.square().sum() for p in params).backward()
        optimiser.step()
    rng, generator = np.random.default_rng(5), torch.Generator().manual_seed(7)
    rng.random(4), torch.rand(2, generator=generator)
    tensors, meta = training_state(optimiser, rng, {"generator": generator})
    expected = (rng.random(3), torch.rand(3, generator=generator), torch.rand(3))
    fresh, other_rng, other_generator = _optimiser(), np.random.default_rng(0), torch.Generator()
    restore_training_state(tensors, meta, fresh, other_rng, {"generator": other_generator})
    assert np.array_equal(other_rng.random(3), expected[0])
    assert torch.equal(torch.rand(3, generator=other_generator), expected[1])
    assert torch.equal(torch.rand(3), expected[2])  # torch's own generator too
    for mine, theirs in zip(fresh.state_dict()["state"].values(), optimiser.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_flatten_keeps_key_types_and_nesting():
    state = {"a": [torch.ones(2), {3: torch.zeros(1)}], 7: 1.5, "b": ("x", 2)}
    skeleton, tensors = flatten_state(state)
    back = unflatten_state(skeleton, tensors)
    assert set(back) == {"a", 7, "b"} and back[7] == 1.5 and back["b"] == ["x", 2]
    assert torch.equal(back["a"][0], torch.ones(2)) and 3 in back["a"][1]


def test_a_directory_holding_a_run_is_continued_only_when_asked(tmp_path):
    run = tmp_path / "run"
    assert not resumes("false", run) and not resumes("auto", run)  # nothing there: a new run
    run.mkdir()
    (run / ".step-2.abc.partial").mkdir()  # debris of a cut-short save is not a run
    (run / "wandb").mkdir()
    assert not holds_a_run(run) and not resumes(False, run)
    (run / "step-0000002").mkdir()
    (run / "last").symlink_to("step-0000002")
    with pytest.raises(WmSimError, match="already holds a run; pass resume=auto"):
        resumes("false", run)
    assert resumes("auto", run)
    with pytest.raises(WmSimError, match="resume must be false or auto, got 'maybe'"):
        resumes("maybe", run)


def test_a_loss_that_is_not_finite_stops_the_run_naming_its_last_checkpoint(tmp_path):
    check_finite(torch.tensor(0.5), 3, tmp_path)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(WmSimError, match=r"loss became .* at step 3; the last good checkpoint is .*last"):
            check_finite(torch.tensor(bad), 3, tmp_path)
    assert [s for s in range(1, 11) if checkpoint_due(s, 4, 10)] == [4, 8, 10]
