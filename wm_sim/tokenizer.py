"""The frame tokenizer: camera frames to a grid of latent tokens (Encoder) and back (Decoder).

Both halves keep their activations in channels-last memory and run fused layout kernels
(wm_sim.layout_kernels): the same sums as their layers, with fewer copies. An anchored decoder
also reads a real "anchor" frame and blends, per pixel, its own colour with the anchor's (see
Decoder); `wm_sim.world_model` builds both into the world model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wm_sim import compiled_kernels
from wm_sim.layout_kernels import (
    InplaceGELU,
    bf16_inference,
    depth_to_space,
    reordered_conv,
    run_fused,
    space_to_depth_conv,
)


class Encoder(nn.Module):
    """(B, S, S, 3) uint8 camera frames -> (B, G*G, C) latent tokens in (-1, 1).

    Space-to-depth by 4, then stages of (depthwise 3x3, pointwise 1x1, space-to-depth by 2): about
    a fifth of the multiply-adds of strided 4x4 convolutions, for the same receptive field growth.
    """

    def __init__(self, image_size: int, grid: int, latent_dim: int, width: int):
        super().__init__()
        stages = int(math.log2(image_size // grid)) - 2  # the first 4x is the patchify
        if stages < 0:
            raise ValueError(f"image_size / grid must be at least 4, got {image_size} / {grid}")
        channels = max(width // 2**stages, 16)
        layers: list[nn.Module] = [nn.PixelUnshuffle(4), nn.Conv2d(48, channels, 1)]
        for _ in range(stages):
            out = min(channels * 2, width)
            layers += [
                InplaceGELU(),
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                nn.Conv2d(channels, channels, 1),
                InplaceGELU(),
                nn.PixelUnshuffle(2),
                nn.Conv2d(channels * 4, out, 1),
            ]
            channels = out
        layers += [
            InplaceGELU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, latent_dim, 1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.from_scaled(scale_frames(frames.to(torch.float32, copy=True)).permute(0, 3, 1, 2))

    def from_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) frames already scaled to [-1, 1] (scale_frames), fastest in channels-last
        memory -> (B, G*G, C) latents: what decode_and_reencode hands over without a uint8 round trip."""
        return self._latents(run_fused(list(self.net), x))

    def from_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixel levels 0..255, unscaled (in bf16 as exactly as in uint8), fastest in
        channels-last memory -> (B, G*G, C) latents, within rounding of from_scaled of the scaled
        frames. The first convolution is linear, so scale_frames is folded into its weights and
        bias, conv(x / 127.5 - 1) = conv'(x): a bf16 step reads a decoded frame's levels without
        a float32 pass to scale them and another to narrow them (decode_and_reencode)."""
        unshuffle, first, gelu = self.net[:3]
        weight = first.weight / 127.5
        bias = first.bias - first.weight.sum(dim=(1, 2, 3))
        z = space_to_depth_conv(levels, first, unshuffle.downscale_factor, gelu, weight, bias)
        return self._latents(run_fused(list(self.net[3:]), z))

    @staticmethod
    def _latents(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z.flatten(2).transpose(1, 2))  # (B, G*G, C)


def scale_frames(levels: torch.Tensor) -> torch.Tensor:
    """Pixel levels 0..255 as floats -> [-1, 1], in place: what the encoder reads.

    x / 127.5 - 1 is (x / 255) * 2 - 1 to the bit: scaling by 2 commutes with rounding.
    """
    return levels.div_(127.5).sub_(1.0)


ANCHOR_DETAIL_CHANNELS = 12  # the anchor's pixels, 2x2 blocks of RGB, beside the decoder's last features
STATE_CHANNELS = 32  # what each token is told of agent_pos (StateTokens), beside its latents


class StateTokens(nn.Module):
    """Agent_pos -> STATE_CHANNELS numbers for every token of a frame, which the decoder reads beside
    the latents. The latents of an imagined frame drift off the arm's pose faster than the
    predicted joints do; told the joints, the decoder draws the arm where they put it.

    It reads the normalised state and, for wrapped angles, their sine and cosine (a turn is no
    change). A multilayer perceptron, because the pose must become a place in the frame.
    """

    def __init__(self, state_dim: int, periodic: tuple[int, ...], tokens: int, hidden: int = 256):
        super().__init__()
        self.periodic = list(periodic)
        self.tokens = tokens
        self.net = nn.Sequential(
            nn.Linear(state_dim + 2 * len(periodic), hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, tokens * STATE_CHANNELS),
        )

    def forward(self, norm_state: torch.Tensor, raw_state: torch.Tensor) -> torch.Tensor:
        """(M, D) normalised and dataset-unit states -> (M, tokens, STATE_CHANNELS)."""
        angles = raw_state[:, self.periodic]
        x = torch.cat([norm_state, angles.sin(), angles.cos()], dim=-1)
        return self.net(x).reshape(-1, self.tokens, STATE_CHANNELS)


class Decoder(nn.Module):
    """(B, G*G, C) latent tokens -> (B, S, S, 3) pixels in [0, 1].

    Each stage is a 3x3 mixing convolution and a 1x1 convolution followed by a pixel shuffle (x2
    resolution). The last stage predicts each 2x2 block of RGB pixels straight from the half-
    resolution features, so nothing runs at full resolution: at 64x64 that is two thirds of the
    decoder's time saved, and decoding is not what bounds imagined frames/s.

    Anchored, it also reads the anchor frame's tokens and predicts a fourth channel, the weight of
    its own colour against the anchor's pixel: where the anchor already shows what is there (the
    scene, a target that never moves), copying it is exact, and no drift of the latents fades it.
    With anchor detail, its last stage also reads the anchor's pixels themselves (each 2x2 block
    as 12 channels, through a convolution of their own whose output is added to the last
    layer's): from tokens alone, where to copy is known only to a quarter of the frame's
    resolution, and a target's edge beside the arm was drawn over. That share depends on the
    anchor alone, so a rollout computes it once (`anchor_term`, cached in `Anchor.detail`).
    With anchor memory, that convolution also reads earlier real frames of the context
    (`earlier` of them, 12 more channels each): what the arm covers in the anchor frame but an
    earlier frame showed (a target) can be drawn when the arm leaves it.
    """

    def __init__(
        self,
        image_size: int,
        grid: int,
        latent_dim: int,
        width: int,
        anchored: bool = False,
        anchor_detail: bool = False,
        earlier: int = 0,
        state_channels: int = 0,
    ):
        super().__init__()
        self.grid = grid
        self.anchored = anchored
        self.anchor_detail = anchored and anchor_detail  # only an anchored decoder has an anchor
        self.earlier = earlier if self.anchor_detail else 0  # earlier frames read with the anchor's
        stages = int(math.log2(image_size // grid))
        inputs, outputs = (2 * latent_dim, 4) if anchored else (latent_dim, 3)
        self.state_channels = state_channels  # read after the latents (and the anchor's), if any
        layers: list[nn.Module] = [nn.Conv2d(inputs + state_channels, width, 1)]
        channels = width
        for _ in range(stages - 1):
            out = max(channels // 2, 16)
            layers += [
                InplaceGELU(),
                nn.Conv2d(channels, channels, 3, padding=1, groups=max(channels // 16, 1)),
                InplaceGELU(),
                nn.Conv2d(channels, out * 4, 1),
                nn.PixelShuffle(2),
            ]
            channels = out
        layers += [InplaceGELU(), nn.Conv2d(channels, outputs * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)
        # the anchor's pixels' share of the last layer (no bias: the last layer has one)
        self.detail = None  # built only with anchor detail: a model without draws the same initial weights
        if self.anchor_detail:
            inputs = ANCHOR_DETAIL_CHANNELS * (1 + self.earlier)
            self.detail = nn.Conv2d(inputs, outputs * 4, 3, padding=1, bias=False)

    def anchor_term(self, anchor_pixels: torch.Tensor, earlier: torch.Tensor | None = None) -> torch.Tensor:
        """The anchor's pixels' (B, 3, S, S) share of the decoder's last layer (B, 16, S/2, S/2),
        before the sigmoid: what anchor detail adds, the same at every step of a rollout. Held as
        that layer computes it, before its depth-to-space (reordered_conv's channel order, in
        channels-last memory), so a decode adds it inside the layer's own kernel. With anchor
        memory, also the `earlier` frames' (B, 3M, S, S), M frames' RGB in turn; None: no earlier
        frame was seen, and the anchor stands for each (as the first frame of a context stands
        for frames before it)."""
        if self.earlier:
            if earlier is None:
                earlier = anchor_pixels.repeat(1, self.earlier, 1, 1)
            if earlier.shape[-3] != 3 * self.earlier:
                raise ValueError(f"this decoder reads {self.earlier} earlier frames, got {earlier.shape[-3] / 3}")
            anchor_pixels = torch.cat([anchor_pixels, earlier], dim=-3)
        blocks = F.pixel_unshuffle(anchor_pixels * 2.0 - 1.0, 2)  # (B, 12 (1 + M), S/2, S/2), in [-1, 1]
        return reordered_conv(blocks.to(self.detail.weight.dtype), self.detail, 2)

    def forward(
        self,
        tokens: torch.Tensor,
        anchor_tokens: torch.Tensor | None = None,
        anchor_pixels: torch.Tensor | None = None,
        anchor_term: torch.Tensor | None = None,
        state_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (B, N, C); anchored: the anchor's tokens (B, N, C) and pixels (B, 3, S, S) in [0, 1]
        (fastest in channels-last memory), and with anchor detail their `anchor_term` if it is
        already known (else computed here, with no earlier frame seen) -> (B, S, S, 3) pixels in
        [0, 1]. A decoder that reads the state takes its `state_tokens` (B, N, STATE_CHANNELS)."""
        z = self._inputs(tokens, anchor_tokens, state_tokens)
        if self.anchor_detail:  # the last layer adds the anchor's share to its sums, then shuffles
            logits = self._detail_logits(z, anchor_pixels, anchor_term)
            # a bf16 step's sums widened to float32 by the shuffle's copy: the sigmoid and the
            # blend below run in float32, as they do after a float32 addition of the term
            wide = torch.float32 if bf16_inference(logits) else None
            z = depth_to_space(logits, 2, wide)
        else:
            z = run_fused(list(self.net), z)  # (B, 3 or 4, S, S) in channels-last memory
        return self._draw(z, anchor_pixels)

    @torch.no_grad()  # levels are what a frame shows: nothing trains through them
    def levels(
        self,
        tokens: torch.Tensor,
        anchor_tokens: torch.Tensor | None = None,
        anchor_pixels: torch.Tensor | None = None,
        anchor_term: torch.Tensor | None = None,
        state_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's frame as 0..255 levels, no gradient: (B, S, S, 3) uint8, and the same levels as
        the encoder reads them again (Encoder.from_levels: bf16 after an anchored decoder's bf16
        step, else float32). A decoder with anchor detail in a bf16 CPU step runs everything after
        its last convolution as one compiled pass (wm_sim.compiled_kernels) where the machine
        built it: within one level of the torch passes."""
        if self.anchor_detail and bf16_inference(tokens):
            z = self._inputs(tokens, anchor_tokens, state_tokens)
            logits = self._detail_logits(z, anchor_pixels, anchor_term)
            if (logits.dtype, anchor_pixels.dtype) == (torch.bfloat16, torch.float32):
                compiled = compiled_kernels.blend_levels(logits, anchor_pixels)  # None: not built here
                if compiled is not None:
                    return compiled
            frames = self._draw(depth_to_space(logits, 2, torch.float32), anchor_pixels)
        else:
            frames = self(tokens, anchor_tokens, anchor_pixels, anchor_term, state_tokens)
        if bf16_inference(frames) and frames.dtype == torch.float32:  # an anchored decoder's blend
            # a frame's levels are exact in bf16 and read as they are. Blended in float32 from
            # [0, 1] values, levels lie in [0.5, 255.5] and truncate to 0..255 without a clamp
            pixels = frames.mul_(255.0).add_(0.5).to(torch.uint8)
            return pixels, pixels.to(torch.bfloat16)
        levels = frames.mul_(255.0).add_(0.5).clamp_(0, 255)
        # trunc is what the uint8 cast does; under bf16 autocast a level is exact in float32 too
        return levels.to(torch.uint8), levels.to(torch.float32).trunc_()

    def _draw(self, z: torch.Tensor, anchor_pixels: torch.Tensor | None) -> torch.Tensor:
        """The last layer's logits (B, 3 or 4, S, S) in channels-last memory -> (B, S, S, 3) pixels
        in [0, 1]: their sigmoid, blended with the anchor's pixels if anchored."""
        z = z.permute(0, 2, 3, 1)  # (B, S, S, 3 or 4), contiguous
        inference = not (torch.is_grad_enabled() and z.requires_grad)
        out = z.sigmoid_() if inference else torch.sigmoid(z)  # z is this call's own: nothing else reads it
        if not self.anchored:
            return out
        # the 4th channel: 1 = this pixel is drawn, 0 = copied from the anchor (in the anchor's
        # precision, also under bf16 autocast: a copied pixel stays exact)
        out = out.to(anchor_pixels.dtype)
        anchor = anchor_pixels.permute(0, 2, 3, 1)  # (B, S, S, 3)
        if not inference:
            return torch.lerp(anchor, out[..., :3], out[..., 3:])
        # written into (B, S, S, 3) memory whatever the anchor's: uint8 frames are read from it
        blended = torch.empty((*out.shape[:-1], 3), dtype=out.dtype, device=out.device)
        return torch.lerp(anchor, out[..., :3], out[..., 3:], out=blended)

    def _inputs(
        self, tokens: torch.Tensor, anchor_tokens: torch.Tensor | None, state_tokens: torch.Tensor | None
    ) -> torch.Tensor:
        """What the first layer reads: the tokens, the anchor's and the state's side by side, as
        (B, C, G, G) in channels-last memory."""
        if self.anchored:
            tokens = torch.cat([tokens, anchor_tokens], dim=-1)  # (B, N, 2C)
        if self.state_channels:
            tokens = torch.cat([tokens, state_tokens.to(tokens.dtype)], dim=-1)
        b, _, c = tokens.shape
        # (B, C, G, G) in channels-last memory, which is what tokens (B, G*G, C) already are: no copy
        return tokens.reshape(b, self.grid, self.grid, c).permute(0, 3, 1, 2)

    def _detail_logits(
        self, z: torch.Tensor, anchor_pixels: torch.Tensor, anchor_term: torch.Tensor | None
    ) -> torch.Tensor:
        """With anchor detail, the last layer's sums (B, 16, S/2, S/2) before their depth-to-space,
        the anchor's share added (computed here, with no earlier frame seen, if not given)."""
        term = self.anchor_term(anchor_pixels) if anchor_term is None else anchor_term
        z = run_fused(list(self.net[:-2]), z)
        return reordered_conv(z, self.net[-2], 2, added=term)
