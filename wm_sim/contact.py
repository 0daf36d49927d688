"""Contact fidelity: where the imagined task object is, and whether it moves when the real one does.

A world model of pushing must move the object when the arm pushes it and leave it where it is
when the arm does not. Both are read off the frames: the object's centre from its colour
(`metrics.object_centre`), in centimetres on the table through the top camera's scale. Per
horizon, the distance between the imagined and the real centre, and whether it is within
WITHIN_CM; per episode, whether the object moved in the first MOTION_HORIZON frames of the
rollout (by more than MOVE_THRESHOLD_CM from where the last real frame showed it), in the model's
frames and in MuJoCo's, and whether the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from wm_sim.metrics import MIN_OBJECT_PIXELS, object_centre, object_mask

WITHIN_CM = 2.0  # an imagined object this close to the real one is in the right place
MOVE_THRESHOLD_CM = 1.0  # the object moved: its centre went this far from where it started
MOTION_HORIZON = 64  # frames of the rollout over which moving or staying is judged
POSITION_HORIZON = 16  # the horizon at which motion_summary reports positions per group
WHOLE_FRACTION = 0.8  # of the object's pixels shown: fewer, and the arm covers part of it


@dataclass(frozen=True)
class TaskObject:
    """The task object as the frames show it: its rendered colour (0-255), and the top camera's
    centimetres per pixel (None: its position is not measured, only its recall)."""

    rgb: tuple[int, int, int]
    cm_per_pixel: float | None = None


def top_camera_scale(task: str, camera: str, image_size: int) -> float | None:
    """Centimetres per pixel on the table plane, for a task camera looking straight down; None
    for other views and for tasks without a camera of ours (positions are then not measured)."""
    from wm_sim.envs.catalog import TASK_SPECS, make_task
    from wm_sim.envs.rendering import metres_per_pixel

    if task not in TASK_SPECS:
        return None
    built = make_task(task, image_size=image_size, cameras=[camera])
    try:
        spec = built.camera_spec(camera)
        if not math.isclose(spec.elevation, -90.0):
            return None
        # the lookat point lies on the table
        return 100.0 * metres_per_pixel(spec, float(built.model.vis.global_.fovy), image_size)
    finally:
        built.close()


def motion_summary(true_moved: np.ndarray, model_moved: np.ndarray, within_at: np.ndarray) -> dict:
    """metrics.json's `object_motion`: how often the model's object moves when MuJoCo's does and
    stays when it stays (over the episodes judged: NaN flags are left out), and its position at
    POSITION_HORIZON in each group. `within_at` (E,): 1/0 per episode at that horizon, NaN where
    the real frame did not show the object whole."""

    def share(values: np.ndarray) -> float | None:
        values = values[~np.isnan(values)]
        return round(float(values.mean()), 5) if len(values) else None

    judged = ~np.isnan(true_moved)
    went, stayed = judged & (true_moved == 1), judged & (true_moved == 0)
    agree = np.where(judged, (true_moved == model_moved).astype(float), np.nan)
    return {
        "move_threshold_cm": MOVE_THRESHOLD_CM,
        "motion_horizon": MOTION_HORIZON,
        "within_cm": WITHIN_CM,
        "episodes_moved": int(went.sum()),
        "episodes_still": int(stayed.sum()),
        "episodes_not_judged": int((~judged).sum()),
        "agreement": share(agree),
        "agreement_when_moved": share(agree[went]),
        "agreement_when_still": share(agree[stayed]),
        f"within_at_{POSITION_HORIZON}_when_moved": share(within_at[went]),
        f"within_at_{POSITION_HORIZON}_when_still": share(within_at[stayed]),
    }


@dataclass
class ObjectJudge:
    """One batch's real task object, read once, against which each method's frames are judged:
    the object's centre in the real frames (B, H, S, S, 3) of the top camera and in the last real
    frame before them (B, S, S, 3), and where the real frames show it whole, so that its centre is
    where it is. Whole: at least WHOLE_FRACTION of the most pixels the episode's real frames show
    of it (the arm passing over a part of it moves the centre of what is left)."""

    task_object: TaskObject
    truth: torch.Tensor  # (B, H, 2): the real object's centre, in pixels
    origin: torch.Tensor  # (B, 2): its centre in the last real frame
    judged: torch.Tensor  # (B, H): the real frames showing it whole (within the episode)
    start_whole: torch.Tensor  # (B,): the last real frame shows it whole

    @classmethod
    def of(
        cls, task_object: TaskObject, truth: torch.Tensor, start: torch.Tensor, ok: torch.Tensor
    ) -> ObjectJudge:
        """truth (B, H, S, S, 3) and start (B, S, S, 3) frames; ok (B, H): the frames an episode reaches."""
        rgb = task_object.rgb
        shown, shown_start = object_mask(truth, rgb).sum((-1, -2)), object_mask(start, rgb).sum((-1, -2))
        largest = torch.maximum(shown.masked_fill(~ok, 0).amax(1), shown_start).clamp(min=MIN_OBJECT_PIXELS)
        judged = ok & (shown >= WHOLE_FRACTION * largest[:, None])
        start_whole = shown_start >= WHOLE_FRACTION * largest
        return cls(task_object, object_centre(truth, rgb), object_centre(start, rgb), judged, start_whole)

    def curves(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per frame (B, H) of frames (B, H, S, S, 3), or of one frame per row held still
        (B, 1, ...): the imagined object's distance to the real one in cm, and 1.0 if within
        WITHIN_CM, 0.0 if not or if the imagined frame lost it; both NaN where the real frame does
        not show it whole, the distance NaN also where the imagined one is lost."""
        guess = object_centre(frames, self.task_object.rgb)
        error = (guess - self.truth).norm(dim=-1) * self.task_object.cm_per_pixel
        within = (error < WITHIN_CM).float()  # NaN < x is False: a lost object is a miss
        return error.masked_fill(~self.judged, torch.nan), within.masked_fill(~self.judged, torch.nan)

    def moved(self, frames: torch.Tensor | None = None) -> np.ndarray:
        """(B,) 1.0 where the object in frames (B, H, S, S, 3) (or (B, 1, ...); None: the real
        frames) went further than MOVE_THRESHOLD_CM, within MOTION_HORIZON frames, from where the
        last real frame shows it, 0.0 where it stayed; read on the frames where the real object
        shows whole. NaN: not judged (the last real frame shows it in part, or no frame is
        judged). An object the frames lose altogether did not stay."""
        h = min(MOTION_HORIZON, self.truth.shape[1])
        judged = self.judged[:, :h]
        centre = self.truth if frames is None else object_centre(frames[:, :h], self.task_object.rgb)
        distance = (centre[:, :h] - self.origin[:, None]).norm(dim=-1) * self.task_object.cm_per_pixel
        went = ((distance > MOVE_THRESHOLD_CM) | distance.isnan()) & judged  # NaN: the frame lost it
        flags = went.any(1).float()
        return flags.masked_fill(~(self.start_whole & judged.any(1)), torch.nan).numpy()
