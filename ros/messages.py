"""Camera images between ROS messages and RGB arrays, without importing ROS.

The functions read the fields of `sensor_msgs/msg/Image` and `CompressedImage` by name, so they take
rclpy messages and the dataclasses rosbags deserializes alike.
"""

from __future__ import annotations

import io

import numpy as np

from wm_sim.errors import WmSimError

# encoding -> (channels, the channels that make R, G, B)
ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


def image_to_rgb(msg) -> np.ndarray:
    """A `sensor_msgs/msg/Image` as an (H, W, 3) uint8 RGB array (a copy).

    Rows may be padded (`step` > width x channels); any encoding outside ENCODINGS is an error
    that names it.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in ENCODINGS:
        raise WmSimError(
            f"image encoding {msg.encoding!r} is not supported; expected one of: {', '.join(ENCODINGS)}"
        )
    channels, order = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if step < width * channels or data.size < height * step:
        raise WmSimError(
            f"a {width}x{height} {encoding} image needs rows of at least {width * channels} bytes and "
            f"{height * step} bytes in all; the message has step {step} and {data.size} bytes"
        )
    pixels = data[: height * step].reshape(height, step)[:, : width * channels]
    return np.ascontiguousarray(pixels.reshape(height, width, channels)[..., list(order)])


def compressed_to_rgb(msg) -> np.ndarray:
    """A `sensor_msgs/msg/CompressedImage` (JPEG, PNG, anything Pillow reads) as (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise WmSimError(f"cannot decode a compressed image of format {msg.format!r}: {exc}") from exc


def square_frame(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centre square of an (H, W, 3) image, resized to (size, size, 3) uint8."""
    from PIL import Image

    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """The fields of a `sensor_msgs/msg/Image` (all but the header) holding an (H, W, 3) uint8 frame.

    `data` is a flat uint8 array (what rosbags serializes; rclpy takes `data.tobytes()`); rgba8 and
    bgra8 get an opaque alpha, mono8 the mean of the three channels.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {rgb.dtype} of shape {rgb.shape}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    channels, order = ENCODINGS[encoding]
    height, width = rgb.shape[:2]
    if channels == 1:
        pixels = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    else:
        pixels = np.full((height, width, channels), 255, dtype=np.uint8)
        pixels[..., list(order)] = rgb
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * channels,
        "data": np.ascontiguousarray(pixels).reshape(-1),
    }
