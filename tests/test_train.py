"""`wm-sim train` on a tiny model: checkpoints, exact resume, and refusals that change nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_architecture

import wm_sim.distributed as distributed_module
import wm_sim.objective as objective_module
import wm_sim.train as train_module
from wm_sim.checkpoint import LAST, load_checkpoint, lock_run_directory
from wm_sim.collect import CollectConfig, collect
from wm_sim.data.angles import episode_states, wrapped_entries
from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY, image_key
from wm_sim.errors import WmSimError
from wm_sim.tracking import WandbConfig
from wm_sim.train import ModelArchitecture, TrainConfig, TrainingRecipe, train
from wm_sim.world_model import WorldModel

TINY = tiny_architecture()


def config(data, out, **overrides) -> TrainConfig:
    """A tiny run; overrides of TrainingRecipe's fields go into the training group."""
    fitting = {k: overrides.pop(k) for k in list(overrides) if k in TrainingRecipe.__dataclass_fields__}
    training = TrainingRecipe(**{"batch_size": 4, "val_every": 2, "checkpoint_every": 2, **fitting})
    base = dict(
        data=str(data),
        model=TINY,
        out=str(out),
        steps=4,
        training=training,
        threads=1,
        wandb=WandbConfig(mode="disabled"),
    )
    return TrainConfig(**{**base, **overrides})


