"""Training under torchrun (wm_sim.distributed): gradients averaged over the processes in place of
DDP, and a two-process run that only rank 0 writes."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import run_config, tiny_architecture

import wm_sim.distributed as distributed_module
from wm_sim.checkpoint import LAST, load_checkpoint
from wm_sim.train import train


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
        "val_fraction=0.5", "dist_timeout_s=60", "model.normalised_latents=true",
    ]  # fmt: skip
    # A run takes about 10 s here. Runs used to hang now and then as the process group was torn
    # down (see train._average_gradients); a hang now fails with every worker's stacks.
    status, stdout, stderr = _run_in_own_group(args, tmp_path / "logs", timeout_s=240)
    assert status is not None, f"torchrun outlived 240 s; its stderr ended:\n{stderr[-6000:]}"
    assert status == 0, stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [LAST, "step-0000002", "step-0000004"]
    model, meta = load_checkpoint(run)
    assert meta["world_size"] == 2 and meta["step"] == 4
    # the latent statistics, averaged over the processes each step
    assert int(model.latent_observed) == 4 and not torch.equal(
        model.latent_std, torch.ones_like(model.latent_std)
    )
    assert (stdout + stderr).count("step 4: val_") == 1  # one process validated and logged
    # a run trained by two processes resumes in one
    normalised = replace(tiny_architecture(), normalised_latents=True)
    train(run_config(reacher_store_path, run, steps=6, resume="auto", val_fraction=0.5, model=normalised))
    assert load_checkpoint(run)[1]["step"] == 6
