"""Training windows over a store (wm_sim.data.windows): the validation split, windows inside
episodes, in memory or read from disk, padded to each episode's last transition."""

from __future__ import annotations

import numpy as np
import pytest
from wm_sim.envs.catalog import TASK_SPECS

from wm_sim.data.schema import image_key
from wm_sim.data.windows import EpisodeWindows, is_validation_episode
from wm_sim.errors import WmSimError

L = TASK_SPECS["reacher"].episode_steps  # rows per reacher episode


def test_validation_split_is_stable_and_proportional():
    flags = [is_validation_episode(e, 0.1) for e in range(1000)]
    assert sum(flags) == 100
    assert [e for e in range(30) if flags[e]] == [9, 19, 29]  # evenly spread, by index alone
    assert [e for e in range(8) if is_validation_episode(e, 0.5)] == [1, 3, 5, 7]
    assert not any(is_validation_episode(e, 0.0) for e in range(100))
    with pytest.raises(WmSimError):
        is_validation_episode(0, 1.0)


def test_windows_stay_inside_episodes_and_splits_are_disjoint(reacher_store_path):
    context, horizon = 4, 3
    train = EpisodeWindows(reacher_store_path, context, horizon, split="train", val_fraction=0.5)
    val = EpisodeWindows(reacher_store_path, context, horizon, split="val", val_fraction=0.5)
    assert set(train.episodes).isdisjoint(val.episodes)
    assert sorted(train.episodes + val.episodes) == [0, 1, 2, 3]
    assert len(train) == len(train.episodes) * (L - 7 + 1)
    for i in (0, len(train) // 2, len(train) - 1):
        window = train[i]
        assert window[image_key("top")].shape == (7, 64, 64, 3)
        assert len(set(window["episode_index"].tolist())) == 1
        assert np.all(np.diff(window["frame_index"]) == 1)
    with pytest.raises(IndexError):
        train[len(train)]


def test_in_memory_windows_equal_windows_read_from_disk(reacher_store_path):
    disk = EpisodeWindows(reacher_store_path, 3, 2, split="all")
    memory = EpisodeWindows(reacher_store_path, 3, 2, split="all", in_memory=True)
    assert len(disk) == len(memory)
    for i in (0, 17, len(disk) - 1):
        for key, value in disk[i].items():
            np.testing.assert_array_equal(memory[i][key], value)


def test_padded_windows_reach_each_episodes_last_transition(reacher_store_path):
    plain = EpisodeWindows(reacher_store_path, 4, 0, split="all")
    padded = EpisodeWindows(reacher_store_path, 4, 0, split="all", pad_end=True)
    assert len(padded) == len(plain) + 4  # one more window per episode
    last = padded[L - 4 + 1]  # episode 0's final window: its last 3 rows, then padding
    assert last["valid"].tolist() == [True, True, True, False]
    assert last["frame_index"].tolist() == [L - 3, L - 2, L - 1, L - 1]
    assert last["next.done"][2]  # the episode's final transition is an input row now
    assert padded[0]["valid"].all()
    index_only = EpisodeWindows(reacher_store_path, 4, 0, split="all", keys=["episode_index"], pad_end=True)
    for i in range(len(index_only)):  # never a row of another episode
        assert len(set(index_only[i]["episode_index"].tolist())) == 1


def test_windows_work_with_a_torch_dataloader(reacher_store_path):
    torch = pytest.importorskip("torch")
    windows = EpisodeWindows(reacher_store_path, 2, 1, split="all", keys=[image_key("top"), "action"])
    batch = next(iter(torch.utils.data.DataLoader(windows, batch_size=5, shuffle=True)))
    assert batch[image_key("top")].shape == (5, 3, 64, 64, 3)
    assert batch["action"].dtype == torch.float32
