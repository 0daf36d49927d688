"""Contact fidelity (wm_sim.contact): the task object's position read off frames, in centimetres,
and whether it moved; checked on frames MuJoCo renders and on drawn ones."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest
import torch
from wm_sim.envs.catalog import TASK_SPECS, make_task

from wm_sim.contact import ObjectJudge, TaskObject, motion_summary, top_camera_scale
from wm_sim.metrics import object_centre

PUCK = TASK_SPECS["push"].object_rgb


def disc(centres: list[tuple[float, float] | None], size: int = 64, radius: float = 3.5) -> torch.Tensor:
    """Frames (T, S, S, 3) in [0, 1]: a grey table with a puck-coloured disc at each (row, col)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    frames = torch.full((len(centres), size, size, 3), 0.3)
    for t, centre in enumerate(centres):
        if centre is not None:
            inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
            frames[t][inside] = torch.tensor(PUCK, dtype=torch.float32) / 255.0
    return frames


def test_the_centre_of_a_drawn_disc_is_found_and_a_missing_one_is_nan():
    centre = object_centre(disc([(20.0, 41.0), None]), PUCK)
    assert torch.allclose(centre[0], torch.tensor([20.0, 41.0]), atol=1e-4)
    assert centre[1].isnan().all()


def test_a_real_puck_moved_5_cm_in_mujoco_reads_as_5_cm_in_the_top_camera():
    """The scale comes from MuJoCo's own camera: a pushed puck's shift in pixels, times the scale,
    is its shift on the table."""
    task = make_task("push", image_size=64)
    try:
        task.reset(3)
        scale = top_camera_scale("push", "top", 64)
        joint = mujoco.mj_name2id(task.model, mujoco.mjtObj.mjOBJ_JOINT, "puck")
        address = int(task.model.jnt_qposadr[joint])  # the puck's free joint: x, y, z, quaternion
        positions, read = [(0.0, -0.12), (0.05, -0.12)], []
        for x, y in positions:
            task.data.qpos[address : address + 2] = (x, y)
            mujoco.mj_forward(task.model, task.data)
            read.append(object_centre(torch.from_numpy(task.render()).float() / 255.0, PUCK))
        shift_cm = float((read[1] - read[0]).norm()) * scale
        assert shift_cm == pytest.approx(5.0, abs=0.4)
    finally:
        task.close()


def test_only_a_camera_looking_straight_down_has_a_scale():
    fovy = math.radians(45.0)  # MuJoCo's default free-camera field of view
    assert top_camera_scale("push", "top", 64) == pytest.approx(100 * 2 * 0.62 * math.tan(fovy / 2) / 64)
    assert top_camera_scale("push", "side", 64) is None
    assert top_camera_scale("gym:Hopper-v5", "top", 64) is None


def test_a_pushed_object_moved_a_still_one_stayed_and_a_lost_one_did_not_stay():
    start = disc([(30.0, 30.0)] * 3)
    truth = torch.stack(
        [
            disc([(30.0, 30.0)] * 4),
            disc([(30.0, 31.0), (30.0, 33.0), (30.0, 36.0), (30.0, 40.0)]),
            disc([(30.0, 30.0)] * 4),
        ]
    )
    ok = torch.ones(3, 4, dtype=torch.bool)
    judge = ObjectJudge.of(TaskObject(PUCK, 1.0), truth, start, ok)
    assert judge.judged.all() and judge.start_whole.all()
    lost = disc([(30.0, 30.0), None, None, None])
    guess = torch.stack([disc([(30.0, 30.0)] * 4), disc([(30.0, 30.0)] * 4), lost])
    assert judge.moved().tolist() == [0.0, 1.0, 0.0]
    assert judge.moved(guess).tolist() == [0.0, 0.0, 1.0]
    error, within = judge.curves(guess)
    assert error[1].tolist() == pytest.approx([1.0, 3.0, 6.0, 10.0], abs=1e-4)
    assert within[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert within[2].tolist() == [1.0, 0.0, 0.0, 0.0]  # the lost object is a miss, not left out


def test_an_object_the_arm_partly_covers_is_not_judged_there():
    """The centre of what shows of a half-covered object is not where the object is."""
    start = disc([(30.0, 30.0)])
    truth = disc([(30.0, 30.0)] * 3)[None].clone()
    truth[0, 1, :, 30:] = 0.3  # the arm covers the right half in the second frame
    ok = torch.ones(1, 3, dtype=torch.bool)
    judge = ObjectJudge.of(TaskObject(PUCK, 1.0), truth, start, ok)
    assert judge.judged.tolist() == [[True, False, True]] and judge.start_whole.tolist() == [True]
    assert judge.moved(truth).tolist() == [0.0]
    error, _ = judge.curves(truth)
    assert error[0, 1].isnan() and error[0, 0] == 0.0


def test_one_frame_held_still_is_judged_as_every_frame():
    """copy-last's one frame per row scores as that frame repeated over the horizon."""
    start = disc([(30.0, 30.0)] * 2)
    truth = torch.stack([disc([(30.0, 30.0), (30.0, 34.0)]), disc([(30.0, 30.0)] * 2)])
    judge = ObjectJudge.of(TaskObject(PUCK, 1.0), truth, start, torch.ones(2, 2, dtype=torch.bool))
    held = start[:, None]
    repeated = held.expand(-1, 2, -1, -1, -1)
    assert torch.equal(judge.curves(held)[0], judge.curves(repeated)[0])
    assert judge.moved(held).tolist() == judge.moved(repeated).tolist() == [0.0, 0.0]


def test_motion_summary_counts_agreement_per_group_and_leaves_unjudged_episodes_out():
    truth = np.array([1.0, 1.0, 0.0, 0.0, np.nan])
    model = np.array([1.0, 0.0, 0.0, 0.0, 1.0])
    within = np.array([1.0, 0.0, 1.0, np.nan, 1.0])
    summary = motion_summary(truth, model, within)
    assert (summary["episodes_moved"], summary["episodes_still"], summary["episodes_not_judged"]) == (2, 2, 1)
    assert summary["agreement"] == 0.75
    assert summary["agreement_when_moved"] == 0.5 and summary["agreement_when_still"] == 1.0
    assert summary["within_at_16_when_moved"] == 0.5 and summary["within_at_16_when_still"] == 1.0
