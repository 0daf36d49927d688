"""The benchmark suites compute their figures correctly: counts, statistics, verdicts and files.

Speed is never asserted here (the machine is shared); the smoke run proves every suite runs end
to end and writes a well-formed results file and README table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from tiny import BARE_MODEL
from wm_sim.benchmarks import results as results_io
from wm_sim.benchmarks.flops import attention_flops, conv_stack_flops, counted_step_flops, frame_flops
from wm_sim.benchmarks.memory import growth_percent
from wm_sim.benchmarks.stability import STAT_NAMES, Reference, frame_statistics, judge, redrawn_in_range
from wm_sim.benchmarks.stats import percentiles, ratios, summarize, target
from wm_sim.benchmarks.suites import BenchConfig, bench, chosen_suites
from wm_sim.benchmarks.training import learning_figures
from wm_sim.envs.acceleration import Acceleration, accelerate, native_bf16, resolve_precision
from wm_sim.envs.imagination import ImaginationEngine

from wm_sim import compiled_kernels
from wm_sim.errors import WmSimError
from wm_sim.optional import is_available
from wm_sim.world_model import WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    latent_dim=8, tokenizer_width=32, dim=32, depth=2, n_heads=2, mlp_ratio=2, window=3, **BARE_MODEL
)


def test_summary_is_median_with_quartiles_and_extremes():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert s.text("{:.0f}") == "3 [1-5]"
    assert summarize([7.0]).text("{:.0f}") == "7"
    assert ratios([10.0, 30.0], [5.0, 10.0]) == [2.0, 3.0]
    assert percentiles(list(range(101)), (50, 99)) == {"p50": 50.0, "p99": 99.0}
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])


def test_targets_say_whether_they_held():
    assert target("x", 3.5, ">=", 3.0)["held"] is True
    assert target("x", 25.0, "<=", 20.0)["held"] is False
    assert target("x", None, "<=", 20.0)["held"] is None


def test_conv_flops_match_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PixelUnshuffle(2), nn.Conv2d(32, 4, 1, groups=2))
    hand = 2 * 8 * 8 * 8 * 3 * 9 + 2 * 4 * 4 * 4 * 16
    assert conv_stack_flops(net, 3, 8) == hand


@pytest.mark.parametrize("variant", ["plain", "transition", "frame_reward", "decoder_state"])
def test_frame_flops_match_torch_counter_plus_the_attention_it_cannot_see(variant):
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), **VARIANTS[variant]})).eval()
    per_frame = frame_flops(model)
    c = TINY
    # the attention term by hand: N queries over W*N keys, q k^T and attention x v, every layer
    assert attention_flops(model) == c.depth * 4 * 16 * (c.window * 16) * c.dim
    engine = ImaginationEngine(model, 3, 200)
    counted = counted_step_flops(engine.step, torch.zeros(3, 2))
    assert counted + 3 * attention_flops(model) == 3 * sum(per_frame.values())


def test_a_bf16_steps_fused_layers_and_batched_attention_count_what_the_hand_count_says():
    """The accelerated step on a CPU: convolutions with a fused GELU or an added term (the anchor's
    detail, oneDNN's binary overload) and attention as batched matmuls, all counted by torch."""
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), **VARIANTS["decoder_state"]})).eval()
    per_frame = frame_flops(model)
    engine = accelerate(ImaginationEngine(model, 3, 200), Acceleration(precision="bfloat16"))
    counted = counted_step_flops(engine.step, torch.zeros(3, 2))
    assert counted == 3 * sum(per_frame.values())


def test_frame_statistics_of_flat_and_two_colour_frames():
    flat = torch.full((1, 8, 8, 3), 255, dtype=torch.uint8)
    moments, hist = frame_statistics(flat)
    assert torch.allclose(moments, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]))
    assert hist[0, -1] == 1.0 and hist.sum() == 1.0
    half = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    half[:, :4] = 255
    moments, hist = frame_statistics(half)
    assert torch.allclose(moments[0, :3], torch.full((3,), 0.5))
    assert hist[0, 0] == 0.5 and hist[0, -1] == 0.5


