"""`wm-sim train` on a tiny model: checkpoints, exact resume, and refusals that change nothing."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import run_config, tiny_architecture

import wm_sim.objective as objective_module
import wm_sim.train as train_module
from wm_sim.checkpoint import LAST, load_checkpoint, lock_run_directory
from wm_sim.collect import CollectConfig, collect
from wm_sim.errors import WmSimError
from wm_sim.tracking import WandbConfig
from wm_sim.train import ModelArchitecture, TrainConfig, TrainingRecipe, train
from wm_sim.world_model import WorldModel

TINY = tiny_architecture()


def test_training_writes_loadable_checkpoints_with_dataset_metadata(reacher_store_path, tmp_path):
    run = train(run_config(reacher_store_path, tmp_path / "run"))
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
    run = train(run_config(reacher_store_path, tmp_path / "run", model=anchored, steps=2, val_fraction=0.5))
    model, meta = load_checkpoint(run)
    assert model.config.anchored
    assert all(np.isfinite(v) for v in meta["val"].values()) and meta["val"]["predicted_pixels"] > 0
    torch.manual_seed(0)  # the run's seed: the weights it started from
    start = WorldModel(model.config)
    assert not torch.equal(start.decoder.net[0].weight, model.decoder.net[0].weight)  # the decoder learned


def test_one_command_ends_with_an_anchored_decoder_tuned_onto_the_trained_model(reacher_store_path, tmp_path):
    """The whole recipe: the steps train a plain decoder (an anchored one trained from scratch only
    copies its anchor), then the last phases tune an anchored one onto the frozen model, reading
    the anchor's pixels, then earlier context frames, then agent_pos too."""
    out = tmp_path / "run"
    anchored = tiny_architecture(anchored=True, anchor_memory=(1, 2))
    final = train(
        run_config(reacher_store_path, out, model=anchored, steps=2, decoder_steps=2, val_fraction=0.5)
    )
    assert final == out / train_module.STATE_DIR
    tuned, meta = load_checkpoint(final)
    first, first_meta = load_checkpoint(out / train_module.DECODER_DIR)
    second, second_meta = load_checkpoint(out / train_module.DETAIL_DIR)
    third, third_meta = load_checkpoint(out / train_module.MEMORY_DIR)
    trained, _ = load_checkpoint(out / "step-0000002")
    assert tuned.config.decoder_state and tuned.config.anchor_memory == (1, 2) and not trained.config.anchored
    assert first.config.anchored and not first.config.anchor_detail
    assert second.config.anchor_detail and not second.config.anchor_memory
    assert third.config.anchor_memory == (1, 2) and not third.config.decoder_state
    assert first_meta["decoder_tuning"]["checkpoint"] == str(out / "step-0000002")
    assert second_meta["decoder_tuning"]["checkpoint"] == str(out / train_module.DECODER_DIR / LAST)
    assert third_meta["decoder_tuning"]["checkpoint"] == str(out / train_module.DETAIL_DIR / LAST)
    assert meta["decoder_tuning"]["checkpoint"] == str(out / train_module.MEMORY_DIR / LAST)
    assert third_meta["decoder_tuning"]["memory_weight"] > 0 == second_meta["decoder_tuning"]["memory_weight"]
    assert meta["decoder_tuning"]["far_pixels"] == "all" and third_meta["decoder_tuning"]["far_pixels"] == "still"
    assert meta["decoder_tuning"]["latent_shift"] == 32 and third_meta["decoder_tuning"]["latent_shift"] == 0
    # the last phase learns a new input, for STATE_STEPS times the steps of the others
    assert meta["decoder_tuning"]["steps"] == train_module.STATE_STEPS * 2 == 2 * third_meta["decoder_tuning"]["steps"]
    assert meta["decoder_tuning"]["earlier"]["earlier"]["earlier"]["anchor_detail"] is False  # every phase recorded
    frozen = {k: v for k, v in trained.state_dict().items() if not k.startswith("decoder.")}
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in frozen.items())
    again = train(
        run_config(
            reacher_store_path, out, model=anchored, steps=2, decoder_steps=2, val_fraction=0.5, resume="auto"
        )
    )
    assert again == final and load_checkpoint(final)[1]["step"] == 4  # done: nothing more to do


