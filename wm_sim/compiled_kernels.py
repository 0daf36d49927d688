"""Two passes of a bf16 CPU step as compiled loops (wm_sim/native/*.c), built on first use.

- **The anchored decoder's last pass** (`blend_levels`, anchored_blend.c). After its last
  convolution, a bf16 step of the shipped decoder ran six torch passes over every frame: the
  depth-to-space copy, its widening to float32, the sigmoid, the blend with the anchor (whose
  one-channel weight broadcast over three made it the slowest), the quantisation to uint8, then
  to bf16 for the encoder to read again. One loop reads the logits and the anchor once and writes
  the levels once: the same float32 arithmetic, so levels are equal or, where a sigmoid's last bit
  differs, one apart.
- **A streamed step's attention** (`attention`, attention.c): per row and head, 16 queries against
  the window's 128 cached keys, which torch runs as two batched matmuls and a softmax with the
  scores and weights in bf16 memory between them, and a transpose after. One loop per head keeps
  them in registers and on the stack, with AVX512-BF16 dot products (built only where the CPU has
  them), and writes the output where the projection reads it.

What each saves, side by side with torch's passes in one run: `wm-sim bench` (throughput,
precision). Each C file is compiled on first use with the machine's C compiler (`$CC`, else `cc`)
for this CPU (-march=native) into the user's cache (`$WM_SIM_CACHE`, else `~/.cache/wm_sim`), once
per source, compiler and CPU (written whole, then renamed), and loaded through ctypes; its OpenMP
loop runs on the libgomp torch has already loaded, so on torch's threads. Where there is no
compiler, or it fails, or the CPU lacks what a kernel needs, or `WM_SIM_NATIVE=0`, the functions
return None and torch's passes run instead (a warning says why, once). Nothing is downloaded.
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

NATIVE = Path(__file__).parent / "native"
COMMON_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
# per kernel: its extra flags, and its C signature after the pointers (ctypes argument types)
POINTER, LONG, INT = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
KERNELS = {
    # -ffast-math: glibc's vector expf for the sigmoid
    "anchored_blend": (("-ffast-math",), [*[POINTER] * 4, LONG, LONG, INT]),
    # q and its three strides, k, v, mask, out, then b, h, sq, sk, d, scale, threads
    "attention": ((), [POINTER, *[LONG] * 3, *[POINTER] * 4, *[LONG] * 5, ctypes.c_float, INT]),
}
MAX_WIDTH = 256  # anchored_blend.c's MAX_WIDTH: logit columns, half the frame's
_torch_ops_only = 0  # torch_ops_only's depth


def blend_levels(logits: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The decoder's last convolution's logits (B, 16, H, W) bf16 in channels-last memory
    (reordered_conv's channel order: (row, column, channel) of each 2x2 block, channels R, G, B,
    blend) and the anchor (B, 3, 2H, 2W) float32 in [0, 1] -> the frame's levels (B, 2H, 2W, 3) as
    uint8 and as bf16; None where the kernel is not available (the caller runs torch's passes)."""
    library = _runnable("anchored_blend")
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
            f"blend_levels needs logits (B, 16, H, W <= {MAX_WIDTH}) bf16 and an anchor (B, 3, 2H, 2W) "
            f"float32 on the CPU, got {tuple(logits.shape)} {logits.dtype} on {logits.device} and "
            f"{tuple(anchor.shape)} {anchor.dtype} on {anchor.device}"
        )
    rows_in = logits.permute(0, 2, 3, 1).contiguous()  # no copy in channels-last memory
    anchor_in = anchor.permute(0, 2, 3, 1).contiguous()
    pixels = torch.empty((b, 2 * h, 2 * w, 3), dtype=torch.uint8)
    levels = torch.empty((b, 2 * h, 2 * w, 3), dtype=torch.bfloat16)
    pointers = [t.data_ptr() for t in (rows_in, anchor_in, pixels, levels)]
    if library.anchored_blend_bf16(*pointers, b * h, w, torch.get_num_threads()):
        raise RuntimeError(f"the compiled blend refused logits {w} columns wide")  # checked above
    return pixels, levels


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Attention of q (B, H, Sq, D) over k, v (B, H, Sk, D), all bf16 on the CPU, mask None or
    (B, 1, 1, Sk) True = may attend -> (B, H, Sq, D), a view of (B, Sq, H, D) memory (what the
    output projection reads); None where the kernel does not take these inputs (heads of 32, up
    to 16 queries and 512 slots in fours, q's values contiguous, k and v contiguous) or is not
    available: the caller runs torch's path."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    fits = (
        q.dtype == k.dtype == v.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and k.shape == v.shape == (b, h, sk, d)
        and k.is_contiguous()
        and v.is_contiguous()
        and q.stride(3) == 1
        and all(stride % 2 == 0 for stride in q.stride()[:3])  # value pairs read as 32-bit words
        and (mask is None or tuple(mask.shape) == (b, 1, 1, sk))
    )
    library = _runnable("attention") if fits else None
    if library is None:
        return None
    slots = None if mask is None else mask.reshape(b, sk).to(torch.uint8)
    out = torch.empty((b, sq, h, d), dtype=torch.bfloat16)
    pointers = [q.data_ptr(), *q.stride()[:3], k.data_ptr(), v.data_ptr()]
    pointers += [0 if slots is None else slots.data_ptr(), out.data_ptr()]
    if library.attention_bf16(*pointers, b, h, sq, sk, d, d**-0.5, torch.get_num_threads()):
        return None  # a shape the C side does not take (it checks the same bounds)
    return out.transpose(1, 2)


