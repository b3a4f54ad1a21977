"""`wm collect`: episodes from the game, played by a scripted player.

    wm collect --out data/train --episodes 200 --frames 500 --size 64 --workers 2
    wm collect --out data/val --episodes 8 --seed-start 1000000   # held-out worlds
    wm collect --out data/w/train --worlds 6-9 --episodes 200      # fixed worlds, many places
    wm collect --out data/w/val --worlds 6-9 --episodes 8 --policy-seed 1

Two players: `play` (the default) walks to goals on the map as a person would, turning
before walls, and now and then stands, looks, turns in place, strafes, steps back, jumps
or pushes against a wall; `explorer` is the older mixture of behaviours that walks into
walls half of the time. Without `--worlds` episode i plays world seed `seed_start + i` from
its spawn; with `--worlds` the episodes take the listed worlds in turn, each from a random
place. For every data set `wm collect` prints, and writes into `dataset.json` (and each
episode's meta.json), the share of frames in which the player collides with a wall, the
share whose median wall depth across the view is under 0.8 cells, and the behaviour
shares. An episode is written to a temporary folder and renamed when complete, so a rerun
resumes where the last one stopped and never reads a half episode.
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodel.actions import Action
from worldmodel.episode import EpisodeWriter, is_episode, write_json_atomic
from worldmodel.flags import add_config_arguments, config_from_args

EVAL_SEED_START = 1_000_000  # worlds at and above this seed are never used for training
POLICIES = ("play", "explorer")


DATASET = "dataset.json"  # a data set's collection settings and figures, beside its episodes


@dataclass
class CollectConfig:
    out: str = "data/train"
    episodes: int = 100
    frames: int = 500
    size: int = 64
    seed_start: int = 0  # procedural mix: episode i plays world seed_start + i
    workers: int = 2
    policy: str = "play"  # "play" (goal-directed, like a person) or "explorer" (the old mix)
    worlds: tuple[int, ...] | None = None  # fixed worlds: episodes cycle through them
    policy_seed: int = 0  # a second data set on the same worlds takes another

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.worlds is not None:
            self.worlds = tuple(int(w) for w in self.worlds)
            if not self.worlds:
                raise ValueError("worlds: give at least one world seed")


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

    def __init__(self, seed: int | list[int]):
        self.rng = np.random.default_rng(np.r_[np.atleast_1d(seed), 7919].tolist())
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


def _wrap(angle: float) -> float:
    """An angle in radians brought into -pi..pi."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


NEAR_WALL = 0.8  # cells: a frame whose median wall depth is nearer than this is a wall close-up


def view_figures(game) -> tuple[bool, float]:
    """(the last step was cut short by a wall or object, median wall depth across the view)."""
    return bool(game.collided), float(np.median(game.wall_depths()))


