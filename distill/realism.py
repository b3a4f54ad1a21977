"""Realism: does a frame look like a view of the world the game is in, near where it is?

Sharpness, contrast and colour statistics pass a wallpaper of wall texture as healthy. This
measure instead compares each frame with a bank of real views drawn by the game itself
around the poses the game took over the same stretch of play (positions within `radius`
cells, headings within `degrees`, pitch jittered), and takes the distance to the nearest
of them. A dream that drifted a little from the game still finds a view close to it; one
that shows no floor, ceiling or horizon, or the texture at the wrong scale, finds none.

Frames are compared by hand-made features that need nothing trained or downloaded: the
mean colour of a `grid` of regions (the layout: sky or ceiling above, floor below) and
the log root-mean-square luma gradient of each region, across and down, at several scales
(how much detail, where, and at what size). Squared, not absolute: a blur spreads an edge
over more pixels and leaves the sum of absolute differences across it as it was, but it
divides the sum of squares by the width of the spread. Each feature is divided by its
spread over random views of the whole world.

    judge = RealismJudge.around(world_seed, size, game_states, RealismConfig())
    d_game = judge.distance(game_frames)    # [N] the reference: the game's own frames
    d_model = judge.distance(model_frames)  # [M]
    realism(d_model, d_game)                # 1.0: as near to real views as the game's own frames

`realism` is the game's median distance over the stream's: 1 for the game, towards 0 for
frames far from any real view. `controls(frames)` makes the degenerate references (a flat
frame of each frame's mean colour, a crop from the middle of the view tiled across it,
patches shuffled, the view blurred); a measure worth the name scores each of them below
the game.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.game import Game


@dataclass(frozen=True)
class RealismConfig:
    radius: float = 0.75  # bank views lie within this many cells of a pose of the game...
    degrees: float = 18.0  # ...turned by up to this much...
    pitch: float = 0.1  # ...with the horizon moved by up to this fraction of the frame
    views_per_pose: int = 2
    pose_stride: int = 2  # every this many poses of the game get bank views
    world_views: int = 256  # random views of the whole world: the scale of each feature
    grid: tuple[int, int] = (4, 2)  # regions (rows, columns)
    scales: tuple[int, ...] = (1, 2, 4)  # gradient scales, pixels at 64px
    eps: float = 1e-3  # floor under RMS gradients (-1..1 luma) before the log
    collapsed_below: float = 0.6  # a stretch of frames scoring under this looks like no real view


def features(frames: np.ndarray, cfg: RealismConfig = RealismConfig()) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float64 [N, D]: region colours and log RMS gradients."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double() / 127.5 - 1
    out = [F.adaptive_avg_pool2d(x, cfg.grid).flatten(1)]
    y = x.mean(1, keepdim=True)  # (N, 1, S, S)
    unit = max(1, x.shape[-1] // 64)  # scales are given at 64px
    for s in cfg.scales:
        k = s * unit
        ys = F.avg_pool2d(y, k) if k > 1 else y
        for g in (ys[..., :, 1:] - ys[..., :, :-1], ys[..., 1:, :] - ys[..., :-1, :]):
            out.append(0.5 * torch.log(F.adaptive_avg_pool2d(g * g, cfg.grid).flatten(1) + cfg.eps ** 2))
    return torch.cat(out, 1)


def random_states(game: Game, n: int, rng: np.random.Generator) -> list[dict]:
    """n poses anywhere in the game's free space: any heading, the horizon level or moved."""
    free = np.argwhere(game.grid == 0)
    turn = round(360.0 / game.config.max_turn_deg * game.config.input_steps)
    limit = pitch_limit(game)
    out = []
    for _ in range(n):
        cy, cx = free[rng.integers(len(free))]
        out.append({"x": cx + rng.uniform(0.25, 0.75), "y": cy + rng.uniform(0.25, 0.75),
                    "yaw_units": int(rng.integers(turn)),
                    "pitch_units": int(rng.integers(-limit, limit + 1)) if rng.random() < 0.5 else 0,
                    "jump_t": 0})
    return out


def pitch_limit(game: Game) -> int:
    c = game.config
    return math.floor(c.max_pitch / c.pitch_speed * c.input_steps + 1e-9)