def test_training_writes_loadable_checkpoints_with_dataset_metadata(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run"))
    assert sorted(p.name for p in run.iterdir()) == [LAST, "step-0000002", "step-0000004"]
    model, meta = load_checkpoint(run)
    assert meta["step"] == 4
    assert (
        meta["dataset"]["task"] == "reacher"
        and meta["dataset"]["image_size"] == 64
        and meta["dataset"]["fps"] == 50.0
    )
    assert meta["dataset"]["state_names"] == ["joint0.pos", "joint1.pos", "joint0.vel", "joint1.vel"]
    assert model.config.image_size == 64 and model.config.action_dim == 2 and model.config.state_dim == 4
    assert not torch.allclose(model.state_std, torch.ones(4))  # normalisation from the data, saved with it


def test_an_anchored_model_trains_with_another_frame_of_the_window_as_its_anchor(
    reacher_store_path, tmp_path
):
    anchored = ModelArchitecture(**{**TINY.__dict__, "anchored": True})
    run = train(config(reacher_store_path, tmp_path / "run", model=anchored, steps=2, val_fraction=0.5))
    model, meta = load_checkpoint(run)
    assert model.config.anchored
    assert all(np.isfinite(v) for v in meta["val"].values()) and meta["val"]["predicted_pixels"] > 0
    torch.manual_seed(0)  # the run's seed: the weights it started from
    start = WorldModel(model.config)
    assert not torch.equal(start.decoder.net[0].weight, model.decoder.net[0].weight)  # the decoder learned


def _interrupted_after_step_2(data, out, monkeypatch) -> None:
    """Run to 4 steps, but die right after writing the step-2 checkpoint."""
    real = train_module.save_model_checkpoint

    def die_after_step_2(run_dir, step, *args, **kwargs):
        real(run_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # the process is gone here, with its step-2 checkpoint on disk

    monkeypatch.setattr(train_module, "save_model_checkpoint", die_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, out, steps=4, val_fraction=0.5))
    monkeypatch.setattr(train_module, "save_model_checkpoint", real)


def _same_weights(a_dir, b_dir) -> None:
    a, _ = load_checkpoint(a_dir)
    b, _ = load_checkpoint(b_dir)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.slow
def test_a_killed_run_resumes_identically_to_an_uninterrupted_one(reacher_store_path, tmp_path, monkeypatch):
    straight = train(config(reacher_store_path, tmp_path / "straight", steps=4, val_fraction=0.5))
    _interrupted_after_step_2(reacher_store_path, tmp_path / "resumed", monkeypatch)
    resumed = train(
        config(reacher_store_path, tmp_path / "resumed", steps=4, val_fraction=0.5, resume="auto")
    )
    _same_weights(straight, resumed)


def test_a_checkpoint_orphaned_by_a_kill_is_replaced_on_resume(reacher_store_path, tmp_path):
    straight = train(config(reacher_store_path, tmp_path / "straight", steps=4))
    run = train(config(reacher_store_path, tmp_path / "run", steps=4))
    # what a kill between renaming step-4 into place and moving `last` leaves behind
    (run / LAST).unlink()
    os.symlink("step-0000002", run / LAST)
    train(config(reacher_store_path, run, steps=4, resume="auto"))
    assert os.readlink(run / LAST) == "step-0000004"
    _same_weights(straight, run)


def test_debris_of_a_cut_short_first_checkpoint_is_not_a_run(reacher_store_path, tmp_path):
    run = tmp_path / "run"
    (run / ".step-0000002.0123abcd.partial").mkdir(parents=True)
    train(config(reacher_store_path, run, steps=2))
    assert (run / LAST).exists()


def test_refusals_change_nothing(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run", steps=2))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(WmSimError, match="already holds a run"):
        train(config(reacher_store_path, run, steps=2))
    with pytest.raises(WmSimError, match="differs from this run"):
        train(
            config(
                reacher_store_path, run, steps=4, resume="auto", model=ModelArchitecture(**{**vars(TINY), "dim": 64})
            )
        )
    with pytest.raises(WmSimError, match=r"trained with lr=0\.0005"):
        train(config(reacher_store_path, run, steps=4, resume="auto", lr=0.01))
    with pytest.raises(WmSimError, match="fewer than one batch"):
        train(config(reacher_store_path, tmp_path / "other", batch_size=10_000))
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (tmp_path / "other").exists()


def test_a_dataset_of_another_image_size_cannot_resume_a_run(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run", steps=2))
    small = collect(
        CollectConfig(task="reacher", episodes=2, workers=1, image_size=32, out=str(tmp_path / "small.zarr"))
    )
    with pytest.raises(WmSimError, match=r"image_size \(saved 64, this run 32: fixed by the dataset\)"):
        train(config(small.path, run, steps=4, resume="auto"))


def _wm_sim_train(data, out, *overrides: str) -> subprocess.CompletedProcess:
    """`wm-sim train` of a one-step tiny model, as a user runs it."""
    args = ["wm-sim", "train", f"data={data}", f"out={out}", "model=tiny", "steps=1", "wandb.mode=disabled"]
    args += overrides
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.n_heads=3", "does not fit"),
        ("model.tokenizer_width=100", "multiple of 16"),
        ("training.val_every=0", "must be positive"),
        ("batch_size=4", "did you mean training.batch_size?"),
        ("training=huge", "training/huge"),
        ("resume=maybe", "resume must be false or auto"),
        ("model=huge", "model/huge"),
    ],
)
def test_train_bad_input_is_one_clear_line(reacher_store_path, tmp_path, override, expected):
    result = _wm_sim_train(reacher_store_path, tmp_path / "run", override)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_accepts_resume_false_on_the_command_line(reacher_store_path, tmp_path):
    result = _wm_sim_train(reacher_store_path, tmp_path / "run", "training.batch_size=2", "resume=false")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / LAST).exists()


@pytest.mark.slow
def test_the_continue_head_is_trained_on_terminations(tmp_path):
    store = collect(
        CollectConfig(
            task="gym:Hopper-v5", policy="random", episodes=3, workers=1, out=str(tmp_path / "h.zarr")
        )
    )
    windows = train_module.EpisodeWindows(store, TINY.window + 1, 0, "all", 0.0, pad_end=True)
    batch = objective_module.to_batch([windows[i] for i in range(len(windows))], ["default"], torch.device("cpu"))
    assert batch["terminated"][:, :-1].sum() == 3  # each episode's fall is a transition the loss sees
    model = train_module.WorldModel(train_module.model_config(TINY, store))
    background = torch.from_numpy(train_module.background_frame(batch["pixels"][:, 0].numpy()))
    terms = objective_module.losses(model, batch, 0.1, 3, background, 2.0)  # the default recipe
    assert all(torch.isfinite(v) for v in terms.values())