class Player:
    """A scripted player that plays as a person would: it walks corridors and rooms toward
    goals on the map, holds forward for long walks, turns smoothly before it reaches a wall,
    and now and then looks up or down, turns in place, stands still, strafes, steps back,
    jumps or walks into a wall on purpose (a few percent of frames).

    Navigation: a breadth-first path over free cells (8-connected, no corner cutting, object
    cells blocked) to a random reachable goal; the player steers at the farthest point of
    the path it can see with clearance (a "carrot" up to LOOKAHEAD cells ahead), so corners
    are rounded rather than met. `act(game)` returns the next action; `behaviour` names the
    segment it belongs to.
    """

    BEHAVIOURS = {  # name -> sampling weight of a segment
        "walk": 3.0,
        "look": 1.0,
        "turn": 1.0,
        "idle": 1.5,
        "strafe": 2.0,
        "back": 1.0,
        "jump": 0.8,
        "wall": 0.4,
    }
    LOOKAHEAD = 3.0  # cells
    CLEARANCE = 0.3  # half-side of the square that must stay free along a line of sight
    MIN_GOAL = 8  # path steps: goals are at least this far when the map allows

    def __init__(self, seed: int | list[int]):
        self.rng = np.random.default_rng(np.r_[np.atleast_1d(seed), 104729].tolist())
        names = list(self.BEHAVIOURS)
        weights = np.array([self.BEHAVIOURS[n] for n in names])
        self._names, self._p = names, weights / weights.sum()
        self._segment: Iterator[Action] = iter(())
        self.behaviour = "idle"
        self._blocked: np.ndarray | None = None
        self._path: list[tuple[float, float]] = []
        self._goal: tuple[int, int] | None = None  # (row, column) of the cell walked to
        self._yaw = 0.0  # the low-passed mouse
        self._noise = 0.0  # a slow Ornstein-Uhlenbeck wobble on top
        self._stuck = 0  # frames in a row that walking was blocked

    # -- the map ------------------------------------------------------------------------

    def _map(self, game) -> np.ndarray:
        if self._blocked is None:
            blocked = game.grid > 0
            for ox, oy, _ in game.objects:
                blocked[int(oy), int(ox)] = True
            self._blocked = blocked
        return self._blocked

    def _free(self, x: float, y: float, c: float) -> bool:
        """The square of half-side c around (x, y) touches no blocked cell."""
        b = self._blocked
        n = b.shape[0]
        for cy in range(math.floor(y - c), math.floor(y + c) + 1):
            for cx in range(math.floor(x - c), math.floor(x + c) + 1):
                if not (0 <= cx < n and 0 <= cy < n) or b[cy, cx]:
                    return False
        return True

    def _visible(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        d = math.dist(a, b)
        for k in range(1, int(d / 0.1) + 1):
            f = k * 0.1 / d
            if not self._free(a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), self.CLEARANCE):
                return False
        return True

    def _clear_run(self, game, angle: float, limit: float) -> float:
        """How far the player can move from where it stands in direction `angle` (radians,
        world frame) before its body would touch a blocked cell, up to limit cells."""
        x, y = game.position
        r = game.config.radius + 0.05
        d = 0.0
        while d < limit:
            d += 0.1
            if not self._free(x + d * math.cos(angle), y + d * math.sin(angle), r):
                return d - 0.1
        return limit

    def _plan(self, game, goal: tuple[int, int] | None = None) -> None:
        """A path of cell centres from the player's cell to `goal` (row, column), or to a
        random reachable goal when none is given or it cannot be reached."""
        blocked = self._map(game)
        n = blocked.shape[0]
        x, y = game.position
        start = (int(y), int(x))
        prev = {start: start}
        order = [start]
        queue = deque([start])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
                ny, nx = cy + dy, cx + dx
                if not (0 <= ny < n and 0 <= nx < n) or blocked[ny, nx] or (ny, nx) in prev:
                    continue
                if dy and dx and (blocked[cy, nx] or blocked[ny, cx]):
                    continue  # no cutting corners
                prev[(ny, nx)] = (cy, cx)
                order.append((ny, nx))
                queue.append((ny, nx))

        def path_to(cell):
            path = []
            while cell != start:
                path.append((cell[1] + 0.5, cell[0] + 0.5))
                cell = prev[cell]
            return path[::-1]

        if goal in prev and goal != start:
            self._path, self._goal = path_to(goal), goal
            return
        far = order[len(order) // 3:] if len(order) > 3 * self.MIN_GOAL else order[1:]
        self._path, self._goal = [], None
        # of a few random goals take the one whose path sets off closest to the way the
        # player faces: people seldom turn round in a corridor for no reason
        best_turn = math.inf
        for _ in range(4 if far else 0):
            cell = far[int(self.rng.integers(len(far)))]
            path = path_to(cell)
            ahead = path[min(2, len(path) - 1)]
            turn = abs(_wrap(math.atan2(ahead[1] - y, ahead[0] - x) - game.heading))
            if turn < best_turn:
                self._path, self._goal, best_turn = path, cell, turn

    def _carrot(self, game) -> tuple[float, float] | None:
        """The farthest visible point of the path within LOOKAHEAD; drops passed points and
        finds the way again when the player has left its path (a side step, a push)."""
        pos = game.position
        while self._path and math.dist(pos, self._path[0]) < 0.45:
            self._path.pop(0)
        if self._path and math.dist(pos, self._path[0]) > 1.5:
            self._plan(game, self._goal)
        if not self._path:
            return None
        best = self._path[0]
        for p in self._path[1:8]:
            if math.dist(pos, p) > self.LOOKAHEAD or not self._visible(pos, p):
                break
            best = p
        return best

    # -- steering -----------------------------------------------------------------------

    def _mouse(self, target: float, gain: float = 1.0) -> float:
        """Low-passed yaw toward a target rate, with a small wobble as a hand gives."""
        self._noise = 0.9 * self._noise + self.rng.normal(0.0, 0.03)
        self._yaw += 0.4 * (gain * target - self._yaw)
        return float(np.clip(self._yaw + self._noise, -1, 1))

    def _steer(self, game, sprint: bool = False, jump_p: float = 0.0) -> Action:
        """One step along the path to the goal (a new goal when reached or stuck)."""
        carrot = self._carrot(game)
        if carrot is None or self._stuck > 30:
            self._plan(game)
            self._stuck = 0
            carrot = self._carrot(game)
            if carrot is None:  # nowhere to go: look around
                return Action(yaw=self._mouse(0.6))
        x, y = game.position
        err = _wrap(math.atan2(carrot[1] - y, carrot[0] - x) - game.heading)
        max_turn = math.radians(game.config.max_turn_deg)
        # on the move turn ~1/3 of the error per frame, a smooth arc; a sharp corner is
        # taken standing at full rate, so the wall in front is seen for as few frames as can be
        walk = abs(err) < math.radians(35)
        yaw = self._mouse(float(np.clip(0.35 * err / max_turn, -1, 1)) if walk
                          else math.copysign(1.0, err))
        if walk and (game.collided or self._clear_run(game, game.heading, 0.4) < 0.35):
            walk = False  # turn before walls: something is in the way of this line
            self._stuck += 1
            centre = (math.floor(x) + 0.5, math.floor(y) + 0.5)
            if self._stuck == 3 and self._path[0] != centre:
                self._path.insert(0, centre)  # back to the middle of the cell, then on
        elif walk:
            self._stuck = 0
        return Action(forward=walk, sprint=walk and sprint, yaw=yaw,
                      jump=bool(walk and self.rng.random() < jump_p))

    # -- behaviours ---------------------------------------------------------------------

    def _room(self, game, side: int) -> float:
        """Cells free beside the player (side +1 right, -1 left), up to 4."""
        return self._clear_run(game, game.heading + side * math.pi / 2, 4.0)

    def _fits(self, name: str, game) -> bool:
        """Whether this place suits a behaviour: people stop and look around in the open,
        side-step where there is room beside, step back where there is room behind."""
        x, y = game.position
        if name == "turn":
            return self._free(x, y, 0.7) and view_figures(game)[1] > 1.2
        if name == "idle":
            return self._free(x, y, 0.45) and view_figures(game)[1] > 1.5
        if name == "strafe":
            return max(self._room(game, 1), self._room(game, -1)) >= 1.5
        if name == "back":
            return self._clear_run(game, game.heading + math.pi, 1.5) >= 1.0
        if name == "wall":
            return min(self._clear_run(game, a * math.pi / 2, 1.5) for a in range(4)) < 1.0
        return True

    def _new_segment(self, game) -> Iterator[Action]:
        r = self.rng
        self._map(game)
        name = self._names[r.choice(len(self._names), p=self._p)]
        sprint = bool(r.random() < 0.3)
        if not self._fits(name, game):  # walk on until a place suits it, or give it up
            self.behaviour = "walk"
            for _ in range(150):
                yield self._steer(game, sprint, jump_p=0.01)
                if self._fits(name, game):
                    break
            else:
                return
        self.behaviour = name
        depth = view_figures(game)[1]
        if name == "walk":  # long walks toward goals, forward held
            for _ in range(int(r.integers(40, 200))):
                yield self._steer(game, sprint, jump_p=0.01)
        elif name == "jump":  # jumps on the way, or standing
            moving = bool(r.random() < 0.7)
            for _ in range(int(r.integers(15, 50))):
                jump = bool(r.random() < 0.12)
                yield self._steer(game, sprint, jump_p=0.12) if moving else Action(jump=jump)
        elif name == "look":  # look up or down, hold, come back; walking or standing
            moving = bool(r.random() < 0.5) or depth < 1.5
            rate = float(r.uniform(0.3, 1.0)) * (1 if r.random() < 0.5 else -1)
            k = int(r.integers(3, 12))
            for pitch in [rate] * k + [0.0] * int(r.integers(0, 15)) + [-rate] * k:
                a = self._steer(game) if moving else Action()
                yield Action(forward=a.forward, yaw=a.yaw, pitch=pitch)
        elif name == "turn":  # turn in place at a steady rate, then walk on
            rate = float(r.uniform(0.3, 1.0)) * (1 if r.random() < 0.5 else -1)
            for _ in range(int(r.integers(10, 60))):
                yield Action(yaw=rate)
        elif name == "idle":
            yield from [Action()] * int(r.integers(10, 50))
        elif name == "strafe":  # a side step toward the side with room, maybe on the move
            side = 1 if self._room(game, 1) >= self._room(game, -1) else -1
            fwd = bool(r.random() < 0.4)
            move = game.heading + side * (math.pi / 4 if fwd else math.pi / 2)
            room = self._clear_run(game, move, 6.0)
            speed = game.config.move_speed * (game.config.sprint_factor if sprint else 1.0)
            for _ in range(min(int(r.integers(10, 60)), int(0.7 * room / speed))):
                if self._clear_run(game, move, 0.6) < 0.5:
                    break  # stop before the wall
                yield Action(forward=fwd, sprint=sprint, left=side < 0, right=side > 0,
                             yaw=self._mouse(0.0))
        elif name == "back":  # a few steps back where there is room behind
            room = self._clear_run(game, game.heading + math.pi, 4.0)
            for _ in range(min(int(r.integers(8, 30)), int(0.7 * room / game.config.move_speed))):
                if self._clear_run(game, game.heading + math.pi, 0.6) < 0.5:
                    break
                yield Action(back=True, yaw=self._mouse(0.0))
        elif name == "wall":  # face the nearest wall, walk up to it and push a moment
            dists = [self._clear_run(game, a * math.pi / 2, 1.5) for a in range(4)]
            target = int(np.argmin(dists)) * math.pi / 2
            for _ in range(40):
                err = _wrap(target - game.heading)
                if abs(err) < math.radians(8):
                    break
                yield Action(yaw=self._mouse(float(np.clip(0.5 * err / math.radians(6), -1, 1))))
            pushed, hold = 0, int(r.integers(5, 20))
            for _ in range(40):
                if pushed >= hold:
                    break
                pushed += int(game.collided)
                yield Action(forward=True, yaw=self._mouse(0.0))
            self._path, self._goal = [], None  # walk on somewhere new

    def act(self, game) -> Action:
        for action in self._segment:
            return action
        self._segment = self._new_segment(game)
        return self.act(game)

    def start(self, game) -> dict:
        """A random free place and heading in this world, as a `Game.state()`: episodes of a
        fixed world start all over it."""
        blocked = self._map(game)
        free = np.argwhere(~blocked)
        for _ in range(100):
            cy, cx = free[int(self.rng.integers(len(free)))]
            x, y = cx + float(self.rng.uniform(0.3, 0.7)), cy + float(self.rng.uniform(0.3, 0.7))
            if self._free(x, y, game.config.radius + 0.05):
                break
        units = round(360.0 / game.config.max_turn_deg * game.config.input_steps)
        # look the most open of a few random ways, as a person who just arrived would
        yaws = self.rng.integers(units, size=6)
        game.restore({"x": x, "y": y, "yaw_units": 0, "pitch_units": 0, "jump_t": 0})
        room = [self._clear_run(game, 2 * math.pi * int(u) / units, 4.0) for u in yaws]
        return {"x": x, "y": y, "yaw_units": int(yaws[int(np.argmax(room))]), "pitch_units": 0,
                "jump_t": 0}


def episode_name(index: int) -> str:
    return f"ep_{index:06d}"



def parse_worlds(text: str | None) -> tuple[int, ...] | None:
    """'7,8,9' or '7-9' or '0-3,10' -> (7, 8, 9) ...; None or '' -> None (procedural mix)."""
    if not text:
        return None
    worlds: list[int] = []
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise ValueError(f"worlds: cannot read {part!r} (use e.g. 7,8,9 or 7-9)") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"worlds: bad range {part!r}")
        worlds += [w for w in range(lo, hi + 1) if w not in worlds]
    return tuple(worlds)