def test_a_finished_run_resumed_with_decoder_steps_gets_its_decoder_phase(reacher_store_path, tmp_path):
    """A run's checkpoints do not depend on decoder_steps: a finished run gets its decoder phase."""
    out, anchored = tmp_path / "run", tiny_architecture(anchored=True)
    plain = run_config(reacher_store_path, out, model=anchored, steps=2, decoder_steps=1, val_fraction=0.5)
    steps_only = replace(plain, training=replace(plain.training, decoder_steps=0), model=tiny_architecture())
    assert train(steps_only) == out  # the steps alone, with the plain decoder the phase starts from
    final = train(replace(plain, resume="auto"))
    assert final == out / train_module.STATE_DIR and load_checkpoint(final)[0].config.decoder_state


def test_a_run_finished_without_anchor_detail_gains_its_phase_by_resuming(reacher_store_path, tmp_path):
    """The detail phase starts from the first decoder phase's weights: a run made before it existed
    gets it by resume=auto, and the phases before it are left as they were."""
    out = tmp_path / "run"
    without = run_config(
        reacher_store_path, out, model=tiny_architecture(anchored=True, anchor_detail=False, decoder_state=False),
        steps=2, decoder_steps=1, val_fraction=0.5,
    )  # fmt: skip
    assert train(without) == out / train_module.DECODER_DIR
    first = load_checkpoint(out / train_module.DECODER_DIR)[0].state_dict()
    only_detail = tiny_architecture(anchored=True, anchor_memory=(), decoder_state=False)
    final = train(replace(without, model=only_detail, resume="auto"))
    assert final == out / train_module.DETAIL_DIR
    detailed, meta = load_checkpoint(final)
    assert detailed.config.anchor_detail and meta["decoder_tuning"]["anchor_detail"]
    # and a run finished before anchor memory and decoder state existed gains those phases too
    assert train(replace(without, model=tiny_architecture(anchored=True), resume="auto")) == out / train_module.STATE_DIR
    again = load_checkpoint(out / train_module.DECODER_DIR)[0].state_dict()
    assert all(torch.equal(again[k], v) for k, v in first.items())  # the first phase was not redone


def test_a_fine_tuning_run_keeps_its_decoder_as_init_has_it_and_has_no_decoder_phase(
    reacher_store_path, tmp_path
):
    anchored = tiny_architecture(anchored=True)
    base = train(
        run_config(
            reacher_store_path, tmp_path / "base", model=anchored, steps=1, decoder_steps=1, val_fraction=0.5
        )
    )
    tuned = train(
        run_config(
            reacher_store_path,
            tmp_path / "tuned",
            model=anchored,
            steps=1,
            decoder_steps=1,
            val_fraction=0.5,
            init=str(base),
        )
    )
    assert tuned == tmp_path / "tuned" and not (tuned / train_module.DECODER_DIR).exists()
    assert load_checkpoint(tuned)[0].config.anchored


