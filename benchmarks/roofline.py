"""`roofline`: how much of the machine's matmul peak batched stepping achieves.

FLOPs per frame are counted by hand (benchmarks/flops.py: matmuls, convolutions, attention) and
cross-checked against torch's counter; achieved FLOP/s = FLOPs per frame x frames/s of the bare
engine (no env around it) at each batch size. The peak is measured in the same run, in the
precision the step computes in, one measurement beside each repeat.
"""

from __future__ import annotations

import resource

import numpy as np
import torch
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.flops import attention_flops, counted_step_flops, frame_flops
from wm_sim.benchmarks.machine import matmul_peak
from wm_sim.benchmarks.stats import ratios, summarize, target
from wm_sim.benchmarks.timing import frames_per_s
from wm_sim.envs.acceleration import PRECISIONS

FRACTION_BOUND = 0.45  # issue 24: roofline >= 45% of the matmul peak at the best batch


def card_batches(bench: Bench, headroom: float = 0.5) -> tuple[int, ...]:
    """The run's batch sizes, plus powers of 4 up to what fits in `headroom` of a GPU's free memory."""
    batches = bench.sizes.batches
    if bench.device.type != "cuda" or bench.smoke:
        return batches
    probe = 256
    torch.cuda.reset_peak_memory_stats(bench.device)
    before = torch.cuda.memory_allocated(bench.device)
    engine = bench.make_engine(probe)
    engine.step(torch.zeros(probe, bench.model.config.action_dim, device=bench.device))
    per_row = (torch.cuda.max_memory_allocated(bench.device) - before) / probe
    del engine
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(bench.device)
    limit = int(headroom * free / max(per_row, 1.0))
    larger = [4**k for k in range(5, 12) if max(batches) < 4**k <= limit]
    return (*batches, *larger)


def engine_rate(engine, actions: torch.Tensor, seconds: float, device) -> float:
    return frames_per_s(lambda i: engine.step(actions), engine.batch, seconds, device)


def page_faults_per_step(engine, actions: torch.Tensor, steps: int = 10) -> float:
    """Minor page faults of the process per step: memory the step's activations had to fault in
    again (wm_sim.host_memory keeps them mapped on glibc; near 0 when it can)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        engine.step(actions)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def run(bench: Bench) -> dict:
    sizes, device, model = bench.sizes, bench.device, bench.model
    per_frame = frame_flops(model)
    flops = sum(per_frame.values())
    probe = bench.make_engine(2)
    counted = counted_step_flops(probe.step, torch.zeros(2, model.config.action_dim, device=device)) // 2
    dtype = PRECISIONS[bench.acceleration.precision]
    engines, actions = {}, {}
    for b in tqdm(card_batches(bench), desc="roofline: start engines", unit="batch"):
        engines[b] = bench.make_engine(b)
        actions[b] = torch.rand(b, model.config.action_dim, device=device) * 2 - 1
        for _ in range(model.config.window + 2):
            engines[b].step(actions[b])
    peaks, rates = [], {b: [] for b in engines}
    for _ in tqdm(range(bench.repeats), desc="roofline", unit="repeat"):
        peaks.append(matmul_peak(device, dtype, sizes.seconds))
        for b, engine in engines.items():
            rates[b].append(engine_rate(engine, actions[b], sizes.seconds, device))
    faults = {b: page_faults_per_step(engine, actions[b]) for b, engine in engines.items()}
    fractions = {b: summarize(ratios([flops * r for r in rs], peaks)) for b, rs in rates.items()}
    best = max(fractions, key=lambda b: fractions[b].median)
    peak = summarize(peaks)
    return {
        "figures": {
            "flops_per_frame": flops,
            "flops_per_frame_by_stage": per_frame,
            "torch_counted_flops_per_frame": counted,
            # torch's count is the hand count, less the attention where the step used the CPU
            # attention kernel torch has no formula for (a float32 step; see flops.py)
            "torch_counter_agrees": counted in (flops, flops - attention_flops(model)),
            "torch_counter_misses_attention": counted + attention_flops(model) == flops,
            "matmul_peak_flop_per_s": peak.to_dict(),
            "precision": bench.acceleration.precision,
            "frames_per_s": {str(b): summarize(r).to_dict() for b, r in rates.items()},
            "fraction_of_peak": {str(b): s.to_dict() for b, s in fractions.items()},
            "best_batch": best,
            "page_faults_per_step": {str(b): f for b, f in faults.items()},
        },
        "targets": [
            target("achieved FLOP/s / matmul peak, best batch", fractions[best].median, ">=", FRACTION_BOUND)
        ],
        "table": [
            [f"{bench.acceleration.precision} matmul peak (GFLOP/s)", peak.text("{:.0f}", 1e-9)],
            ["model FLOPs per frame (MFLOP)", f"{flops / 1e6:.1f}"],
            [
                "achieved / peak at batch " + " / ".join(str(b) for b in fractions),
                " / ".join(f"{s.median:.0%}" for s in fractions.values()),
            ],
            [f"best (batch {best})", f"{fractions[best].text('{:.2f}')} of peak"],
            [f"page faults per step at batch {best}", f"{faults[best]:.0f}"],
        ],
        "bound": _bound(fractions[best].median, rates, best),
    }


def _bound(fraction: float, rates: dict, best: int) -> str:
    larger = [b for b in rates if b > best]
    if larger and np.median(rates[larger[0]]) < np.median(rates[best]):
        return f"past batch {best} frames/s fall: memory traffic (activations leave the cache), not compute"
    return f"compute at {fraction:.0%} of the matmul peak: small matmuls and convolutions, element-wise work"