def episode_plan(cfg: CollectConfig, index: int) -> tuple[int, list[int], bool]:
    """(world seed, policy seed, start at a random place) of episode `index`. Procedural:
    one episode per world from its spawn. Fixed worlds: episodes take the worlds in turn,
    each from its own random place; `policy_seed` tells two sets on the same worlds apart."""
    if cfg.worlds:
        world = cfg.worlds[index % len(cfg.worlds)]
        return world, [world, index, cfg.policy_seed], True
    world = cfg.seed_start + index
    return world, [world, cfg.policy_seed], False


def collect_episode(cfg: CollectConfig, index: int) -> dict:
    """Play and write one episode; returns its figures (see `episode_figures`)."""
    from worldmodel.game import Game

    world, policy_seed, anywhere = episode_plan(cfg, index)
    final = Path(cfg.out) / episode_name(index)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    game = Game(world, cfg.size)
    if cfg.policy == "explorer":  # seeded by the world alone, as it always was
        player = Explorer(world if policy_seed == [world, 0] else policy_seed)
    else:
        player = Player(policy_seed)
    start = player.start(game) if anywhere and isinstance(player, Player) else None
    frame = game.restore(start) if start else game.reset()
    collided, depth, behaviours = [], [], []
    with EpisodeWriter(tmp, cfg.size, game.fps, seed=world, source="game", policy=cfg.policy,
                       policy_seed=policy_seed, start=start or "spawn") as writer:
        writer.append(frame, Action(), behaviour="start")
        for _ in range(cfg.frames - 1):
            action = player.act(game)
            writer.append(game.step(action), action, behaviour=player.behaviour)
            hit, d = view_figures(game)
            collided.append(hit)
            depth.append(d)
            behaviours.append(player.behaviour)
        figures = episode_figures(collided, depth, behaviours)
        writer.meta["figures"] = figures
    tmp.rename(final)
    return figures


