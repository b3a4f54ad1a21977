"""The ground-truth world: a procedural first-person game drawn by a vectorised numpy raycaster.

Every seed gives its own map of rooms and corridors, its own palette and textures and its
own objects. The world model learns from this game's frames and is judged against it, so
the game is deterministic for a seed and an action sequence, exact under turning back and
forth (heading and pitch are integer counts of small fixed units), and cheap: one step
draws a 64x64 frame in a fraction of a millisecond on one core.

Coordinates: the map is a grid of unit cells, `grid[y, x]`, x along columns, y along rows.
Heading 0 looks along +x; positive yaw turns right and increases the heading (clockwise
when row 0 is drawn at the top). Walls are one cell tall; the eye is `eye_height` above
the floor.

How a frame is drawn, all pixels at once:
  walls    each column's ray meets the grid lines at K known distances, a [W, K] array;
           the first crossing into a wall cell gives distance, material and texture column
  floor,   a screen row lies at one distance from the eye, so the world point under every
  ceiling  pixel is one outer product (floor casting); its cell gives the room's material
  sky      (half of the seeds) a panorama indexed by view angle and elevation
  objects  billboards sorted far to near, depth-tested per column against the walls
Each surface texel is looked up in one colour table that holds every texture at
`FOG_LEVELS` distances, already fogged and blurred for that distance (a mip-map for free),
so the picture is one gather from integer indices.
"""

from __future__ import annotations

import colorsys
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from worldmodel.actions import Action

TEX_BITS = 5
TEX = 1 << TEX_BITS  # texture side in texels
MAP_BITS = 6
MAP_PAD = 1 << MAP_BITS  # maps live in a MAP_PAD^2 array so cell indices can be masked into range
FOG_LEVELS = 24
N_WALL, N_FLOOR, N_CEIL = 5, 4, 2
# surface materials in the colour table: wall k seen on an x face is 2k, on a y face 2k+1
FLOOR0 = 2 * N_WALL
LIT = N_FLOOR  # floor f lit by a lamp is FLOOR0 + LIT + f; ceilings follow the same pattern
CEIL0 = FLOOR0 + 2 * N_FLOOR
N_SURF = CEIL0 + 2 * N_CEIL
CEIL_CELLS = MAP_PAD * MAP_PAD  # ceiling materials follow the floor's in the per-cell table
SKY_H, SKY_W = 64, 1024  # panorama: rows of elevation above the horizon x columns of azimuth
SKY_MAX_ELEV = 1.6  # tan of the highest elevation the panorama covers

PILLAR, LAMP, CRATE, PLANT, BARREL = range(5)
OBJECT_SIZE = ((0.36, 1.0), (0.3, 0.95), (0.5, 0.5), (0.5, 0.62), (0.42, 0.55))  # (w, h) in cells
OBJECT_HALF = 0.2  # half-width of an object's collision box
OBJECT_JITTER = 0.15  # objects sit this far at most from their cell's centre


@dataclass(frozen=True)
class GameConfig:
    """Tunables of the game. Distances are in cells, times in frames."""

    move_speed: float = 0.12  # per frame when walking: 2.4 cells/s at 20 fps
    sprint_factor: float = 1.8
    max_turn_deg: float = 6.0  # yaw = 1.0 turns this far in one frame
    pitch_speed: float = 0.03  # pitch = 1.0 moves the horizon this fraction of the frame per frame
    max_pitch: float = 0.35  # the horizon stays within this fraction of the frame from the centre
    input_steps: int = 1000  # camera inputs are rounded to 1/input_steps of their maximum
    fov_deg: float = 70.0  # horizontal field of view
    eye_height: float = 0.5
    radius: float = 0.2  # the player's half-width against walls and objects
    jump_height: float = 0.3
    jump_frames: int = 10  # from take-off to landing
    fog_start: float = 1.5
    fog_end: float = 14.0  # fully fogged from here on; rays stop here
    map_size: tuple[int, int] = (24, 32)  # the map's side is drawn per seed from this range
    rooms: tuple[int, int] = (7, 11)
    objects_per_room: tuple[int, int] = (2, 5)
    max_drawn_objects: int = 16  # only the nearest are drawn

    def __post_init__(self) -> None:
        if not 0 < self.radius < 0.5:
            raise ValueError(f"radius must be in (0, 0.5), got {self.radius}")
        if not (0 < self.eye_height and self.eye_height + self.jump_height < 1):
            raise ValueError("eye_height + jump_height must stay below the ceiling (1.0)")
        if not 0 < self.fog_start < self.fog_end <= 30:
            raise ValueError("need 0 < fog_start < fog_end <= 30")
        if not 8 <= self.map_size[0] <= self.map_size[1] <= MAP_PAD:
            raise ValueError(f"map_size must lie within 8..{MAP_PAD}, got {self.map_size}")
        if self.move_speed <= 0 or self.sprint_factor < 1 or self.jump_frames < 2:
            raise ValueError("need move_speed > 0, sprint_factor >= 1 and jump_frames >= 2")
        if self.max_turn_deg <= 0 or self.input_steps < 1 or self.pitch_speed <= 0:
            raise ValueError("need max_turn_deg > 0, pitch_speed > 0 and input_steps >= 1")


# ---------------------------------------------------------------------------- the map