def test_the_state_transition_is_fitted_again_on_its_own_rollouts_up_front(reacher_store_path, tmp_path):
    model = tiny_architecture(transition=True)
    common = dict(model=model, steps=1, transition_steps=30, val_fraction=0.5)
    once = train(run_config(reacher_store_path, tmp_path / "once", **common))
    twice = train(
        run_config(
            reacher_store_path,
            tmp_path / "twice",
            transition_rollout_steps=10,
            transition_rollout_horizon=4,
            **common,
        )
    )
    first, second = (load_checkpoint(run)[0].transition.state_dict() for run in (once, twice))
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_a_run_killed_after_its_up_front_fits_resumes_without_fitting_them_again(
    reacher_store_path, tmp_path, monkeypatch
):
    common = dict(model=tiny_architecture(transition=True), steps=2, transition_steps=20, val_fraction=0.5)
    straight = train(run_config(reacher_store_path, tmp_path / "straight", **common))
    real = train_module.save_model_checkpoint

    def die_after_step_0(run_dir, step, *args, **kwargs):
        real(run_dir, step, *args, **kwargs)
        if step == 0:
            raise KeyboardInterrupt  # killed after the fits, before the first training step

    monkeypatch.setattr(train_module, "save_model_checkpoint", die_after_step_0)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(reacher_store_path, tmp_path / "resumed", **common))
    monkeypatch.setattr(train_module, "save_model_checkpoint", real)
    assert os.readlink(tmp_path / "resumed" / LAST) == "step-0000000"
    assert load_checkpoint(tmp_path / "resumed")[1]["fitted_up_front"] == ["transition"]

    def no_refit(*args, **kwargs):
        raise AssertionError("the resume fitted the state transition again")

    monkeypatch.setattr(train_module, "fit_transition", no_refit)
    resumed = train(run_config(reacher_store_path, tmp_path / "resumed", resume="auto", **common))
    _same_weights(straight, resumed)
    assert load_checkpoint(resumed)[1]["fitted_up_front"] == ["transition"]  # kept on record
    assert sorted(p.name for p in straight.iterdir()) == [LAST, "step-0000000", "step-0000002"]


