"""The anchored decoder's last pass in a bf16 CPU step, as one compiled loop (wm_sim/native/anchored_blend.c).

After its last convolution, a bf16 step of the shipped decoder ran six torch passes over every
frame: the depth-to-space copy, its widening to float32, the sigmoid, the blend with the anchor
(whose one-channel weight broadcast over three made it the slowest), and the quantisation to
uint8, then to bf16 for the encoder to read again. At 1,024 envs they took about 50 ms of a
265 ms step; the one loop reads the logits and the anchor once and writes the levels once
(`benchmarks/`). It is the same arithmetic in float32: levels are equal, or one level apart where
a sigmoid's last bit differs (tests/test_anchored_blend_kernel.py).

The C file is compiled on first use with the machine's C compiler (`$CC`, else `cc`) for this
CPU (-march=native) into the user's cache (`$WM_SIM_CACHE`, else `~/.cache/wm_sim`), once per
source, compiler and CPU, and loaded through ctypes. Where there is no compiler, or it fails, or
`WM_SIM_NATIVE=0`, `blend_levels` returns None and the torch passes run instead (a warning says
why, once). Nothing is downloaded; the library is built from the source in the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from wm_sim.layout_kernels import cpu_flags

SOURCE = Path(__file__).parent / "native" / "anchored_blend.c"
FLAGS = (
    "-O3",
    "-march=native",
    "-ffast-math",
    "-fopenmp",
    "-shared",
    "-fPIC",
)  # -ffast-math: glibc's vector expf
_torch_passes_only = 0  # torch_passes_only's depth
MAX_WIDTH = 256  # the C side's MAX_WIDTH: logit columns, half the frame's


def blend_levels(logits: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The last convolution's logits (B, 16, H, W) bf16 in channels-last memory (reordered_conv's
    channel order: (row, column, channel) of each 2x2 block, channels R, G, B, blend) and the
    anchor (B, 3, 2H, 2W) float32 in [0, 1], channels-last -> the frame's levels (B, 2H, 2W, 3)
    as uint8 and as bf16; None where the kernel is not available (the caller runs torch's passes)."""
    library = _library()
    if library is None:
        return None
    b, channels, h, w = logits.shape
    if (
        logits.dtype != torch.bfloat16
        or channels != 16
        or anchor.dtype != torch.float32
        or tuple(anchor.shape) != (b, 3, 2 * h, 2 * w)
        or not 1 <= w <= MAX_WIDTH
        or logits.device.type != "cpu"
        or anchor.device.type != "cpu"
    ):
        raise ValueError(
            f"blend_levels needs logits (B, 16, H, W <= {MAX_WIDTH}) bf16 and an anchor (B, 3, 2H, 2W) float32 "
            "on the CPU, "
            f"got {tuple(logits.shape)} {logits.dtype} on {logits.device} and {tuple(anchor.shape)} "
            f"{anchor.dtype} on {anchor.device}"
        )
    rows_in = logits.permute(0, 2, 3, 1).contiguous()  # no copy in channels-last memory
    anchor_in = anchor.permute(0, 2, 3, 1).contiguous()
    pixels = torch.empty((b, 2 * h, 2 * w, 3), dtype=torch.uint8)
    levels = torch.empty((b, 2 * h, 2 * w, 3), dtype=torch.bfloat16)
    pointers = [ctypes.c_void_p(t.data_ptr()) for t in (rows_in, anchor_in, pixels, levels)]
    # on torch's own OpenMP threads: the library links the libgomp torch has loaded
    if library.anchored_blend_bf16(*pointers, b * h, w, torch.get_num_threads()):
        raise RuntimeError(
            f"the compiled blend refused logits {w} columns wide"
        )  # checked above: unreachable
    return pixels, levels


def available(refresh: bool = False) -> bool:
    """Whether the kernel runs here: built (this call builds it the first time), and not switched
    off. `refresh` looks again (at `WM_SIM_NATIVE`, `$CC` and the cache), as a new process would."""
    if refresh:
        _library.cache_clear()
    return _torch_passes_only == 0 and _library() is not None


@contextlib.contextmanager
def torch_passes_only() -> Iterator[None]:
    """Within it, decoders run torch's passes even where the kernel is built: how the benchmarks
    measure the step before it, side by side in one run."""
    global _torch_passes_only
    _torch_passes_only += 1
    try:
        yield
    finally:
        _torch_passes_only -= 1


def _library_path() -> Path:
    """Where this source, compiled by this compiler for this CPU, is cached."""
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join((compiler, *FLAGS)).encode())
    # -march=native: a library built for one CPU may not run on another
    key.update(" ".join((platform.machine(), *sorted(cpu_flags()))).encode())
    cache = Path(os.environ.get("WM_SIM_CACHE", Path.home() / ".cache" / "wm_sim"))
    return cache / "native" / f"anchored_blend-{key.hexdigest()[:16]}.so"


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use (atomically: a half-written library is never
    loaded); None, with one warning saying why, where it cannot be."""
    if os.environ.get("WM_SIM_NATIVE", "1") == "0":
        return None
    path = _library_path()
    if not path.exists():
        compiler = shutil.which(os.environ.get("CC", "cc"))
        if compiler is None:
            return _unavailable("no C compiler found ($CC, else cc)")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(handle)
        try:
            subprocess.run(
                [compiler, *FLAGS, str(SOURCE), "-o", partial, "-lm"],
                check=True,
                capture_output=True,
                text=True,
            )
            os.replace(partial, path)
        except subprocess.CalledProcessError as error:
            return _unavailable(f"{compiler} failed: {error.stderr.strip()[-500:]}")
        finally:
            Path(partial).unlink(missing_ok=True)
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:  # a library the cache holds that this machine cannot load
        return _unavailable(f"{path} does not load: {error}")
    library.anchored_blend_bf16.restype = ctypes.c_int
    library.anchored_blend_bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_int]
    return library


def _unavailable(why: str) -> None:
    warnings.warn(
        f"the anchored decoder's compiled last pass is not available ({why}): torch's passes run instead",
        stacklevel=3,
    )
    return None