def _reference(seed: int = 0) -> tuple[Reference, np.ndarray]:
    rng = np.random.default_rng(seed)
    moments = rng.uniform(0.4, 0.6, (200, 6))
    hists = rng.dirichlet(np.ones(64) * 50, 200)
    joints = rng.uniform(-1, 1, (200, 2))
    limits = (np.array([-3.0, -3.0]), np.array([3.0, 3.0]))
    reference = Reference.from_real(moments, hists, joints, limits)
    stats = np.concatenate([moments, 0.5 * np.abs(hists - hists.mean(0)).sum(1, keepdims=True)], axis=1)
    return reference, stats


def test_stability_passes_a_stream_inside_the_real_ranges():
    reference, real_stats = _reference()
    steps = 1000
    stats = real_stats[np.arange(steps) % len(real_stats)]
    verdict = judge(stats, np.zeros((steps, 2)), reference, window=100, fps=50.0)
    assert verdict["passed"] and verdict["held_steps"] == steps and verdict["frames_in_range"] == 1.0


def test_stability_fails_a_faded_picture_that_the_tokenizers_redraws_would_have_let_pass():
    rng = np.random.default_rng(0)
    moments, hists = rng.uniform(0.4, 0.6, (50, 6)), rng.dirichlet(np.ones(64) * 50, 50)
    joints, limits = rng.uniform(-1, 1, (50, 2)), (np.array([-3.0, -3.0]), np.array([3.0, 3.0]))
    reference = Reference.from_real(moments, hists, joints, limits)
    faded = np.concatenate([moments, np.zeros((50, 1))], axis=1)
    faded[:, 3:6] = 0.3  # less colour spread than any real frame: the arm drawn softer, the target gone
    verdict = judge(faded, joints, reference, window=10, fps=50.0)
    assert not verdict["passed"] and verdict["frames_in_range"] == 0.0


def test_stability_fails_where_the_picture_drifts_out_and_says_when():
    reference, real_stats = _reference()
    steps = 1000
    stats = real_stats[np.arange(steps) % len(real_stats)].copy()
    stats[600:, 3:6] = 0.01  # the spread collapses: a picture washing out
    verdict = judge(stats, np.zeros((steps, 2)), reference, window=100, fps=50.0)
    assert not verdict["passed"]
    assert verdict["held_steps"] == 600 and verdict["held_minutes"] == round(600 / 50 / 60, 2)
    assert verdict["out_of_range_by_statistic"]["spread_r"] == 0.4
    assert verdict["out_of_range_by_statistic"]["mean_r"] == 0.0
    assert set(verdict["out_of_range_by_statistic"]) == set(STAT_NAMES)
    assert verdict["median_by_statistic"]["spread_r"] == round(float(np.median(stats[:, 3])), 4)
    assert verdict["median_by_statistic"]["spread_r"] != round(float(np.median(real_stats[:, 3])), 4)


@pytest.mark.parametrize("variant", ["plain", "decoder_state"])
def test_stability_ceiling_judges_the_tokenizers_redraw_of_real_frames(variant):
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), **VARIANTS[variant]})).eval()
    c, rng = model.config, np.random.default_rng(0)
    episodes = [
        (
            rng.choice([0, 255], (12, c.image_size, c.image_size, 3)).astype(np.uint8),
            rng.normal(size=(12, c.state_dim)).astype(np.float32),
        )
        for _ in range(2)
    ]
    frames = np.concatenate([f[1:] for f, _ in episodes])
    moments, hists = frame_statistics(torch.from_numpy(frames))
    limits = (np.full(2, -3.0), np.full(2, 3.0))
    reference = Reference.from_real(moments.numpy(), hists.numpy(), np.zeros((len(frames), 2)), limits)
    # an untrained decoder draws flat grey (half of it, anchored): far less spread than black-and-white noise
    ceiling = redrawn_in_range(model, episodes, reference)
    assert ceiling["frames_in_range"] == 0.0
    assert ceiling["out_of_range_by_statistic"]["spread_r"] == 1.0
    assert ceiling["median_by_statistic"]["spread_r"] < reference.low[3]
    wide = Reference(reference.mean_histogram, np.full(7, -1.0), np.full(7, 2.0), *limits, limits)
    assert redrawn_in_range(model, episodes, wide)["frames_in_range"] == 1.0


