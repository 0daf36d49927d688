"""Image fidelity metrics on batches of frames: PSNR and SSIM, computed in torch.

Frames are float tensors in [0, 1] shaped (..., S, S, 3); every metric returns one value per frame
(the leading shape), so callers can average over episodes at each horizon.
"""

from __future__ import annotations

import math

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
    lead = pred.shape[:-3]
    s = pred.shape[-2]
    x = pred.float().reshape(-1, s, s, 3).permute(0, 3, 1, 2).reshape(-1, 1, s, s)  # (B*3, 1, S, S)
    y = target.float().reshape(-1, s, s, 3).permute(0, 3, 1, 2).reshape(-1, 1, s, s)
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