def test_reward_weight_scales_the_reward_terms_in_the_total(reacher_store_path):
    store = train_module.EpisodeStore.open(reacher_store_path)
    windows = train_module.EpisodeWindows(store, TINY.window + 1, 0, "all", 0.0, pad_end=True)
    batch = objective_module.to_batch([windows[i] for i in range(4)], ["top"], torch.device("cpu"))
    model = train_module.WorldModel(train_module.model_config(TINY, store))
    background = torch.from_numpy(train_module.background_frame(batch["pixels"][:, 0].numpy()))
    totals = {}
    for weight in (0.1, 10.0):
        torch.manual_seed(0)  # the same noise, anchors and frames for both
        terms = objective_module.losses(model, batch, 0.1, 2, background, 2.0, weight)
        totals[weight] = terms
    rewards = totals[0.1]["teacher_reward"] + totals[0.1]["own_reward"]
    assert rewards > 0
    gap = totals[10.0]["total"] - totals[0.1]["total"]
    assert torch.allclose(gap, 9.9 * rewards, rtol=1e-4)


def test_validation_results_are_saved_with_the_checkpoint(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run", steps=2, val_fraction=0.5))
    _, meta = load_checkpoint(run)
    assert meta["val_step"] == 2
    assert meta["val"]["total"] > 0 and set(meta["val"]) >= {"recon", "teacher_latent", "own_latent"}


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    reacher_store_path, tmp_path, monkeypatch
):
    real = objective_module.losses
    calls = {"n": 0}

    def nan_from_the_third_step(model, batch, *options):
        calls["n"] += 1
        terms = real(model, batch, *options)
        if calls["n"] >= 3 and model.training:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(objective_module, "losses", nan_from_the_third_step)
    run = tmp_path / "run"
    with pytest.raises(WmSimError, match=r"loss became nan at step 2.*last good checkpoint"):
        train(config(reacher_store_path, run, steps=4, val_fraction=0.0))
    assert os.readlink(run / LAST) == "step-0000002"
    model, meta = load_checkpoint(run)
    assert meta["step"] == 2 and all(torch.isfinite(v).all() for v in model.state_dict().values())


@pytest.mark.slow
def test_wandb_offline_run_is_continued_by_a_resumed_training(reacher_store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    wandb = WandbConfig(mode="offline", videos=True)
    train(config(reacher_store_path, run, steps=2, val_fraction=0.5, wandb=wandb))
    _, first = load_checkpoint(run)
    run_id = first["wandb_run_id"]
    train(config(reacher_store_path, run, steps=4, val_fraction=0.5, wandb=wandb, resume="auto"))
    _, second = load_checkpoint(run)
    assert second["wandb_run_id"] == run_id and second["step"] == 4
    offline_runs = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline_runs) == 2, list((run / "wandb").iterdir())  # one per session, the same run id
    assert sorted(p.name for p in (run / "media").glob("*.mp4")) == [
        "rollout-0000002.mp4",
        "rollout-0000004.mp4",
    ]


def _run_in_own_group(args: list[str], logs: Path, timeout_s: float) -> tuple[int | None, str, str]:
    """Run a command in a process group of its own: (exit status or None if it outlived
    timeout_s, stdout, stderr). A command that outlives it gets SIGTERM first (torchrun passes it
    on; its workers then print their stacks), then the whole group is killed, so no worker is
    left behind to load the machine (as subprocess.run's timeout, which kills the parent only, did).
    """
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            status: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            status = None
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # every process of the group has exited
            proc.wait()
    return status, out.read_text(), err.read_text()


def test_gradients_are_averaged_in_place_of_ddp_with_zeros_for_parameters_without_one(tmp_path):
    import torch.distributed as dist

    # A gloo group of one process in this one: its all-reduce sums over one rank, so the average
    # with world_size=2 must be exactly half of each gradient, wherever the gradient came from.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        frozen = torch.nn.Parameter(torch.ones(5), requires_grad=False)
        model.register_parameter("frozen", frozen)
        model[0](torch.randn(6, 3)).square().sum().backward()  # the second layer gets no gradient
        before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        assert set(before) == {"0.weight", "0.bias"}
        distributed_module.average_gradients(model, world_size=2)
    finally:
        dist.destroy_process_group()
    for name, p in model.named_parameters():
        if name == "frozen":
            assert p.grad is None
        elif name in before:
            torch.testing.assert_close(p.grad, before[name] / 2, rtol=0, atol=0)
        else:
            assert torch.equal(p.grad, torch.zeros_like(p))  # every rank must send the same sizes
    # every gradient now lives in one buffer, as the all-reduce left it
    assert len({p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}) == 1