def test_stability_fails_on_a_joint_past_its_limit_and_tolerates_rounding():
    reference, real_stats = _reference()
    stats = real_stats[:300]
    joints = np.zeros((300, 2))
    joints[:, 1] = 3.0 + 0.01  # within the tolerance of the limit
    assert judge(stats, joints, reference, window=100, fps=50.0)["passed"]
    joints[250, 0] = -3.5
    verdict = judge(stats, joints, reference, window=100, fps=50.0)
    assert (
        not verdict["passed"] and verdict["held_steps"] == 250 and verdict["joint_steps_out_of_limits"] == 1
    )


def test_a_few_odd_frames_in_a_window_do_not_fail_it():
    reference, real_stats = _reference()
    stats = real_stats[:200].copy()
    stats[50:55, 0] = 5.0  # 5% of a 100-step window
    assert judge(stats, np.zeros((200, 2)), reference, window=100, fps=50.0)["passed"]


def test_memory_growth_is_measured_from_the_warm_step():
    steps = [100, 200, 300, 400]
    assert growth_percent(steps, [50.0, 100.0, 101.0, 102.0], start=200) == pytest.approx(2.0)


def test_learning_figures_time_the_first_validation_under_the_target():
    rows = [
        {"step": 20, "val_loss": 0.5, "seconds": 10.0},
        {"step": 40, "val_loss": 0.2, "seconds": 20.0},
        {"step": 60, "val_loss": 0.1, "seconds": 30.0},
    ]
    figures = learning_figures(rows, batch=8, target_loss=0.25)
    assert figures["samples_per_s"] == pytest.approx(40 * 8 / 20.0)
    assert (figures["time_to_target_s"], figures["step_at_target"]) == (20.0, 40)
    assert learning_figures(rows, batch=8, target_loss=0.01)["time_to_target_s"] is None


def test_the_learning_curve_starts_at_the_first_training_step_not_the_up_front_fits(tmp_path):
    """A run's step-0 checkpoint (after its up-front fits) has no validation: a NaN there would
    make the best loss NaN."""
    import json
    import math

    from wm_sim.benchmarks.training import checkpoint_times

    for step, val in ((0, None), (2, 0.4), (4, 0.3)):
        folder = tmp_path / f"step-{step:07d}"
        folder.mkdir()
        (folder / "meta.json").write_text(
            json.dumps({"step": step, **({"val": {"total": val}} if val else {})})
        )
    rows = checkpoint_times(tmp_path, started=0.0)
    assert [r["step"] for r in rows] == [2, 4]
    best = learning_figures(rows, batch=8, target_loss=0.35)["best_val_loss"]
    assert not math.isnan(best) and best == pytest.approx(0.3)


def test_unknown_suite_names_the_valid_ones():
    assert chosen_suites("all")[0] == "throughput" and chosen_suites("latency+memory") == [
        "latency",
        "memory",
    ]
    with pytest.raises(WmSimError, match="expected all or one of: throughput, precision, latency"):
        chosen_suites("speed")


def test_bench_options_compose_from_the_command_line():
    from wm_sim.config import load_config

    cfg = load_config("bench", BenchConfig, ["suite=latency+memory", "smoke=true", "num_envs=[1,2]"])
    assert (cfg.suite, cfg.smoke, cfg.num_envs, cfg.checkpoint) == (
        "latency+memory",
        True,
        [1, 2],
        "shipped:reacher",
    )


def _results(suites: dict, updated: str) -> dict:
    machine = {"name": "m", "cpu": "cpu", "cores": 2, "device": "cpu", "torch": "2", "torch_threads": 2}
    return {
        "schema_version": results_io.SCHEMA_VERSION, "machine": machine, "date": "2026-01-01",
        "updated": updated, "checkpoint": "c", "task": "reacher", "acceleration": "float32", "suites": suites,
    }  # fmt: skip


