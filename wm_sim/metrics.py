"""Image fidelity metrics on batches of frames, computed in torch: PSNR and SSIM, whether a
predicted frame keeps the scene (the task object's pixels recalled, no foreground drawn where
the real frame has none), and where it puts the task object (its centre, read by its colour), so
that an object that moves when pushed can be followed.

Frames are float tensors in [0, 1] shaped (..., S, S, 3); every metric returns one value per frame
(the leading shape), NaN where a frame gives it nothing to measure, so callers can average over
episodes at each horizon.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MAX_PSNR = 100.0  # identical frames: a finite ceiling keeps means and JSON well-defined


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per frame, for pixel values in [0, 1]."""
    mse = (pred.float() - target.float()).pow(2).flatten(-3).mean(-1)
    return (-10.0 * torch.log10(mse.clamp(min=10 ** (-MAX_PSNR / 10)))).clamp(max=MAX_PSNR)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), per frame.

    Computed on each colour channel over the valid region of the window and averaged, as
    scikit-image does with `gaussian_weights=True`.
    """
    lead, (h, w) = pred.shape[:-3], pred.shape[-3:-1]
    x = pred.float().reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)  # (B*3, 1, H, W)
    y = target.float().reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    window = _gaussian_window().to(x.device)[None, None]  # (1, 1, 11, 11)
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_channel = index.flatten(1).mean(-1)  # (B*3,)
    return per_channel.reshape(-1, 3).mean(-1).reshape(lead)


def finite_or_none(value: float) -> float | None:
    """A float for JSON: NaN (no episode reached this horizon) becomes null."""
    return None if math.isnan(value) else round(float(value), 5)


# A pixel is the task object's when its colour lies this close to the object's rendered colour
# (RGB distance in [0, 1] units: 60 grey levels): the object's core, not its edges blended with
# what lies beside it, nor the other parts of the scene (reacher's orange link is 98 levels away).
OBJECT_COLOUR_TOLERANCE = 60 / 255
# Foreground: a pixel this far from the background in some channel (40 grey levels).
FOREGROUND_THRESHOLD = 40 / 255
MIN_OBJECT_PIXELS = 5  # fewer real object pixels (the arm covers it): recall is not measured


def background_frame(frames: np.ndarray) -> np.ndarray:
    """The scene without what moves: the per-pixel median of many frames (K, S, S, 3) uint8 -> float."""
    return np.median(frames.astype(np.float32) / 255.0, axis=0)


def object_mask(frames: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """(..., S, S) bool: the pixels of an object rendered in colour `rgb` (0-255)."""
    colour = torch.tensor(rgb, dtype=frames.dtype) / 255.0
    return (frames - colour).norm(dim=-1) < OBJECT_COLOUR_TOLERANCE


def object_centre(frames: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """(..., 2) float: the (row, column) centre of an object rendered in colour `rgb`, in pixels;
    NaN where the frame shows fewer than MIN_OBJECT_PIXELS of it."""
    mask = object_mask(frames, rgb).float()  # (..., S, S)
    rows = torch.arange(mask.shape[-2], dtype=mask.dtype)
    cols = torch.arange(mask.shape[-1], dtype=mask.dtype)
    count = mask.sum((-1, -2))
    centre = torch.stack(
        [(mask.sum(-1) * rows).sum(-1), (mask.sum(-2) * cols).sum(-1)], dim=-1
    ) / count.clamp(min=1)[..., None]
    return torch.where((count >= MIN_OBJECT_PIXELS)[..., None], centre, torch.nan)


def foreground_mask(frames: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(..., S, S) bool: the pixels where something stands in front of the background."""
    return (frames - background).abs().amax(-1) > FOREGROUND_THRESHOLD


def object_recall(
    pred: torch.Tensor,
    target: torch.Tensor,
    rgb: tuple[int, int, int],
    unseen_in: torch.Tensor | None = None,
    shown_in: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fraction of the real frame's object pixels the prediction draws as the object; NaN
    where the real frame shows fewer than MIN_OBJECT_PIXELS (covered, or out of view).

    With `unseen_in` (a frame broadcastable to target, such as the last real frame before the
    rollout), only the object pixels that frame does not show count: what was covered then and is
    uncovered now, or where the object moved since. No copy of that frame recalls any of them.
    With `shown_in` (frames (..., K, S, S, 3), such as the earlier context frames), only the object
    pixels one of them shows count: what a scene memory could have kept. Where both are given,
    the pixels the last frame hid and an earlier one showed: what a memory is for.
    """
    real, drawn = object_mask(target, rgb), object_mask(pred, rgb)
    if unseen_in is not None:
        real = real & ~object_mask(unseen_in, rgb)
    if shown_in is not None:
        real = real & object_mask(shown_in, rgb).any(dim=-3, keepdim=True)
    shown = real.sum((-1, -2))
    hit = (real & drawn).sum((-1, -2)).float()
    return torch.where(shown >= MIN_OBJECT_PIXELS, hit / shown.clamp(min=1), torch.nan)


def foreground_precision(pred: torch.Tensor, target: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The fraction of the foreground the prediction draws that the real frame has within a pixel
    (a ghost of the arm where it no longer is counts against it, an edge a pixel off does not);
    NaN where the prediction draws no foreground."""
    drawn = foreground_mask(pred, background)
    real = foreground_mask(target, background).float()
    flat = real.reshape(-1, 1, *real.shape[-2:])
    near = F.max_pool2d(flat, 3, stride=1, padding=1).reshape(real.shape).bool()
    count = drawn.sum((-1, -2))
    kept = (drawn & near).sum((-1, -2)).float()
    return torch.where(count > 0, kept / count.clamp(min=1), torch.nan)