def _interrupted_after_step_2(data, out, monkeypatch) -> None:
    """Run to 4 steps, but die right after writing the step-2 checkpoint."""
    real = train_module.save_model_checkpoint

    def die_after_step_2(run_dir, step, *args, **kwargs):
        real(run_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # the process is gone here, with its step-2 checkpoint on disk

    monkeypatch.setattr(train_module, "save_model_checkpoint", die_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(data, out, steps=4, val_fraction=0.5))
    monkeypatch.setattr(train_module, "save_model_checkpoint", real)


def _same_weights(a_dir, b_dir) -> None:
    a, _ = load_checkpoint(a_dir)
    b, _ = load_checkpoint(b_dir)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.slow
def test_a_killed_run_resumes_identically_to_an_uninterrupted_one(reacher_store_path, tmp_path, monkeypatch):
    straight = train(run_config(reacher_store_path, tmp_path / "straight", steps=4, val_fraction=0.5))
    _interrupted_after_step_2(reacher_store_path, tmp_path / "resumed", monkeypatch)
    resumed = train(
        run_config(reacher_store_path, tmp_path / "resumed", steps=4, val_fraction=0.5, resume="auto")
    )
    _same_weights(straight, resumed)


def test_a_checkpoint_orphaned_by_a_kill_is_replaced_on_resume(reacher_store_path, tmp_path):
    straight = train(run_config(reacher_store_path, tmp_path / "straight", steps=4))
    run = train(run_config(reacher_store_path, tmp_path / "run", steps=4))
    # what a kill between renaming step-4 into place and moving `last` leaves behind
    (run / LAST).unlink()
    os.symlink("step-0000002", run / LAST)
    train(run_config(reacher_store_path, run, steps=4, resume="auto"))
    assert os.readlink(run / LAST) == "step-0000004"
    _same_weights(straight, run)


def test_debris_of_a_cut_short_first_checkpoint_is_not_a_run(reacher_store_path, tmp_path):
    run = tmp_path / "run"
    (run / ".step-0000002.0123abcd.partial").mkdir(parents=True)
    train(run_config(reacher_store_path, run, steps=2))
    assert (run / LAST).exists()


def test_teacher_forced_steps_train_without_own_passes_and_then_with_them(reacher_store_path, tmp_path):
    def run(name: str, **options) -> Path:
        return train(run_config(reacher_store_path, tmp_path / name, steps=2, **options))

    forced = run("forced", rollout_passes=3, teacher_forced_steps=2)
    _same_weights(forced, run("teacher", rollout_passes=0))  # the same steps as no own passes at all
    own = load_checkpoint(run("own", rollout_passes=3))[0]
    assert not torch.equal(own.latent_out.weight, load_checkpoint(forced)[0].latent_out.weight)
    # a resumed run keeps its teacher-forced steps (they change what the run computes)
    with pytest.raises(WmSimError, match=r"trained with teacher_forced_steps=2, this run asks for 0"):
        train(run_config(reacher_store_path, forced, steps=4, resume="auto", rollout_passes=3))
    with pytest.raises(WmSimError, match="teacher_forced_steps"):
        run("negative", teacher_forced_steps=-1)


def test_refusals_change_nothing(reacher_store_path, tmp_path):
    run = train(run_config(reacher_store_path, tmp_path / "run", steps=2))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(WmSimError, match="already holds a run"):
        train(run_config(reacher_store_path, run, steps=2))
    with pytest.raises(WmSimError, match="differs from this run"):
        wider = ModelArchitecture(**{**vars(TINY), "dim": 64})
        train(run_config(reacher_store_path, run, steps=4, resume="auto", model=wider))
    with pytest.raises(WmSimError, match=r"trained with lr=0\.0005"):
        train(run_config(reacher_store_path, run, steps=4, resume="auto", lr=0.01))
    with pytest.raises(WmSimError, match="fewer than one batch"):
        train(run_config(reacher_store_path, tmp_path / "other", batch_size=10_000))
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (tmp_path / "other").exists()


def test_a_dataset_of_another_image_size_cannot_resume_a_run(reacher_store_path, tmp_path):
    run = train(run_config(reacher_store_path, tmp_path / "run", steps=2))
    small = collect(
        CollectConfig(task="reacher", episodes=2, workers=1, image_size=32, out=str(tmp_path / "small.zarr"))
    )
    with pytest.raises(WmSimError, match=r"image_size \(saved 64, this run 32: fixed by the dataset\)"):
        train(run_config(small.path, run, steps=4, resume="auto"))


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
        ("training.decoder_far_pixels=moved", "decoder_far_pixels must be one of still, anchor, all, got 'moved'"),
        ("training.decoder_latent_shift=-1", "training.decoder_latent_shift must be a finite number >= 0, got -1"),
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


def test_validation_results_are_saved_with_the_checkpoint(reacher_store_path, tmp_path):
    run = train(run_config(reacher_store_path, tmp_path / "run", steps=2, val_fraction=0.5))
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
        train(run_config(reacher_store_path, run, steps=4, val_fraction=0.0))
    assert os.readlink(run / LAST) == "step-0000002"
    model, meta = load_checkpoint(run)
    assert meta["step"] == 2 and all(torch.isfinite(v).all() for v in model.state_dict().values())


@pytest.mark.slow
def test_wandb_offline_run_is_continued_by_a_resumed_training(reacher_store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    wandb = WandbConfig(mode="offline", videos=True)
    train(run_config(reacher_store_path, run, steps=2, val_fraction=0.5, wandb=wandb))
    _, first = load_checkpoint(run)
    run_id = first["wandb_run_id"]
    train(run_config(reacher_store_path, run, steps=4, val_fraction=0.5, wandb=wandb, resume="auto"))
    _, second = load_checkpoint(run)
    assert second["wandb_run_id"] == run_id and second["step"] == 4
    offline_runs = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline_runs) == 2, list((run / "wandb").iterdir())  # one per session, the same run id
    assert sorted(p.name for p in (run / "media").glob("*.mp4")) == [
        "rollout-0000002.mp4",
        "rollout-0000004.mp4",
    ]


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


def test_a_zero_tokenizer_rate_trains_the_dynamics_and_leaves_the_tokenizer_bit_identical(
    reacher_store_path, tmp_path
):
    first = train(run_config(reacher_store_path, tmp_path / "first", steps=2))
    tuned = train(
        run_config(reacher_store_path, tmp_path / "tuned", steps=2, tokenizer_lr=0.0, init=str(first))
    )
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


def test_a_run_from_before_the_own_pass_options_resumes_with_their_old_values(reacher_store_path, tmp_path):
    from wm_sim.checkpoint import META, read_json, write_json

    absolute = ModelArchitecture(**{**TINY.__dict__, "residual": False})
    old = dict(model=absolute, rollout_passes=1, foreground_weight=0.0)
    run = train(run_config(reacher_store_path, tmp_path / "run", steps=2, **old))
    for step in run.glob("step-*"):  # what a checkpoint written before these options holds
        meta = read_json(step / META)
        for key in ("rollout_passes", "foreground_weight", "init"):
            del meta["train"][key]
        write_json(step / META, meta)
    with pytest.raises(WmSimError, match=r"trained with rollout_passes=1, this run asks for 3"):
        train(run_config(reacher_store_path, run, steps=4, resume="auto", model=absolute))
    with pytest.raises(
        WmSimError, match=r"residual \(saved False, this run True: pass model.residual=False\)"
    ):
        train(
            run_config(
                reacher_store_path, run, steps=4, resume="auto", rollout_passes=1, foreground_weight=0.0
            )
        )
    train(run_config(reacher_store_path, run, steps=4, resume="auto", **old))
    assert load_checkpoint(run)[1]["step"] == 4


def test_a_second_train_into_the_same_out_is_refused_before_it_writes(reacher_store_path, tmp_path):
    run = tmp_path / "run"
    with lock_run_directory(run):  # another `wm-sim train` writing there
        with pytest.raises(WmSimError, match="being written by another process"):
            train(run_config(reacher_store_path, run, steps=2))
        assert list(run.iterdir()) == []
    assert not run.exists()


def test_the_next_start_removes_a_killed_saves_partial_folder(reacher_store_path, tmp_path):
    run = train(run_config(reacher_store_path, tmp_path / "run", steps=2))
    partial = run / f".step-0000004.{uuid.uuid4().hex}.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    train(run_config(reacher_store_path, run, steps=4, resume="auto"))
    assert not partial.exists()
    assert sorted(p.name for p in run.iterdir()) == ["last", "step-0000002", "step-0000004"]


def test_an_out_under_a_file_is_refused_before_any_work(reacher_store_path, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WmSimError, match="cannot be created"):
        train(run_config(reacher_store_path, tmp_path / "a-file" / "run", steps=2))


def test_model_architecture_holds_every_shape_option_the_dataset_does_not_fix():
    """`model.<option>=` reaches every field of the model's shape but those the data decides, so
    the error for a mismatched init= can name the option to pass."""
    from dataclasses import fields

    from wm_sim.model_upgrade import FIXED_BY_DATA
    from wm_sim.world_model import WorldModelConfig

    shape = {f.name for f in fields(WorldModelConfig)}
    assert set(ModelArchitecture.__dataclass_fields__) == shape - FIXED_BY_DATA


def test_the_model_defaults_the_architecture_defaults_and_the_small_config_agree():
    """WorldModelConfig, ModelArchitecture and configs/model/small.yaml describe one architecture:
    the one that ships (the shipped reacher model's own parts, its anchored decoder included)."""
    import yaml

    from wm_sim.world_model import WorldModelConfig

    small = yaml.safe_load((Path(__file__).parents[1] / "configs" / "model" / "small.yaml").read_text())
    defaults = WorldModelConfig()
    options = ModelArchitecture.__dataclass_fields__
    as_yaml = {k: getattr(ModelArchitecture(), k) for k in options}
    assert small == {k: list(v) if isinstance(v, tuple) else v for k, v in as_yaml.items()}
    assert all(getattr(ModelArchitecture(), k) == getattr(defaults, k) for k in options)
    shipped, _ = load_checkpoint("shipped:reacher")
    parts = ("residual", "anchored", "transition", "frame_reward", "scene_reward")
    assert all(getattr(shipped.config, k) and getattr(defaults, k) for k in parts)
