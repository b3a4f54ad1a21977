"""`wm collect`: episodes from the game under a mixture of exploration behaviours.

    wm collect --out data/train --episodes 200 --frames 500 --size 64 --workers 2
    wm collect --out data/val --episodes 8 --seed-start 1000000   # held-out worlds

The behaviours cover the action space the way a player uses it: keys held for many
frames, smooth mouse turns, turning in place, looking up and down, walking into walls,
standing still, sprinting and jumping. Episode i plays world seed `seed_start + i`; an
episode is written to a temporary folder and renamed when complete, so a rerun resumes
where the last one stopped and never reads a half episode.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodel.actions import Action
from worldmodel.episode import EpisodeWriter, is_episode
from worldmodel.flags import add_config_arguments, config_from_args

EVAL_SEED_START = 1_000_000  # worlds at and above this seed are never used for training


@dataclass
class CollectConfig:
    out: str = "data/train"
    episodes: int = 100
    frames: int = 500
    size: int = 64
    seed_start: int = 0
    workers: int = 2


class Explorer:
    """A scripted player: a sequence of behaviour segments, each a few to ~100 frames.

    `act(game)` returns the next action; behaviours read `game.collided` so that walking
    into a wall can be held on purpose and wandering can turn away from walls.
    """

    BEHAVIOURS = {  # name -> sampling weight
        "walk": 5.0,
        "wander": 4.0,
        "turn": 2.0,
        "look": 1.5,
        "strafe": 1.5,
        "back": 0.7,
        "wall": 1.0,
        "idle": 1.0,
        "jump": 1.0,
    }

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 7919])
        names = list(self.BEHAVIOURS)
        weights = np.array([self.BEHAVIOURS[n] for n in names])
        self._names, self._p = names, weights / weights.sum()
        self._segment: Iterator[Action] = iter(())
        self.behaviour = "idle"
        self._yaw = 0.0  # smooth mouse: an Ornstein-Uhlenbeck process

    def _smooth_yaw(self, scale: float) -> float:
        self._yaw = 0.85 * self._yaw + self.rng.normal(0.0, 0.12 * scale)
        return float(np.clip(self._yaw, -1, 1))

    def _new_segment(self, game) -> Iterator[Action]:
        r = self.rng
        name = self._names[r.choice(len(self._names), p=self._p)]
        self.behaviour = name
        n = int(r.integers(8, 80))
        sprint = bool(r.random() < 0.3)
        if name == "walk":  # hold forward, gentle mouse turns, the odd jump
            for _ in range(n):
                yield Action(forward=True, sprint=sprint, yaw=self._smooth_yaw(1.0),
                             jump=bool(r.random() < 0.02))
        elif name == "wander":  # forward; when blocked, turn away for a while
            turn = 0
            for _ in range(n):
                if game.collided and turn == 0:
                    turn = int(r.integers(5, 20)) * (1 if r.random() < 0.5 else -1)
                if turn:
                    step = 1 if turn > 0 else -1
                    turn -= step
                    yield Action(yaw=0.8 * step, forward=bool(r.random() < 0.3))
                else:
                    yield Action(forward=True, sprint=sprint, yaw=self._smooth_yaw(0.6))
        elif name == "turn":  # turn in place at a steady rate
            rate = float(r.uniform(0.2, 1.0)) * (1 if r.random() < 0.5 else -1)
            for _ in range(int(r.integers(5, 40))):
                yield Action(yaw=rate)
        elif name == "look":  # look up or down, hold, and come back
            rate = float(r.uniform(0.3, 1.0)) * (1 if r.random() < 0.5 else -1)
            k = int(r.integers(3, 15))
            yield from [Action(pitch=rate)] * k
            yield from [Action()] * int(r.integers(0, 10))
            yield from [Action(pitch=-rate)] * k
        elif name == "strafe":
            side = {"left": True} if r.random() < 0.5 else {"right": True}
            fwd = bool(r.random() < 0.4)
            for _ in range(n):
                yield Action(forward=fwd, sprint=sprint, yaw=self._smooth_yaw(0.5), **side)
        elif name == "back":
            for _ in range(int(r.integers(5, 30))):
                yield Action(back=True, yaw=self._smooth_yaw(0.5))
        elif name == "wall":  # walk into whatever is ahead and keep pushing
            pushed = 0
            for _ in range(200):
                if pushed >= int(r.integers(5, 15)):
                    break
                pushed += int(game.collided)
                yield Action(forward=True, sprint=sprint)
        elif name == "idle":
            yield from [Action()] * int(r.integers(5, 30))
        elif name == "jump":  # jumps standing or on the move
            fwd = bool(r.random() < 0.6)
            for _ in range(int(r.integers(10, 40))):
                yield Action(forward=fwd, sprint=sprint, jump=bool(r.random() < 0.15))

    def act(self, game) -> Action:
        for action in self._segment:
            return action
        self._segment = self._new_segment(game)
        return self.act(game)


def episode_name(index: int) -> str:
    return f"ep_{index:06d}"


def collect_episode(cfg: CollectConfig, index: int) -> int:
    """Play and write one episode; returns its frame count."""
    from worldmodel.game import Game

    seed = cfg.seed_start + index
    final = Path(cfg.out) / episode_name(index)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    game = Game(seed, cfg.size)
    player = Explorer(seed)
    with EpisodeWriter(tmp, cfg.size, game.fps, seed=seed, source="game",
                       policy="explorer") as writer:
        writer.append(game.reset(), Action(), behaviour="start")
        for _ in range(cfg.frames - 1):
            action = player.act(game)
            writer.append(game.step(action), action, behaviour=player.behaviour)
    tmp.rename(final)
    return cfg.frames


def _work(job: tuple[CollectConfig, int]) -> int:
    return collect_episode(*job)


def collect(cfg: CollectConfig, progress: bool = True) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(cfg.episodes) if not is_episode(out / episode_name(i))]
    done = cfg.episodes - len(todo)
    bar = tqdm(total=cfg.episodes * cfg.frames, initial=done * cfg.frames, unit="frame",
               desc=f"collect -> {out}", disable=not progress, smoothing=0.05)
    jobs = [(cfg, i) for i in todo]
    if cfg.workers <= 1:
        for job in jobs:
            bar.update(_work(job))
    else:
        with get_context("spawn").Pool(cfg.workers) as pool:
            for n in pool.imap_unordered(_work, jobs):
                bar.update(n)
    bar.close()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CollectConfig(), helps={
        "out": "dataset folder (resumes if it exists)", "frames": "frames per episode",
        "size": "frame side in pixels",
        "seed_start": f"world seed of episode 0 (use >= {EVAL_SEED_START} for held-out data)"})


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(CollectConfig, args)
    if cfg.episodes < 1 or cfg.frames < 2:
        raise SystemExit("wm collect: need at least 1 episode of at least 2 frames")
    out = collect(cfg)
    print(f"{cfg.episodes} episodes of {cfg.frames} frames at {cfg.size}px in {out}")
    return 0
