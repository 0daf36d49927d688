"""Bad input on the command line: one clear line, exit 2, no traceback, nothing written.

Each case runs `wm-sim` in this process (a traceback would fail the test as an exception) and
compares a digest of the working folder before and after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wm_sim.checkpoint import META, WEIGHTS
from wm_sim.cli import VERBS, main, resolve


def tree_digest(path: Path) -> str:
    """Every name (folders too) and every file's bytes below `path`."""
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        digest.update(str(entry.relative_to(path)).encode())
        if entry.is_file():
            digest.update(entry.read_bytes())
    return digest.hexdigest()


def refused(args: list[str], root: Path, capsys) -> str:
    """Run `wm-sim args`; assert exit 2, one line on stderr and `root` unchanged; return the line."""
    before = tree_digest(root)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert tree_digest(root) == before
    return err[0]


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "a-file").write_text("not a directory")
    return tmp_path


def test_collect_refuses_a_negative_seed(work, capsys):
    line = refused(["collect", "seed=-1", f"out={work / 'new.zarr'}", "workers=1"], work, capsys)
    assert "seed must be a non-negative integer, got -1" in line


def test_the_command_exits_2_with_one_line_and_no_traceback(work):
    before = tree_digest(work)
    result = subprocess.run(
        [sys.executable, "-m", "wm_sim", "collect", "seed=-1", f"out={work / 'new.zarr'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wm-sim collect: error: seed must be a non-negative integer, got -1"
    ]
    assert tree_digest(work) == before


@pytest.mark.parametrize(
    ("out", "message"),
    [("a-file/sub.zarr", "a-file is a file, not a directory"), ("a-file", "exists and is a file")],
)
def test_collect_refuses_an_out_it_cannot_create(work, capsys, out, message):
    line = refused(["collect", f"out={work / out}", "workers=1", "episodes=1"], work, capsys)
    assert f"out={work / out}" in line and message in line


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("training.lr=-1", "training.lr must be a finite number >= 0, got -1.0"),
        ("training.lr=nan", "training.lr must be a finite number >= 0, got nan"),
        ("training.weight_decay=-0.1", "training.weight_decay must be a finite number >= 0"),
        ("model.depth=0", "model.depth must be a positive integer, got 0"),
        ("model.n_heads=-2", "model.n_heads must be a positive integer, got -2"),
        ("model.anchor_memory=[2,0]", "model.anchor_memory must list frames back from the anchor (each >= 1), got [2, 0]"),
        ("model.heads=4", "option model.heads of `wm-sim train` is now called model.n_heads"),
        ("threads=-1", "threads must be at least 0"),
        ("seed=-3", "seed must be a non-negative integer, got -3"),
    ],
)
def test_train_refuses_bad_option_values_before_reading_anything(work, capsys, option, message):
    line = refused(["train", f"data={work / 'missing.zarr'}", f"out={work / 'run'}", option], work, capsys)
    assert message in line


def _verbs_with(option: str) -> list[str]:
    return [
        name
        for name, verb in VERBS.items()
        if option in {f.name for f in dataclasses.fields(resolve(verb.schema))}
    ]


@pytest.mark.parametrize("verb", _verbs_with("threads"))
def test_every_verb_refuses_a_negative_thread_count(work, capsys, verb):
    line = refused([*verb.split(), "threads=-1"], work, capsys)
    assert "threads must be at least 0" in line and "got -1" in line


@pytest.mark.parametrize("out", ["a-file", "a-file/evaluation"])
def test_evaluate_refuses_an_out_it_cannot_write_before_it_evaluates(work, capsys, monkeypatch, out):
    import wm_sim.evaluate as evaluate_module

    def never(*_args, **_kwargs):
        raise AssertionError("the checkpoint was loaded: out= was checked too late")

    monkeypatch.setattr(evaluate_module, "load_checkpoint", never)
    line = refused(["evaluate", f"out={work / out}", f"data={work / 'missing.zarr'}"], work, capsys)
    assert "a file" in line


@pytest.fixture
def tiny_copy(tiny_model_path, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_path, copy)
    return copy


def _edit_meta(checkpoint: Path, edit) -> None:
    meta = json.loads((checkpoint / META).read_text())
    edit(meta)
    (checkpoint / META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["model"].update(depth=-1), "model.depth must be a positive integer, got -1"),
        (lambda m: m["model"].update(dim="wide"), 'model.dim must be a positive integer, got "wide"'),
        (lambda m: m["model"].update(residual=1), "model.residual must be true or false, got 1"),
        (lambda m: m.update(dataset=[1, 2]), "dataset must be an object, got [1, 2]"),
        (lambda m: m["dataset"].update(fps="fast"), 'dataset.fps must be a positive number, got "fast"'),
        (lambda m: m["dataset"].update(state_names=["x"]), "dataset.state_names must be a list of 4"),
    ],
)
def test_evaluate_refuses_a_checkpoint_with_bad_metadata_in_one_line(
    tiny_copy, reacher_store_path, tmp_path, capsys, edit, message
):
    _edit_meta(tiny_copy, edit)
    args = ["evaluate", f"checkpoint={tiny_copy}", f"data={reacher_store_path}", f"out={tmp_path / 'eval'}"]
    line = refused(args, tmp_path, capsys)
    assert message in line and str(tiny_copy / META) in line


def test_evaluate_refuses_a_checkpoint_of_nan_weights_naming_the_tensor(
    tiny_copy, reacher_store_path, tmp_path, capsys
):
    weights = load_file(str(tiny_copy / WEIGHTS))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[3]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(tiny_copy / WEIGHTS))
    args = ["evaluate", f"checkpoint={tiny_copy}", f"data={reacher_store_path}", f"out={tmp_path / 'eval'}"]
    line = refused(args, tmp_path, capsys)
    assert f"tensor {name!r}" in line and "NaN" in line
