"""FLOPs of one imagined frame: counted by hand from the model's shapes, and by torch as it runs.

The roofline suite divides achieved FLOP/s by the machine's matmul peak. The count is of
multiply-adds (x2) in matmuls, convolutions and attention, the work a peak is measured on;
element-wise work (norms, activations, the pixel shuffles) is left out, as torch's
FlopCounterMode leaves it out. The two counts agree exactly (tests check it), so either can be
trusted in the results, with one known gap: FlopCounterMode has no formula for the CPU
attention kernel (nor for flash-attn's), so where a step uses it (float32) it misses
`attention_flops` exactly. A bf16 CPU step attends with batched matmuls
(wm_sim.world_model.attend_batched), which it counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from wm_sim.world_model import WorldModel


def conv_stack_flops(net: nn.Sequential, channels: int, size: int) -> int:
    """FLOPs of a stack of convolutions and pixel (un)shuffles on one (channels, size, size) input."""
    flops = 0
    for layer in net:
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            flops += 2 * layer.out_channels * size * size * (layer.in_channels // layer.groups) * kh * kw
            channels = layer.out_channels
        elif isinstance(layer, nn.PixelUnshuffle):
            channels, size = channels * layer.downscale_factor**2, size // layer.downscale_factor
        elif isinstance(layer, nn.PixelShuffle):
            channels, size = channels // layer.upscale_factor**2, size * layer.upscale_factor
    return flops


def frame_flops(model: WorldModel) -> dict[str, int]:
    """Hand count of one frame of an imagined step, by stage.

    dynamics: the streaming transformer step (one frame's N tokens attending to the window's W*N
    cached keys) and its heads; decode: latents to pixels; uncertainty: the re-encode of the
    decoded frame that `info["uncertainty"]` is made from.
    """
    c = model.config
    n, d = c.tokens, c.dim
    embed = 2 * n * c.latent_dim * d + 2 * c.state_dim * d + 2 * c.action_dim * d
    block = (
        2 * n * d * 3 * d  # q, k, v
        + 2 * n * d * d  # output projection
        + 2 * 2 * n * d * c.mlp_ratio * d  # MLP in and out
    )
    heads = 2 * n * d * c.latent_dim + 2 * d * (
        (0 if c.transition else c.state_dim) + (1 if c.frame_reward else 2)
    )
    grid = c.grid
    return {
        "dynamics": embed
        + c.depth * block
        + heads
        + attention_flops(model)
        + transition_flops(model)
        + frame_reward_flops(model),
        "decode": conv_stack_flops(model.decoder.net, c.latent_dim, grid) + state_tokens_flops(model),
        "uncertainty": conv_stack_flops(model.encoder.net, 3, c.image_size),
    }


def state_tokens_flops(model: WorldModel) -> int:
    """What the decoder is told of agent_pos (StateTokens' MLP), once per frame (0 without)."""
    return 0 if model.state_tokens is None else linear_flops(model.state_tokens.net)


def transition_flops(model: WorldModel) -> int:
    """The state transition's MLP and the transformer's read of its output (0 without one)."""
    if model.transition is None:
        return 0
    return linear_flops([*model.transition.net, model.next_state_in])


def frame_reward_flops(model: WorldModel) -> int:
    """The frame-reward head's MLP on the re-encoded frame (0 without one)."""
    return 0 if model.reward_head is None else linear_flops(model.reward_head.net)


def linear_flops(modules) -> int:
    """Multiply-adds x 2 of the nn.Linear layers among `modules`, for one input row."""
    return sum(2 * m.in_features * m.out_features for m in modules if isinstance(m, nn.Linear))


def attention_flops(model: WorldModel) -> int:
    """q k^T and attention x v of one frame's N queries over the window's W*N keys, all heads and layers."""
    c = model.config
    return c.depth * 2 * 2 * c.tokens * (c.window * c.tokens) * c.dim


def _fused_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's linear with a fused GELU (wm_sim.layout_kernels.linear_gelu): its matmul's FLOPs."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _fused_conv_flops(x_shape, second_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's convolution with a fused GELU (wm_sim.layout_kernels.run_fused), or with a tensor
    added to its sums (its `binary` overload, reordered_conv's `added`): its convolution's FLOPs.
    The binary overload takes the added tensor second and the weight third, where the plain one
    takes the weight second and the 1-d bias (or None) third; FlopCounterMode gives both here."""
    binary = bool(args) and isinstance(args[0], list | tuple | torch.Size) and len(args[0]) == 4
    w_shape = args[0] if binary else second_shape
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape))


# the fused layers a bf16 step runs, which FlopCounterMode has no formula for (keyed by the
# op: both of _convolution_pointwise's overloads come to _fused_conv_flops)
FUSED_LAYER_FLOPS = {
    torch.ops.mkldnn._linear_pointwise: _fused_linear_flops,
    torch.ops.mkldnn._convolution_pointwise: _fused_conv_flops,
}


def counted_step_flops(engine_step, actions: torch.Tensor) -> int:
    """FLOPs torch counts in one call of `engine_step(actions)` (a whole batch)."""
    with FlopCounterMode(display=False, custom_mapping=FUSED_LAYER_FLOPS) as counter:
        engine_step(actions)
    return int(counter.get_total_flops())