@pytest.mark.slow
def test_torchrun_trains_with_two_gloo_processes_and_only_rank_0_writes(reacher_store_path, tmp_path):
    run = tmp_path / "run"
    args = [
        "torchrun", "--standalone", "--nproc_per_node=2", "-m", "wm_sim", "train",
        f"data={reacher_store_path}", f"out={run}", "model=tiny", "steps=4", "training.batch_size=4",
        "training.val_every=2", "training.checkpoint_every=2", "threads=1", "wandb=disabled", "device=cpu",
        "val_fraction=0.5", "dist_timeout_s=60",
    ]  # fmt: skip
    # A run takes about 10 s here. Runs used to hang now and then as the process group was torn
    # down (see train._average_gradients); a hang now fails with every worker's stacks.
    status, stdout, stderr = _run_in_own_group(args, tmp_path / "logs", timeout_s=240)
    assert status is not None, f"torchrun outlived 240 s; its stderr ended:\n{stderr[-6000:]}"
    assert status == 0, stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [LAST, "step-0000002", "step-0000004"]
    _, meta = load_checkpoint(run)
    assert meta["world_size"] == 2 and meta["step"] == 4
    assert (stdout + stderr).count("step 4: val_") == 1  # one process validated and logged
    # a run trained by two processes resumes in one
    train(config(reacher_store_path, run, steps=6, resume="auto", val_fraction=0.5))
    assert load_checkpoint(run)[1]["step"] == 6


def test_config_groups_compose_and_single_options_override_them():
    from wm_sim.cli import verb_help
    from wm_sim.config import load_config

    cfg = load_config(
        "train", TrainConfig, ["training=quick", "training.lr=0.01", "wandb=disabled", "model=tiny"]
    )
    assert cfg.training.batch_size == 8 and cfg.training.rollout_passes == 1  # configs/training/quick.yaml
    assert cfg.training.lr == 0.01 and cfg.wandb.mode == "disabled" and cfg.model.dim == 32
    default = load_config("train", TrainConfig, [])
    assert default.training == TrainingRecipe() and default.wandb.mode == "offline"  # files match the code
    text = verb_help("train")
    assert "training.rollout_passes=3" in text and "wandb.mode=offline" in text


def test_init_starts_from_another_checkpoints_weights(reacher_store_path, tmp_path):
    first = train(config(reacher_store_path, tmp_path / "first", steps=2))
    # With zero learning rates the fine-tuned weights must be exactly the ones it started from.
    tuned = train(
        config(reacher_store_path, tmp_path / "tuned", steps=2, lr=0.0, tokenizer_lr=0.0, init=str(first))
    )
    before, _ = load_checkpoint(first)
    after, meta = load_checkpoint(tuned)
    assert meta["train"]["init"] == str(first)
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    bigger = ModelArchitecture(**{**TINY.__dict__, "dim": 64})
    with pytest.raises(WmSimError, match=r"cannot start from .*differs"):
        train(config(reacher_store_path, tmp_path / "other", model=bigger, init=str(first)))
    assert not (tmp_path / "other").exists()


def test_a_zero_tokenizer_rate_trains_the_dynamics_and_leaves_the_tokenizer_bit_identical(
    reacher_store_path, tmp_path
):
    first = train(config(reacher_store_path, tmp_path / "first", steps=2))
    tuned = train(config(reacher_store_path, tmp_path / "tuned", steps=2, tokenizer_lr=0.0, init=str(first)))
    before, _ = load_checkpoint(first)
    after, _ = load_checkpoint(tuned)
    for part in ("encoder", "decoder"):
        for (name, a), b in zip(
            getattr(before, part).state_dict().items(),
            getattr(after, part).state_dict().values(),
            strict=True,
        ):
            assert torch.equal(a, b), f"{part}.{name}"
    assert not torch.equal(before.latent_out.weight, after.latent_out.weight)  # the dynamics did learn


