"""Pictures people look at instead of tables: side-by-side frame grids, MP4 videos, PNG images.

Writes go to a temporary file renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary sibling to write, renamed onto `path` once the write succeeded."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    yield tmp
    os.replace(tmp, path)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (or uint8 already) -> uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def side_by_side(frames: np.ndarray) -> np.ndarray:
    """A sequence of several cameras' frames (T, K, S, S, 3) as one picture per step (T, S, K*S, 3),
    the cameras left to right; one camera's (T, S, S, 3) are returned as they are."""
    if frames.ndim < 5:
        return frames
    return np.concatenate(np.moveaxis(frames, -4, 0), axis=-2)


def difference(a: np.ndarray, b: np.ndarray, gain: float = 3.0) -> np.ndarray:
    """|a - b| per pixel, brightened by `gain` so small errors are visible, as uint8."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)) * gain
    return np.clip(diff, 0, 255).astype(np.uint8)


def grid(rows: list[list[np.ndarray]], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Tile equal-size uint8 images (H, W, 3) into one image, upscaled by `scale`, with white gaps."""
    tiles = [[np.repeat(np.repeat(t, scale, 0), scale, 1) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    ncols = max(len(r) for r in tiles)
    out = np.full((len(tiles) * h + (len(tiles) - 1) * gap, ncols * w + (ncols - 1) * gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = tile
    return out


def captioned_pair(
    left: np.ndarray, right: np.ndarray, left_text: str, right_text: str, scale: int = 4
) -> np.ndarray:
    """Two uint8 frames side by side, upscaled, each half captioned in a white band above it."""
    from PIL import Image, ImageDraw

    body = grid([[left, right]], scale=scale, gap=4)
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + 18), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (0, 18))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), left_text, fill=(0, 0, 0))
    draw.text((body.shape[1] // 2 + 4, 3), right_text, fill=(0, 0, 0))
    return np.asarray(canvas)


def comparison_frames(pairs: list[tuple[np.ndarray, np.ndarray]], scale: int = 2) -> list[np.ndarray]:
    """Video frames of true | predicted | difference, one row per (true, predicted) uint8 sequence.

    A sequence shorter than the longest holds its last frame.
    """
    longest = max(len(true) for true, _ in pairs)
    frames = []
    for i in range(longest):
        rows = []
        for true, pred in pairs:
            j = min(i, len(true) - 1)
            rows.append([true[j], pred[j], difference(true[j], pred[j])])
        frames.append(grid(rows, scale=scale))
    return frames


def write_video(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float) -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264 MP4 (sides padded to even sizes for the codec)."""
    import imageio.v2 as imageio

    path = Path(path)
    frames = [np.asarray(f) for f in frames]
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with (
        _atomic(path) as tmp,
        imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=8) as writer,
    ):
        for frame in frames:
            writer.append_data(np.pad(frame, pad, constant_values=255))
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    with _atomic(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
