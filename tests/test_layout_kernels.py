"""The tokenizer's layout kernels: the same results as the layers they replace, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wm_sim.layout_kernels import (
    InplaceGELU,
    conv_depth_to_space,
    depth_to_space,
    linear_gelu,
    reordered_conv,
    run_fused,
    space_to_depth_conv,
)
from wm_sim.tokenizer import Decoder, Encoder


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


def test_a_term_added_before_the_shuffle_is_the_shuffled_term_added_after_it():
    """The decoder's last layer adds the anchor's share in the layer's own channel order: float32
    to the bit; a bf16 step adds it inside the convolution, within bf16 rounding of the two."""
    torch.manual_seed(0)
    conv, other = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(12, 16, 3, padding=1, bias=False)
    x, y = (torch.randn(3, c, 6, 6).contiguous(memory_format=torch.channels_last) for c in (8, 12))
    with torch.no_grad():
        term = reordered_conv(y, other, 2)  # (B, 16, 6, 6): what Decoder.anchor_term holds
        expected = F.pixel_shuffle(conv(x), 2) + F.pixel_shuffle(other(y), 2)
        assert torch.equal(depth_to_space(reordered_conv(x, conv, 2, added=term), 2), expected)
        assert torch.equal(depth_to_space(term, 2), F.pixel_shuffle(other(y), 2))
    grad, autocast = _bf16_step()
    with grad, autocast:
        fused = reordered_conv(x, conv, 2, added=term.bfloat16())
        assert fused.dtype == torch.bfloat16  # one oneDNN kernel, one rounding
        wide = depth_to_space(fused, 2, torch.float32)
    assert wide.dtype == torch.float32 and wide.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(wide, depth_to_space(fused, 2).float())  # widening changes no value
    torch.testing.assert_close(wide, expected, rtol=0.02, atol=0.05)
    with pytest.raises(ValueError, match="not both"):
        reordered_conv(x, conv, 2, gelu=InplaceGELU(), added=term)


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


def _bf16_step():
    return torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16)


def test_a_layer_and_its_gelu_fuse_only_in_a_bf16_inference_step_and_agree_with_the_two_layers():
    torch.manual_seed(0)
    linear, gelu, x = torch.nn.Linear(32, 64), InplaceGELU(), torch.randn(2, 16, 32)
    with torch.no_grad():  # float32: the two layers, to the bit
        assert torch.equal(linear_gelu(linear, gelu, x), F.gelu(linear(x)))
    grad, autocast = _bf16_step()
    with grad, autocast:
        fused, two = linear_gelu(linear, gelu, x), gelu(linear(x))
    assert fused.dtype == two.dtype == torch.bfloat16 and not torch.equal(fused, two)  # one rounding fewer
    torch.testing.assert_close(fused.float(), two.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("half", [Encoder(32, 4, 8, 32), Decoder(32, 4, 8, 32)])
def test_the_tokenizers_fused_layers_agree_with_its_plain_layers_in_a_bf16_step(half):
    """run_fused folds each GELU into the convolution before it in a bf16 inference step: the
    encoder's and decoder's outputs stay within bf16 rounding of the layers run one by one."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32) if isinstance(half, Encoder) else torch.randn(3, 8, 4, 4)
    x = x.contiguous(memory_format=torch.channels_last)
    layers = list(half.net)
    with torch.no_grad():  # float32: the same sums (a strided convolution may order them otherwise)
        torch.testing.assert_close(run_fused(layers, x), torch.nn.Sequential(*layers)(x), rtol=1e-5, atol=1e-6)
    grad, autocast = _bf16_step()
    with grad, autocast:
        fused = run_fused(layers, x).float()
        plain = torch.nn.Sequential(*layers)(x).float()
    torch.testing.assert_close(fused, plain, rtol=0.05, atol=0.05)
