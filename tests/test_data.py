import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distill.collect import (
    DATASET,
    CollectConfig,
    Explorer,
    Player,
    collect,
    episode_name,
    parse_worlds,
)
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


def played(game: Game, player, frames: int) -> tuple[np.ndarray, set[str]]:
    """A policy played on the game: its action vectors (frames, A) and the behaviours seen."""
    game.reset()
    acts, behaviours = [], set()
    for _ in range(frames):
        a = player.act(game)
        game.step(a)
        acts.append(a.to_vector())
        behaviours.add(player.behaviour)
    return np.stack(acts), behaviours


def test_explorer_covers_the_action_space():
    acts, behaviours = played(Game(3, 32), Explorer(3), 3000)
    assert behaviours == set(Explorer.BEHAVIOURS)
    assert (acts[:, :6].mean(0) > 0.01).all(), "every key is held sometimes"
    assert (acts[:, :6].sum(1) == 0).mean() > 0.05, "standing still happens"
    assert acts[:, 6].min() < -0.5 and acts[:, 6].max() > 0.5
    assert acts[:, 7].min() < -0.2 and acts[:, 7].max() > 0.2
    # held keys: runs of forward last many frames
    fwd = acts[:, 0] > 0
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, fwd.astype(int), 0])))[::2]
    assert runs.max() >= 20


def test_play_policy_meets_the_wall_thresholds_the_old_explorer_misses(tmp_path):
    """The play-like player on fixed worlds, measured the way `wm collect` reports it:
    <= 5% of frames colliding and <= 10% looking at a wall nearer than 0.8 cells."""
    figures = {}
    for policy in ("play", "explorer"):
        out = tmp_path / policy
        collect(CollectConfig(out=str(out), episodes=4, frames=300, size=32, workers=1,
                              policy=policy, worlds=(6, 7, 8, 9)), progress=False)
        figures[policy] = json.loads((out / DATASET).read_text())["figures"]
    play, old = figures["play"], figures["explorer"]
    assert play["frames"] == old["frames"] == 4 * 299
    assert play["colliding"] <= 0.05 and play["near_wall"] <= 0.10, play
    # the measure tells the two apart: the old explorer pushes into walls
    assert old["colliding"] > 0.2 and old["near_wall"] > 0.3, old
    assert {"walk", "idle", "turn", "strafe", "look"} <= set(play["behaviours"])
    assert abs(sum(play["behaviours"].values()) - 1) < 1e-9


def test_fixed_worlds_cycle_from_random_places_and_replay(tmp_path):
    out = tmp_path / "fixed"
    cfg = CollectConfig(out=str(out), episodes=4, frames=30, size=32, workers=1,
                        worlds=(7, 9))
    collect(cfg, progress=False)
    eps = [Episode(p) for p in find_episodes(out)]
    assert [e.meta["seed"] for e in eps] == [7, 9, 7, 9]
    starts = [e.meta["start"] for e in eps]
    assert starts[0] != starts[2], "two episodes of one world start in different places"
    for ep in eps:  # frame 0 is the game at the recorded start, then the recorded actions
        game = Game(ep.meta["seed"], 32)
        assert np.array_equal(game.restore(ep.meta["start"]), ep.frames[0])
        for t in range(1, len(ep)):
            assert np.array_equal(game.step(Action.from_vector(ep.actions[t])), ep.frames[t])
        f = ep.meta["figures"]
        assert f["frames"] == 29 and sum(f["behaviours"].values()) == 29
    # the same settings give the same bytes; another policy seed gives other episodes
    again, other = tmp_path / "again", tmp_path / "other"
    collect(CollectConfig(**{**vars(cfg), "out": str(again)}), progress=False)
    collect(CollectConfig(**{**vars(cfg), "out": str(other), "policy_seed": 1}), progress=False)
    for name in (episode_name(0), episode_name(3)):
        a, b, c = ((d / name / "frames.u8").read_bytes() for d in (out, again, other))
        assert a == b and a != c


def test_play_policy_covers_the_action_space():
    acts, behaviours = played(Game(7, 32), Player(7), 3000)
    assert behaviours == set(Player.BEHAVIOURS)
    assert (acts[:, :6].mean(0) > 0.005).all(), "every key is held sometimes"
    assert (~acts.any(1)).mean() > 0.02, "standing still happens"
    assert acts[:, 6].min() < -0.5 and acts[:, 6].max() > 0.5
    assert acts[:, 7].min() < -0.2 and acts[:, 7].max() > 0.2
    fwd = acts[:, 0] > 0
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, fwd.astype(int), 0])))[::2]
    assert runs.max() >= 60, "long walks hold forward"


def test_parse_worlds():
    assert parse_worlds("7,8,9") == (7, 8, 9)
    assert parse_worlds("6-9") == (6, 7, 8, 9)
    assert parse_worlds("0-2, 10,1") == (0, 1, 2, 10)
    assert parse_worlds("") is None and parse_worlds(None) is None
    for bad in ("a", "3-1", "-2"):
        with pytest.raises(ValueError, match="worlds"):
            parse_worlds(bad)


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


def test_gapped_clips_skip_frames_after_the_sinks(dataset):
    ds = ClipDataset(dataset, clip_len=6, seed=0, gap=9, gap_frames=2, p_gap=0.5)
    eps = [Episode(p) for p in find_episodes(dataset)]
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(40):
        clip = ds.sample(rng)
        g = int(clip["gap"])
        gaps.append(g)
        want = np.r_[0:2, 2 + g:6 + g]  # two sink frames, then four frames g later
        hits = [s for ep in eps for s in range(len(ep) - 5 - g)
                if np.array_equal(ep.frames[s + want], clip["frames"].numpy())
                and np.array_equal(ep.actions[s + want], clip["actions"].numpy())]
        assert hits, f"clip with gap {g} is not frames {want.tolist()} of an episode"
    assert 0 in gaps and 0 < max(gaps) <= 9 and 0.2 < np.mean(np.array(gaps) > 0) < 0.8
    assert "gap" not in ClipDataset(dataset, clip_len=6).sample(rng)
    with pytest.raises(ValueError, match="gap_frames"):
        ClipDataset(dataset, clip_len=6, gap=3, gap_frames=6)


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
