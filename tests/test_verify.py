"""`wm-sim verify` (wm_sim.verify): a policy's true and imagined returns, the honest scores against
random and standing still, every baseline in one table, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wm_sim.errors import WmSimError
from wm_sim.verify import VerifyConfig, verify


@pytest.mark.slow
def test_verify_reports_true_imagined_and_the_score(policy_run, tiny_model_path, tmp_path):
    run, _ = policy_run
    out = tmp_path / "verify"
    report = verify(
        VerifyConfig(
            policy=str(run), checkpoint=str(tiny_model_path), episodes=3, batch=2, out=str(out), threads=1
        )
    )
    means = report["mean_true_return"]
    assert set(means) == {"policy", "random", "zero", "expert"}
    expected = (means["policy"] - means["random"]) / (means["expert"] - means["random"])
    assert report["normalized_score"] == pytest.approx(expected)
    against_zero = (means["policy"] - means["zero"]) / (means["expert"] - means["zero"])
    assert report["score_vs_zero"] == pytest.approx(against_zero)
    assert report["policies"][str(run)]["score_vs_random"] == pytest.approx(expected)
    assert means["expert"] > means["random"]  # the anchors mean something on reacher
    episodes = report["per_episode"]
    assert len(episodes) == 3 and all(
        e["gap"] == pytest.approx(e["imagined_return"] - e["true_return"], abs=1e-3) for e in episodes
    )
    assert report["mean_true_return"]["policy"] == pytest.approx(
        np.mean([e["true_return"] for e in episodes]), abs=1e-3
    )
    for name in ("verify.json", "verify.png", "best.mp4", "worst.mp4"):
        assert (out / name).stat().st_size > 0
    with pytest.raises(WmSimError, match="exists"):
        verify(VerifyConfig(policy="random", checkpoint=str(tiny_model_path), episodes=1, out=str(out)))


def test_the_score_falls_back_to_random_for_a_task_without_an_expert():
    from wm_sim.verify import normalized_score

    assert normalized_score(-40.0, -170.0, -4.0)[0] == pytest.approx(130 / 166)
    score, formula = normalized_score(-40.0, -160.0, None)
    assert score == pytest.approx(120 / 160) and "no expert" in formula


@pytest.mark.slow
def test_verify_scores_every_policy_against_random_and_zero(bc_run, tiny_model_path, tmp_path):
    """zero is the policy under test (in imagination too, needing no physics), and a reference;
    a baseline given twice, or already a reference, is run and listed once."""
    run, _ = bc_run
    out = tmp_path / "verify"
    report = verify(
        VerifyConfig(
            policy="zero", checkpoint=str(tiny_model_path), episodes=3, batch=2, out=str(out), threads=1,
            baselines=[str(run), "random", str(run)], videos=False,
        )
    )  # fmt: skip
    table = report["policies"]
    assert {name: row["role"] for name, row in table.items()} == {
        "zero": "policy", "random": "reference", "expert": "reference", str(run): "baseline",
    }  # fmt: skip
    r = {name: row["mean_true_return"] for name, row in table.items()}
    for name, row in table.items():
        assert row["score_vs_random"] == pytest.approx((r[name] - r["random"]) / (r["expert"] - r["random"]))
        assert row["score_vs_zero"] == pytest.approx((r[name] - r["zero"]) / (r["expert"] - r["zero"]))
        # 3 episodes side by side in twos: 200 calls of 2 rows, then 200 of 1
        assert row["rows_per_call"] == pytest.approx(1.5)
        assert row["seconds_per_action"] == pytest.approx(row["seconds_per_act_call"] / 1.5)
    assert table["expert"]["success_rate"] == 1.0 and table["expert"]["score_vs_zero"] == pytest.approx(1.0)
    assert table[str(run)]["seconds_per_action"] > table["zero"]["seconds_per_action"]  # it encodes pixels
    assert report["score_vs_zero"] == table["zero"]["score_vs_zero"] == 0.0
    assert report["normalized_score"] == pytest.approx(table["zero"]["score_vs_random"])
    assert report["mean_true_return"]["zero"] == report["mean_true_return"]["policy"] == r["zero"]
    assert json.loads((out / "verify.json").read_text())["policies"] == table


def test_verify_refuses_a_bad_baseline_before_running_anything(tiny_model_path, tmp_path):
    out = tmp_path / "verify"
    with pytest.raises(WmSimError, match="not a saved policy"):
        verify(
            VerifyConfig(
                policy="zero", checkpoint=str(tiny_model_path), episodes=1, out=str(out),
                baselines=[str(tmp_path / "missing")], videos=False,
            )
        )  # fmt: skip
    assert not out.exists()
