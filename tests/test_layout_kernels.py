"""The tokenizer's layout kernels: the same results as the layers they replace, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wm_sim.layout_kernels import InplaceGELU, conv_depth_to_space, space_to_depth_conv


def test_conv_depth_to_space_is_conv_then_pixel_shuffle_to_the_bit():
    torch.manual_seed(0)
    for inputs, outputs, kernel, batch in ((16, 64, 1, 5), (8, 16, 3, 2), (32, 12, 3, 1)):
        conv = torch.nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2)
        x = torch.randn(batch, inputs, 6, 6).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            fused = conv_depth_to_space(x, conv, 2)
            assert torch.equal(fused, F.pixel_shuffle(conv(x), 2))
        assert fused.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="groups=1"):
        conv_depth_to_space(x, torch.nn.Conv2d(32, 16, 1, groups=2), 2)
    with pytest.raises(ValueError, match="zero padding"):
        conv_depth_to_space(x, torch.nn.Conv2d(32, 16, 3, padding=1, padding_mode="reflect"), 2)


def test_space_to_depth_conv_is_pixel_unshuffle_then_its_1x1_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8 * 4, 16, 1)
    x = torch.randn(3, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(space_to_depth_conv(x, conv, 2), conv(F.pixel_unshuffle(x, 2)))
    for other in (torch.nn.Conv2d(32, 16, 3, padding=1), torch.nn.Conv2d(32, 16, 1, groups=2)):
        with pytest.raises(ValueError, match="plain 1x1"):
            space_to_depth_conv(x, other, 2)


def test_gelu_overwrites_its_input_only_when_no_gradient_flows_through_it():
    x = torch.randn(6, requires_grad=True)
    hidden = x * 2.0
    out = InplaceGELU()(hidden)
    out.sum().backward()
    expected = x.detach().clone().requires_grad_(True)
    F.gelu(expected * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, expected.grad)
    assert not torch.equal(hidden, out)  # the input autograd needs is kept
    with torch.no_grad():
        y = torch.randn(6)
        reference = F.gelu(y)
        out = InplaceGELU()(y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, reference)
