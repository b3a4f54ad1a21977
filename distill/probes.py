"""Behaviour probes and teacher-forced one-step prediction, for `wm eval`.

A probe is a fixed way of playing: `stand` (no input), `walk` (forward; on hitting a wall,
turn right 90 degrees and go on), `turn` (yaw +0.5: a full turn every 120 frames),
`strafe` (left and right, 40 frames each), `look` (up, hold, down, hold, and back), and
`mixed` (the explorer policy of `wm collect`, seeded apart from collection). Every stream
starts from the same real context (the first `context` frames, no input) and plays the
probe's actions; the game under the same actions is the reference.

Where the game starts. In worlds never trained on (seeds from EVAL_SEED_START) the player
starts at the world's spawn, as in collection. In worlds a checkpoint was trained on, the
training episodes started at the spawn and followed Explorer(world); there the probes start
from a pose drawn at random (`start_state`, its own random stream) and the mixed probe's
explorer takes the seed EVAL_SEED_START + world, a seed collection never gives a policy.

One-step: GameNGen's headline number. Real context frames, one generated frame, compared
with the game's next frame, at windows along an explorer episode; the mean is over MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.collect import EVAL_SEED_START, Explorer
from distill.realism import random_states
from worldmodel.actions import Action
from worldmodel.game import Game

PROBES = ("stand", "walk", "turn", "strafe", "look", "mixed")


class Walk:
    """Forward; when the game says a wall stopped it, turn right by 90 degrees, then go on."""

    def __init__(self):
        self.turning = 0

    def act(self, game: Game) -> Action:
        if self.turning == 0 and game.collided:
            self.turning = round(90 / game.config.max_turn_deg)  # frames at yaw 1.0
        if self.turning:
            self.turning -= 1
            return Action(yaw=1.0)
        return Action(forward=True)


class Scripted:
    """A fixed cycle of actions."""

    def __init__(self, cycle: list[Action]):
        self.cycle, self.t = cycle, 0

    def act(self, game: Game) -> Action:
        a = self.cycle[self.t % len(self.cycle)]
        self.t += 1
        return a


def policy(name: str, world: int, seen: bool):
    if name == "stand":
        return Scripted([Action()])
    if name == "walk":
        return Walk()
    if name == "turn":
        return Scripted([Action(yaw=0.5)])
    if name == "strafe":
        return Scripted([Action(left=True)] * 40 + [Action(right=True)] * 40)
    if name == "look":
        up, down, hold = Action(pitch=1.0), Action(pitch=-1.0), Action()
        return Scripted([up] * 10 + [hold] * 10 + [down] * 20 + [hold] * 10 + [up] * 10)
    if name == "mixed":
        return Explorer(EVAL_SEED_START + world if seen else world)
    raise ValueError(f"unknown probe {name!r}; probes: {', '.join(PROBES)}")


@dataclass
class Episode:
    world: int
    frames: np.ndarray  # uint8 [T, S, S, 3]
    actions: list[Action]  # actions[i] led into frames[i] (actions[0]: no input)
    states: list[dict]  # the game's state() at each frame


def start_state(game: Game, world: int) -> dict:
    """A standable pose of `world` drawn from its own random stream (not the spawn)."""
    return random_states(game, 1, np.random.default_rng([world, 4049]))[0]


def first_frame(game: Game, world: int, seen: bool) -> np.ndarray:
    """Where a probe starts: in a trained-on world (seen) a random pose, not the spawn where
    every training episode began; elsewhere the spawn."""
    return game.restore(start_state(game, world)) if seen else game.reset()


def play(world: int, size: int, n: int, name: str, context: int, seen: bool) -> Episode:
    """n frames: `context` still frames, then the probe `name` (closed loop on the game)."""
    game = Game(world, size)
    frames = [first_frame(game, world, seen)]
    actions, states = [Action()], [game.state()]
    player = policy(name, world, seen)
    for t in range(n - 1):
        a = Action() if t < context - 1 else player.act(game)
        frames.append(game.step(a))
        actions.append(a)
        states.append(game.state())
    return Episode(world, np.stack(frames), actions, states)


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean squared error of uint8 frames (..., S, S, 3), in 0..1 units."""
    d = a.astype(np.float64) / 255 - b.astype(np.float64) / 255
    return (d * d).reshape(*d.shape[:-3], -1).mean(-1)


def psnr_of_mse(m) -> float:
    """PSNR (dB) of a mean squared error; 100 for none, as worldmodel.metrics.psnr."""
    m = float(np.mean(m))
    return 100.0 if m <= 1e-10 else float(min(100.0, -10 * np.log10(m)))


def idm_summary(s: dict) -> dict:
    """The IDM scores a stage table shows: forward key and yaw direction accuracy."""
    return {"forward_acc": s["per_key_acc"]["forward"], "forward_chance": s["per_key_chance"]["forward"],
            "yaw_sign_acc": s["per_camera_sign_acc"]["yaw"],
            "key_acc": s["key_acc"], "camera_err": s["camera_err"], "pairs": s["pairs"]}