def test_a_same_day_rerun_merges_suites_and_keeps_what_it_replaced(tmp_path):
    path = results_io.results_path(tmp_path, "m", "2026-01-01")
    first = {"latency": {"table": [["p50", "8 ms"]], "targets": []}, "memory": {"table": [], "targets": []}}
    assert results_io.write_results(path, _results(first, "2026-01-01T10:00:00"), None) == []
    second = {"latency": {"table": [["p50", "9 ms"]], "targets": [target("p50", 9.0, "<=", 20.0, "ms")]}}
    existing = results_io.existing_results(path)
    assert results_io.write_results(path, _results(second, "2026-01-01T11:00:00"), existing) == ["latency"]
    # the second run writes again after its next suite: over the file as it found it, so its own
    # latency is not superseded a second time
    second["train"] = {"table": [], "targets": []}
    assert results_io.write_results(path, _results(second, "2026-01-01T11:05:00"), existing) == ["latency"]
    data = json.loads(path.read_text())
    assert set(data["suites"]) == {"latency", "memory", "train"}
    assert data["suites"]["latency"]["table"] == [["p50", "9 ms"]]
    assert [(s["suite"], s["table"]) for s in data["superseded"]] == [("latency", [["p50", "8 ms"]])]
    assert not list(tmp_path.glob(".*partial"))


def test_readme_table_is_regenerated_between_its_markers_from_the_newest_results(tmp_path):
    old = results_io.results_path(tmp_path, "m", "2026-01-01")
    new = results_io.results_path(tmp_path, "m", "2026-01-02")
    suites = {"latency": {"table": [["p50", "8 ms"]], "targets": [target("p50", 8.0, "<=", 20.0, "ms")]}}
    results_io.write_results(
        old, _results({"memory": {"table": [["rss", "1"]]}}, "2026-01-01T10:00:00"), None
    )
    results_io.write_results(new, _results(suites, "2026-01-02T10:00:00"), None)
    (tmp_path / "other.json").write_text('{"not": "a results file"}')
    assert results_io.newest_results(tmp_path) == new
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\n\nbefore\n{results_io.BEGIN}\nstale\n{results_io.END}\nafter\n")
    results_io.update_readme(readme, new)
    text = readme.read_text()
    assert "stale" not in text and text.startswith("# B\n\nbefore\n") and text.endswith("after\n")
    assert "| latency | p50 | 8 ms | |" in text and "<= 20ms: **met**" in text
    results_io.update_readme(readme, new)  # idempotent
    assert readme.read_text() == text
    readme.write_text("no markers")
    with pytest.raises(WmSimError, match="markers"):
        results_io.update_readme(readme, new)


# --- the GPU path, run on CPU wherever it can be --------------------------------------------


# the model variants whose steps must hold on every path
VARIANTS = {
    "plain": {},
    "anchored": {"anchored": True},
    "transition": {"anchored": True, "transition": True, "periodic_state": (0,)},
    "frame_reward": {"anchored": True, "transition": True, "periodic_state": (0,), "frame_reward": True},
    # the shipped decoder's inputs: the anchor's pixels and what it is told of agent_pos
    "decoder_state": {"anchored": True, "anchor_detail": True, "decoder_state": True, "periodic_state": (0,)},
}
# the shipped heads (32 values each), where a bf16 CPU step may run the compiled attention
HEADS_OF_32 = {**VARIANTS["decoder_state"], "dim": 64}


def _engines(acceleration: Acceleration, device: str = "cpu", variant: str = "plain"):
    torch.manual_seed(0)
    options = HEADS_OF_32 if variant == "heads_of_32" else VARIANTS[variant]
    config = WorldModelConfig(**{**TINY.to_dict(), **options})
    model = WorldModel(config).eval()
    twin = WorldModel(config).eval()
    twin.load_state_dict(model.state_dict())
    plain = ImaginationEngine(model, 3, 200, device)
    fast = accelerate(ImaginationEngine(twin, 3, 200, device), acceleration)
    frames = torch.randint(0, 256, (3, 2, 64, 64, 3), dtype=torch.uint8)
    for engine in (plain, fast):
        engine.reset_rows(torch.arange(3), frames, torch.zeros(3, 2, 4), torch.zeros(3, 1, 2))
    return plain, fast