def _make_map(rng: np.random.Generator, cfg: GameConfig):
    """Rooms joined by corridors. Returns grid (0 free, k>0 wall of material k-1), the floor
    region of each cell (room index, or the corridor index len(rooms); -1 in walls), rooms."""
    n = int(rng.integers(cfg.map_size[0], cfg.map_size[1] + 1))
    region = np.full((n, n), -1, np.int16)
    rooms: list[tuple[int, int, int, int]] = []
    want = int(rng.integers(cfg.rooms[0], cfg.rooms[1] + 1))
    for _ in range(400):
        if len(rooms) == want:
            break
        w, h = (int(v) for v in rng.integers(3, 8, size=2))
        x, y = int(rng.integers(1, n - w)), int(rng.integers(1, n - h))
        if (region[y - 1 : y + h + 1, x - 1 : x + w + 1] >= 0).any():
            continue  # rooms keep a wall between them
        region[y : y + h, x : x + w] = len(rooms)
        rooms.append((x, y, w, h))
    corridor = len(rooms)
    centres = [(x + w // 2, y + h // 2) for x, y, w, h in rooms]

    def carve(a, b):
        (ax, ay), (bx, by) = a, b
        wide = rng.random() < 0.3
        corner = (bx, ay) if rng.random() < 0.5 else (ax, by)
        for (x0, y0), (x1, y1) in ((a, corner), (corner, b)):
            for yy in range(min(y0, y1), max(y0, y1) + 1):
                for xx in range(min(x0, x1), max(x0, x1) + 1):
                    for cx, cy in ((xx, yy), (min(xx + 1, n - 2), min(yy + 1, n - 2)))[: 1 + wide]:
                        if region[cy, cx] < 0:
                            region[cy, cx] = corridor

    # a tree of nearest neighbours keeps every room reachable; a few extra links make loops
    for i in range(1, len(rooms)):
        d = [abs(centres[i][0] - cx) + abs(centres[i][1] - cy) for cx, cy in centres[:i]]
        carve(centres[i], centres[int(np.argmin(d))])
    for _ in range(2 if len(rooms) > 2 else 0):
        i, j = (int(v) for v in rng.choice(len(rooms), 2, replace=False))
        carve(centres[i], centres[j])

    # a wall takes the material of the room it faces (first free neighbour, fixed order)
    wall_mat = rng.integers(1, N_WALL + 1, size=corridor + 1)
    grid = np.where(region >= 0, 0, 1).astype(np.int8)
    done = region >= 0
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nb = np.roll(region, (-dy, -dx), axis=(0, 1))
        take = ~done & (nb >= 0)
        grid[take] = wall_mat[nb[take]]
        done |= take
    # big rooms may get a block in the middle, in a material of its own: a landmark
    for k, (x, y, w, h) in enumerate(rooms):
        if w >= 5 and h >= 5 and rng.random() < 0.5:
            cx, cy = x + w // 2, y + h // 2
            grid[cy, cx] = 1 + (wall_mat[k] % N_WALL)
            region[cy, cx] = -1
    return grid, region, rooms


def _keeps_connected(blocked: np.ndarray, x: int, y: int) -> bool:
    """True if blocking cell (x, y) cannot disconnect free cells: its free edge neighbours are
    joined around it through its ring of 8 neighbours."""
    ring = [(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)]  # N, NE, E, ...
    free = [not blocked[y + dy, x + dx] for dx, dy in ring]
    if all(free):
        return True
    start = free.index(False)  # walk the ring once from a blocked cell, counting free runs
    runs, run_has_edge = 0, False
    for step in range(1, 9):
        i = (start + step) % 8
        if free[i]:
            run_has_edge |= i % 2 == 0  # even positions share an edge with (x, y)
        else:
            runs += run_has_edge
            run_has_edge = False
    return runs <= 1


def _place_objects(rng, cfg, grid, region, rooms, spawn):
    """Objects inside rooms. All are solid; one is placed only where blocking its cell keeps
    every free cell reachable, so the map stays connected."""
    blocked = grid > 0
    taken = np.zeros_like(blocked)
    taken[spawn[1], spawn[0]] = True
    objs = []
    for k, (x, y, w, h) in enumerate(rooms):
        cells = [
            (cx, cy) for cy in range(y, y + h) for cx in range(x, x + w) if region[cy, cx] == k
        ]
        count = int(rng.integers(cfg.objects_per_room[0], cfg.objects_per_room[1] + 1))
        for cx, cy in (cells[i] for i in rng.permutation(len(cells))):
            if count == 0:
                break
            if taken[cy, cx] or not _keeps_connected(blocked, cx, cy):
                continue
            against_wall = blocked[cy - 1 : cy + 2, cx - 1 : cx + 2].any()
            kind = int(
                rng.choice(
                    [LAMP, CRATE, PLANT, BARREL]
                    if against_wall
                    else [PILLAR, PILLAR, LAMP, BARREL, PLANT]
                )
            )
            ox, oy = rng.uniform(-OBJECT_JITTER, OBJECT_JITTER, size=2)
            objs.append((cx + 0.5 + ox, cy + 0.5 + oy, kind))
            blocked[cy, cx] = taken[cy, cx] = True
            count -= 1
    return objs


# ---------------------------------------------------------------------------- textures


def _blur(img: np.ndarray, sigma) -> np.ndarray:
    """Periodic Gaussian blur over the two texel axes of [..., T, T, C]; sigma broadcasts over
    the leading axes (one value per image)."""
    n = img.shape[-2]
    f2 = np.fft.fftfreq(n)[:, None, None] ** 2 + np.fft.rfftfreq(n)[None, :, None] ** 2
    kernel = np.exp(-2 * np.pi**2 * np.asarray(sigma, np.float64)[..., None, None, None] ** 2 * f2)
    return np.fft.irfft2(np.fft.rfft2(img, axes=(-3, -2)) * kernel, s=(n, n), axes=(-3, -2))


def _noise(rng, cells: int, sigma: float = 1.0) -> np.ndarray:
    """Smooth periodic value noise [T, T] roughly in 0..1."""
    up = np.kron(rng.random((cells, cells)), np.ones((TEX // cells, TEX // cells)))
    out = _blur(up[..., None], sigma)[..., 0]
    return (out - out.min()) / max(out.max() - out.min(), 1e-6)


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(float(h) % 1.0, float(s), float(v)))


def _textures(rng: np.random.Generator):
    """Per-seed palette and textures: surfaces [N_SURF, T, T, 3], objects [5, T, T, 4] (rgb +
    alpha), sky [SKY_H, SKY_W, 3], fog colour, and whether this world has a sky."""
    Y, X = np.mgrid[0:TEX, 0:TEX]
    u = rng.uniform

    def shade(c, s):
        return np.clip(c * s[..., None], 0, 1)

    # walls: brick, stone blocks, wooden planks, metal panels, glazed tiles
    row = Y // 8
    xo = (X + 8 * (row % 2)) % TEX
    brick = shade(
        _hsv(u(-0.03, 0.07), u(0.5, 0.75), u(0.5, 0.7)),
        u(0.7, 1.15, (4, 2))[row, xo // 16] * (0.85 + 0.3 * _noise(rng, 8)),
    )
    brick[(Y % 8 < 2) | (xo % 16 < 2)] = _hsv(u(), 0.08, u(0.78, 0.9))

    xs = (X + 10 * (Y // 16)) % TEX
    stone = shade(
        _hsv(u(), u(0.05, 0.25), u(0.4, 0.6)),
        u(0.7, 1.25, (2, 2))[Y // 16, xs // 16] * (0.6 + 0.6 * _noise(rng, 8, 1.5)),
    )
    stone[(Y % 16 == 0) | (xs % 16 == 0)] *= 0.3
    stone[(Y % 16 == 1) | (xs % 16 == 1)] *= 1.3

    grain = 0.8 + 0.2 * np.sin(X * 2.1 + 4 * _noise(rng, 4))
    wood = shade(_hsv(u(0.05, 0.11), u(0.5, 0.75), u(0.4, 0.6)), u(0.7, 1.2, 4)[X // 8] * grain)
    wood[X % 8 == 0] *= 0.3
    seams = rng.integers(0, TEX, 4)
    wood[Y == seams[X // 8]] *= 0.4

    px, py = X % 16, Y % 16
    metal = shade(
        _hsv(u(0.5, 0.7), u(0.1, 0.3), u(0.5, 0.65)), 1.0 - 0.3 * Y / TEX + 0.1 * _noise(rng, 16)
    )
    metal[(px == 0) | (py == 0)] = metal[(px == 0) | (py == 0)] * 1.5 + 0.1
    metal[(px == 15) | (py == 15)] *= 0.35
    rivet = ((px - 3.5) ** 2 + (py - 3.5) ** 2 < 3) | ((px - 11.5) ** 2 + (py - 3.5) ** 2 < 3)
    metal[rivet] = 0.9

    hue = u()
    tiles = np.where(
        ((X // 8 + Y // 8) % 2)[..., None] == 0,
        _hsv(hue, u(0.5, 0.8), u(0.55, 0.8)),
        _hsv(hue + u(0.3, 0.7), u(0.1, 0.3), u(0.8, 0.95)),
    )
    tiles[(X % 8 == 0) | (Y % 8 == 0)] = 0.2
    walls = [brick, stone, wood, metal, tiles]

    # floors: checker tiles, wooden boards, cobbles, grass
    checker = np.where(
        ((X // 16 + Y // 16) % 2)[..., None] == 0,
        _hsv(u(), u(0.3, 0.6), u(0.7, 0.85)),
        _hsv(u(), u(0.3, 0.6), u(0.15, 0.3)),
    )
    checker = shade(checker, 0.9 + 0.2 * _noise(rng, 8))
    boards = shade(
        _hsv(u(0.06, 0.1), u(0.5, 0.7), u(0.45, 0.65)),
        u(0.75, 1.2, (4, 2))[Y // 8, ((X + 16 * ((Y // 8) % 2)) % TEX) // 16]
        * (0.85 + 0.15 * np.sin(Y * 2.7 + 3 * _noise(rng, 4))),
    )
    boards[(Y % 8 == 0) | ((X + 16 * ((Y // 8) % 2)) % 16 == 0)] *= 0.35
    cy, cx = Y % 8, (X + 4 * ((Y // 8) % 2)) % 8
    cobble = shade(
        _hsv(u(), u(0.05, 0.2), u(0.45, 0.6)),
        u(0.7, 1.2, (4, 4))[Y // 8, ((X + 4 * ((Y // 8) % 2)) % TEX) // 8]
        * (1.1 - 0.08 * ((cx - 3.5) ** 2 + (cy - 3.5) ** 2) / 4),
    )
    cobble[(cx == 0) | (cy == 0)] *= 0.3
    grass = shade(
        _hsv(u(0.2, 0.33), u(0.5, 0.75), u(0.35, 0.55)),
        0.55 + 0.5 * _noise(rng, 4, 1.5) + 0.25 * _noise(rng, 16, 0.5),
    )
    floors = [checker, boards, cobble, grass]

    # ceilings: plaster panels, plaster with dark beams
    panels = np.broadcast_to(_hsv(u(), u(0.05, 0.2), u(0.65, 0.8)), (TEX, TEX, 3)).copy()
    panels[(X % 16 < 2) | (Y % 16 < 2)] *= 0.35
    beams = np.broadcast_to(_hsv(u(), u(0.05, 0.15), u(0.6, 0.75)), (TEX, TEX, 3)).copy()
    beams[Y % 16 < 6] = _hsv(u(0.05, 0.1), u(0.5, 0.7), u(0.25, 0.35))
    ceilings = [panels, beams]

    lamp = _hsv(u(0.05, 0.18), u(0.25, 0.6), 1.0)

    def lit(t):
        return np.clip(t * 1.2 + 0.15 * lamp, 0, 1)

    surf = []
    for t in walls:
        surf += [t, t * 0.7]  # y faces darker: corners read even in one flat colour
    surf += floors + [lit(t) for t in floors] + ceilings + [lit(t) for t in ceilings]

    # objects, rgb + alpha
    objs = np.zeros((5, TEX, TEX, 4))
    uu = (X + 0.5) / TEX * 2 - 1  # -1..1 across
    round_ = np.sqrt(np.clip(1 - uu**2, 0, 1))
    c = _hsv(u(), u(0.05, 0.2), u(0.75, 0.92))
    shaft = (np.abs(uu) < 0.7) | (Y < 4) | (Y >= TEX - 4)
    objs[PILLAR, ..., :3] = shade(c, (0.45 + 0.55 * round_) * np.where(X % 5 == 0, 0.75, 1.0))
    objs[PILLAR, ..., 3] = shaft
    pole = (np.abs(uu) < 0.12) & (Y > 12) | (Y >= TEX - 3) & (np.abs(uu) < 0.6)
    globe = (X - 15.5) ** 2 + (Y - 7.5) ** 2
    objs[LAMP, ..., :3] = np.where(
        (globe < 60)[..., None], np.clip(lamp + 0.4 * (globe < 20)[..., None], 0, 1), 0.2
    )
    objs[LAMP, ..., 3] = pole | (globe < 60)
    c = _hsv(u(0.06, 0.11), u(0.5, 0.7), u(0.5, 0.7))
    frame = (X < 4) | (X >= TEX - 4) | (Y < 4) | (Y >= TEX - 4) | (np.abs(X - Y) < 3)
    objs[CRATE, ..., :3] = shade(c, np.where(frame, 0.65, 1.0) * np.where(Y % 7 == 0, 0.7, 1.0))
    objs[CRATE, ..., 3] = 1
    pot = (Y >= 20) & (np.abs(X - 15.5) < 8 - (Y - 20) * 0.3)
    leaves = np.zeros((TEX, TEX), bool)
    leaf_shade = np.ones((TEX, TEX))
    for _ in range(9):
        lx, ly, r = u(6, 26), u(3, 18), u(3, 6)
        d = (X - lx) ** 2 + (Y - ly) ** 2 < r * r
        leaves |= d
        leaf_shade[d] = u(0.6, 1.2)
    objs[PLANT, ..., :3] = np.where(
        pot[..., None],
        _hsv(u(0.02, 0.07), 0.7, 0.65),
        shade(_hsv(u(0.22, 0.4), 0.75, 0.6), leaf_shade),
    )
    objs[PLANT, ..., 3] = pot | leaves
    c = _hsv(u(), u(0.4, 0.7), u(0.4, 0.65))
    hoops = (Y % 14 < 3) | (Y >= TEX - 2)
    objs[BARREL, ..., :3] = shade(np.where(hoops[..., None], 0.35, c), 0.4 + 0.6 * round_)
    objs[BARREL, ..., 3] = 1

    # sky: gradient, a ring of mountains (integer frequencies: the panorama wraps), a sun
    has_sky = bool(rng.random() < 0.5)
    fog = _hsv(u(), u(0.15, 0.5), u(0.45, 0.8) if has_sky else u(0.1, 0.5))
    elev = (np.arange(SKY_H)[:, None] + 0.5) / SKY_H * SKY_MAX_ELEV
    az = np.arange(SKY_W)[None, :] / SKY_W * 2 * np.pi
    zenith = _hsv(u(0.5, 0.72), u(0.4, 0.8), u(0.5, 0.9))
    sky = fog + (zenith - fog) * np.clip(elev / 0.8, 0, 1)[..., None] ** 0.7
    ridge = sum(u(0.01, 0.04) * np.sin(k * az + u(0, 2 * np.pi)) for k in (2, 3, 5, 9, 17))
    mountain = elev < 0.12 + ridge
    sky = np.where(mountain[..., None], 0.55 * fog + 0.45 * _hsv(u(0.3, 0.7), 0.4, 0.3), sky)
    sun_az, sun_el = u(0, 2 * np.pi), u(0.3, 0.7)
    dist = np.hypot(np.angle(np.exp(1j * (az - sun_az))), elev - sun_el)
    sky = np.where((dist < 0.08)[..., None], _hsv(0.14, 0.15, 1.0), sky)
    return np.stack(surf), objs, np.broadcast_to(sky, (SKY_H, SKY_W, 3)), fog, has_sky


# ---------------------------------------------------------------------------- the game


class Game:
    """A procedural first-person world. `reset()` and `step(action)` return uint8 [size, size, 3].

    Read-only state: `position` (x, y), `heading` (radians), `pitch` (horizon shift as a
    fraction of the frame, positive looks up), `height` (camera above the floor), `collided`
    (the last step's movement was cut short by a wall or an object), `grid` (0 free, k > 0 a
    wall of material k), `objects` ([n, 3]: x, y, kind).
    """

    fps = 20

    def __init__(self, seed: int, size: int, config: GameConfig | None = None):
        for name, v in (("seed", seed), ("size", size)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 16 <= size <= 2048:
            raise ValueError(f"size must be within 16..2048 pixels, got {size}")
        if config is not None and not isinstance(config, GameConfig):
            raise TypeError(f"config must be a GameConfig, got {type(config).__name__}")
        self.seed, self.size = int(seed), int(size)
        self.config = cfg = config or GameConfig()
        map_rng, look_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(2)
        )

        grid, region, rooms = _make_map(map_rng, cfg)
        k = int(map_rng.integers(len(rooms)))
        x, y, w, h = rooms[k]
        spawn_cells = [
            (cx, cy) for cy in range(y, y + h) for cx in range(x, x + w) if grid[cy, cx] == 0
        ]
        sx, sy = spawn_cells[int(map_rng.integers(len(spawn_cells)))]
        objs = _place_objects(map_rng, cfg, grid, region, rooms, (sx, sy))
        self._spawn = (sx + 0.5, sy + 0.5, int(map_rng.integers(self._units_per_turn())))
        self._grid = grid
        self._grid.setflags(write=False)
        self._objects = np.array(objs, np.float64).reshape(-1, 3)
        self._objects.setflags(write=False)
        self._obj_kind = [int(k) for _, _, k in objs]
        self._obj_w = np.array([OBJECT_SIZE[k][0] for k in self._obj_kind])
        self._obj_h = [OBJECT_SIZE[k][1] for k in self._obj_kind]
        self._wallpad = np.ones((MAP_PAD, MAP_PAD), np.int8)
        self._wallpad[: grid.shape[0], : grid.shape[1]] = grid
        self._wallflat = self._wallpad.ravel()
        b = OBJECT_HALF  # collision boxes (x0, y0, x1, y1) of the objects, by cell
        self._boxes = {(int(ox), int(oy)): (ox - b, oy - b, ox + b, oy + b) for ox, oy, _ in objs}

        self._precompute_size()
        surf, obj_tex, sky, fog, self._has_sky = _textures(look_rng)
        self._build_tables(surf, obj_tex, sky, fog, region, rooms, objs, map_rng)
        self.reset()

    # -- set-up -------------------------------------------------------------------------

    def _units_per_turn(self) -> int:
        cfg = self.config
        return round(360.0 / cfg.max_turn_deg * cfg.input_steps)

    def _precompute_size(self) -> None:
        cfg, S = self.config, self.size
        half = math.tan(math.radians(cfg.fov_deg) / 2)
        self._proj = (S / 2) / half  # pixels per cell at depth 1, both axes
        self._camx = ((np.arange(S) + 0.5) * 2 / S - 1) * half  # [S] camera-plane offsets
        self._col_angle = np.arctan(self._camx) + 2 * np.pi  # [S], kept positive for the sky
        self._centres = self._rows = np.arange(S) + 0.5  # [S] pixel centres along a row or column
        self._rows32 = self._rows.astype(np.float32)[:, None]  # [S, 1]
        self._k = np.arange(int(math.ceil(cfg.fog_end)) + 2)  # grid lines crossed per axis
        self._arange = np.arange(S)
        self._row_start = np.arange(2 * S) * len(self._k)
        self._shift_a = np.array([0, MAP_BITS], np.int32)[:, None, None]  # x crossings, y crossings
        self._shift_b = np.array([MAP_BITS, 0], np.int32)[:, None, None]

    def _build_tables(self, surf, obj_tex, sky, fog, region, rooms, objs, rng) -> None:
        """One colour table for surfaces at every fog level plus the sky, the object tables,
        and the per-cell floor and ceiling materials."""
        cfg = self.config
        d = (np.arange(FOG_LEVELS) + 0.5) * cfg.fog_end / FOG_LEVELS  # what each level stands for
        t = (d - cfg.fog_start) / (cfg.fog_end - cfg.fog_start)
        f = np.clip(t, 0, 1) ** 2 * (3 - 2 * np.clip(t, 0, 1))  # smoothstep
        f[-1] = 1.0  # the last level is pure fog: nothing shows a cut where rays stop
        f = f[:, None, None, None, None]
        # texels per pixel at each level; the floor is seen at a grazing angle, so blur it more
        tpp = TEX * d / self._proj
        grazing = np.sqrt(np.maximum(1.0, d / cfg.eye_height))
        is_flat = (np.arange(N_SURF) >= FLOOR0)[None, :]
        sigma = 0.45 * tpp[:, None] * np.where(is_flat, grazing[:, None], 1.0)
        sigma = np.where(sigma < 0.3, 0.0, sigma)
        levels = _blur(surf[None], sigma) * (1 - f) + fog * f  # [L, N_SURF, T, T, 3]
        obj_rgb = obj_tex[None, ..., :3] * (1 - f) + fog * f  # [L, 5, T, T, 3]
        parts = [levels.reshape(-1, 3), sky.reshape(-1, 3), obj_rgb.reshape(-1, 3)]
        table = np.round(np.clip(np.concatenate(parts), 0, 1) * 255)
        self._table = table.astype(np.uint8)  # [N, 3]
        self._sky_base = len(parts[0])
        obj_base = len(parts[0]) + len(parts[1])
        opaque = np.broadcast_to(obj_tex[..., 3] > 0.5, obj_rgb.shape[:-1])
        self._obj_idx = np.where(
            opaque, obj_base + np.arange(opaque.size).reshape(opaque.shape), -1
        )
        self._obj_idx = self._obj_idx.astype(np.int32)  # [L, 5, T, T], -1 where transparent

        # per cell: table offset of its floor (first MAP_PAD^2 entries) and ceiling material
        n = region.shape[0]
        floor_of = rng.integers(0, N_FLOOR, size=len(rooms) + 1)
        ceil_of = rng.integers(0, N_CEIL, size=len(rooms) + 1)
        lit = np.zeros((n, n), bool)
        for ox, oy, kind in objs:
            if kind == LAMP:
                lit[int(oy) - 1 : int(oy) + 2, int(ox) - 1 : int(ox) + 2] = True
        reg = np.maximum(region, 0)
        floor = FLOOR0 + floor_of[reg] + LIT * lit
        ceil = CEIL0 + ceil_of[reg] + N_CEIL * lit
        cells = np.full((2, MAP_PAD, MAP_PAD), FLOOR0, np.int32)  # floor, then ceiling
        cells[0, :n, :n], cells[1, :n, :n] = floor, ceil
        self._cells = (cells * TEX * TEX).reshape(-1)

    # -- state --------------------------------------------------------------------------

    @property
    def position(self) -> tuple[float, float]:
        return (self._x, self._y)

    @property
    def heading(self) -> float:
        return self._yaw_units * 2 * math.pi / self._units_per_turn()

    @property
    def pitch(self) -> float:
        return self._pitch_units * self.config.pitch_speed / self.config.input_steps

    @property
    def height(self) -> float:
        cfg = self.config
        s = self._jump_t / cfg.jump_frames
        return cfg.eye_height + cfg.jump_height * 4 * s * (1 - s)

    @property
    def on_ground(self) -> bool:
        return self._jump_t == 0

    @property
    def collided(self) -> bool:
        return self._collided

    @property
    def grid(self) -> np.ndarray:
        return self._grid

    @property
    def objects(self) -> np.ndarray:
        return self._objects

    @property
    def has_sky(self) -> bool:
        return self._has_sky

    def wall_depths(self, columns: int = 32) -> np.ndarray:
        """Depth of the first wall along `columns` rays spread across the view [columns], in
        cells along the view direction (what the screen shows; objects are not counted),
        capped at fog_end + 1 where no wall is in sight."""
        half = math.tan(math.radians(self.config.fov_deg) / 2)
        camx = ((np.arange(columns) + 0.5) * 2 / columns - 1) * half
        h = self.heading
        rays = np.stack((math.cos(h) - math.sin(h) * camx, math.sin(h) + math.cos(h) * camx))
        rays = np.copysign(np.maximum(np.abs(rays), 1e-9), rays)
        return self._cast(self._x, self._y, rays)[0]

    def state(self) -> dict:
        """Everything that changes during play, as JSON-able values (see `restore`)."""
        return {
            "x": self._x,
            "y": self._y,
            "yaw_units": self._yaw_units,
            "pitch_units": self._pitch_units,
            "jump_t": self._jump_t,
        }

    def restore(self, state: dict) -> np.ndarray:
        """Return to a `state()` of this same world; the frame drawn there."""
        self._x, self._y = float(state["x"]), float(state["y"])
        self._yaw_units = int(state["yaw_units"]) % self._units_per_turn()
        self._pitch_units = int(state["pitch_units"])
        self._jump_t = int(state["jump_t"])
        self._collided = False
        return self._render()

    # -- play ---------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        x, y, yaw = self._spawn
        return self.restore({"x": x, "y": y, "yaw_units": yaw, "pitch_units": 0, "jump_t": 0})

    def step(self, action: Action) -> np.ndarray:
        if not isinstance(action, Action):
            raise TypeError(
                f"step() takes a worldmodel.actions.Action, got {type(action).__name__}"
            )
        cfg = self.config
        # integer units: turning back by the same inputs lands on exactly the same heading
        self._yaw_units = (
            self._yaw_units + round(action.yaw * cfg.input_steps)
        ) % self._units_per_turn()
        limit = math.floor(cfg.max_pitch / cfg.pitch_speed * cfg.input_steps + 1e-9)
        self._pitch_units = min(
            max(self._pitch_units + round(action.pitch * cfg.input_steps), -limit), limit
        )

        fwd = int(action.forward) - int(action.back)
        side = int(action.right) - int(action.left)
        self._collided = False
        if fwd or side:
            h = self.heading
            speed = cfg.move_speed * (cfg.sprint_factor if action.sprint else 1.0)
            speed /= math.hypot(fwd, side)  # diagonals are no faster
            right = (-math.sin(h), math.cos(h))
            dx = speed * (fwd * math.cos(h) + side * right[0])
            dy = speed * (fwd * math.sin(h) + side * right[1])
            self._move(dx, dy)

        if self._jump_t:
            self._jump_t = (self._jump_t + 1) % cfg.jump_frames
        elif action.jump:
            self._jump_t = 1
        return self._render()

    def _move(self, dx: float, dy: float) -> None:
        """Move one axis at a time, stopping at the first box in the way: the player slides
        along walls and never overlaps a wall cell or an object."""
        r, eps = self.config.radius, 1e-9
        for axis, delta in ((0, dx), (1, dy)):
            if delta == 0:
                continue
            pos = [self._x, self._y]
            a, b = pos[axis], pos[1 - axis]
            new = a + delta
            lo, hi = min(a, new) - r, max(a, new) + r
            for ca in range(math.floor(lo), math.floor(hi) + 1):
                for cb in range(math.floor(b - r), math.floor(b + r) + 1):
                    cx, cy = (ca, cb) if axis == 0 else (cb, ca)
                    if self._wallpad[cy & (MAP_PAD - 1), cx & (MAP_PAD - 1)]:
                        box = (cx, cy, cx + 1, cy + 1)
                    elif (cx, cy) in self._boxes:
                        box = self._boxes[(cx, cy)]
                    else:
                        continue
                    a0, b0, a1, b1 = (
                        (box[0], box[1], box[2], box[3])
                        if axis == 0
                        else (box[1], box[0], box[3], box[2])
                    )
                    if b0 >= b + r - eps or b1 <= b - r + eps:
                        continue  # beside the path, not in it
                    if delta > 0 and a + r - eps <= a0 < new + r:
                        new, self._collided = a0 - r, True
                    elif delta < 0 and new - r < a1 <= a - r + eps:
                        new, self._collided = a1 + r, True
            pos[axis] = new
            self._x, self._y = pos

    # -- drawing ------------------------------------------------------------------------

    def _render(self) -> np.ndarray:
        cfg, S, T = self.config, self.size, TEX
        proj, fog_end = self._proj, cfg.fog_end
        h, px, py, z = self.heading, self._x, self._y, self.height
        hz = S / 2 + self.pitch * S  # horizon row; looking up moves it down
        cos_h, sin_h = math.cos(h), math.sin(h)
        # one ray per column, dir + camx * right, not normalised: its parameter is the depth
        rays = np.stack((cos_h - sin_h * self._camx, sin_h + cos_h * self._camx))  # [2, S]
        rays = np.copysign(np.maximum(np.abs(rays), 1e-9), rays)

        depth, col_base = self._cast(px, py, rays)  # [S], [S]

        # floor and ceiling: a row's distance depends on the row alone
        dy_row = self._rows - hz  # [S]
        below = dy_row > 0
        row_dist = np.minimum(
            np.where(below, z, 1 - z) * proj / np.maximum(np.abs(dy_row), 1e-3), fog_end
        )
        row_level = np.minimum((row_dist * (FOG_LEVELS / fog_end)).astype(np.int32), FOG_LEVELS - 1)
        row_level = row_level * (N_SURF * T * T)  # [S] offsets in the colour table
        row_cells = np.where(below, 0, CEIL_CELLS).astype(np.int32)  # [S]
        r0 = int(S - np.count_nonzero(below)) if self._has_sky else 0  # first row to floor-cast
        idx = np.empty((S, S), np.int32)  # every pixel's entry in the colour table

        d_t = (row_dist[r0:] * T).astype(np.float32)[:, None]  # [S-r0, 1]
        rays32 = rays.astype(np.float32)
        fx = d_t * rays32[0]  # [S-r0, S] world x of each floor pixel, in texels
        fx += np.float32(px * T)
        fx = fx.astype(np.int32)
        fy = d_t * rays32[1]
        fy += np.float32(py * T)
        fy = fy.astype(np.int32)
        cell = ((fy << (MAP_BITS - TEX_BITS)) & ((MAP_PAD - 1) << MAP_BITS)) | (
            (fx >> TEX_BITS) & (MAP_PAD - 1)
        )
        cell += row_cells[r0:, None]
        flat = idx[r0:]
        np.take(self._cells, cell, out=flat)  # material of the cell under the pixel
        flat += ((fy & (T - 1)) << TEX_BITS) | (fx & (T - 1))
        flat += row_level[r0:, None]
        if r0:
            elev = (hz - self._rows[:r0]) * (SKY_H / SKY_MAX_ELEV / proj)
            sky_row = np.minimum(elev.astype(np.int32), SKY_H - 1)
            sky_col = ((h + self._col_angle) * (SKY_W / (2 * np.pi))).astype(np.int32) % SKY_W
            np.add((sky_row * SKY_W + self._sky_base)[:, None], sky_col, out=idx[:r0])

        # walls over floor and sky: texel row v of each pixel, negative or >= T off the wall
        top = hz - (1 - z) * proj / depth  # [S]
        v = (self._rows32 - top.astype(np.float32)) * (depth * (T / proj)).astype(np.float32)
        vi = np.floor(v, out=v).astype(np.int32)  # [S, S]
        np.copyto(idx, (vi << TEX_BITS) + col_base, where=vi.view(np.uint32) < T)

        self._draw_objects(idx, px, py, cos_h, sin_h, hz, z, depth)
        return np.take(self._table, idx, axis=0)  # [S, S, 3]

    def _cast(self, px: float, py: float, rays: np.ndarray):
        """Walls, for rays [2, S]: the depth of the first wall on each column [S] and the colour
        table entry of its top texel row [S]. Both axes at once: axis a holds the crossings of
        the grid lines perpendicular to a (x = const for a = 0)."""
        T, k = TEX, self._k  # [K]
        p = np.array([[px], [py]])  # [2, 1]
        pos = rays > 0
        line = (np.floor(p) + pos)[..., None] + k * np.where(pos, 1, -1)[..., None]  # [2, S, K]
        t = (line - p[..., None]) / rays[..., None]  # [2, S, K] depth at each crossing
        cell_a = line.astype(np.int32) - (~pos)[..., None]  # the cell entered, along a
        cell_b = np.floor(p[::-1, :, None] + t * rays[::-1, :, None]).astype(np.int32)  # and across
        cell = ((cell_a & (MAP_PAD - 1)) << self._shift_a) | (
            (cell_b & (MAP_PAD - 1)) << self._shift_b
        )
        m = np.take(self._wallflat, cell)  # [2, S, K] wall material + 1, or 0
        n = rays.shape[1]
        col, row_start = (
            (self._arange, self._row_start) if n == self.size
            else (np.arange(n), np.arange(2 * n) * len(k))
        )
        first = row_start + (m > 0).argmax(axis=-1).ravel()  # [2S] first wall on each ray
        m = m.ravel()[first].reshape(2, -1)
        t = np.where(m > 0, t.ravel()[first].reshape(2, -1), np.inf)  # [2, S]
        side = (t[1] < t[0]).astype(np.int32)  # 1: the wall is hit on a y face
        depth = np.minimum(t[side, col], self.config.fog_end + 1)
        mat = np.maximum(m[side, col], 1)
        along = p[1 - side, 0] + depth * rays[1 - side, col]
        u = along - np.floor(along)
        u = np.where(rays[side, col] * (1 - 2 * side) < 0, 1 - u, u)  # left to right as seen
        level = np.minimum(
            (depth * (FOG_LEVELS / self.config.fog_end)).astype(np.int32), FOG_LEVELS - 1
        )
        surf = level * N_SURF + 2 * (mat - 1) + side
        return depth, surf * (T * T) + np.minimum((u * T).astype(np.int32), T - 1)

    def _draw_objects(self, idx, px, py, cos_h, sin_h, hz, z, zbuf) -> None:
        """Billboards far to near; a column of an object shows where it is nearer than the wall."""
        if not len(self._objects):
            return
        S, T, proj, cfg = self.size, TEX, self._proj, self.config
        rx, ry = self._objects[:, 0] - px, self._objects[:, 1] - py
        depth = rx * cos_h + ry * sin_h
        lateral = ry * cos_h - rx * sin_h
        safe = np.maximum(depth, 1e-6)
        centre = S / 2 + lateral / safe * proj
        half_w = self._obj_w * proj / safe / 2
        seen = (
            (depth > 0.05) & (depth < cfg.fog_end) & (centre + half_w > 0) & (centre - half_w < S)
        )
        order = np.nonzero(seen)[0]
        order = order[np.argsort(-depth[order], kind="stable")][-cfg.max_drawn_objects :]
        rows = zip(
            depth[order].tolist(),
            centre[order].tolist(),
            half_w[order].tolist(),
            order.tolist(),
            strict=True,
        )
        for d, c, hw, i in rows:
            x0, x1 = max(0, math.ceil(c - hw - 0.5)), min(S, math.ceil(c + hw - 0.5))
            in_front = zbuf[x0:x1] > d
            if not in_front.any():
                continue  # behind walls
            kind, ht = self._obj_kind[i], self._obj_h[i]
            scale = proj / d
            top = hz - (ht - z) * scale
            y0, y1 = max(0, math.ceil(top - 0.5)), min(S, math.ceil(top + ht * scale - 0.5))
            if y0 >= y1:
                continue
            level = min(int(d * FOG_LEVELS / cfg.fog_end), FOG_LEVELS - 1)
            if kind == LAMP:
                level //= 3  # lamps glow through the fog
            u = np.minimum(
                ((self._centres[x0:x1] - (c - hw)) * (T / (2 * hw))).astype(np.int32), T - 1
            )
            v = np.minimum(
                ((self._centres[y0:y1] - top) * (T / (ht * scale))).astype(np.int32), T - 1
            )
            patch = self._obj_idx[level, kind][v[:, None], u]  # [y1-y0, x1-x0]
            np.copyto(idx[y0:y1, x0:x1], patch, where=(patch >= 0) & in_front)


def benchmark(size: int, frames: int = 2000, seed: int = 0) -> float:
    """Frames per second of step + render, walking and turning, by this process's CPU time
    (the game is single-threaded numpy, so on an idle core this is also the wall-clock rate;
    on a shared machine it leaves out the time other processes held the core)."""
    game = Game(seed, size)
    rng = np.random.default_rng(seed)
    script = [
        Action(
            forward=bool(rng.random() < 0.8),
            left=bool(rng.random() < 0.2),
            sprint=bool(rng.random() < 0.3),
            jump=bool(rng.random() < 0.05),
            yaw=float(rng.uniform(-0.5, 0.5)),
            pitch=float(rng.uniform(-0.1, 0.1)),
        )
        for _ in range(64)
    ]
    for a in script:
        game.step(a)
    t0 = time.process_time()
    for i in range(frames):
        game.step(script[i % len(script)])
    return frames / (time.process_time() - t0)


if __name__ == "__main__":
    # python -m worldmodel.game [frames at 64x64]; pin a core with `taskset -c 0`
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    for s in (64, 128, 256):
        print(f"{s}x{s}: {benchmark(s, frames=max(200, n * 64 * 64 // (s * s))):.0f} frames/s")
