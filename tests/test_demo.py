"""`wm-sim demo`: its three outputs, and that its MuJoCo half is the real physics."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
from wm_sim.envs.catalog import TASK_SPECS, make_task
from wm_sim.policies.scripted import RandomPolicy

from wm_sim.cli import main


@pytest.fixture(scope="module")
def demo_out(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", f"checkpoint={tiny_model_path}", f"out={out}", "seed=5"]) == 0
    return out


@pytest.mark.slow
def test_demo_writes_video_plot_and_report(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    steps = TASK_SPECS["reacher"].episode_steps
    assert [e["policy"] for e in report["episodes"]] == ["expert", "random"]
    assert all(e["steps"] == steps for e in report["episodes"])
    assert set(report["episodes"][0]["psnr"]) == {"1", "4", "16", "64", "end"}
    assert report["step_latency_ms"]["median"] > 0
    for episode in report["episodes"]:
        errors = episode["fingertip_error_m"]
        assert set(errors) == {"1", "4", "16", "64", "end"} and all(0 <= e < 0.5 for e in errors.values())
        assert 0 <= episode["tracks_for_steps"] <= steps
        if episode["tracks_for_steps"] >= 1:  # tracked through step 1: within the tolerance there
            assert errors["1"] <= report["options"]["track_tolerance_m"]
    video = iio.imread(demo_out / report["files"]["video"])
    assert video.shape[0] == 2 * steps and video.shape[-1] == 3
    assert (demo_out / report["files"]["rewards"]).stat().st_size > 10_000


def test_the_demos_true_return_is_the_physics_return_of_its_actions(demo_out):
    """The random episode's actions do not depend on what the policy sees, so MuJoCo alone can
    recompute the return the demo reports for its replay."""
    report = json.loads((demo_out / "report.json").read_text())
    random_episode = report["episodes"][1]
    task = make_task("reacher")
    task.reset(random_episode["seed"])
    policy = RandomPolicy(2, seed=random_episode["seed"])
    for _ in range(report["options"]["context"] - 1):  # the real context frames the model started from
        task.step(policy.act({})[0])
    total = sum(task.step(policy.act({})[0]).reward for _ in range(random_episode["steps"]))
    task.close()
    assert random_episode["true_return"] == pytest.approx(total, abs=1e-3)
    assert np.isfinite(random_episode["imagined_return"])


def test_demo_never_overwrites_a_report(demo_out, tiny_model_path, capsys):
    before = (demo_out / "report.json").read_bytes()
    assert main(["demo", f"checkpoint={tiny_model_path}", f"out={demo_out}"]) == 2
    assert "report.json exists" in capsys.readouterr().err
    assert (demo_out / "report.json").read_bytes() == before