def _same_rollout(plain, fast, steps: int, pixel_tol: int, state_tol: float) -> None:
    for t in range(steps):
        actions = torch.rand(3, 2) * 2 - 1
        if t == 4:  # a partial reset mid-stream, as the vector env's autoreset does
            frames = torch.randint(0, 256, (1, 2, 64, 64, 3), dtype=torch.uint8)
            for engine in (plain, fast):
                engine.reset_rows(torch.tensor([1]), frames, torch.zeros(1, 2, 4), torch.zeros(1, 1, 2))
        a, b = plain.step(actions), fast.step(actions)
        assert b.agent_pos.dtype == torch.float32 and b.pixels.dtype == torch.uint8
        assert (a.pixels.int() - b.pixels.int()).abs().max() <= pixel_tol
        assert torch.allclose(a.agent_pos, b.agent_pos, atol=state_tol)
        assert torch.equal(a.truncated, b.truncated)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_step_gives_the_same_frames_as_the_eager_step(variant):
    plain, fast = _engines(Acceleration(compile=True, backend="aot_eager"), variant=variant)
    _same_rollout(plain, fast, steps=6, pixel_tol=1, state_tol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_step_stays_within_bf16_rounding_of_float32_and_keeps_float32_state(variant):
    plain, fast = _engines(Acceleration(precision="bfloat16"), variant=variant)
    _same_rollout(plain, fast, steps=6, pixel_tol=16, state_tol=0.1)
    assert fast.latents.dtype == torch.float32 and fast.norm_state.dtype == torch.float32


def test_bf16_step_keeps_the_state_transition_and_frame_reward_in_float32():
    # agent_pos integrates the transition step after step: under bf16 it must not drift at all
    plain, fast = _engines(Acceleration(precision="bfloat16"), variant="frame_reward")
    for _ in range(8):
        actions = torch.rand(3, 2) * 2 - 1
        a, b = plain.step(actions), fast.step(actions)
        assert torch.equal(a.agent_pos, b.agent_pos)
        assert torch.allclose(a.reward, b.reward, atol=0.05)  # the head reads bf16-made latents


@pytest.mark.skipif(not compiled_kernels.available("anchored_blend"), reason="no C compiler: the compiled kernels are not built")
def test_the_compiled_kernels_keep_a_bf16_steps_frames_beside_torchs_passes():
    # the shipped decoder's inputs and heads; each side's frames are re-encoded, so a gap could compound
    _, compiled = _engines(Acceleration(precision="bfloat16"), variant="heads_of_32")
    _, passes = _engines(Acceleration(precision="bfloat16"), variant="heads_of_32")
    gaps, latent_gaps, state_gaps, reward_gaps = [], [], [], []
    for _ in range(12):  # past the window of TINY, so the ring wraps
        actions = torch.rand(3, 2) * 2 - 1
        a = compiled.step(actions)
        with compiled_kernels.torch_ops_only():
            b = passes.step(actions)
        gaps.append((a.pixels.int() - b.pixels.int()).abs().max().item())
        latent_gaps.append((compiled.latents - passes.latents).abs().max().item())
        state_gaps.append((a.agent_pos - b.agent_pos).abs().max().item())
        reward_gaps.append((a.reward - b.reward).abs().max().item())
    if compiled_kernels.available("attention"):
        # float32 scores and weights where torch rounds them to bf16: differences of bf16's size
        # (this model's agent_pos is the transformer's, not a float32 transition's)
        assert 0 < max(latent_gaps) < 0.05 and max(state_gaps) < 0.05 and max(reward_gaps) < 0.05
        assert max(gaps) <= 3
    else:  # the decoder's last pass alone: the same latents, levels at most one apart
        assert max(latent_gaps) == max(state_gaps) == max(reward_gaps) == 0 and max(gaps) <= 1


@pytest.mark.parametrize("variant", ["anchored", "frame_reward"])
def test_a_bf16_cache_gives_the_frames_of_a_float32_cache_to_the_bit(variant):
    # autocast rounds the keys and values to bf16 before attention: holding them there changes nothing
    _, held = _engines(Acceleration(precision="bfloat16"), variant=variant)
    _, widened = _engines(Acceleration(precision="bfloat16"), variant=variant)
    assert held.cache.keys.dtype == torch.bfloat16 and held.cache.values.dtype == torch.bfloat16
    widened.cache.keys, widened.cache.values = widened.cache.keys.float(), widened.cache.values.float()
    for t in range(10):  # past the window of TINY, so the ring wraps; a partial reset on the way
        if t == 3:
            frames = torch.randint(0, 256, (1, 2, 64, 64, 3), dtype=torch.uint8)
            for engine in (held, widened):
                engine.reset_rows(torch.tensor([2]), frames, torch.ones(1, 2, 4), torch.zeros(1, 1, 2))
        actions = torch.rand(3, 2) * 2 - 1
        a, b = held.step(actions), widened.step(actions)
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.agent_pos, b.agent_pos)
        assert torch.equal(a.reward, b.reward)
    assert widened.cache.keys.dtype == torch.float32  # the step never converted it back


