"""The installed package: light import, names under wm_sim only, CLI verbs, optional extras."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from wm_sim import optional
from wm_sim.errors import WmSimError


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_wm_sim_stays_light(tmp_path):
    heavy = ["mujoco", "torch", "rclpy", "wandb", "flash_attn", "zarr", "hydra"]
    code = f"import sys, wm_sim; print([m for m in {heavy!r} if m in sys.modules])"
    result = run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("bare", ["envs", "policies", "ros", "configs", "datasets", "benchmarks"])
def test_no_bare_top_level_module_is_installed(tmp_path, bare):
    """wm-sim installs its folders under wm_sim only. Another distribution may ship a bare module
    of the same name (torchrl installs a top-level `benchmarks`): that one is not ours."""
    code = (
        f"import importlib.util; spec = importlib.util.find_spec({bare!r}); "
        "print('' if spec is None else '|'.join([spec.origin or '', *(spec.submodule_search_locations or [])]))"
    )
    result = run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    places = [Path(p) for p in result.stdout.strip().split("|") if p]
    repo = Path(__file__).resolve().parents[1]
    assert not [p for p in places if p.resolve().is_relative_to(repo)], places


@pytest.mark.parametrize(
    "name", ["wm_sim.envs", "wm_sim.policies", "wm_sim.ros", "wm_sim.configs", "wm_sim.data"]
)
def test_subpackages_import_under_wm_sim(tmp_path, name):
    result = run([sys.executable, "-c", f"import {name}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_cpu_setup_pulls_no_cuda_wheels():
    cuda = [
        d.metadata["Name"]
        for d in importlib.metadata.distributions()
        if d.metadata["Name"].lower().startswith("nvidia-")
    ]
    assert cuda == []


def test_cli_lists_verbs_and_options(tmp_path):
    top = run(["wm-sim", "--help"], cwd=tmp_path)
    assert top.returncode == 0 and "collect" in top.stdout
    verb = run(["wm-sim", "collect", "--help"], cwd=tmp_path)
    assert verb.returncode == 0
    for option in ("task=", "policy=", "episodes=", "image_size=", "seed=", "workers=", "out=", "resume="):
        assert option in verb.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frobnicate"], "unknown verb"),
        (["collect", "task=nope"], "reacher, pusher"),
        (["collect", "policy=smart"], "random, expert, mixed"),
        (["collect", "episodes=0"], "episodes must be a positive integer"),
        (["collect", "episodes=-3"], "episodes must be a positive integer"),
        (["collect", "colour=red"], "unknown option 'colour'"),
        (["collect", "episodes=many"], "could not be converted to Integer"),
        (["collect", "task=gym:CartPole-v1", "policy=random"], "gym:CartPole-v1"),
        (["collect", "task=gym:Hopper-v5", "policy=expert"], "use policy=random"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path, args, expected):
    result = run(
        ["wm-sim", *args, f"out={tmp_path / 'x.zarr'}"] if args[0] == "collect" else ["wm-sim", *args],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "x.zarr").exists()


def test_missing_optional_package_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(optional.OPTIONAL_PACKAGES, "wm_sim_not_a_real_package", ("ros", "the ROS 2 bridge"))
    with pytest.raises(WmSimError, match=r'pip install "wm-sim\[ros\]"'):
        optional.require("wm_sim_not_a_real_package")


def test_optional_extras_are_declared_in_the_distribution():
    extras = importlib.metadata.metadata("wm-sim").get_all("Provides-Extra")
    assert {"ros", "gpu", "test"} <= set(extras)
    declared = {extra for extra, _ in optional.OPTIONAL_PACKAGES.values()}
    assert declared <= set(extras)


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    blocks = (root / "README.md").read_text().split("```bash\n")
    first, second = blocks[1].split("\n")[0], blocks[2].split("\n")[0]
    assert first.endswith("wm-sim demo") and "pytest" in second  # the main job, then the tests
    assert second in (root / ".ci" / "run").read_text().splitlines()
