"""`wm-sim rank` (wm_sim.rank): rank statistics on known orders, and a tiny population ranked in
imagination against MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest

from wm_sim.errors import WmSimError
from wm_sim.rank import RankConfig, average_ranks, default_population, mmrv, rank, spearman


def test_rank_statistics_on_known_orders():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # policies 0 and 1 swapped in imagination: each one's worst violation is |1 - 2| = 1
    assert mmrv(np.array([1.0, 2.0, 10.0]), np.array([2.0, 1.0, 10.0])) == pytest.approx(2 / 3)
    assert mmrv(np.array([1.0, 2.0, 10.0]), np.array([1.0, 2.0, 10.0])) == 0.0


@pytest.mark.slow
def test_rank_orders_a_tiny_population(tiny_model_path, tmp_path):
    report = rank(
        RankConfig(
            policies=["random", "noisy_expert:0.5", "expert"], checkpoint=str(tiny_model_path), episodes=2,
            batch=2, out=str(tmp_path / "rank"), threads=1,
        )
    )  # fmt: skip
    rows = {r["policy"]: r for r in report["policies"]}
    assert rows["expert"]["true_rank"] == 1 and rows["random"]["true_rank"] == 3  # MuJoCo's order
    assert -1 <= report["spearman"] <= 1 and report["mmrv"] >= 0
    assert report["imagined_reward"] == "model"  # auto: reacher has no reward read off its frames
    assert (tmp_path / "rank" / "rank.png").stat().st_size > 0
    with pytest.raises(WmSimError, match="at least 3 distinct"):
        rank(RankConfig(policies=["random", "random", "expert"], checkpoint=str(tiny_model_path)))


def test_the_default_population_is_the_tasks_own():
    reacher, push = default_population("reacher"), default_population("push")
    assert reacher[-1] == "shipped:reacher" and "expert" in reacher and "random" in reacher
    assert not any(ref.startswith("shipped:") and ref != "shipped:push" for ref in push)
    assert push[: len(reacher) - 1] == reacher[:-1]  # the same noise ladder


@pytest.mark.slow
def test_imagined_returns_can_be_the_tasks_own_reward_read_off_the_imagined_frames():
    """reward=task: an imagined step earns push's reward as the imagined observation shows it (the
    puck read off the frame, the finger from agent_pos, the goal known at the start). Standing
    still, the shipped push model keeps the scene, so it earns what MuJoCo pays, step by step."""
    from wm_sim.verify import Harness

    harness = Harness("push", "shipped:push", batch=2, reward="task")
    result = harness.run("zero", np.array([1000, 1001]), imagine=True, replay=False)
    harness.close()
    np.testing.assert_allclose(result.imagined_rewards, result.true_rewards, atol=0.01)
    assert harness.reward == "task"
    assert result.true_rewards.mean() < -0.05  # the puck is off its goal: a reward worth reading
    with pytest.raises(WmSimError, match="task 'reacher' has no reward read off observations"):
        Harness("reacher", "shipped:reacher", batch=1, reward="task")
    with pytest.raises(WmSimError, match="reward must be one of auto, model, task, got 'physics'"):
        rank(RankConfig(task="push", reward="physics"))