def test_native_bf16_follows_the_cpu_flags(monkeypatch):
    from wm_sim.envs import acceleration

    for flags, native in ((frozenset({"avx2", "avx512f"}), False), (frozenset({"avx512_bf16"}), True)):
        monkeypatch.setattr(acceleration, "cpu_flags", lambda flags=flags: flags)
        assert native_bf16("cpu") is native
        assert Acceleration.for_device("cpu").precision == ("bfloat16" if native else "float32")
    assert native_bf16("meta") is False


def test_cuda_graphs_are_refused_off_cuda_and_unknown_precisions_are_errors():
    with pytest.raises(WmSimError, match="CUDA graphs need a CUDA device"):
        _engines(Acceleration(cuda_graph=True))
    with pytest.raises(WmSimError, match="precision"):
        Acceleration(precision="float16")
    assert Acceleration.for_device("cpu") == Acceleration(
        precision="bfloat16" if native_bf16("cpu") else "float32"
    )
    assert not Acceleration().active
    with pytest.raises(
        WmSimError, match=r"precision must be one of \['auto', 'float32', 'bfloat16'\], got 'fp16'"
    ):
        resolve_precision("fp16", "cpu")
    assert (
        resolve_precision("float32", "cpu") == "float32"
        and resolve_precision("bfloat16", "cpu") == "bfloat16"
    )
    assert Acceleration.for_device("cuda").cuda_graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs can only be captured on a CUDA device")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_graph_replay_gives_the_same_frames_as_the_eager_step(variant):
    accelerations = Acceleration(precision="bfloat16", compile=True, cuda_graph=True)
    plain, fast = _engines(accelerations, "cuda", variant)
    _same_rollout(plain, fast, steps=8, pixel_tol=16, state_tol=0.1)


# --- every suite, end to end, at smoke size ----------------------------------------------------