def test_init_turns_an_absolute_model_into_a_residual_one_that_starts_as_copy_last(
    reacher_store_path, tmp_path
):
    absolute = ModelArchitecture(**{**TINY.__dict__, "residual": False})
    first = train(config(reacher_store_path, tmp_path / "abs", model=absolute, steps=2))
    tuned = train(
        config(reacher_store_path, tmp_path / "res", steps=2, lr=0.0, tokenizer_lr=0.0, init=str(first))
    )
    before, _ = load_checkpoint(first)
    after, _ = load_checkpoint(tuned)
    assert not before.config.residual and after.config.residual
    assert not after.latent_out.weight.any() and not after.latent_out.bias.any()
    assert torch.equal(before.encoder.net[1].weight, after.encoder.net[1].weight)


def test_a_run_from_before_the_own_pass_options_resumes_with_their_old_values(reacher_store_path, tmp_path):
    from wm_sim.checkpoint import META, read_json, write_json

    absolute = ModelArchitecture(**{**TINY.__dict__, "residual": False})
    old = dict(model=absolute, rollout_passes=1, foreground_weight=0.0)
    run = train(config(reacher_store_path, tmp_path / "run", steps=2, **old))
    for step in run.glob("step-*"):  # what a checkpoint written before these options holds
        meta = read_json(step / META)
        for key in ("rollout_passes", "foreground_weight", "init"):
            del meta["train"][key]
        write_json(step / META, meta)
    with pytest.raises(WmSimError, match=r"trained with rollout_passes=1, this run asks for 3"):
        train(config(reacher_store_path, run, steps=4, resume="auto", model=absolute))
    with pytest.raises(
        WmSimError, match=r"residual \(saved False, this run True: pass model.residual=False\)"
    ):
        train(
            config(reacher_store_path, run, steps=4, resume="auto", rollout_passes=1, foreground_weight=0.0)
        )
    train(config(reacher_store_path, run, steps=4, resume="auto", **old))
    assert load_checkpoint(run)[1]["step"] == 4


def test_init_never_turns_a_residual_model_into_an_absolute_one(reacher_store_path, tmp_path):
    first = train(config(reacher_store_path, tmp_path / "res", steps=2))
    absolute = ModelArchitecture(**{**TINY.__dict__, "residual": False})
    with pytest.raises(WmSimError, match=r"residual \(saved True, this run False"):
        train(config(reacher_store_path, tmp_path / "abs", model=absolute, init=str(first)))