def available(kernel: str, refresh: bool = False) -> bool:
    """Whether `kernel` runs here: built (this call builds it the first time), supported by this
    CPU and not switched off. `refresh` looks again (at `WM_SIM_NATIVE`, `$CC` and the cache), as a
    new process would."""
    if refresh:
        _library.cache_clear()
    return _runnable(kernel) is not None


def _runnable(kernel: str) -> ctypes.CDLL | None:
    """The kernel's library where it runs now (built, and not inside torch_ops_only), else None."""
    return None if _torch_ops_only else _library(kernel)


@contextlib.contextmanager
def torch_ops_only() -> Iterator[None]:
    """Within it, steps run torch's passes even where the kernels are built: how the benchmarks
    and tests measure the step before them, side by side in one run."""
    global _torch_ops_only
    _torch_ops_only += 1
    try:
        yield
    finally:
        _torch_ops_only -= 1


def _library_path(kernel: str) -> Path:
    """Where this kernel's source, compiled by this compiler for this CPU, is cached."""
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256()
    key.update((NATIVE / f"{kernel}.c").read_bytes())
    key.update(" ".join((compiler, *COMMON_FLAGS, *KERNELS[kernel][0])).encode())
    # -march=native: a library built for one CPU may not run on another
    key.update(" ".join((platform.machine(), *sorted(cpu_flags()))).encode())
    cache = Path(os.environ.get("WM_SIM_CACHE", Path.home() / ".cache" / "wm_sim"))
    return cache / "native" / f"{kernel}-{key.hexdigest()[:16]}.so"


@functools.cache
def _library(kernel: str) -> ctypes.CDLL | None:
    """The compiled kernel, built on first use (atomically: a half-written library is never
    loaded); None, with one warning saying why, where it cannot be."""
    if os.environ.get("WM_SIM_NATIVE", "1") == "0":
        return None
    path = _library_path(kernel)
    if not path.exists():
        compiler = shutil.which(os.environ.get("CC", "cc"))
        if compiler is None:
            return _unavailable(kernel, "no C compiler found ($CC, else cc)")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(handle)
        command = [
            compiler,
            *COMMON_FLAGS,
            *KERNELS[kernel][0],
            str(NATIVE / f"{kernel}.c"),
            "-o",
            partial,
            "-lm",
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
            os.replace(partial, path)
        except subprocess.CalledProcessError as error:
            return _unavailable(kernel, f"{compiler} failed: {error.stderr.strip()[-500:]}")
        finally:
            Path(partial).unlink(missing_ok=True)
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:  # a library the cache holds that this machine cannot load
        return _unavailable(kernel, f"{path} does not load: {error}")
    entry = getattr(library, f"{kernel}_bf16")
    entry.restype, entry.argtypes = ctypes.c_int, KERNELS[kernel][1]
    if kernel == "attention" and not library.attention_supported():
        return None  # built without AVX512-BF16 (this CPU lacks it): torch's path, as expected
    return library


def _unavailable(kernel: str, why: str) -> None:
    warnings.warn(
        f"the compiled {kernel} kernel is not available ({why}): torch's passes run instead", stacklevel=3
    )
    return None