@pytest.mark.slow
def test_smoke_bench_runs_every_suite_and_writes_results_and_table(tiny_model_path, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\n{results_io.BEGIN}\n{results_io.END}\n")
    out = tmp_path / "results"
    results = bench(
        BenchConfig(checkpoint=str(tiny_model_path), smoke=True, repeats=2, out=str(out), readme=str(readme))
    )
    files = list(out.glob("*.json"))
    written = json.loads(files[0].read_text()) if len(files) == 1 else {}
    assert written and written["suites"].keys() == results["suites"].keys()
    assert "superseded" not in written  # a first run of the day replaced nothing, its own suites least
    assert list(results["suites"]) == [
        "throughput",
        "precision",
        "latency",
        "roofline",
        "memory",
        "stability",
        "train",
        "ros",
    ]
    ros_installed = is_available("rclpy")
    for name, suite in results["suites"].items():
        assert suite["table"], name
        for t in suite["targets"]:
            skipped = name == "ros" and not ros_installed
            assert t["held"] in ((None,) if skipped else (True, False)), (name, t)
    figures = {name: suite["figures"] for name, suite in results["suites"].items()}
    assert set(figures["throughput"]["vector_env_frames_per_s"]) == {"1", "4"}
    assert figures["throughput"]["vector_env_frames_per_s"]["4"]["n"] == 2
    # an accelerated run (bf16 where this CPU has it natively) measures float32 beside itself
    accelerated = Acceleration.for_device("cpu").active
    assert ("best_vs_eager_float32" in figures["throughput"]) == accelerated
    precision = figures["precision"]
    assert len(precision["worst_psnr_db"]) == precision["steps"] == 8
    assert precision["identical"] == (not accelerated)
    if not accelerated:  # the tiny model predicts agent_pos with the transformer, so only here
        assert max(precision["state_max"]) == 0.0
    split = figures["latency"]["split"]
    assert set(split) == {"dynamics", "decode", "uncertainty", "conversion"}
    assert sum(split.values()) == pytest.approx(1.0, abs=1e-3)
    # every stage the step runs is seen by the timer (a stage the step no longer calls by the
    # timed name would read 0)
    assert all(split[stage] > 0 for stage in ("dynamics", "decode", "uncertainty")), split
    assert figures["roofline"]["torch_counter_agrees"] is True
    # a bf16 CPU step attends with batched matmuls, which torch counts; float32 with its kernel
    assert figures["roofline"]["torch_counter_misses_attention"] is (not accelerated)
    assert figures["memory"]["steps"][-1] == 60
    assert set(figures["stability"]["verdicts"]) == {"random", "expert"}
    assert set(figures["stability"]["redrawn_real_frames"]) == {"random", "expert"}
    assert (out / figures["stability"]["plot"]).is_file()
    assert figures["train"]["time_to_target_s"] is not None  # the smoke target is always reached
    if ros_installed:  # a real `wm-sim ros serve` of the tiny model, driven by RosEnv
        ros = figures["ros"]
        assert ros["round_trip_p50_ms"]["n"] == 2 and ros["steps_per_repeat"] == 20
        assert ros["round_trip_p50_ms"]["median"] > ros["env_step_in_process_p50_ms"]["min"] * 0.5
        # a realtime server really served frames in every scenario, and the flood really flooded
        realtime = ros["realtime"]
        assert set(realtime) >= {"quiet", "command flood", "command flood + every core busy"}
        assert all(r["frames"] > 10 and r["rate_hz"] > 0 for r in realtime.values()), realtime
        assert realtime["command flood"]["commands_per_s"] > 100 and realtime["quiet"]["commands_per_s"] == 0
    text = readme.read_text()
    for name in results["suites"]:
        assert f"| {name} |" in text


def test_bench_task_measures_that_tasks_shipped_model_and_refuses_another_tasks_checkpoint(
    tiny_model_path, tmp_path
):
    with pytest.raises(WmSimError, match=r"task=push, but checkpoint=.* is a model of 'reacher'"):
        bench(
            BenchConfig(
                task="push", checkpoint=str(tiny_model_path), suite="latency", smoke=True, out=str(tmp_path)
            )
        )
    assert not list(tmp_path.iterdir())  # refused before anything was measured or written


def test_a_bench_written_to_another_folder_leaves_the_projects_table_alone(tiny_model_path, tmp_path):
    """The project's README table links its own results; a trial run elsewhere must not replace it."""
    from wm_sim.benchmarks.suites import PACKAGE_DIR

    project_readme = PACKAGE_DIR / "README.md"
    before = project_readme.read_text()
    bench(BenchConfig(checkpoint=str(tiny_model_path), suite="latency", smoke=True, repeats=1, out=str(tmp_path)))
    assert list(tmp_path.glob("*.json")) and project_readme.read_text() == before
