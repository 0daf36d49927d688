"""`wm-sim bench suite=<name>`: run benchmark suites, write the results JSON and the README table.

    wm-sim bench                          # every suite (about 12 minutes on a 2-core CPU)
    wm-sim bench suite=latency            # one suite; suite=throughput+roofline for several
    wm-sim bench suite=all smoke=true     # tiny sizes: proves the pipeline in a minute
    python -m wm_sim.benchmarks suite=memory

Suites: throughput, precision, latency, roofline, memory, stability, train, ros (each a module of this package).
Results go to `benchmarks/results/<machine>-<date>.json` (a same-day rerun merges into it, see
results.py) and the table between the markers of `benchmarks/README.md` is regenerated from the
newest results file. On a GPU the streaming step runs in bf16, compiled and replayed from a CUDA
graph, on a CPU with native bf16 (AVX512-BF16, AMX) in eager bf16 (wm_sim.envs.acceleration);
`accelerate=off` measures the eager float32 step instead.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from wm_sim.benchmarks.context import FULL, SMOKE, Bench, pick_device
from wm_sim.benchmarks.machine import describe
from wm_sim.benchmarks.results import (
    SCHEMA_VERSION,
    existing_results,
    newest_results,
    results_path,
    update_readme,
    write_results,
)
from wm_sim.envs.acceleration import Acceleration

from wm_sim.errors import WmSimError

# suite name -> module of this package with `run(bench) -> dict`
SUITES = {
    "throughput": "throughput",
    "precision": "precision",
    "latency": "latency",
    "roofline": "roofline",
    "memory": "memory",
    "stability": "stability",
    "train": "training",
    "ros": "ros_latency",  # needs the ros extra; reported as skipped without it
}
PACKAGE_DIR = Path(__file__).parent


@dataclass
class BenchConfig:
    """Options of `wm-sim bench`. Sizes left unset (null) take the full or the smoke preset."""

    suite: str = field(default="all", metadata={"help": "all, or suites joined by +: " + ", ".join(SUITES)})
    checkpoint: str = field(default="shipped:reacher", metadata={"help": "the world model to measure"})
    task: str = field(
        default="", metadata={"help": "measure shipped:<task> (task=push); a checkpoint= given must be of it"}
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda"})
    accelerate: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 + torch.compile + CUDA graphs on CUDA, bf16 on a CPU with native bf16; off: eager float32"
        },
    )
    repeats: int = field(default=3, metadata={"help": "repeats of each timed measurement (median, spread)"})
    smoke: bool = field(default=False, metadata={"help": "tiny sizes: checks the computation, not the speed"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: one per core)"})
    out: str = field(default="", metadata={"help": "results folder ('': benchmarks/results)"})
    readme: str = field(
        default="",
        metadata={
            "help": "README whose table is regenerated ('': benchmarks/README.md, only when out is the default "
            "results folder, whose files its table links; none: skip)"
        },
    )
    policies: list[str] = field(
        default_factory=lambda: ["random", "expert"],
        metadata={"help": "stability: policies driving the rollouts"},
    )
    seconds: float | None = field(default=None, metadata={"help": "seconds per timed measurement"})
    num_envs: list[int] | None = field(default=None, metadata={"help": "throughput: vector env sizes"})
    batches: list[int] | None = field(default=None, metadata={"help": "roofline: engine batch sizes"})
    latency_steps: int | None = field(default=None, metadata={"help": "latency: env.step calls per repeat"})
    memory_steps: int | None = field(default=None, metadata={"help": "memory: steps of the stream"})
    stability_steps: int | None = field(default=None, metadata={"help": "stability: steps of each rollout"})
    train_steps: int | None = field(default=None, metadata={"help": "train: optimiser steps"})
    train_target_loss: float | None = field(default=None, metadata={"help": "train: validation loss to time"})


def chosen_suites(spec: str) -> list[str]:
    """The suite names of `suite=`, in the order given; 'all' is every suite."""
    names = (
        list(SUITES)
        if spec.strip() == "all"
        else [s.strip() for s in spec.replace("+", ",").split(",") if s.strip()]
    )
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise WmSimError(
            f"unknown suite {', '.join(unknown) or repr(spec)}; expected all or one of: {', '.join(SUITES)}"
        )
    return names


def _checkpoint(cfg: BenchConfig) -> str:
    """checkpoint=, or shipped:<task> for task= when checkpoint= is left at its default."""
    if not cfg.task or cfg.checkpoint != BenchConfig.checkpoint:
        return cfg.checkpoint
    return f"shipped:{cfg.task}"


def acceleration_for(choice: str, device: torch.device) -> Acceleration:
    if choice not in ("auto", "off"):
        raise WmSimError(f"accelerate must be auto or off, got {choice!r}")
    return Acceleration.for_device(device) if choice == "auto" else Acceleration()


def bench(cfg: BenchConfig) -> dict:
    """Run the chosen suites; write the results JSON and the README table; returns the results."""
    names = chosen_suites(cfg.suite)
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    preset = SMOKE if cfg.smoke else FULL
    sizes = preset.override(
        seconds=cfg.seconds, num_envs=cfg.num_envs, batches=cfg.batches, latency_steps=cfg.latency_steps,
        memory_steps=cfg.memory_steps, stability_steps=cfg.stability_steps, train_steps=cfg.train_steps,
        train_target_loss=cfg.train_target_loss,
    )  # fmt: skip
    machine = describe(device)
    now = datetime.now(timezone.utc).astimezone()
    results_dir = Path(cfg.out) if cfg.out else PACKAGE_DIR / "results"
    path = results_path(results_dir, machine["name"], now.date().isoformat())
    acceleration = acceleration_for(cfg.accelerate, device)
    checkpoint = _checkpoint(cfg)
    run = Bench(
        checkpoint, device, sizes, cfg.repeats, acceleration, cfg.smoke, tuple(cfg.policies),
        artifact_prefix=path.with_suffix(""),
    )  # fmt: skip
    if cfg.task and run.task != cfg.task:
        raise WmSimError(f"task={cfg.task}, but checkpoint={checkpoint} is a model of {run.task!r}")
    existing = existing_results(path)
    suites: dict[str, dict] = {}
    results = {
        "schema_version": SCHEMA_VERSION,
        "machine": machine,
        "date": now.date().isoformat(),
        "updated": now.isoformat(timespec="seconds"),
        "checkpoint": checkpoint,
        "task": run.task,
        "acceleration": acceleration.describe(),
        "repeats": cfg.repeats,
        "suites": suites,
    }
    replaced: list[str] = []
    try:
        for name in names:
            print(f"bench: {name} on {device} ({acceleration.describe()}), {checkpoint}", flush=True)
            started = time.perf_counter()
            module = importlib.import_module(f"wm_sim.benchmarks.{SUITES[name]}")
            result = module.run(run)
            suites[name] = {
                **result,
                "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 1),
                "smoke": cfg.smoke,
            }
            _print_suite(name, suites[name])
            replaced = write_results(path, results, existing)  # after every suite: a crash keeps them
    finally:
        run.close()
    if replaced:
        print(
            f"bench: {path.name} already held {', '.join(replaced)} from today; replaced them (kept under 'superseded')"
        )
    print(f"bench: wrote {path}")
    readme = _readme_path(cfg.readme, cfg.out)
    if readme is not None:
        update_readme(readme, newest_results(results_dir) or path)
        print(f"bench: regenerated the table in {readme}")
    return results


def _readme_path(option: str, out: str) -> Path | None:
    """The README to regenerate: the project's only for its own results folder (a run written
    elsewhere, a trial or another checkpoint's, must not replace the project's table)."""
    if option.lower() == "none" or (not option and out):
        return None
    return Path(option) if option else PACKAGE_DIR / "README.md"


def _print_suite(name: str, suite: dict) -> None:
    lines = [f"  {measure}: {figure}" for measure, figure in suite.get("table", [])]
    for t in suite.get("targets", []):
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["held"]]
        lines.append(f"  target {t['measure']}: {t['value']} {t['op']} {t['bound']}{t['unit']}: {verdict}")
    if suite.get("bound"):
        lines.append(f"  bounded by: {suite['bound']}")
    print(f"bench: {name} done in {suite['seconds']:.0f} s\n" + "\n".join(lines), flush=True)
