"""A user's start frames for a world-model env: images as the model takes them, per camera."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def observed_cameras(
    asked: Sequence[str] | None, trained: tuple[str, ...], checkpoint: str
) -> tuple[str, ...]:
    """The cameras an env observes: `asked` (some of the model's, in any order), else all of them."""
    if asked is None:
        return trained
    asked = (asked,) if isinstance(asked, str) else tuple(asked)
    unknown = [c for c in asked if c not in trained]
    if not asked or unknown or len(set(asked)) != len(asked):
        raise ValueError(
            f"cameras must name some of the cameras {checkpoint}'s model was trained on, {list(trained)}, "
            f"each once; got {list(asked)}"
        )
    return asked


def camera_images(frames: dict, cameras: tuple[str, ...]) -> list[Any]:
    """Each camera's images from a dict keyed by camera name, in the model's camera order."""
    if set(frames) != set(cameras):
        raise ValueError(f"reset frames must have exactly the cameras {list(cameras)}, got {sorted(frames)}")
    return [frames[c] for c in cameras]


def as_frames(frames: Any, size: int) -> torch.Tensor:
    """(K, S, S, 3) uint8 from one image (H, W, 3) or several (K, H, W, 3), resized if needed."""
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        raise ValueError(f"reset frames must be uint8 RGB images, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(
            f"reset frames must be (H, W, 3) or (K, H, W, 3) RGB with at least one frame of at least "
            f"one pixel, got shape {array.shape}"
        )
    if array.shape[1:3] != (size, size):
        from PIL import Image

        array = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in array])
    return torch.from_numpy(np.ascontiguousarray(array))
