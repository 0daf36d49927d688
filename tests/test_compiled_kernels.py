"""The compiled kernels, built with the machine's real C compiler: the anchored decoder's last pass
held to torch's passes (one level apart at most), attention to exact attention (closer than
torch's bf16 path), and torch's passes wherever they cannot be built or do not apply."""

from __future__ import annotations

import shutil

import pytest
import torch

from wm_sim import compiled_kernels
from wm_sim.layout_kernels import cpu_flags, depth_to_space
from wm_sim.tokenizer import Decoder
from wm_sim.world_model import attend_batched

IMAGE, GRID, LATENT = 32, 4, 8
needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh cache: the kernel is compiled in this test, not found from an earlier run."""
    monkeypatch.setenv("WM_SIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WM_SIM_NATIVE", raising=False)
    monkeypatch.delenv("CC", raising=False)
    yield tmp_path / "cache"
    compiled_kernels.available("anchored_blend", refresh=True)  # the next test sees this process's own setting


def _logits_and_anchor(batch: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, 16, h, w, generator=g) * 4).bfloat16()
    anchor = torch.rand(batch, 3, 2 * h, 2 * w, generator=g)
    anchor[0, :, :4] = torch.tensor([0.0, 1.0, 0.5]).view(3, 1, 1)  # exact ends and a half level
    channels_last = torch.channels_last
    return logits.contiguous(memory_format=channels_last), anchor.contiguous(memory_format=channels_last)


def _anchored_decoder() -> Decoder:
    torch.manual_seed(0)
    return Decoder(IMAGE, GRID, LATENT, 32, anchored=True, anchor_detail=True).eval()


def _decoder_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens, the anchor's tokens and the anchor's pixels (channels-last, as a step holds them)."""
    tokens = torch.randn(2, batch, GRID * GRID, LATENT).tanh()
    anchor = torch.rand(batch, 3, IMAGE, IMAGE).contiguous(memory_format=torch.channels_last)
    return tokens[0], tokens[1], anchor