def jittered_states(game: Game, states: list[dict], cfg: RealismConfig,
                    rng: np.random.Generator) -> list[dict]:
    """Poses near the given ones (free cells only), `views_per_pose` per `pose_stride`."""
    c = game.config
    yaw_units = cfg.degrees / c.max_turn_deg * c.input_steps
    pitch_units = cfg.pitch / c.pitch_speed * c.input_steps
    limit = pitch_limit(game)
    out = []
    for s in states[::cfg.pose_stride]:
        for _ in range(cfg.views_per_pose):
            x, y = s["x"], s["y"]
            for _ in range(20):  # a free cell nearby; the pose itself after 20 misses
                cx, cy = s["x"] + rng.uniform(-cfg.radius, cfg.radius), s["y"] + rng.uniform(-cfg.radius, cfg.radius)
                if standable(game, cx, cy):
                    x, y = cx, cy
                    break
            out.append({"x": x, "y": y,
                        "yaw_units": s["yaw_units"] + int(rng.uniform(-yaw_units, yaw_units)),
                        "pitch_units": int(np.clip(s["pitch_units"] + rng.uniform(-pitch_units, pitch_units),
                                                   -limit, limit)),
                        "jump_t": 0})
    return out


def standable(game: Game, x: float, y: float) -> bool:
    """Whether the player fits at (x, y): no wall within its radius. A camera closer to a
    wall than the game allows sees a nearly flat blow-up of the texture, which no player sees."""
    r, (rows, cols) = game.config.radius, game.grid.shape
    for cx in (x - r, x + r):
        for cy in (y - r, y + r):
            if not (0 <= cy < rows and 0 <= cx < cols) or game.grid[int(cy), int(cx)] != 0:
                return False
    return True


def render(game: Game, states: list[dict]) -> np.ndarray:
    return np.stack([game.restore(s) for s in states])


class RealismJudge:
    """Nearest-neighbour distance of frames to a bank of real views, in scaled features."""

    def __init__(self, bank: np.ndarray, scale: torch.Tensor, cfg: RealismConfig = RealismConfig()):
        self.cfg = cfg
        self.scale = scale
        self.bank = features(bank, cfg) / scale

    @classmethod
    def around(cls, world: int, size: int, states: list[dict], cfg: RealismConfig = RealismConfig(),
               seed: int = 0) -> RealismJudge:
        """A bank of views of world `world` near `states` (the game's `state()` along a
        stretch of play); feature scales from random views of the whole world."""
        game = Game(world, size)  # its own instance: restoring poses must not move the caller's
        rng = np.random.default_rng([world, seed, 17])
        world_views = render(game, random_states(game, cfg.world_views, rng))
        scale = features(world_views, cfg).std(0).clamp_min(1e-3)
        return cls(render(game, jittered_states(game, states, cfg, rng)), scale, cfg)

    def distance(self, frames: np.ndarray, batch: int = 512) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float64 [N]: distance to the nearest bank view."""
        out = [torch.cdist(features(frames[i:i + batch], self.cfg) / self.scale, self.bank).min(1).values
               for i in range(0, len(frames), batch)]
        return torch.cat(out).numpy() if out else np.zeros(0)


def realism(distance: np.ndarray, game_distance: np.ndarray) -> float:
    """The game's median distance over the stream's: 1.0 as real as the game, lower further."""
    return float(np.median(game_distance) / max(float(np.median(distance)), 1e-9))


CONTROLS = ("flat", "tiled", "shuffled", "blurred")
# the controls a dream must beat to count as real: a flat frame fails on every measure already
BAR_CONTROLS = ("tiled", "shuffled", "blurred")


def box_blur(frames: np.ndarray, k: int) -> np.ndarray:
    """uint8 [N, S, S, 3] averaged over a k x k box around each pixel (edges repeated)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double()
    x = F.avg_pool2d(F.pad(x, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2), mode="replicate"), k, 1)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def controls(frames: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Degenerate streams made from real frames uint8 [N, S, S, 3]: `flat` (each frame's mean
    colour everywhere), `tiled` (the centre quarter-side crop, where a wall usually stands,
    repeated 4 x 4), `shuffled` (the frame's eighth-side patches in random places), `blurred`
    (the frame under a box blur a sixteenth of its side wide: the right place, softened)."""
    n, s = len(frames), frames.shape[1]
    q, p = s // 4, s // 8
    flat = np.broadcast_to(frames.reshape(n, -1, 3).mean(1).round().astype(np.uint8)[:, None, None],
                           frames.shape).copy()
    c = frames[:, s // 2 - q // 2:s // 2 - q // 2 + q, s // 2 - q // 2:s // 2 - q // 2 + q]
    tiled = np.tile(c, (1, 4, 4, 1))[:, :s, :s]
    rng = np.random.default_rng(seed)
    g = s // p
    patches = frames[:, :g * p, :g * p].reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, g * g, p, p, 3)
    shuffled = np.stack([f[rng.permutation(g * g)] for f in patches])
    shuffled = shuffled.reshape(n, g, g, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * p, g * p, 3)
    return {"flat": flat, "tiled": tiled, "shuffled": np.ascontiguousarray(shuffled),
            "blurred": box_blur(frames, max(2, s // 16))}
