"""The world model's small heads (wm_sim.model_heads): the state transition and wrapped angles."""

from __future__ import annotations

import math

import torch

from wm_sim.model_heads import StateTransition


def test_the_transition_takes_wrapped_angles_the_short_way_round():
    torch.manual_seed(0)
    transition = StateTransition(state_dim=2, action_dim=1, periodic=(0,))
    near = torch.tensor([[math.pi - 0.01, 0.5]])
    across = torch.tensor([[-math.pi + 0.01, 0.5]])
    # what the MLP reads about an angle is continuous across pi (apart from the raw entry)
    torch.testing.assert_close(
        transition.encode(near)[:, 2:], transition.encode(across)[:, 2:], atol=0.03, rtol=0
    )
    # a predicted angle stays in [-pi, pi), however far the MLP moves it
    transition.step_scale.fill_(100.0)
    out = transition(torch.randn(64, 2) * 3, torch.randn(64, 1))
    assert out[:, 0].abs().max() <= math.pi and out[:, 1].abs().max() > math.pi
    # a change wraps too: -pi + 0.01 is 0.02 past pi - 0.01, not 2 pi - 0.02 before it
    torch.testing.assert_close(transition.wrap(across - near)[0, 0], torch.tensor(0.02), atol=1e-5, rtol=0)
