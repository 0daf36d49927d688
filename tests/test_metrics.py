"""Frame metrics (wm_sim.metrics): PSNR and SSIM by their definitions, and the object and
foreground scores on drawn scenes."""

from __future__ import annotations

import pytest
import torch

from wm_sim.metrics import foreground_precision, object_mask, object_recall, psnr, ssim


def test_psnr_and_ssim_agree_with_their_definitions():
    frames = torch.rand(3, 32, 32, 3) * 0.8
    assert torch.allclose(psnr(frames, frames + 0.1), torch.full((3,), 20.0), atol=1e-3)  # mse 0.01
    assert torch.allclose(ssim(frames, frames), torch.ones(3), atol=1e-5)
    noisy = (frames + 0.2 * torch.randn_like(frames)).clamp(0, 1)
    noisier = (frames + 0.4 * torch.randn_like(frames)).clamp(0, 1)
    assert torch.allclose(ssim(frames, noisy), ssim(noisy, frames), atol=1e-6)
    assert (ssim(frames, noisier) < ssim(frames, noisy)).all() and (ssim(frames, noisy) < 0.9).all()
    assert psnr(frames[None], frames[None]).shape == (1, 3)  # one value per frame, leading shape kept


RED = (248, 34, 34)


def _scene(target: tuple[int, int] | None, arm: list[tuple[int, int]]) -> torch.Tensor:
    """A 32x32 frame: grey background, a 4x4 red target at `target`, orange 3x3 arm blobs."""
    frame = torch.full((32, 32, 3), 0.3)
    if target is not None:
        frame[target[0] : target[0] + 4, target[1] : target[1] + 4] = torch.tensor(RED) / 255.0
    for r, c in arm:
        frame[r : r + 3, c : c + 3] = torch.tensor([0.94, 0.51, 0.09])
    return frame


def test_object_recall_counts_the_real_objects_pixels_the_prediction_keeps():
    real = _scene((10, 10), [(20, 20)])
    lost = _scene(None, [(20, 20)])
    half = real.clone()
    half[10:12, 10:14] = 0.3  # the top half of the target erased
    recall = object_recall(torch.stack([real, lost, half]), real.expand(3, -1, -1, -1), RED)
    assert recall.tolist() == [1.0, 0.0, 0.5]
    covered = _scene(None, [(10, 10)])  # nothing of the target to recall in the real frame
    assert torch.isnan(object_recall(real[None], covered[None], RED)).all()


def test_unseen_recall_counts_only_the_object_pixels_the_last_real_frame_hid():
    half_covered = _scene((10, 10), [(10, 10)])  # the arm over the target's top-left 3x3 pixels
    real = _scene((10, 10), [(20, 20)])  # the arm has left: 16 target pixels, 9 of them unseen before
    kept_only = half_covered  # what a copy of the last real frame shows
    completed = real  # the target redrawn whole
    recall = object_recall(
        torch.stack([kept_only, completed]), real.expand(2, -1, -1, -1), RED, unseen_in=half_covered
    )
    assert recall.tolist() == [0.0, 1.0]
    assert object_recall(kept_only[None], real[None], RED).item() == pytest.approx(7 / 16)
    # a target the last real frame showed whole leaves nothing unseen to recall
    assert torch.isnan(object_recall(real[None], real[None], RED, unseen_in=real)).all()


def test_remembered_recall_counts_only_hidden_pixels_an_earlier_frame_showed():
    earlier = _scene((10, 10), [(11, 11)])  # the arm over the target's bottom-right 3x3 pixels
    last = _scene((10, 10), [(10, 10)])  # the arm over the top-left 3x3 pixels, 9 of them hidden
    real = _scene((10, 10), [(20, 20)])  # the arm has left: the target whole
    hidden_and_shown = (~object_mask(last, RED)) & object_mask(earlier, RED)
    assert 0 < int(hidden_and_shown.sum()) < 9  # some of the hidden pixels were shown before, not all
    # kept: the last frame with the earlier frame's view of what it hid; lost: the last frame alone
    kept = torch.where(hidden_and_shown[..., None], earlier, last)
    recall = object_recall(
        torch.stack([kept, last, real]), real.expand(3, -1, -1, -1), RED, unseen_in=last, shown_in=earlier[None]
    )
    assert recall.tolist() == [1.0, 0.0, 1.0]
    # over every hidden pixel, the kept frame misses those no frame had shown
    unseen = object_recall(kept[None], real[None], RED, unseen_in=last).item()
    assert unseen == pytest.approx(int(hidden_and_shown.sum()) / 9)
    # no earlier frame showing the hidden pixels: nothing to judge
    assert torch.isnan(object_recall(kept[None], real[None], RED, unseen_in=last, shown_in=last[None])).all()


def test_foreground_precision_counts_ghosts_but_forgives_a_pixel_of_edge():
    background = _scene(None, [])
    real = _scene((10, 10), [(20, 20)])
    ghost = _scene((10, 10), [(20, 20), (2, 2)])  # a faint copy of the arm where it was: 9 of 34
    shifted = _scene((11, 10), [(20, 21)])  # everything a pixel off
    precision = foreground_precision(
        torch.stack([real, ghost, shifted]), real.expand(3, -1, -1, -1), background
    )
    assert precision[0] == 1.0 and precision[2] == 1.0
    assert precision[1] == pytest.approx(25 / 34)
    assert torch.isnan(foreground_precision(background[None], real[None], background)).all()  # draws nothing
