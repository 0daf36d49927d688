"""The shipped reacher model and policy output what they did when the regression artifact was
written (tests/fixtures/make_shipped_regression.py): a refactor keeps behaviour bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.make_shipped_regression import cpu_capability, shipped_outputs

ARTIFACT = Path(__file__).parent / "fixtures" / "shipped_regression.npz"


@pytest.mark.slow
def test_the_shipped_model_and_policy_output_what_the_regression_artifact_holds():
    with np.load(ARTIFACT, allow_pickle=False) as saved:
        reference = {k: saved[k] for k in saved.files}
    now = shipped_outputs()
    assert np.array_equal(now["actions"], reference["actions"])
    if str(reference["cpu_capability"]) == cpu_capability():  # the same kernels: bit for bit
        for key in ("pixels", "reward", "agent_pos", "uncertainty", "policy_action"):
            assert np.array_equal(now[key], reference[key]), key
        return
    # other SIMD kernels round differently in the last bits; a change of behaviour is far larger
    assert np.mean(now["pixels"] != reference["pixels"]) < 0.005
    np.testing.assert_allclose(now["reward"], reference["reward"], atol=1e-3)
    np.testing.assert_allclose(now["agent_pos"], reference["agent_pos"], atol=1e-2)
    np.testing.assert_allclose(now["policy_action"], reference["policy_action"], atol=1e-3)