def test_pixel_weights_weigh_what_differs_from_the_background():
    background = torch.zeros(2, 2, 3)
    frame = torch.zeros(1, 2, 2, 3)
    frame[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # a red pixel on black: foreground
    frame[0, 1, 1] = 0.02  # a faint difference: mostly background
    weight = objective_module.pixel_weights(frame, background, 8.0)[0, ..., 0]
    assert weight[0, 0] == 9.0 and weight[0, 1] == 1.0 and weight[1, 1] == pytest.approx(1.0 + 8.0 * 0.2)
    assert torch.equal(objective_module.pixel_weights(frame, background, 0.0), torch.ones(1, 2, 2, 1))
    # the weighted error is normalised by the weights: a uniform error stays itself
    uniform = objective_module._weighted_mse(
        frame + 0.1, frame, objective_module.pixel_weights(frame, background, 8.0)
    )
    assert uniform == pytest.approx(0.01)
    frames = np.zeros((5, 2, 2, 3), np.uint8)
    frames[:2, 0, 0] = 255  # something passing through two of five frames is not background
    assert float(train_module.background_frame(frames).max()) == 0.0


def test_wrapped_entries_are_angles_that_jump_across_pi():
    t = np.linspace(0, 12, 200)
    turning = (t + np.pi) % (2 * np.pi) - np.pi  # a joint turning freely, wrapped
    limited = 3.0 * np.sin(t)  # a limited joint: inside [-pi, pi], never jumps
    speed = 8.0 * np.cos(t)  # a velocity: leaves the interval
    jumpy_speed = np.where(np.arange(200) % 2, 5.0, -5.0)  # jumps, but is no angle
    states = np.stack([turning, limited, speed, jumpy_speed], axis=1)
    assert wrapped_entries([states[:100], states[100:]]) == (0,)
    assert wrapped_entries([states[:20]]) == ()  # not yet crossed pi: nothing to tell
    assert wrapped_entries([]) == ()


@pytest.mark.slow
def test_init_adds_a_transition_fitted_up_front_then_frozen(reacher_store_path, tmp_path):
    from wm_sim.data.store import EpisodeStore

    base = train(config(reacher_store_path, tmp_path / "base", steps=2))
    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    run = train(
        config(
            reacher_store_path, tmp_path / "tr", model=with_transition, init=str(base), transition_steps=300
        )
    )
    first, _ = load_checkpoint(run / "step-0000002")
    last, _ = load_checkpoint(run)
    before, _ = load_checkpoint(base)
    store = EpisodeStore.open(reacher_store_path)
    assert last.config.transition and last.config.periodic_state == wrapped_entries(episode_states(store))
    assert before.step_out.out_features == before.config.state_dim + 2 and last.step_out.out_features == 2
    for name, value in first.transition.state_dict().items():  # frozen while the world model trains
        assert torch.equal(last.transition.state_dict()[name], value), name
    # fitted: one step ahead it beats "the state does not change" on every transition of the data
    state = torch.from_numpy(np.concatenate(list(episode_states(store))))
    action = torch.from_numpy(store.read("action", 0, store.num_frames))
    now = _transition_rows(store)
    with torch.no_grad():
        predicted = last.transition(state[now], action[now])
    error = last.transition.wrap(predicted - state[now + 1]).pow(2).mean(0)
    still = last.transition.wrap(state[now] - state[now + 1]).pow(2).mean(0)
    assert (error < 0.5 * still).all(), (error, still)


def _fine_tuned(
    store_path, tmp_path, model: ModelArchitecture, base_model: ModelArchitecture = TINY, base_options=None, **options
):
    """(before, after): a 2-step run of `base_model`, and 2 steps at learning rate 0 of `model`
    started from it (init=), so only what `model` adds or refits up front differs."""
    base = train(config(store_path, tmp_path / "base", model=base_model, steps=2, **(base_options or {})))
    tuned = train(
        config(
            store_path,
            tmp_path / "tuned",
            model=model,
            init=str(base),
            steps=2,
            lr=0.0,
            tokenizer_lr=0.0,
            **options,
        )
    )
    return load_checkpoint(base)[0], load_checkpoint(tuned)[0]


def _random_inputs(state_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (2, 3, 16, 8), states and actions of the tiny model, for comparing two models' outputs."""
    g = torch.Generator().manual_seed(0)
    latents = torch.rand(2, 3, 16, 8, generator=g) * 2 - 1
    return latents, torch.randn(2, 3, state_dim, generator=g), torch.rand(2, 3, 2, generator=g) * 2 - 1


def _transition_rows(store) -> torch.Tensor:
    """Every row of `store` that has a next row in its episode."""
    rows = [np.arange(*store.episode_bounds(e))[:-1] for e in range(store.num_episodes)]
    return torch.from_numpy(np.concatenate(rows))


def test_an_added_transition_starts_unread_by_the_transformer(reacher_store_path, tmp_path):
    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    before, after = _fine_tuned(reacher_store_path, tmp_path, with_transition, transition_steps=5)
    assert not after.next_state_in.weight.any() and not after.next_state_in.bias.any()
    latents, state, action = _random_inputs(4)
    with torch.no_grad():
        old, new = before(latents, state, action), after(latents, state, action)
    torch.testing.assert_close(new.latents, old.latents)
    torch.testing.assert_close(new.reward, old.reward)


@pytest.mark.slow
def test_init_adds_a_frame_reward_fitted_on_real_frames(reacher_store_path, tmp_path):
    from wm_sim.data.store import EpisodeStore

    with_reward = ModelArchitecture(**{**TINY.__dict__, "frame_reward": True})
    before, after = _fine_tuned(reacher_store_path, tmp_path, with_reward, reward_fit_steps=300)
    d = before.config.state_dim
    assert before.step_out.out_features == d + 2 and after.step_out.out_features == d + 1
    latents, state, action = _random_inputs(d)
    with torch.no_grad():
        old, new = before(latents, state, action), after(latents, state, action)
    # the pooled head kept its state and continue rows; only the reward moved to the new head
    torch.testing.assert_close(new.state, old.state)
    torch.testing.assert_close(new.continue_logit, old.continue_logit)
    # fitted up front on every real frame: it reads the reward off a frame far better than the mean
    store = EpisodeStore.open(reacher_store_path)
    rows = _transition_rows(store)
    pixels = torch.from_numpy(store.read(image_key(store.info.cameras[0]), 0, store.num_frames))
    reward = torch.from_numpy(store.read(REWARD_KEY, 0, store.num_frames))[rows]
    action = torch.from_numpy(store.read(ACTION_KEY, 0, store.num_frames))[rows]
    with torch.no_grad():
        read = after.reward_head(after.encode(pixels[rows + 1]), action)
    error = (read - reward).pow(2).mean()
    assert (float(after.reward_head.low), float(after.reward_head.high)) == (
        float(reward.min()),
        float(reward.max()),
    )
    assert error < 0.25 * reward.var(), (error, reward.var())


@pytest.mark.slow
def test_refit_transition_fits_inits_transition_again_and_needs_one(reacher_store_path, tmp_path):
    from wm_sim.data.store import EpisodeStore

    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    before, after = _fine_tuned(
        reacher_store_path, tmp_path, with_transition, base_model=with_transition,
        base_options={"transition_steps": 20}, transition_steps=300, refit_transition=True,
    )  # fmt: skip
    store = EpisodeStore.open(reacher_store_path)
    state = torch.from_numpy(np.concatenate(list(episode_states(store))))
    action = torch.from_numpy(store.read(ACTION_KEY, 0, store.num_frames))
    now = _transition_rows(store)

    def one_step_error(model: WorldModel) -> float:
        with torch.no_grad():
            predicted = model.transition(state[now], action[now])
        return float(model.transition.wrap(predicted - state[now + 1]).pow(2).mean())

    assert one_step_error(after) < 0.5 * one_step_error(before)
    torch.testing.assert_close(after.latent_out.weight, before.latent_out.weight)  # nothing else moved
    with pytest.raises(WmSimError, match="refit_transition"):
        train(config(reacher_store_path, tmp_path / "bad", refit_transition=True))


def _open_loop_state_error(model: WorldModel, state: torch.Tensor, action: torch.Tensor, steps: int) -> float:
    """Mean squared error (in typical one-step changes) of the transition rolled out `steps` steps on
    its own predictions from every real state of (E, T, D) episodes that has `steps` more frames."""
    transition = model.transition
    with torch.no_grad():
        predicted, error = state[:, :-steps], 0.0
        for k in range(steps):
            predicted = transition(predicted, action[:, k : k + predicted.shape[1]])
            target = state[:, k + 1 : k + 1 + predicted.shape[1]]
            error += float((transition.wrap(predicted - target) / transition.step_scale).pow(2).mean())
    return error / steps


@pytest.mark.slow
def test_a_transition_fitted_on_its_own_rollouts_drifts_less_than_a_one_step_fit(
    reacher_store_path, tmp_path
):
    from wm_sim.data.store import EpisodeStore
    from wm_sim.head_fitting import fit_transition
    from wm_sim.train import model_config

    store = EpisodeStore.open(reacher_store_path)
    shape = model_config(ModelArchitecture(**{**TINY.__dict__, "transition": True}), store)
    episodes = list(range(store.num_episodes))
    fitted = {}
    for horizon in (1, 16):
        torch.manual_seed(0)  # the same initial weights
        fitted[horizon] = WorldModel(shape)
        fit_transition(
            fitted[horizon], store, episodes, 300, seed=0, horizon=horizon, lr=3e-4, batch_size=256
        )
    state = torch.from_numpy(np.stack(list(episode_states(store)))).float()  # (E, T, D): equal lengths
    action = torch.stack(
        [torch.from_numpy(store.read(ACTION_KEY, *store.episode_bounds(e))) for e in episodes]
    ).float()
    drift = {h: _open_loop_state_error(m, state, action, steps=32) for h, m in fitted.items()}
    assert drift[16] < 0.7 * drift[1], drift
    with pytest.raises(WmSimError, match="no episode has more than 500"):
        fit_transition(fitted[1], store, episodes, steps=1, seed=0, horizon=500)
    with pytest.raises(WmSimError, match="transition_horizon"):
        train(config(reacher_store_path, tmp_path / "bad", transition_horizon=0))


@pytest.mark.slow
def test_init_adds_a_scene_reward_that_reads_the_reward_of_a_state_in_another_frames_scene(
    reacher_store_path, tmp_path
):
    from wm_sim.data.store import EpisodeStore

    with_scene = ModelArchitecture(**{**TINY.__dict__, "transition": True, "scene_reward": True})
    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    before, after = _fine_tuned(
        reacher_store_path,
        tmp_path,
        with_scene,
        base_model=with_transition,
        base_options={"transition_steps": 50},
        scene_reward_steps=1500,
        scene_goal_steps=150,
    )
    assert before.scene_reward is None and after.scene_reward is not None
    # everything else is the base model's, bit for bit: the head is fitted alone, up front
    kept = {k: v for k, v in after.state_dict().items() if not k.startswith("scene_reward.")}
    for key, value in before.state_dict().items():
        torch.testing.assert_close(kept[key], value, rtol=0, atol=0)
    store = EpisodeStore.open(reacher_store_path)
    rows = _transition_rows(store)
    pixels = torch.from_numpy(store.read(image_key(store.info.cameras[0]), 0, store.num_frames))
    state = torch.from_numpy(store.read(STATE_KEY, 0, store.num_frames)).float()
    reward = torch.from_numpy(store.read(REWARD_KEY, 0, store.num_frames))[rows]
    action = torch.from_numpy(store.read(ACTION_KEY, 0, store.num_frames))[rows]
    # the scene is the first frame of each row's episode, not the frame the state belongs to
    ends = store.episode_ends
    episode = torch.from_numpy(np.searchsorted(ends, rows.numpy(), side="right"))
    firsts = torch.from_numpy(np.concatenate([[0], ends[:-1]]))
    head = after.scene_reward
    with torch.no_grad():
        goals = head.goal(pixels)
        read = head(goals[firsts[episode]], state[rows + 1], action)
    assert (float(head.low), float(head.high)) == (float(reward.min()), float(reward.max()))
    error = (read - reward).pow(2).mean()
    assert error < 0.1 * reward.var(), (error, reward.var())
    # one goal per scene: the frames of an episode agree on it far better than episodes do
    within = torch.stack([goals[a:b].std(0).norm() for a, b in zip(firsts, ends, strict=True)]).mean()
    between = torch.stack([goals[a:b].mean(0) for a, b in zip(firsts, ends, strict=True)]).std(0).norm()
    assert within < 0.5 * between, (within, between)


def test_a_second_train_into_the_same_out_is_refused_before_it_writes(reacher_store_path, tmp_path):
    run = tmp_path / "run"
    with lock_run_directory(run):  # another `wm-sim train` writing there
        with pytest.raises(WmSimError, match="being written by another process"):
            train(config(reacher_store_path, run, steps=2))
        assert list(run.iterdir()) == []
    assert not run.exists()


def test_the_next_start_removes_a_killed_saves_partial_folder(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run", steps=2))
    partial = run / f".step-0000004.{uuid.uuid4().hex}.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    train(config(reacher_store_path, run, steps=4, resume="auto"))
    assert not partial.exists()
    assert sorted(p.name for p in run.iterdir()) == ["last", "step-0000002", "step-0000004"]


def test_an_out_under_a_file_is_refused_before_any_work(reacher_store_path, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WmSimError, match="cannot be created"):
        train(config(reacher_store_path, tmp_path / "a-file" / "run", steps=2))


def test_model_size_holds_every_shape_option_the_dataset_does_not_fix():
    """`model.<option>=` reaches every field of the model's shape but those the data decides, so
    the error for a mismatched init= can name the option to pass."""
    from dataclasses import fields

    from wm_sim.model_upgrade import FIXED_BY_DATA
    from wm_sim.world_model import WorldModelConfig

    shape = {f.name for f in fields(WorldModelConfig)}
    assert set(ModelArchitecture.__dataclass_fields__) == shape - FIXED_BY_DATA