def episode_figures(collided: list[bool], depth: list[float], behaviours: list[str]) -> dict:
    """Per episode, over the frames after the first: how many collide with a wall, how many
    look at a wall nearer than NEAR_WALL cells (median depth across the view), the median of
    those medians, and frames per behaviour."""
    names, counts = np.unique(np.array(behaviours, dtype=str), return_counts=True)
    return {"frames": len(collided), "colliding": int(np.sum(collided)),
            "near_wall": int(np.sum(np.array(depth) < NEAR_WALL)),
            "median_depth": float(np.median(depth)) if depth else 0.0,
            "behaviours": {str(k): int(v) for k, v in zip(names, counts, strict=True)}}


def dataset_figures(out: Path) -> dict:
    """Totals over every episode in `out` that recorded its figures."""
    from worldmodel.episode import find_episodes, read_meta

    figs = [m["figures"] for m in map(read_meta, find_episodes(out)) if "figures" in m]
    n = sum(f["frames"] for f in figs)
    behaviours: dict[str, int] = {}
    for f in figs:
        for k, v in f["behaviours"].items():
            behaviours[k] = behaviours.get(k, 0) + v
    return {"episodes": len(figs), "frames": n,
            "colliding": sum(f["colliding"] for f in figs) / max(n, 1),
            "near_wall": sum(f["near_wall"] for f in figs) / max(n, 1),
            "near_wall_cells": NEAR_WALL,
            "median_of_median_depths": float(np.median([f["median_depth"] for f in figs]))
            if figs else 0.0,
            "behaviours": {k: v / max(n, 1) for k, v in sorted(behaviours.items(),
                                                               key=lambda kv: -kv[1])}}


