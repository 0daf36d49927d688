"""CPU memory-layout kernels for the tokenizer: the same sums as the plain layers, less copying.

The encoder and decoder keep their activations in channels-last memory, on which oneDNN's
convolutions run several times faster, and never move single values between layouts: a
space-to-depth followed by a 1x1 convolution runs as one strided convolution, and a convolution
followed by a depth-to-space computes its channels in the order the depth-to-space reads them, so
it copies whole runs. Each kernel is bit-identical to the layers it replaces
(tests/test_layout_kernels.py checks it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class InplaceGELU(nn.GELU):
    """nn.GELU that writes over its input when no gradient will flow through it.

    Its input is always the fresh output of the layer before, which nothing else reads; in
    inference, not allocating and filling a second tensor of it saves a pass over memory, and
    memory traffic, not arithmetic, is what bounds the convolution stacks on a CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return F.gelu(x, approximate=self.approximate)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def space_to_depth_conv(
    x: torch.Tensor,
    conv: nn.Conv2d,
    factor: int,
    gelu: nn.GELU | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """conv(PixelUnshuffle(factor)(x)) for a 1x1 `conv`: one convolution of kernel and stride
    `factor` with the same weights, so the same sums, without the space-to-depth copy (with
    `gelu`, the GELU after it too: see _convolution). `weight` and `bias`, if given, stand in for
    the convolution's own (of its shape: Encoder.from_levels folds a scaling of x into them)."""
    plain = (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == ((1, 1), (1, 1), (0, 0), (1, 1))
    if not plain or conv.groups != 1:
        raise ValueError(f"space_to_depth_conv needs a plain 1x1 convolution (groups=1), got {conv}")
    inputs = conv.in_channels // factor**2
    weight = (conv.weight if weight is None else weight).view(conv.out_channels, inputs, factor, factor)
    return _convolution(x, conv, weight, conv.bias if bias is None else bias, (factor, factor), gelu)


def conv_depth_to_space(x: torch.Tensor, conv: nn.Conv2d, factor: int, gelu: nn.GELU | None = None) -> torch.Tensor:
    """PixelShuffle(factor)(conv(x)), bit for bit, in channels-last memory (with `gelu`, the GELU
    after the shuffle too, applied before it: it acts on each value alone; see _convolution).

    The convolution computes its output channels in (row, column, channel) order instead of
    (channel, row, column), which changes no sum, so the shuffle moves runs of factor x channels
    values: at batch 256 on a CPU, a quarter of the time PixelShuffle takes on channels-last input.
    """
    return depth_to_space(reordered_conv(x, conv, factor, gelu), factor)


def reordered_conv(
    x: torch.Tensor,
    conv: nn.Conv2d,
    factor: int,
    gelu: nn.GELU | None = None,
    added: torch.Tensor | None = None,
) -> torch.Tensor:
    """conv(x) (B, f*f*C, H, W) with its output channels in the (row, column, channel) order
    depth_to_space reads, in channels-last memory: PixelShuffle(factor) of it is
    depth_to_space(it). `added`, in that same order, is added to the sums: in a bf16 inference
    step inside the convolution's own oneDNN kernel (one pass and one rounding fewer), elsewhere
    after it; a GELU may follow the convolution or an addition, not both."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(
            f"conv_depth_to_space reorders output channels: needs groups=1 and zero padding, got {conv}"
        )
    if gelu is not None and added is not None:
        raise ValueError("reordered_conv takes a GELU or an added tensor, not both")
    channels = conv.out_channels // factor**2
    order = torch.arange(conv.out_channels, device=x.device)
    order = order.view(channels, factor, factor).permute(1, 2, 0).reshape(-1)  # (i, j, c) <- c*f*f + i*f + j
    bias = None if conv.bias is None else conv.bias[order]
    return _convolution(x, conv, conv.weight[order], bias, conv.stride, gelu, added)


def depth_to_space(y: torch.Tensor, factor: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """PixelShuffle(factor) of a reordered_conv's output y (B, f*f*C, H, W): (B, C, fH, fW) in
    channels-last memory, copied in runs of factor x C values; in `dtype` if given."""
    b, _, h, w = y.shape
    channels = y.shape[1] // factor**2
    blocks = y.permute(0, 2, 3, 1).reshape(b, h, w, factor, factor, channels)  # (B, H, W, i, j, C)
    rows = blocks.permute(0, 1, 3, 2, 4, 5)  # row H*f+i, column W*f+j
    out = rows.reshape(b, h * factor, w * factor, channels)
    if dtype is not None:  # after the shuffle: a strided copy that also converts runs 3x slower
        out = out.to(dtype)
    return out.permute(0, 3, 1, 2)  # (B, C, fH, fW) in channels-last memory


def bf16_inference(x: torch.Tensor) -> bool:
    """Whether x is a CPU activation of a bf16-autocast step that no gradient flows through: where
    a layer and the GELU after it may run as one oneDNN kernel (the accelerated step's case)."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def linear_gelu(linear: nn.Linear, gelu: nn.GELU, x: torch.Tensor) -> torch.Tensor:
    """gelu(linear(x)). In a bf16 inference step on a CPU, one oneDNN kernel that applies the GELU
    to the float32 sums before they are rounded to bf16: a pass over the activations fewer, and
    one rounding fewer (so within bf16 rounding of the two layers, not bit for bit). Elsewhere,
    float32 included, exactly the two layers."""
    if not bf16_inference(x):
        return gelu(linear(x))
    bf16 = torch.bfloat16
    bias = None if linear.bias is None else linear.bias.to(bf16)
    return torch.ops.mkldnn._linear_pointwise(
        x.to(bf16), linear.weight.to(bf16), bias, "gelu", [None], gelu.approximate
    )


def _convolution(
    x: torch.Tensor,
    conv: nn.Conv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    gelu: nn.GELU | None,
    added: torch.Tensor | None = None,
) -> torch.Tensor:
    """`conv`'s convolution of x with these weights, bias and stride, then `gelu` if given, or plus
    `added` if given. Fused into one oneDNN kernel in a bf16 inference step on a CPU, as
    linear_gelu; elsewhere the two."""
    fused = conv.padding_mode == "zeros" and bf16_inference(x)
    if fused and (gelu is not None or added is not None):
        bf16 = torch.bfloat16
        common = (list(conv.padding), list(stride), list(conv.dilation), conv.groups)
        bias = None if bias is None else bias.to(bf16)
        if added is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x.to(bf16), added.to(bf16), weight.to(bf16), bias, *common, "add", None, None, [None], None
            )
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(bf16), weight.to(bf16), bias, *common, "gelu", [None], gelu.approximate
        )
    y = F.conv2d(x, weight, bias, stride, conv.padding, conv.dilation, conv.groups)
    if added is not None:
        return y + added
    return y if gelu is None else gelu(y)


def run_fused(layers: list[nn.Module], z: torch.Tensor) -> torch.Tensor:
    """`layers` in order on z, with each PixelUnshuffle and the convolution after it, and each
    convolution and the PixelShuffle after it, run fused (the functions above); in a bf16
    inference step each convolution also takes the GELU after it (_convolution)."""
    fuse_gelu = bf16_inference(z)

    def gelu_at(index: int) -> nn.GELU | None:
        """The GELU at `index`, if it is one and is to be fused into the layer before it."""
        layer = layers[index] if index < len(layers) else None
        return layer if fuse_gelu and isinstance(layer, nn.GELU) else None

    index = 0
    while index < len(layers):
        layer, after = layers[index], layers[index + 1] if index + 1 < len(layers) else None
        if isinstance(layer, nn.PixelUnshuffle) and isinstance(after, nn.Conv2d):
            gelu = gelu_at(index + 2)
            z = space_to_depth_conv(z, after, layer.downscale_factor, gelu)
            index += 2 if gelu is None else 3
        elif isinstance(layer, nn.Conv2d) and isinstance(after, nn.PixelShuffle):
            gelu = gelu_at(index + 2)
            z = conv_depth_to_space(z, layer, after.upscale_factor, gelu)
            index += 2 if gelu is None else 3
        elif isinstance(layer, nn.Conv2d) and gelu_at(index + 1) is not None:
            z = _convolution(z, layer, layer.weight, layer.bias, layer.stride, after)
            index += 2
        else:
            z = layer(z)
            index += 1
    return z


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (read once per process): what native bf16 and a compiled kernel's build depend on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no native bf16 assumed
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()
