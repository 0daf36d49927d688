"""`wm-sim evaluate`: every metric for every method and horizon, the baselines, the pictures, and
refusals (the metrics themselves: test_metrics.py)."""

from __future__ import annotations

import json
import subprocess

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from tiny import tiny_architecture

from wm_sim.collect import CollectConfig, collect
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import split_episodes
from wm_sim.errors import WmSimError
from wm_sim.evaluate import HORIZONS, METHODS, METRICS, EvaluateConfig, evaluate
from wm_sim.metrics import psnr
from wm_sim.tracking import WandbConfig
from wm_sim.train import TrainConfig, TrainingRecipe, train

TINY = tiny_architecture()
CONTEXT = 4


@pytest.fixture(scope="module")
def tiny_run(reacher_store_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    return train(
        TrainConfig(
            data=str(reacher_store_path), model=TINY, out=str(out), steps=2, training=TrainingRecipe(decoder_steps=0, transition_rollout_steps=0, batch_size=4),
            val_fraction=0.5, threads=1, wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip


@pytest.fixture(scope="module")
def evaluation(tiny_run, reacher_store_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    evaluate(
        EvaluateConfig(
            checkpoint=str(tiny_run), data=str(reacher_store_path), out=str(out), context=CONTEXT,
            video_episodes=2, threads=1,
        )
    )  # fmt: skip
    return out


def test_metrics_json_holds_every_metric_for_every_method_at_every_horizon(evaluation):
    report = json.loads((evaluation / "metrics.json").read_text())
    names = [str(h) for h in HORIZONS] + ["end"]
    assert report["horizons"] == names and report["split"] == "val" and report["context"] == CONTEXT
    for metric in METRICS:
        for method in METHODS:
            values = report["metrics"][metric][method]
            assert sorted(values) == sorted(names)
            if metric in ("object_error_cm", "object_within_2cm", "object_recall_unseen", "object_recall_remembered"):
                # positions need the object whole in the real frame (this store's few held-out
                # episodes do not show it whole at every horizon), the distance also in the guess;
                # the unseen recall needs a frame that uncovers 5 or more of its pixels
                assert all(values[h] is None or values[h] >= 0.0 for h in names), (method, values)
                continue
            assert all(isinstance(values[h], float) for h in names), (metric, method, values)
    assert all(0.0 <= report["metrics"]["ssim"][m]["end"] <= 1.0 for m in METHODS)
    assert set(report["model_beats_copy_last_at_every_horizon"]) == {"psnr", "ssim"}
    assert report["metrics"]["object_error_cm"]["copy_last"]["1"] == 0.0  # the last frame, held still
    # a copy of the last frame shows none of what it hid (None: no frame uncovered enough to judge)
    for hidden in ("object_recall_unseen", "object_recall_remembered"):
        assert all(v in (0.0, None) for v in report["metrics"][hidden]["copy_last"].values())
    motion = report["object_motion"]
    assert set(motion) == set(METHODS) and motion["copy_last"]["agreement_when_still"] in (1.0, None)


def test_the_copy_last_baseline_is_what_it_says(evaluation, reacher_store_path):
    """Recompute copy_last PSNR by hand from the dataset's held-out episodes."""
    report = json.loads((evaluation / "metrics.json").read_text())
    store = EpisodeStore.open(reacher_store_path)
    key = f"observation.images.{store.info.cameras[0]}"
    frames = [store.episode(e, [key])[key] for e in (1, 3)]  # val_fraction=0.5: episodes 1 and 3
    assert report["episodes"] == 2
    for h in (1, 16):
        expected = np.mean(
            [
                float(
                    psnr(
                        torch.from_numpy(f[CONTEXT - 1]) / 255.0, torch.from_numpy(f[CONTEXT - 1 + h]) / 255.0
                    )
                )
                for f in frames
            ]
        )
        assert report["metrics"]["psnr"]["copy_last"][str(h)] == pytest.approx(expected, abs=1e-3)
    # a still frame drifts away from a moving arm: the baseline itself shows why horizons matter
    assert report["curves"]["psnr"]["copy_last"][0] > report["metrics"]["psnr"]["copy_last"]["end"]


def test_plot_video_and_strip_are_written(evaluation, reacher_store_path):
    assert (evaluation / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (evaluation / "strip.png").stat().st_size > 1000
    video = imageio.mimread(evaluation / "rollouts.mp4", memtest=False)
    steps = EpisodeStore.open(reacher_store_path).info.episode_steps
    assert len(video) == steps - CONTEXT  # every predicted frame of the longest shown episode
    height, width = video[0].shape[:2]
    assert width > 2.9 * height / 2  # three columns (true | predicted | difference), two episode rows


def test_an_evaluation_is_never_overwritten(evaluation, tiny_run, reacher_store_path):
    before = (evaluation / "metrics.json").read_bytes()
    with pytest.raises(WmSimError, match="already holds an evaluation"):
        evaluate(EvaluateConfig(checkpoint=str(tiny_run), data=str(reacher_store_path), out=str(evaluation)))
    assert (evaluation / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_a_dataset_the_model_cannot_read_is_one_clear_error(tiny_run, tmp_path):
    small = collect(
        CollectConfig(task="reacher", episodes=1, workers=1, image_size=32, out=str(tmp_path / "small.zarr"))
    )
    args = ["wm-sim", "evaluate", f"checkpoint={tiny_run}", f"data={small.path}", f"out={tmp_path / 'e'}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "image_size 32" in result.stderr and "expects 64" in result.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_model_with_a_scene_reward_reports_its_error_on_held_out_transitions(
    tiny_planning_model_path, evaluation, reacher_store_path, tmp_path
):
    from wm_sim.checkpoint import load_checkpoint

    assert "scene_reward" not in json.loads((evaluation / "metrics.json").read_text())  # none to report
    out = tmp_path / "report"
    evaluate(
        EvaluateConfig(
            checkpoint=str(tiny_planning_model_path), data=str(reacher_store_path), out=str(out),
            context=CONTEXT, video_episodes=0, threads=1,
        )
    )  # fmt: skip
    scene = json.loads((out / "metrics.json").read_text())["scene_reward"]
    store = EpisodeStore.open(reacher_store_path)
    held_out = split_episodes(store.num_episodes, "val", 0.5)
    # the same figure by hand: every transition of every held-out episode, the goal read once
    # off its last context frame
    model, _ = load_checkpoint(tiny_planning_model_path)
    errors = []
    for e in held_out:
        start, stop = store.episode_bounds(e)
        pixels = torch.from_numpy(store.read("observation.images.top", start, stop))
        state = torch.from_numpy(store.read("observation.state", start, stop)).float()
        action = torch.from_numpy(store.read("action", start, stop)).float()
        reward = store.read("next.reward", start, stop)
        with torch.no_grad():
            goal = model.scene_reward.goal(pixels[CONTEXT - 1 : CONTEXT]).expand(stop - start - 1, 2)
            errors.append(np.abs(model.scene_reward.read(goal, state[1:], action[:-1]).numpy() - reward[:-1]))
    errors = np.concatenate(errors)
    assert scene["transitions"] == errors.size
    assert scene["abs_error"] == pytest.approx(float(errors.mean()), rel=1e-5)
    assert scene["abs_error_p95"] == pytest.approx(float(np.quantile(errors, 0.95)), rel=1e-5)
