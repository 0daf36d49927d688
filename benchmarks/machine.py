"""What a run measured on: the machine's name for result files, its description, its matmul peak.

The peak is measured, not looked up: a roofline fraction is only meaningful against what this
machine, with these threads, under this load, reaches on the densest work there is.
"""

from __future__ import annotations

import os
import platform
import re
import time

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str) -> str:
    """Lowercase letters, digits and dashes only: safe in a file name, stable across hosts."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def machine_name(device: torch.device) -> str:
    """`cuda-<gpu name>` on a GPU, else `<cpu model>-<cores>c`: the results file's prefix."""
    if device.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(device))
    return f"{slug(cpu_model())}-{os.cpu_count() or 1}c"


def describe(device: torch.device) -> dict:
    """The machine, device and software a result was measured with."""
    info = {
        "name": machine_name(device),
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a host timer sees its cost (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 2.0) -> float:
    """Best FLOP/s of square matmuls in `dtype` on `device`, over two sizes and repeated tries."""
    sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up: allocation and kernel choice
        synchronize(device)
        deadline = time.perf_counter() + seconds / len(sizes)
        tries = 0
        while time.perf_counter() < deadline or tries < 2:
            t0 = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
            tries += 1
    return best
