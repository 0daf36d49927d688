"""Faster streaming steps: bf16 autocast (on CPUs with native bf16 too), torch.compile and CUDA-graph replay.

`accelerate(engine, Acceleration.for_device(device))` replaces an `ImaginationEngine`'s `step` with a
faster one that computes the same frames (within bf16 rounding), so both world-model envs and
the benchmarks use it unchanged: `env.unwrapped.sim.engine` is the engine to pass. The envs install
one themselves for `precision="bfloat16"` or `"auto"` (`gym.make(..., precision=...)`).

- bf16: matmuls and convolutions under autocast; the engine's state (latents, proprioception)
  stays float32 between steps, so precision is lost within a step, never accumulated across.
  The key-value cache is kept in bf16, as attention reads it under autocast (`keep_state_in`).
  The state transition runs in float32 inside it: agent_pos is the same to the bit, and the
  frames stay within a few grey levels of float32's over 60 steps (benchmarks' `precision` suite).
- torch.compile: the whole step as one graph (`fullgraph=True`). The cache builds its attention
  mask even in steady state (`StreamCache.always_mask`), which removes the one host sync in the
  step, and with it the flash-attn path: at N=16 queries per frame, attention is a sliver of it.
- CUDA graphs: the step is captured once and replayed; inputs are copied into the captured
  buffers first, and the engine is pointed at the graph's outputs after. The capture needs CUDA;
  everything around it runs, and is tested, on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from wm_sim.envs.imagination import ImaginationEngine, StepOutput

from wm_sim.errors import WmSimError
from wm_sim.layout_kernels import cpu_flags

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# What an env's `precision=` takes: a precision, or "auto" (native_bf16 decides).
PRECISION_CHOICES = ("auto", *PRECISIONS)
# CPU flags of native bf16 matmuls (Zen 4 and Cooper Lake's AVX512-BF16, Sapphire Rapids' AMX);
# without them oneDNN emulates bf16 and it is slower than float32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# What a step reads from the engine between steps (copied into the graph's inputs before a replay)
# and what it leaves there (pointed at the graph's outputs after).
STEP_INPUTS = ("latents", "norm_state", "steps")
STEP_OUTPUTS = ("latents", "norm_state", "steps", "pixels", "agent_pos")


@dataclass(frozen=True)
class Acceleration:
    """Which accelerations a streaming step uses."""

    precision: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool = False
    backend: str = "inductor"  # torch.compile backend; "aot_eager" exercises the same path cheaply
    cuda_graph: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise WmSimError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def for_device(cls, device: torch.device | str) -> Acceleration:
        """Everything on CUDA; on CPU bf16 where it is native (eager: torch.compile made the
        step slower on CPU, 1.2x at batch 256), else nothing."""
        if torch.device(device).type == "cuda":
            return cls(precision="bfloat16", compile=True, cuda_graph=True)
        return cls(precision=resolve_precision("auto", device))

    @property
    def active(self) -> bool:
        return self.precision != "float32" or self.compile or self.cuda_graph

    def describe(self) -> str:
        parts = [self.precision]
        if self.compile:
            parts.append(f"torch.compile({self.backend})")
        if self.cuda_graph:
            parts.append("CUDA graph")
        return " + ".join(parts)


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 natively (detected once per process): a CUDA card that
    supports it, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(BF16_CPU_FLAGS & cpu_flags())


def resolve_precision(choice: str, device: torch.device | str) -> str:
    """An env's `precision=` as a precision: "auto" is bfloat16 where native_bf16, else float32."""
    if choice not in PRECISION_CHOICES:
        raise WmSimError(f"precision must be one of {list(PRECISION_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return choice


def keep_state_in(engine: ImaginationEngine, dtype: torch.dtype) -> None:
    """Hold what every step reads whole in the step's precision, where the step rounds it to that
    precision anyway, so the frames are the same to the bit and no step converts it again.

    - The keys and values: under autocast attention reads them in that precision (converting the
      whole window was 14% of a bf16 step at batch 256 on a CPU), in half the memory.
    - On a CPU, the anchor's detail term, which a bf16 step adds inside the decoder's last
      convolution (wm_sim.layout_kernels.reordered_conv), rounded to bf16 there. On a GPU that
      addition is a float32 one, and the term stays float32.
    """
    cache, anchor = engine.cache, engine.anchor
    if cache.keys.dtype != dtype:
        cache.keys, cache.values = cache.keys.to(dtype), cache.values.to(dtype)
    if anchor.detail is not None and engine.device.type == "cpu" and anchor.detail.dtype != dtype:
        anchor.detail = anchor.detail.to(dtype)  # in the same channels-last memory


def _plain_step(engine: ImaginationEngine, actions: torch.Tensor) -> StepOutput:
    # The undecorated step: tensors made under inference_mode cannot enter a compiled graph, so the
    # accelerated step runs under no_grad instead (the same arithmetic, without autograd).
    return ImaginationEngine.step.__wrapped__(engine, actions)


class AcceleratedStep:
    """`engine.step`, accelerated; installed on the engine by `accelerate`."""

    def __init__(self, engine: ImaginationEngine, acceleration: Acceleration):
        if acceleration.cuda_graph and engine.device.type != "cuda":
            raise WmSimError(f"CUDA graphs need a CUDA device; the engine runs on {engine.device}")
        self.engine, self.acceleration = engine, acceleration
        # One code path for every option: the mask is always built (no host sync), so the results
        # do not depend on which accelerations are on.
        engine.cache.always_mask = acceleration.compile or acceleration.cuda_graph
        keep_state_in(engine, PRECISIONS[acceleration.precision])
        body = self._body
        if acceleration.compile:
            body = torch.compile(body, backend=acceleration.backend, fullgraph=True, dynamic=False)
        self._run: Callable[[torch.Tensor], StepOutput] = body
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_actions: torch.Tensor | None = None
        self._static_inputs: dict[str, torch.Tensor] = {}
        self._static_output: StepOutput | None = None
        self._captured: dict[str, torch.Tensor] = {}

    def _body(self, actions: torch.Tensor) -> StepOutput:
        """One step under the chosen precision, leaving the engine's state in float32."""
        engine, dtype = self.engine, PRECISIONS[self.acceleration.precision]
        autocast = (
            torch.autocast(engine.device.type, dtype=dtype)
            if dtype != torch.float32
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            out = _plain_step(engine, actions)
        engine.latents, engine.norm_state = engine.latents.float(), engine.norm_state.float()
        engine.agent_pos = engine.agent_pos.float()
        return replace(out, agent_pos=engine.agent_pos)

    def __call__(self, actions: torch.Tensor) -> StepOutput:
        actions = actions.to(self.engine.device).float()
        if not self.acceleration.cuda_graph:
            return self._run(actions)
        if self._graph is None:
            self._capture(actions)
        return self._replay(actions)

    def _capture(self, actions: torch.Tensor, warmup: int = 3) -> None:
        """Record one step into a CUDA graph, after warm-up steps that leave no trace."""
        engine = self.engine
        saved = engine.get_state()
        stream = torch.cuda.Stream(engine.device)
        stream.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(stream):  # compile, autotune and allocate outside the capture
            for _ in range(warmup):
                self._run(actions)
        torch.cuda.current_stream(engine.device).wait_stream(stream)
        engine.set_state(saved)  # the warm-up steps never happened
        before = {name: getattr(engine, name) for name in STEP_OUTPUTS}
        self._static_actions = actions.clone()
        self._static_inputs = {name: before[name] for name in STEP_INPUTS}
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records kernels without running them
            self._static_output = self._run(self._static_actions)
        # What the captured step assigned to the engine: the graph's output buffers.
        self._captured = {name: getattr(engine, name) for name in STEP_OUTPUTS}
        for name, tensor in before.items():  # nothing ran yet: the engine keeps its current state
            setattr(engine, name, tensor)
        self._graph = graph

    def _replay(self, actions: torch.Tensor) -> StepOutput:
        engine, out = self.engine, self._static_output
        if self._graph is None or out is None or self._static_actions is None:
            raise RuntimeError("replay before capture")
        for name, buffer in self._static_inputs.items():
            current = getattr(engine, name)
            if current is not buffer:  # after a replay, a reset or a set_state: bring it in
                buffer.copy_(current)
        self._static_actions.copy_(actions)
        self._graph.replay()
        for name, tensor in self._captured.items():  # as the plain step leaves the engine
            setattr(engine, name, tensor)
        return out


def accelerate(engine: ImaginationEngine, acceleration: Acceleration) -> ImaginationEngine:
    """Make `engine.step` the accelerated step (a no-op for Acceleration()); returns the engine."""
    if acceleration.active:
        engine.step = AcceleratedStep(engine, acceleration)  # type: ignore[method-assign]
    return engine