def _torch_levels(logits: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """What the kernel replaces, pass by pass: shuffle, sigmoid, blend, quantise."""
    frames = depth_to_space(logits, 2, torch.float32).permute(0, 2, 3, 1).sigmoid()
    blended = torch.lerp(anchor.permute(0, 2, 3, 1), frames[..., :3], frames[..., 3:])
    return blended.mul(255.0).add(0.5).to(torch.uint8)


@needs_compiler
def test_the_compiled_pass_gives_torchs_levels_within_one(own_cache):
    assert compiled_kernels.available("anchored_blend", refresh=True)
    assert len(list(own_cache.glob("native/*.so"))) == 1  # built once, into the cache, no partial file left
    for batch, h, w in ((3, 32, 32), (2, 5, 7), (40, 8, 8)):  # a frame's, odd sizes, and many rows
        logits, anchor = _logits_and_anchor(batch, h, w)
        pixels, levels = compiled_kernels.blend_levels(logits, anchor)
        expected = _torch_levels(logits, anchor)
        assert pixels.shape == expected.shape == (batch, 2 * h, 2 * w, 3) and pixels.dtype == torch.uint8
        gap = (pixels.int() - expected.int()).abs()
        assert gap.max() <= 1 and (gap > 0).float().mean() < 1e-3
        assert torch.equal(levels, pixels.to(torch.bfloat16))  # the same levels, as the encoder reads them
    # a pixel fully copied (blend logit far below 0) is the anchor's own level
    logits[:, 3::4] = -100.0
    pixels, _ = compiled_kernels.blend_levels(logits, anchor)
    assert torch.equal(pixels, anchor.permute(0, 2, 3, 1).mul(255.0).add(0.5).to(torch.uint8))


@needs_compiler
def test_a_decoder_step_in_bf16_draws_the_same_frames_with_and_without_the_kernel(own_cache):
    decoder = _anchored_decoder()
    tokens, anchor_tokens, anchor = _decoder_inputs(6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled_kernels.available("anchored_blend", refresh=True)
        compiled, compiled_levels = decoder.levels(tokens, anchor_tokens, anchor)
        with compiled_kernels.torch_ops_only():
            assert not compiled_kernels.available("anchored_blend")
            passes, passes_levels = decoder.levels(tokens, anchor_tokens, anchor)
            drawn = decoder(tokens, anchor_tokens, anchor)
    assert compiled_kernels.available("anchored_blend")  # back on after the block
    assert torch.equal(passes, drawn.mul(255.0).add(0.5).to(torch.uint8))  # torch's passes: forward, quantised
    assert passes_levels.dtype == compiled_levels.dtype == torch.bfloat16
    assert (compiled.int() - passes.int()).abs().max() <= 1


def test_without_a_working_compiler_the_decoder_runs_torchs_passes(own_cache, monkeypatch, tmp_path):
    failing = tmp_path / "cc-that-fails"
    failing.write_text("#!/bin/sh\necho 'this compiler refuses' >&2\nexit 1\n")
    failing.chmod(0o755)
    for compiler, why in ((str(failing), "this compiler refuses"), (str(tmp_path / "absent"), "no C compiler")):
        monkeypatch.setenv("CC", compiler)
        with pytest.warns(UserWarning, match=why):
            assert not compiled_kernels.available("anchored_blend", refresh=True)
        assert not list(own_cache.glob("native/*"))  # nothing half-built left behind
        logits, anchor = _logits_and_anchor(2, 4, 4)
        assert compiled_kernels.blend_levels(logits, anchor) is None
    monkeypatch.setenv("WM_SIM_NATIVE", "0")
    monkeypatch.delenv("CC")
    assert not compiled_kernels.available("anchored_blend", refresh=True)  # switched off: no build, no warning
    tokens, anchor_tokens, anchor = _decoder_inputs(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pixels, levels = _anchored_decoder().levels(tokens, anchor_tokens, anchor)
    assert pixels.dtype == torch.uint8 and torch.equal(levels, pixels.to(torch.bfloat16))


@needs_compiler
def test_bad_input_names_what_the_kernel_expected(own_cache):
    assert compiled_kernels.available("anchored_blend", refresh=True)
    logits, anchor = _logits_and_anchor(2, 4, 4)
    for bad_logits, bad_anchor in (
        (logits.float(), anchor),  # float32 logits
        (logits[:, :12], anchor),  # 12 channels, not 16
        (logits, anchor.double()),
        (logits, anchor[:, :, :6]),  # the anchor is not twice the logits' size
    ):
        with pytest.raises(ValueError, match=r"blend_levels needs logits \(B, 16, H, W"):
            compiled_kernels.blend_levels(bad_logits, bad_anchor)


needs_attention = pytest.mark.skipif(
    shutil.which("cc") is None or "avx512_bf16" not in cpu_flags(), reason="no C compiler or no AVX512-BF16"
)


def _attention_inputs(batch: int, heads: int, slots: int, seed: int = 0):
    """q as a streamed step holds it (a strided view of the projection's output) and the window's
    k, v, all bf16."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, 16, 3, heads, 32, generator=g).bfloat16()
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # (B, H, 16, 32), not contiguous
    k, v = (torch.randn(batch, heads, slots, 32, generator=g).bfloat16() for _ in range(2))
    return q, k, v


def _exact(q, k, v, mask=None) -> torch.Tensor:
    scores = q.double() @ k.double().transpose(-1, -2) / 32**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v.double()


@needs_attention
def test_compiled_attention_is_closer_to_exact_attention_than_torchs_bf16_path(own_cache):
    assert compiled_kernels.available("attention", refresh=True)
    q, k, v = _attention_inputs(5, 4, 128)
    filled = torch.tensor([128, 16, 64, 112, 48])  # slots each row's window holds (a prefix)
    for mask in (None, (torch.arange(128) < filled[:, None])[:, None, None, :]):
        out = compiled_kernels.attention(q, k, v, mask)
        assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()  # (B, S, H, D) memory
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            torchs = attend_batched(q, k, v, mask)
        exact = _exact(q, k, v, mask)
        error, torch_error = (out.double() - exact).abs().max(), (torchs.double() - exact).abs().max()
        assert error < 0.01 and error <= torch_error
    # an empty slot is never read: what it holds changes nothing
    mask = (torch.arange(128) < filled[:, None])[:, None, None, :]
    k2, v2 = k.clone(), v.clone()
    k2.masked_fill_(~mask.transpose(-1, -2), 1e4)
    v2.masked_fill_(~mask.transpose(-1, -2), -1e4)
    assert torch.equal(compiled_kernels.attention(q, k2, v2, mask), compiled_kernels.attention(q, k, v, mask))


@needs_attention
def test_compiled_attention_declines_what_it_does_not_take(own_cache):
    assert compiled_kernels.available("attention", refresh=True)
    q, k, v = _attention_inputs(2, 2, 64)
    declined = {
        "heads of 16": (q[..., :16], k[..., :16].contiguous(), v[..., :16].contiguous(), None),
        "17 queries": (torch.cat([q, q[:, :, :1]], 2), k, v, None),
        "slots not in fours": (q, k[:, :, :62].contiguous(), v[:, :, :62].contiguous(), None),
        "float32": (q.float(), k.float(), v.float(), None),
        "a mask per query": (q, k, v, torch.ones(2, 1, 16, 64, dtype=torch.bool)),
    }
    for why, args in declined.items():
        assert compiled_kernels.attention(*args) is None, why
    with compiled_kernels.torch_ops_only():
        assert compiled_kernels.attention(q, k, v, None) is None
    assert compiled_kernels.attention(q, k, v, None) is not None
