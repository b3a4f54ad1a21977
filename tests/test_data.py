import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distill.collect import CollectConfig, Explorer, collect, episode_name
from distill.data import ClipDataset
from worldmodel.actions import Action
from worldmodel.episode import Episode, EpisodeError, EpisodeWriter, find_episodes
from worldmodel.game import Game


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    collect(CollectConfig(out=str(out), episodes=3, frames=40, size=32, workers=1), progress=False)
    return out


def test_collection_round_trip(dataset):
    paths = find_episodes(dataset)
    assert [p.name for p in paths] == [episode_name(i) for i in range(3)]
    for i, p in enumerate(paths):
        ep = Episode(p)
        assert len(ep) == 40 and ep.meta["complete"] and ep.meta["seed"] == i
        assert ep.frames.shape == (40, 32, 32, 3) and ep.actions.shape == (40, 8)
        # the stored frames are exactly what the game produces under the stored actions
        game = Game(ep.meta["seed"], 32)
        assert np.array_equal(game.reset(), ep.frames[0])
        assert not ep.actions[0].any()  # nothing led into the first frame
        for t in range(1, 40):
            assert np.array_equal(game.step(Action.from_vector(ep.actions[t])), ep.frames[t])


def test_collection_resumes_and_skips_finished(dataset):
    before = {p: (p / "frames.u8").stat().st_mtime_ns for p in find_episodes(dataset)}
    (dataset / (episode_name(3) + ".tmp")).mkdir()  # an interrupted episode
    collect(CollectConfig(out=str(dataset), episodes=4, frames=40, size=32, workers=1), progress=False)
    after = find_episodes(dataset)
    assert len(after) == 4 and not list(dataset.glob("*.tmp"))
    for p, mtime in before.items():
        assert (p / "frames.u8").stat().st_mtime_ns == mtime


def test_explorer_covers_the_action_space():
    game, player = Game(3, 32), Explorer(3)
    game.reset()
    acts, behaviours = [], set()
    for _ in range(3000):
        a = player.act(game)
        game.step(a)
        acts.append(a.to_vector())
        behaviours.add(player.behaviour)
    acts = np.stack(acts)
    assert behaviours == set(Explorer.BEHAVIOURS)
    assert (acts[:, :6].mean(0) > 0.01).all(), "every key is held sometimes"
    assert (acts[:, :6].sum(1) == 0).mean() > 0.05, "standing still happens"
    assert acts[:, 6].min() < -0.5 and acts[:, 6].max() > 0.5
    assert acts[:, 7].min() < -0.2 and acts[:, 7].max() > 0.2
    # held keys: runs of forward last many frames
    fwd = acts[:, 0] > 0
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, fwd.astype(int), 0])))[::2]
    assert runs.max() >= 20


def test_loader_streams_clips_with_workers(dataset):
    ds = ClipDataset(dataset, clip_len=8, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["frames"].shape == (4, 8, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    assert batch["actions"].shape == (4, 8, 8)
    # the workers draw different clips
    assert not torch.equal(batch["frames"][0], batch["frames"][1])
    # each clip is a contiguous slice of one episode
    eps = [Episode(p) for p in find_episodes(dataset)]
    clip = batch["frames"][0].numpy()
    assert any(
        np.array_equal(ep.frames[s:s + 8], clip) for ep in eps for s in range(len(ep) - 7)
    )


def test_torn_episode_reads_up_to_the_last_whole_frame(tmp_path):
    w = EpisodeWriter(tmp_path / "ep", size=16, fps=20, seed=0, source="game")
    frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    for f in frames:
        w.append(f, Action(forward=True))
    # simulate a crash mid-frame: half a frame and half an action line
    w._frames.write(b"\x00" * 100)
    w._frames.flush()
    w._actions.write('{"frame": 5, "act')
    w._actions.flush()
    ep = Episode(tmp_path / "ep")
    assert len(ep) == 5 and np.array_equal(ep.frames[:], frames)
    assert not json.loads((tmp_path / "ep" / "meta.json").read_text()).get("complete")


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(EpisodeError, match="no such dataset"):
        find_episodes(tmp_path / "missing")
    with pytest.raises(EpisodeError, match="run `wm collect` first"):
        ClipDataset(tmp_path, clip_len=4)
    w = EpisodeWriter(tmp_path / "ep", size=16, fps=20)
    with pytest.raises(EpisodeError, match="uint8"):
        w.append(np.zeros((8, 8, 3), np.uint8), Action())
    w.close()
    with pytest.raises(EpisodeError, match="not an episode"):
        Episode(tmp_path)