def format_figures(f: dict) -> str:
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in f["behaviours"].items())
    return (f"colliding {100 * f['colliding']:.1f}% of frames, wall nearer than "
            f"{f['near_wall_cells']} cells in {100 * f['near_wall']:.1f}% "
            f"(median of median depths {f['median_of_median_depths']:.2f} cells) over "
            f"{f['frames']} frames of {f['episodes']} episodes\nbehaviours: {shares}")


def _work(job: tuple[CollectConfig, int]) -> int:
    collect_episode(*job)
    return job[0].frames


def collect(cfg: CollectConfig, progress: bool = True) -> Path:
    """Write the episodes still missing, then the data set's figures to `dataset.json`."""
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
    write_json_atomic(out / DATASET, {"collect": asdict(cfg), "figures": dataset_figures(out)})
    return out


def _worlds_flag(text: str) -> tuple[int, ...] | None:
    try:
        return parse_worlds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CollectConfig(), choices={"policy": list(POLICIES)}, helps={
        "out": "dataset folder (resumes if it exists)", "frames": "frames per episode",
        "size": "frame side in pixels",
        "seed_start": f"world seed of episode 0 (use >= {EVAL_SEED_START} for held-out data)",
        "worlds": "fixed worlds, e.g. 7,8,9 or 7-9: episodes cycle through them, each from a "
                  "random place (instead of one episode per procedural world)",
        "policy": "play: walks to goals on the map like a person; explorer: the old mix",
        "policy_seed": "another value gives other episodes on the same worlds (a val set)"},
        parsers={"worlds": _worlds_flag})


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(CollectConfig, args)
    if cfg.episodes < 1 or cfg.frames < 2:
        raise SystemExit("wm collect: need at least 1 episode of at least 2 frames")
    out = collect(cfg)
    print(f"{cfg.episodes} episodes of {cfg.frames} frames at {cfg.size}px in {out}")
    print(format_figures(dataset_figures(out)))
    return 0
