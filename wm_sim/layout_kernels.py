"""CPU memory-layout kernels for the tokenizer: the same sums as the plain layers, less copying.

The encoder and decoder keep their activations in channels-last memory, on which oneDNN's
convolutions run several times faster, and never move single values between layouts: a
space-to-depth followed by a 1x1 convolution runs as one strided convolution, and a convolution
followed by a depth-to-space computes its channels in the order the depth-to-space reads them, so
it copies whole runs. Each kernel is bit-identical to the layers it replaces
(tests/test_layout_kernels.py checks it).
"""

from __future__ import annotations

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


def space_to_depth_conv(x: torch.Tensor, conv: nn.Conv2d, factor: int) -> torch.Tensor:
    """conv(PixelUnshuffle(factor)(x)) for a 1x1 `conv`: one convolution of kernel and stride
    `factor` with the same weights, so the same sums, without the space-to-depth copy."""
    plain = (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == ((1, 1), (1, 1), (0, 0), (1, 1))
    if not plain or conv.groups != 1:
        raise ValueError(f"space_to_depth_conv needs a plain 1x1 convolution (groups=1), got {conv}")
    inputs = conv.in_channels // factor**2
    weight = conv.weight.view(conv.out_channels, inputs, factor, factor)  # channel c*f*f + i*f + j
    return F.conv2d(x, weight, conv.bias, stride=factor)


def conv_depth_to_space(x: torch.Tensor, conv: nn.Conv2d, factor: int) -> torch.Tensor:
    """PixelShuffle(factor)(conv(x)), bit for bit, in channels-last memory.

    The convolution computes its output channels in (row, column, channel) order instead of
    (channel, row, column), which changes no sum, so the shuffle moves runs of factor x channels
    values: at batch 256 on a CPU, a quarter of the time PixelShuffle takes on channels-last input.
    """
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(
            f"conv_depth_to_space reorders output channels: needs groups=1 and zero padding, got {conv}"
        )
    channels = conv.out_channels // factor**2
    order = torch.arange(conv.out_channels, device=x.device)
    order = order.view(channels, factor, factor).permute(1, 2, 0).reshape(-1)  # (i, j, c) <- c*f*f + i*f + j
    bias = None if conv.bias is None else conv.bias[order]
    y = F.conv2d(x, conv.weight[order], bias, conv.stride, conv.padding, conv.dilation)
    b, _, h, w = y.shape
    y = y.permute(0, 2, 3, 1).reshape(b, h, w, factor, factor, channels)  # (B, H, W, i, j, C)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, h * factor, w * factor, channels)  # row H*f+i, column W*f+j
    return y.permute(0, 3, 1, 2)  # (B, C, fH, fW) in channels-last memory


def run_fused(layers: list[nn.Module], z: torch.Tensor) -> torch.Tensor:
    """`layers` in order on z, with each PixelUnshuffle and the convolution after it, and each
    convolution and the PixelShuffle after it, run fused (the functions above)."""
    index = 0
    while index < len(layers):
        layer, after = layers[index], layers[index + 1] if index + 1 < len(layers) else None
        if isinstance(layer, nn.PixelUnshuffle) and isinstance(after, nn.Conv2d):
            z = space_to_depth_conv(z, after, layer.downscale_factor)
            index += 2
        elif isinstance(layer, nn.Conv2d) and isinstance(after, nn.PixelShuffle):
            z = conv_depth_to_space(z, layer, after.upscale_factor)
            index += 2
        else:
            z = layer(z)
            index += 1
    return z
